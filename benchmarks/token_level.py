"""Token-level compressors: pocsdk ``llmlingua2`` vs llmlingua 0.2.2's LLMLingua-2, side by side.

Same model for all: a randomly initialised LLMLingua-2 token classifier with the real
checkpoint's arithmetic (``bert-base-multilingual-cased``: 12 layers, 768 hidden, 119,547
vocabulary; see ``pocsdk.testing.peers``), so timings are representative and outputs are not.
pocsdk runs in several variants (``--variants``): ``fp32`` (the default), ``int8``
(``quantize="int8"``) and ``bf16`` (``dtype="bfloat16"``). Per context length (cl100k tokens,
one input each):

1. up to ``--real-max-tokens`` (``--bf16-max-tokens`` for bf16, slow without native bfloat16):
   one rate end to end with the real model, llmlingua ``compress_prompt`` vs pocsdk ``score`` +
   ``select`` + ``render`` per variant, interleaved, best of ``--repeats``; wall and process CPU
   time, model forward timed apart; the kept words of each variant compared with fp32's at rates
   0.3 and 0.5 (Jaccard of the kept sets, share of identical keep/drop decisions);
2. every length: the same calls with the model replaced by random logits (a stub), which times
   everything but the forward pass, for one rate and for probing 10 rates (llmlingua runs
   ``compress_prompt`` once per rate, pocsdk scores once and selects 10 times);
3. end to end above a variant's real length: model time = tokens fed to the model (padding
   included, counted exactly in step 2) x the time per token measured at its largest real length,
   marked "(est.)";
4. parity at every length: pocsdk ``llmlingua_compatible=True`` against ``compress_prompt`` word
   for word, both fed the same deterministic stub classifier (each token's logit a function of its
   id), so that every windowing, merging and threshold decision is compared at full length;
5. at the smallest real length, forward-pass ablations on pocsdk's own windows (``--no-ablations``
   skips them): eager vs SDPA attention, padding to 512 as llmlingua does, batch size, threads,
   ``torch.no_grad`` vs ``torch.inference_mode``.

Run (about 30 minutes on 2 busy CPU cores; writes its section of benchmarks/RESULTS.md)::

    python benchmarks/token_level.py --lengths 2000 8000 32000
    python benchmarks/token_level.py --device cuda --variants fp32 --real-max-tokens 32000 --out /tmp/R.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pocsdk.testing.results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
SECTION = "## Token-level compressors (issue 8)"
RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.33)
RATE = 0.33
AGREE_RATES = (0.3, 0.5)
FORCE = ["\n", "?"]
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "int8": {"quantize": "int8"},
    "bf16": {"dtype": "bfloat16"},
}
TARGET_LEN = 8000
TARGET = 5.0


class ForwardTimer:
    """Wraps ``model.forward`` to add up the time spent inside the model and the tokens fed to it.

    ``stub``: None runs the model; "random" returns random logits of the right shape, so what is
    timed besides is each implementation's own work (tokenizing, windows, merging words,
    thresholds, text); "hash" returns logits that depend on each token id only (the same for every
    implementation, whatever the padding), for word-for-word parity at any length."""

    def __init__(self, model: Any, sync: Callable[[], None]) -> None:
        self.total = 0.0
        self.tokens = 0
        self.stub: str | None = None
        self._real = model.forward
        self._sync = sync
        model.forward = self._call

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        self._sync()
        t0 = time.perf_counter()
        ids = kwargs.get("input_ids", args[0] if args else None)
        out = _stub_forward(ids, self.stub) if self.stub else self._real(*args, **kwargs)
        self._sync()
        self.total += time.perf_counter() - t0
        self.tokens += int(ids.numel()) if ids is not None else 0
        return out

    def reset(self) -> float:
        spent, self.total, self.tokens = self.total, 0.0, 0
        return spent


def _stub_forward(input_ids: Any, kind: str) -> Any:
    import torch
    from transformers.modeling_outputs import TokenClassifierOutput

    if kind == "random":
        logits = torch.randn(*input_ids.shape, 2)
    else:  # golden-ratio hash of the id: deterministic, spread over (-4, 4)
        frac = torch.remainder(input_ids.double() * 0.6180339887498949, 1.0)
        logits = torch.stack([torch.zeros_like(frac), (frac - 0.5) * 8], dim=-1).float()
    return TokenClassifierOutput(loss=None, logits=logits)


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


def agreement(comp: Any, ref: Any, other: Any, rate: float) -> tuple[float, float]:
    """(Jaccard of the kept sets, share of identical keep/drop decisions) of two scorings of one text."""
    import numpy as np

    a, b = comp.select(ref, rate).keep, comp.select(other, rate).keep
    if len(a) != len(b):  # the units are words from the tokenizer, the same in every variant
        raise RuntimeError("variants cut the text into different words")
    union = int((a | b).sum())
    return (float((a & b).sum() / union) if union else 1.0), float(np.mean(a == b))


def timed(fn: Callable[[], Any], timer: ForwardTimer) -> tuple[float, float, float, int, Any]:
    """(wall s, process CPU s, model forward s, model tokens, result) of one call."""
    timer.reset()
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    tokens = timer.tokens
    return wall, cpu, timer.reset(), tokens, out


# -- forward-pass ablations ----------------------------------------------------------------------
def ablations(model_dir: str, batches: list[tuple[Any, Any]], repeats: int) -> list[tuple[str, float, float, int]]:
    """Forward time of pocsdk's own windows (the captured batches) under variations: (name, best wall s,
    best CPU s, tokens fed). Each variation is timed ``repeats`` times, interleaved with the others."""
    import torch
    import transformers

    # fresh copies: the compressors' cached models have their forward wrapped by a ForwardTimer
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    sdpa, eager = (transformers.AutoModelForTokenClassification.from_pretrained(
        model_dir, attn_implementation=impl).eval() for impl in ("sdpa", "eager"))
    rows = [ids[r][mask[r].bool()] for ids, mask in batches for r in range(ids.shape[0])]
    pad_id = tok.pad_token_id or 0

    def run(model: Any, groups: list[tuple[Any, Any]], mode: Any = torch.inference_mode) -> int:
        with mode():
            for ids, mask in groups:
                model(input_ids=ids, attention_mask=mask)
        return sum(int(ids.numel()) for ids, _ in groups)

    def rebatch(size: int, width: int | None = None) -> list[tuple[Any, Any]]:
        out = []
        for k in range(0, len(rows), size):
            chunk = rows[k: k + size]
            w = width or max(len(r) for r in chunk)
            ids = torch.full((len(chunk), w), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), w), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = r
                mask[i, : len(r)] = 1
            out.append((ids, mask))
        return out

    def threads(n: int) -> Callable[[], int]:
        def go() -> int:
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                return run(sdpa, batches)
            finally:
                torch.set_num_threads(before)
        return go

    variants: dict[str, Callable[[], int]] = {
        "pocsdk default (SDPA, inference_mode, one batch padded to its longest window)": lambda: run(sdpa, batches),
        "eager attention": lambda: run(eager, batches),
        "torch.no_grad instead of inference_mode": lambda: run(sdpa, batches, torch.no_grad),
        "every window padded to 512 (llmlingua)": lambda: run(sdpa, rebatch(len(rows), 512)),
        "batches of 4 windows": lambda: run(sdpa, rebatch(4)),
        "batches of 1 window (no padding at all)": lambda: run(sdpa, rebatch(1)),
        "1 torch thread": threads(1),
    }
    warm = [(batches[0][0][:1, :64], batches[0][1][:1, :64])]
    run(sdpa, warm)
    run(eager, warm)
    best: dict[str, tuple[float, float, int]] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            c0 = time.process_time()
            t0 = time.perf_counter()
            n = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            old = best.get(name)
            best[name] = (min(wall, old[0]) if old else wall, min(cpu, old[1]) if old else cpu, n)
    return [(name, *best[name]) for name in variants]


def linear_share(model_dir: str, batches: list[tuple[Any, Any]]) -> float:
    """Share of the fp32 forward's CPU time spent in the linear layers' matrix products (``aten::addmm``,
    ``aten::mm``), from one profiled pass: what int8 can speed up at all (Amdahl's bound)."""
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    model = transformers.AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        model(input_ids=batches[0][0][:1, :64], attention_mask=batches[0][1][:1, :64])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    lin = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm"))
    return float(lin / total) if total else float("nan")


# -- the section ---------------------------------------------------------------------------------
def fmt_s(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def section(rows: list[dict[str, Any]], variants: list[str], meta: dict[str, Any]) -> str:
    est = " (est.)"
    lines = [SECTION, "", meta["intro"], ""]

    lines += ["End to end, one rate (0.33), wall clock seconds; speedup = llmlingua / pocsdk:", ""]
    head = "| context (cl100k tokens) | model tokens incl. padding: llmlingua / pocsdk | llmlingua |"
    head += "".join(f" pocsdk {v} | speedup |" for v in variants)
    lines += [head, "|---:|---:|---:|" + "---:|---:|" * len(variants)]
    for m in rows:
        line = f"| {m['tokens']:,} | {m['peer_model_tokens']:,} / {m['our_model_tokens']:,} | "
        line += fmt_s(m["peer_e2e"]) + (est if m["peer_est"] else "") + " |"
        for v in variants:
            e = m["e2e"].get(v)
            if e is None:
                line += " n/a | n/a |"
                continue
            mark = est if m["est"][v] else ""
            line += f" {fmt_s(e)}{mark} | **{m['peer_e2e'] / e:.2f}x** |"
        lines.append(line)
    lines.append("")

    measured = [m for m in rows if m.get("cpu")]
    if measured:
        lines += ["Measured runs only (best of the interleaved repeats): process CPU time, seconds, which a "
                  "shared machine disturbs less than wall clock; speedup = llmlingua / pocsdk:", ""]
        head = "| context | llmlingua CPU s |" + "".join(f" pocsdk {v} CPU s | speedup |" for v in variants)
        lines += [head, "|---:|---:|" + "---:|---:|" * len(variants)]
        for m in measured:
            line = f"| {m['tokens']:,} | {fmt_s(m['cpu']['peer'])} |"
            for v in variants:
                c = m["cpu"].get(v)
                line += f" {fmt_s(c)} | {m['cpu']['peer'] / c:.2f}x |" if c else " n/a | n/a |"
            lines.append(line)
        lines.append("")

    lines += ["Probing 10 rates (what a floor predictor does): llmlingua runs `compress_prompt` 10 times, pocsdk "
              "scores once and selects 10 times; wall clock seconds:", ""]
    head = "| context | llmlingua |" + "".join(f" pocsdk {v} | speedup |" for v in variants)
    lines += [head, "|---:|---:|" + "---:|---:|" * len(variants)]
    for m in rows:
        line = f"| {m['tokens']:,} | {fmt_s(m['peer_e2e_10'])}{est if m['peer_est'] else ''} |"
        for v in variants:
            e = m["e2e_10"].get(v)
            line += (f" {fmt_s(e)}{est if m['est'][v] else ''} | {m['peer_e2e_10'] / e:.1f}x |"
                     if e is not None else " n/a | n/a |")
        lines.append(line)
    lines.append("")

    lines += ["Everything but the model (random logits in place of the forward pass), seconds:", ""]
    lines += ["| context | llmlingua, 1 rate | pocsdk, 1 rate | speedup | llmlingua, 10 rates | pocsdk select + "
              "render (ms) | pocsdk 10 more selects (ms) | pocsdk rate error |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in rows:
        lines.append(f"| {m['tokens']:,} | {m['peer_other']:.2f} | {m['our_other']:.3f} | "
                     f"{m['peer_other'] / max(m['our_other'], 1e-9):.1f}x | {m['peer_other_10']:.2f} | "
                     f"{m['our_select_render_ms']:.0f} | {m['our_10_selects_ms']:.0f} | {m['our_rate_err']:+.1%} |")
    lines.append("")

    agree = [(m, v) for m in rows for v in variants if v != "fp32" and v in m.get("agree", {})]
    if agree:
        lines += ["Agreement of each variant's kept words with fp32's (same text, same words; default mode): "
                  "Jaccard of the kept sets / share of identical keep-or-drop decisions:", ""]
        head = "| context | variant |" + "".join(f" rate {r} |" for r in AGREE_RATES)
        lines += [head, "|---:|---|" + "---:|" * len(AGREE_RATES)]
        for m, v in agree:
            cells = "".join(f" {j:.3f} / {s:.1%} |" for j, s in m["agree"][v])
            lines.append(f"| {m['tokens']:,} | {v} |{cells}")
        lines.append("")

    lines += ["Parity with llmlingua (`llmlingua_compatible=True`, both fed the same deterministic stub classifier, "
              "so every window, word and threshold is compared at full length): identical word lists, and the share "
              "of identical keep/drop labels:", ""]
    lines += ["| context | words | same word list | labels identical, rate 0.33 | labels identical, rate 0.5 |",
              "|---:|---:|---|---:|---:|"]
    for m in rows:
        p = m["parity"]
        lines.append(f"| {m['tokens']:,} | {p['words']:,} | {'yes' if p['same_words'] else 'NO'} | "
                     f"{p['labels'][0]:.2%} | {p['labels'][1]:.2%} |")
    lines.append("")

    if meta.get("ablations"):
        ab = meta["ablations"]
        base_w, base_c = ab[0][1], ab[0][2]
        lines += [f"Forward-pass ablations on pocsdk's own windows of the {meta['ablation_len']:,}-token input "
                  f"(fp32; best of {meta['repeats']}, interleaved): what the default path already does, and what it "
                  "would cost otherwise:", ""]
        lines += ["| forward pass | tokens fed | wall s | CPU s | wall vs default | CPU vs default |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, w, c, n in ab:
            lines.append(f"| {name} | {n:,} | {fmt_s(w)} | {fmt_s(c)} | {w / base_w:.2f}x | {c / base_c:.2f}x |")
        lines.append("")

    lines += meta["verdict"] + [""] + meta["notes"] + [""]
    lines += [f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; total run {meta['total_s']:.0f} s.  ",
              f"Machine: {meta['machine']}"]
    return "\n".join(lines) + "\n"


def ablation_notes(ab: list[tuple[str, float, float, int]] | None, noise: float = 0.10) -> list[str]:
    """One bullet reading the ablation table by CPU time against the default (within ``noise``: no difference)."""
    if not ab:
        return []
    base = ab[0][2]
    slower = [f"{name} {c / base:.2f}x" for name, _, c, _ in ab[1:] if c / base > 1 + noise]
    same = [name for name, _, c, _ in ab[1:] if abs(c / base - 1) <= noise]
    faster = [(name, c / base) for name, _, c, _ in ab[1:] if c / base < 1 - noise]
    out = f"* Ablations, CPU time against the default (within {noise:.0%} counts as no difference here): "
    out += ("slower: " + ", ".join(slower) + "; " if slower else "") + (
        "no measurable difference: " + ", ".join(same) + "." if same else "")
    for name, x in faster:
        out += f" Faster: {name} ({x:.2f}x)."
        if "thread" in name:
            out += (" That is this shared machine (more runnable jobs than cores, so two OpenMP threads wait on "
                    "each other), not a default to change: pocsdk leaves torch's process-wide thread count alone; "
                    "set `torch.set_num_threads` or `OMP_NUM_THREADS` for the deployment.")
    return [out]




def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_avg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--family", default="bert", choices=["bert", "xlm-roberta"])
    ap.add_argument("--size", default="base", choices=["base", "tiny"])
    ap.add_argument("--real-max-tokens", type=int, default=8000,
                    help="run the real model up to this length; above, model time = model tokens x the time "
                         "per token measured at the largest real length")
    ap.add_argument("--bf16-max-tokens", type=int, default=2000, help="the same cap for the bf16 variant")
    ap.add_argument("--repeats", type=int, default=3, help="real-model runs per implementation (best of)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-ablations", action="store_true", help="skip the forward-pass ablations")
    ap.add_argument("--json", type=Path, default=None, help="write raw numbers here")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="Markdown file whose section to replace")
    ap.add_argument("--no-write", action="store_true", help="print the section, write nothing")
    args = ap.parse_args(argv)
    variants = ["fp32", *[v for v in args.variants if v != "fp32"]]  # fp32 is the reference for agreement
    t_start = time.perf_counter()
    load_before = load_avg()

    import torch

    from pocsdk.compressors import get_compressor, render
    from pocsdk.compressors.llmlingua2 import LLMLingua2Compressor
    from pocsdk.testing.peers import install_offline_cl100k, make_random_token_classifier
    from pocsdk.text.protect import Protection

    if args.threads:
        torch.set_num_threads(args.threads)
    install_offline_cl100k()
    from llmlingua import PromptCompressor

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def cap(v: str) -> int:
        return min(args.real_max_tokens, args.bf16_max_tokens) if v == "bf16" else args.real_max_tokens

    model_dir = str(make_random_token_classifier(family=args.family, size=args.size))
    t0 = time.perf_counter()
    peer = PromptCompressor(model_name=model_dir, use_llmlingua2=True, device_map=args.device)
    loads = {"llmlingua": time.perf_counter() - t0}
    ours: dict[str, Any] = {}
    timers: dict[str, ForwardTimer] = {}
    base_kw = {"model": model_dir, "device": args.device, "force_tokens": tuple(FORCE),
               "tokenizer": "tiktoken:cl100k_base", "protect": Protection.none()}
    for v in variants:
        ours[v] = get_compressor("llmlingua2", **base_kw, **VARIANTS[v])
        t0 = time.perf_counter()
        model = ours[v]._load()[0]
        loads[v] = time.perf_counter() - t0
        timers[v] = ForwardTimer(model, sync)
        ours[v].score(texts_of_length(300, 1)[0])  # warm up
    compat = LLMLingua2Compressor(model=model_dir, device=args.device, llmlingua_compatible=True,
                            force_tokens=tuple(FORCE), protect=Protection.none(), min_tokens=0)
    compat_timer = ForwardTimer(compat._load_compatible()[0], sync)
    compat_timer.stub = "hash"
    peer_timer = ForwardTimer(peer.model, sync)
    peer.compress_prompt(["warm up the peer once."], rate=0.5, force_tokens=FORCE)
    peer_timer.reset()
    captured: list[tuple[Any, Any]] = []

    print(f"# model: random {args.family}/{args.size} ({Path(model_dir).name}), device {args.device}, torch threads "
          f"{torch.get_num_threads()}; load s: " + ", ".join(f"{k} {x:.1f}" for k, x in loads.items()), flush=True)
    rows: list[dict[str, Any]] = []
    per_token: dict[str, float] = {}
    ablation_len = 0
    for n in args.lengths:
        text = texts_of_length(n, 1)[0]
        m: dict[str, Any] = {"tokens": n, "cpu": {}, "agree": {}, "e2e": {}, "e2e_10": {}, "est": {}}
        fwd: dict[str, float] = {}
        # 1. the real model, one rate, interleaved, best of
        real = [v for v in variants if n <= cap(v)]
        if real:
            peer_timer.stub = None
            for v in real:
                timers[v].stub = None
            runs: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in ["peer", *real]}
            scored: dict[str, Any] = {}
            for _ in range(args.repeats):
                w, c, f, t, _ = timed(lambda: peer.compress_prompt([text], rate=RATE, force_tokens=FORCE),  # noqa: B023
                                      peer_timer)
                runs["peer"].append((w, c, f, t))
                for v in real:
                    real_fwd = timers[v]._real
                    if v == "fp32" and not captured and not args.no_ablations:  # keep its windows for step 5

                        def capture(*a: Any, _f: Any = real_fwd, **k: Any) -> Any:
                            captured.append((k["input_ids"].clone(), k["attention_mask"].clone()))
                            return _f(*a, **k)

                        timers[v]._real = capture
                        ablation_len = n
                    comp = ours[v]

                    def one(comp: Any = comp, text: str = text) -> Any:
                        s = comp.score(text)
                        render(s, comp.select(s, RATE))
                        return s

                    w, c, f, t, scored[v] = timed(one, timers[v])
                    timers[v]._real = real_fwd
                    runs[v].append((w, c, f, t))
                print(f"{n:>6} tokens, real model: " + ", ".join(
                    f"{k} {runs[k][-1][0]:.1f}s wall / {runs[k][-1][1]:.1f}s CPU" for k in runs)
                    + f"; load {load_avg()}", flush=True)
            for k, rs in runs.items():
                best = min(rs)
                m["cpu"][k] = min(r[1] for r in rs)
                fwd[k] = best[2]
                per_token[k] = best[2] / best[3]
                m[f"{k}_total"] = best[0]
            # same model, same arithmetic per token: one cost per token for llmlingua and fp32, the lower
            if "fp32" in per_token:
                per_token["peer"] = per_token["fp32"] = min(per_token["peer"], per_token["fp32"])
            for v in real:
                if v != "fp32" and "fp32" in scored:
                    m["agree"][v] = [agreement(ours["fp32"], scored["fp32"], scored[v], r) for r in AGREE_RATES]
        # 2. everything but the model (random logits), one rate and 10 rates; best of 3 (short runs)
        peer_timer.stub = "random"
        timers["fp32"].stub = "random"
        fp = ours["fp32"]
        other: dict[str, list[float]] = {"peer": [], "our": [], "sr": [], "10": []}
        for _ in range(3):
            w, _, f, t, _ = timed(lambda: peer.compress_prompt([text], rate=RATE, force_tokens=FORCE),  # noqa: B023
                                  peer_timer)
            other["peer"].append(w - f)
            m["peer_model_tokens"] = t
            t0 = time.perf_counter()
            timers["fp32"].reset()
            s = fp.score(text)
            t1 = time.perf_counter()
            res = render(s, fp.select(s, RATE))
            t2 = time.perf_counter()
            for r in RATES:
                fp.select(s, r)
            t3 = time.perf_counter()
            m["our_model_tokens"] = timers["fp32"].tokens
            other["our"].append(t2 - t0 - timers["fp32"].reset())
            other["sr"].append((t2 - t1) * 1000)
            other["10"].append((t3 - t2) * 1000)
        m["peer_other"], m["our_other"] = min(other["peer"]), min(other["our"])
        m["our_select_render_ms"], m["our_10_selects_ms"] = min(other["sr"]), min(other["10"])
        m["our_rate_err"] = res.keep_rate / RATE - 1
        t0 = time.perf_counter()
        peer_timer.reset()
        for r in RATES:
            peer.compress_prompt([text], rate=r, force_tokens=FORCE)
        m["peer_other_10"] = time.perf_counter() - t0 - peer_timer.reset()
        # 3. end to end: measured where run, else model tokens x measured time per token
        m["peer_est"] = "peer" not in fwd
        peer_fwd = fwd.get("peer", per_token.get("peer", float("nan")) * m["peer_model_tokens"])
        m["peer_e2e"] = m["peer_total"] if "peer_total" in m else peer_fwd + m["peer_other"]
        m["peer_e2e_10"] = len(RATES) * peer_fwd + m["peer_other_10"]
        for v in variants:
            m["est"][v] = v not in fwd
            if v in fwd:
                m["e2e"][v] = m[f"{v}_total"]
            elif v in per_token:
                m["e2e"][v] = per_token[v] * m["our_model_tokens"] + m["our_other"]  # other includes select+render
            else:
                continue
            m["e2e_10"][v] = m["e2e"][v] + m["our_10_selects_ms"] / 1000
        # 4. parity with llmlingua word for word, deterministic stub classifier
        peer_timer.stub = "hash"
        sc = compat.score(text)
        labels = []
        same_words = True
        n_words = 0
        for r in (0.33, 0.5):
            out = peer.compress_prompt([text], rate=r, force_tokens=FORCE, return_word_label=True,
                                       use_context_level_filter=False)
            pairs = [p.rsplit(" ", 1) for p in out["fn_labeled_original_prompt"].split("\t\t|\t\t")]
            words, lab = [p[0] for p in pairs], [int(p[1]) for p in pairs]
            ow, ol = compat.word_labels(sc, r)
            same_words &= ow == words
            n_words = len(words)
            common = min(len(lab), len(ol))
            same = sum(int(a == b) for a, b in zip(ol.tolist()[:common], lab[:common], strict=True))
            labels.append(same / max(len(lab), len(ol), 1))
        peer_timer.reset()
        compat_timer.reset()
        m["parity"] = {"words": n_words, "same_words": bool(same_words), "labels": labels}
        rows.append(m)
        print(f"{n:>6} tokens: e2e llmlingua {m['peer_e2e']:.1f}s, " + ", ".join(
            f"{v} {m['e2e'][v]:.1f}s ({m['peer_e2e'] / m['e2e'][v]:.2f}x)" for v in m["e2e"])
            + f"; agreement {m['agree']}; parity {m['parity']}", flush=True)

    ab = None
    share = float("nan")
    if captured and not args.no_ablations:
        print("ablations ...", flush=True)
        ab = ablations(model_dir, captured, args.repeats)
        share = linear_share(model_dir, captured)
        print(f"  linear layers: {share:.0%} of the fp32 forward's CPU time", flush=True)
        for row in ab:
            print(f"  {row[0]}: {row[1]:.2f}s wall, {row[2]:.2f}s CPU, {row[3]:,} tokens", flush=True)

    # verdict at the target length
    verdict = []
    target = next((m for m in rows if m["tokens"] == TARGET_LEN), None)
    if target is not None:
        best_v = max(target["e2e"], key=lambda v: target["peer_e2e"] / target["e2e"][v])
        best_x = target["peer_e2e"] / target["e2e"][best_v]
        cpu_x = {v: target["cpu"]["peer"] / target["cpu"][v] for v in target["cpu"] if v != "peer"}
        met = best_x >= TARGET
        probing = {v: target["peer_e2e_10"] / target["e2e_10"][v] for v in target["e2e_10"]}
        met = met or any(x >= TARGET for x in cpu_x.values())

        def ratio(v: str) -> str:
            wall = f"{target['peer_e2e'] / target['e2e'][v]:.2f}x wall clock" + (" (est.)" if target["est"][v] else "")
            return f"`{v}` {wall}" + (f", {cpu_x[v]:.2f}x CPU time" if v in cpu_x else "")

        verdict.append(
            f"**Target (>= {TARGET:.0f}x faster than llmlingua end to end on CPU at {TARGET_LEN:,} tokens, one rate): "
            f"{'met' if met else 'not met'}.** Best option: " + ratio(best_v) + "; "
            + "; ".join(ratio(v) for v in target["e2e"] if v != best_v)
            + f". Probing 10 rates it is {'met' if max(probing.values()) >= TARGET else 'not met'}: "
            + ", ".join(f"`{v}` {x:.1f}x" for v, x in probing.items()) + ".")
        if share == share:  # measured
            verdict.append("")
            verdict.append(
                f"Why one rate stays far from {TARGET:.0f}x on this CPU: the linear layers' matrix products are "
                f"{share:.0%} of the fp32 forward's CPU time (torch profiler, the {ablation_len:,}-token input); the "
                "rest (attention, GELU, layer norms, copies) stays float32 under int8 dynamic quantization, so even "
                f"infinitely fast int8 matrix products would make the forward at most {1 / (1 - share):.1f}x faster "
                "(Amdahl), and llmlingua runs the same arithmetic. Reaching "
                f"{TARGET:.0f}x at one rate needs less arithmetic (a smaller or distilled classifier) or a GPU. "
                "Fused kernels do not get there either: ONNX Runtime 1.32 (BERT graph fusions, then dynamic int8), "
                "tried once on pocsdk's windows of the 2,000-token input on an AVX512-VNNI CPU, made the forward "
                "2.7x cheaper than torch fp32 (torch int8 on that CPU: 2.4x; ORT fp32: 1.1-1.2x), so it was not "
                "added.")
    notes = [
        "Reading it:",
        "",
        "* On a CPU the model forward is about 99% of both implementations' time at one rate, and it is the same "
        "arithmetic; the default path (fp32) already runs SDPA attention under `torch.inference_mode`, pads each "
        "batch to its longest window (not to 512) and tokenizes each document once with the fast tokenizer, so its "
        "end-to-end edge at one rate is the few percent of padding llmlingua feeds the model plus the non-model "
        "work (about 2x faster, but under 1% of the total). The ablation table measures each of those choices.",
        *ablation_notes(ab),
        "* `quantize=\"int8\"` (torch dynamic quantization of the encoder's linear layers, per-channel int8 weights, "
        "CPU only) is the option that makes the forward itself cheaper. Its kept words differ from fp32's only at "
        "the margin of the threshold (agreement table). On this random-weight stand-in the probabilities cluster "
        "near each other, which makes the margin crowded; a trained checkpoint's sharper probabilities should agree "
        "at least as well, but that is not measured here (no real checkpoint offline).",
        ("* `dtype=\"bfloat16\"` uses this CPU's native bfloat16 (AVX512-BF16/AMX); on a CPU without it, it is "
         "several times slower than fp32 (0.15-0.23x measured on one), so name it only where the CPU has it. "
         if native_bf16() else
         "* `dtype=\"bfloat16\"` only pays on CPUs with native bfloat16 (AVX512-BF16, AMX); on a CPU without it "
         "(this one) it is several times slower than fp32. ")
        + f"It is measured up to {min(args.real_max_tokens, args.bf16_max_tokens):,} tokens and estimated above.",
        "* Parity tests run in fp32 (`tests/test_llmlingua_parity.py`); the parity table above extends them to full "
        "length with a stub classifier. The default mode's differences from llmlingua are deliberate and listed in "
        "`LLMLingua2Compressor`'s docstring.",
        "* Above the largest real length, (est.) cells are the tokens each implementation feeds the model times the "
        "per-token forward cost measured at the largest real length, plus the measured non-model work.",
    ]
    from pocsdk.testing.peers import ARCHITECTURES

    arch = ARCHITECTURES[(args.family, args.size)]
    intro = (
        "pocsdk `llmlingua2` against llmlingua 0.2.2's LLMLingua-2 (`PromptCompressor(..., use_llmlingua2=True)"
        ".compress_prompt`), same process, same model: a randomly initialised token classifier with "
        + (f"the real `{arch.model_name}` checkpoint's arithmetic" if args.size == "base" else
           f"a small stand-in for `{arch.model_name}`")
        + f" ({arch.num_hidden_layers} layers, hidden {arch.hidden_size}, vocabulary {arch.vocab_size:,}; "
        f"`pocsdk.testing.peers.make_random_token_classifier(family=\"{args.family}\", size=\"{args.size}\")`), "
        f"device {args.device}, {torch.get_num_threads()} torch threads, `force_tokens=[\"\\n\", \"?\"]`, rate "
        f"{RATE}; pocsdk counts budgets with `tiktoken:cl100k_base`. pocsdk variants: "
        + ", ".join(f"`{v}` ({', '.join(f'{k}={x!r}' for k, x in VARIANTS[v].items()) or 'the default'})"
                    for v in variants)
        + ". One input per length (LongBench multi_news paragraphs cut to the length in cl100k tokens). Real model "
        f"up to {args.real_max_tokens:,} tokens ({min(args.real_max_tokens, args.bf16_max_tokens):,} for bf16), "
        f"best of {args.repeats} interleaved runs; (est.) above, see the notes. Model loading: "
        + ", ".join(f"{k} {x:.1f} s" for k, x in loads.items()) + "."
    )
    import numpy
    import transformers

    meta = {
        "intro": intro, "verdict": verdict, "notes": notes, "ablations": ab, "ablation_len": ablation_len,
        "repeats": args.repeats,
        "command": "python benchmarks/token_level.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_s": time.perf_counter() - t_start,
        "machine": (f"{cpu_name()}, {os.cpu_count()} cores, Python "
                    f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
                    f"numpy {numpy.__version__}; load average {load_before} before the run, {load_avg()} after "
                    "(a machine shared with other jobs: wall clock includes waiting for a core; CPU time and the "
                    "ratios of interleaved runs are the steadier numbers)."),
    }
    text = section(rows, variants, meta)
    print()
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "meta": meta, "linear_share": share}, indent=1, default=str))
    if not args.no_write:
        write_section(args.out, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
