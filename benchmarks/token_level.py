"""Token-level compressors: pocsdk ``llmlingua2`` vs llmlingua 0.2.2's LLMLingua-2, side by side.

Same model for both: a randomly initialised LLMLingua-2 token classifier with the real
checkpoint's arithmetic (``bert-base-multilingual-cased``: 12 layers, 768 hidden, 119,547
vocabulary; see ``pocsdk.testing.peers``), so timings are representative and outputs are not.
Per context length (cl100k tokens, one input each):

1. up to ``--real-max-tokens``: one rate end to end with the real model, llmlingua
   ``compress_prompt`` vs pocsdk ``score`` + ``select`` + ``render``, model forward timed apart;
2. every length: the same calls with the model replaced by random logits (a stub), which times
   everything but the forward pass, for one rate and for probing 10 rates (llmlingua runs
   ``compress_prompt`` once per rate, pocsdk scores once and selects 10 times);
3. end to end at lengths above ``--real-max-tokens``: model time = tokens fed to the model
   (padding included, counted exactly in step 2) x the time per token measured in step 1,
   marked "(est.)". The forward pass is the same arithmetic in both, so one time per token
   (the lower of the two measured) serves both; llmlingua pads every window to 512 tokens,
   pocsdk pads each batch to its longest window, so it feeds the model fewer tokens.

Run (about 10 minutes on 2 busy CPU cores)::

    HF_HUB_OFFLINE=1 python benchmarks/token_level.py --lengths 2000 8000 32000
    python benchmarks/token_level.py --device cuda --real-max-tokens 32000   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.33)


class ForwardTimer:
    """Wraps ``model.forward`` to add up the time spent inside the model.

    With ``stub`` set the model is not run at all: random logits of the right shape come back,
    so what is timed besides is each implementation's own work (tokenizing, windows, merging
    words, thresholds, text), which the model's cost would otherwise drown on a slow CPU."""

    def __init__(self, model: Any, sync: Callable[[], None]) -> None:
        self.total = 0.0
        self.tokens = 0
        self.stub = False
        self._real = model.forward
        self._sync = sync
        model.forward = self._call

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        self._sync()
        t0 = time.perf_counter()
        out = _stub_forward(*args, **kwargs) if self.stub else self._real(*args, **kwargs)
        self._sync()
        self.total += time.perf_counter() - t0
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(ids.numel()) if ids is not None else 0
        return out

    def reset(self) -> float:
        spent, self.total = self.total, 0.0
        return spent


def _stub_forward(input_ids: Any = None, attention_mask: Any = None, **_: Any) -> Any:
    import torch
    from transformers.modeling_outputs import TokenClassifierOutput

    return TokenClassifierOutput(loss=None, logits=torch.randn(*input_ids.shape, 2))


def texts_of_length(n_tokens: int, count: int) -> list[str]:
    """``count`` contexts of about ``n_tokens`` cl100k tokens, from shared data when present."""
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base")
    pool = list(_paragraphs())
    out = []
    start = 0
    for _ in range(count):
        parts: list[str] = []
        total = 0
        i = start
        while total < n_tokens:
            p = pool[i % len(pool)]
            parts.append(p)
            total += len(enc.encode(p, disallowed_special=()))
            i += 1
        start = i
        text = "\n\n".join(parts)
        ids = enc.encode(text, disallowed_special=())[:n_tokens]
        out.append(enc.decode(ids))
    return out


