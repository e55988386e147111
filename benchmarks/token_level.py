"""Token-level compressors: pocsdk ``llmlingua2`` vs llmlingua 0.2.2's LLMLingua-2, side by side.

Same model for both: a randomly initialised LLMLingua-2 token classifier with the real
checkpoint's arithmetic (``bert-base-multilingual-cased``: 12 layers, 768 hidden, 119,547
vocabulary; see ``pocsdk.testing.peers``), so timings are representative and outputs are not.
For each context length (cl100k tokens) it reports, per input:

* one rate end to end (llmlingua ``compress_prompt`` vs pocsdk ``score`` + ``select`` + ``render``),
  split into model forward time and everything else (post-processing);
* probing 10 rates: llmlingua must run ``compress_prompt`` (and the model) once per rate,
  pocsdk scores once and selects 10 times. Above ``--probe-max-tokens`` llmlingua's 10-rate
  cost is extrapolated as 10 x its single-rate time (marked "x10 est.").

Run (about 8-12 minutes on 2 CPU cores)::

    HF_HUB_OFFLINE=1 python benchmarks/token_level.py --lengths 2000 8000 32000
    python benchmarks/token_level.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.33)


class ForwardTimer:
    """Wraps ``model.forward`` to add up the time spent inside the model."""

    def __init__(self, model: Any, sync: Callable[[], None]) -> None:
        self.total = 0.0
        self._inner = model.forward
        self._sync = sync
        model.forward = self._call

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        self._sync()
        t0 = time.perf_counter()
        out = self._inner(*args, **kwargs)
        self._sync()
        self.total += time.perf_counter() - t0
        return out

    def reset(self) -> float:
        spent, self.total = self.total, 0.0
        return spent


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
    ap.add_argument("--inputs", type=int, default=1, help="inputs per length (timings are medians)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--family", default="bert", choices=["bert", "xlm-roberta"])
    ap.add_argument("--size", default="base", choices=["base", "tiny"])
    ap.add_argument("--probe-max-tokens", type=int, default=8000,
                    help="measure llmlingua's 10-rate probe up to this length; extrapolate above")
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
    rows = []
    for n in args.lengths:
        texts = texts_of_length(n, args.inputs)
        rec: dict[str, list[float]] = {k: [] for k in (
            "peer_total", "peer_fwd", "our_total", "our_fwd", "our_score", "our_select_render",
            "peer_probe", "our_probe", "our_rate_err")}
        probe_measured = n <= args.probe_max_tokens
        for text in texts:
            t0 = time.perf_counter()
            peer.compress_prompt([text], rate=0.33, force_tokens=["\n", "?"])
            rec["peer_total"].append(time.perf_counter() - t0)
            rec["peer_fwd"].append(peer_timer.reset())

            t0 = time.perf_counter()
            scored = ours.score(text)
            t1 = time.perf_counter()
            res = render(scored, ours.select(scored, 0.33))
            t2 = time.perf_counter()
            rec["our_total"].append(t2 - t0)
            rec["our_score"].append(t1 - t0)
            rec["our_select_render"].append(t2 - t1)
            rec["our_fwd"].append(our_timer.reset())
            rec["our_rate_err"].append(res.keep_rate / 0.33 - 1)

            # probing 10 rates
            t0 = time.perf_counter()
            scored = ours.score(text)
            for r in RATES:
                ours.select(scored, r)
            render(scored, ours.select(scored, 0.33))
            rec["our_probe"].append(time.perf_counter() - t0)
            our_timer.reset()
            if probe_measured:
                t0 = time.perf_counter()
                for r in RATES:
                    peer.compress_prompt([text], rate=r, force_tokens=["\n", "?"])
                rec["peer_probe"].append(time.perf_counter() - t0)
                peer_timer.reset()
            else:
                rec["peer_probe"].append(len(RATES) * rec["peer_total"][-1])
        med = {k: statistics.median(v) for k, v in rec.items() if v}
        med["tokens"] = n
        med["probe_measured"] = probe_measured
        rows.append(med)
        _print_row(med)
        sys.stdout.flush()

    print()
    print("| context (cl100k tokens) | llmlingua 1 rate (s) | pocsdk 1 rate (s) | speedup | llmlingua forward / "
          "other (s) | pocsdk forward / other (s) | other-time speedup | 10 rates: llmlingua (s) | "
          "10 rates: pocsdk (s) | 10-rate speedup | pocsdk rate error |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in rows:
        peer_other = m["peer_total"] - m["peer_fwd"]
        our_other = m["our_total"] - m["our_fwd"]
        est = "" if m["probe_measured"] else " (x10 est.)"
        print(f"| {m['tokens']:,} | {m['peer_total']:.2f} | {m['our_total']:.2f} | "
              f"{m['peer_total'] / m['our_total']:.2f}x | {m['peer_fwd']:.2f} / {peer_other:.2f} | "
              f"{m['our_fwd']:.2f} / {our_other:.2f} | {peer_other / max(our_other, 1e-9):.1f}x | "
              f"{m['peer_probe']:.1f}{est} | {m['our_probe']:.2f} | {m['peer_probe'] / m['our_probe']:.1f}x | "
              f"{m['our_rate_err']:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _print_row(m: dict[str, Any]) -> None:
    print(f"{m['tokens']:>6} tokens: llmlingua {m['peer_total']:.2f}s (forward {m['peer_fwd']:.2f}s) | "
          f"pocsdk {m['our_total']:.2f}s (forward {m['our_fwd']:.2f}s, select+render "
          f"{m['our_select_render'] * 1000:.0f} ms) | 10 rates: {m['peer_probe']:.1f}s vs {m['our_probe']:.2f}s")


if __name__ == "__main__":
    raise SystemExit(main())