def _paragraphs() -> Iterator[str]:
    from pocsdk.testing.peers import shared_data_dir

    data = shared_data_dir()
    path = data / "longbench_multi_news" / "multi_news.jsonl" if data else None
    if path is not None and path.is_file():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                ctx = json.loads(line)["context"].replace("NEWLINE_CHAR", "\n")
                for para in ctx.split("\n"):
                    if len(para.strip()) > 80:
                        yield para.strip()
        return
    import random

    rng = random.Random(0)
    words = ("the council report river market study found that prices rose while schools and hospitals "
             "reported longer waiting times during the winter months of the year").split()
    for _ in range(5000):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))).capitalize() + "."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--family", default="bert", choices=["bert", "xlm-roberta"])
    ap.add_argument("--size", default="base", choices=["base", "tiny"])
    ap.add_argument("--real-max-tokens", type=int, default=2000,
                    help="run the real model up to this length; above, model time = model tokens x the time "
                         "per token measured at the last real length")
    ap.add_argument("--repeats", type=int, default=2, help="real-model runs per implementation (best of)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="write raw numbers here")
    args = ap.parse_args(argv)

    import torch

    from pocsdk.compressors import get_compressor, render
    from pocsdk.testing.peers import install_offline_cl100k, make_random_token_classifier
    from pocsdk.text.protect import Protection

    if args.threads:
        torch.set_num_threads(args.threads)
    install_offline_cl100k()
    from llmlingua import PromptCompressor

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    model_dir = str(make_random_token_classifier(family=args.family, size=args.size))
    t0 = time.perf_counter()
    peer = PromptCompressor(model_name=model_dir, use_llmlingua2=True, device_map=args.device)
    peer_load = time.perf_counter() - t0
    ours = get_compressor("llmlingua2", model=model_dir, device=args.device, force_tokens=("\n", "?"),
                          tokenizer="tiktoken:cl100k_base", protect=Protection.none())
    t0 = time.perf_counter()
    ours.score("warm up: load the model once.")
    our_load = time.perf_counter() - t0
    peer_timer = ForwardTimer(peer.model, sync)
    our_timer = ForwardTimer(ours._load()[0], sync)  # type: ignore[attr-defined]
    peer.compress_prompt(["warm up the peer once."], rate=0.5, force_tokens=["\n", "?"])
    peer_timer.reset()

    print(f"# model: random {args.family}/{args.size} ({Path(model_dir).name}), device {args.device}, "
          f"torch threads {torch.get_num_threads()}; load: llmlingua {peer_load:.1f}s, pocsdk {our_load:.1f}s")
    force = ["\n", "?"]
    rows = []
    fwd_per_token: dict[str, float] = {}
    for n in args.lengths:
        text = texts_of_length(n, 1)[0]
        m: dict[str, Any] = {"tokens": n}
        # 1. the real model, one rate (the forward pass is the same arithmetic for both)
        if n <= args.real_max_tokens:
            peer_timer.stub = our_timer.stub = False
            runs: dict[str, list[tuple[float, float, int]]] = {"peer": [], "our": []}
            for _ in range(args.repeats):  # interleaved, best of: the machine is shared
                peer_timer.tokens = 0
                t0 = time.perf_counter()
                peer.compress_prompt([text], rate=0.33, force_tokens=force)
                runs["peer"].append((time.perf_counter() - t0, peer_timer.reset(), peer_timer.tokens))
                our_timer.tokens = 0
                t0 = time.perf_counter()
                scored = ours.score(text)
                render(scored, ours.select(scored, 0.33))
                runs["our"].append((time.perf_counter() - t0, our_timer.reset(), our_timer.tokens))
            m["peer_total"], m["peer_fwd"], pt = min(runs["peer"])
            m["our_total"], m["our_fwd"], ot = min(runs["our"])
            # same model, same arithmetic per token: one cost per token for the estimates, the lower of the two
            per_token = min(m["peer_fwd"] / pt, m["our_fwd"] / ot)
            fwd_per_token = {"peer": per_token, "our": per_token}
            print(f"{n:>6} tokens, real model (best of {args.repeats}): llmlingua {m['peer_total']:.2f}s (forward "
                  f"{m['peer_fwd']:.2f}s for {pt:,} tokens), pocsdk {m['our_total']:.2f}s (forward "
                  f"{m['our_fwd']:.2f}s for {ot:,} tokens)", flush=True)
        # 2. everything but the model (stub forward), one rate and 10 rates
        peer_timer.stub = our_timer.stub = True
        peer_timer.tokens = our_timer.tokens = 0
        t0 = time.perf_counter()
        peer.compress_prompt([text], rate=0.33, force_tokens=force)
        m["peer_other"] = time.perf_counter() - t0 - peer_timer.reset()
        m["peer_model_tokens"] = peer_timer.tokens
        t0 = time.perf_counter()
        scored = ours.score(text)
        t1 = time.perf_counter()
        res = render(scored, ours.select(scored, 0.33))
        t2 = time.perf_counter()
        for r in RATES:
            ours.select(scored, r)
        t3 = time.perf_counter()
        m["our_other"] = t2 - t0 - our_timer.reset()
        m["our_model_tokens"] = our_timer.tokens
        m["our_select_render_ms"] = (t2 - t1) * 1000
        m["our_10_selects_ms"] = (t3 - t2) * 1000
        m["our_rate_err"] = res.keep_rate / 0.33 - 1
        t0 = time.perf_counter()
        for r in RATES:
            peer.compress_prompt([text], rate=r, force_tokens=force)
        m["peer_other_10"] = time.perf_counter() - t0 - peer_timer.reset()
        peer_timer.tokens = our_timer.tokens = 0
        # 3. end to end: measured model time where run, else model tokens x measured time per token
        if "peer_fwd" not in m and fwd_per_token:
            m["peer_fwd"] = fwd_per_token["peer"] * m["peer_model_tokens"]
            m["our_fwd"] = fwd_per_token["our"] * m["our_model_tokens"]
            m["estimated"] = True
        if "peer_fwd" in m:
            m["peer_e2e"] = m["peer_fwd"] + m["peer_other"]
            m["our_e2e"] = m["our_fwd"] + m["our_other"]
            m["peer_e2e_10"] = len(RATES) * m["peer_fwd"] + m["peer_other_10"]
            m["our_e2e_10"] = m["our_e2e"] + m["our_10_selects_ms"] / 1000
        rows.append(m)
        print(f"{n:>6} tokens, without the model: llmlingua {m['peer_other']:.2f}s (10 rates "
              f"{m['peer_other_10']:.2f}s), pocsdk {m['our_other']:.3f}s (select+render "
              f"{m['our_select_render_ms']:.1f} ms, 10 selects {m['our_10_selects_ms']:.1f} ms)", flush=True)

    print()
    print("| context (cl100k tokens) | model tokens incl. padding: llmlingua / pocsdk | model forward: llmlingua / "
          "pocsdk (s) | all else, 1 rate: llmlingua / pocsdk (s) | all else speedup | end to end, 1 rate: llmlingua / "
          "pocsdk (s) | speedup | end to end, 10 rates: llmlingua / pocsdk (s) | speedup | pocsdk rate error |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in rows:
        est = " (est.)" if m.get("estimated") else ""
        line = (f"| {m['tokens']:,} | {m['peer_model_tokens']:,} / {m['our_model_tokens']:,} | ")
        if "peer_fwd" in m:
            line += f"{m['peer_fwd']:.1f} / {m['our_fwd']:.1f}{est} | "
        else:
            line += "n/a | "
        line += (f"{m['peer_other']:.2f} / {m['our_other']:.3f} | "
                 f"{m['peer_other'] / max(m['our_other'], 1e-9):.0f}x | ")
        if "peer_e2e" in m:
            line += (f"{m['peer_e2e']:.1f} / {m['our_e2e']:.1f}{est} | {m['peer_e2e'] / m['our_e2e']:.2f}x | "
                     f"{m['peer_e2e_10']:.0f} / {m['our_e2e_10']:.1f}{est} | "
                     f"{m['peer_e2e_10'] / m['our_e2e_10']:.1f}x | ")
        else:
            line += "n/a | n/a | n/a | n/a | "
        print(line + f"{m['our_rate_err']:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
