"""Batched scoring: ``llmlingua2.score_batch`` (one forward pass for many inputs) against ``score`` per input.

The service batches concurrent requests through ``score_batch``, and ``Compressor.compress_many``
scores its inputs in groups of 16 through it. This measures what that buys: ``--count`` inputs of
each length (cl100k tokens, LongBench multi_news paragraphs when ../shared/data is there) scored one
by one and then in one call, interleaved, best of ``--repeats``; wall clock and process CPU time. The
model is a randomly initialised token classifier with ``bert-base-multilingual-cased``'s arithmetic
(``pocsdk.testing.peers``), so timings are representative and outputs are not. It also checks that
the batched scores select the same words as the per-input ones (rate 0.33).

    python benchmarks/score_batch.py                      # CPU; writes its section of benchmarks/RESULTS.md
    python benchmarks/score_batch.py --device cuda --out /tmp/R.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_level import load_avg, texts_of_length

from pocsdk.testing.results import write_section

HERE = Path(__file__).resolve().parent
SECTION = "## Batched scoring (llmlingua2)"


def timed(fn: Any) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[200, 1000, 4000])
    ap.add_argument("--count", type=int, default=16, help="inputs per batch (compress_many's group size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from pocsdk.compressors import get_compressor
    from pocsdk.testing.peers import make_random_token_classifier

    torch.set_num_threads(args.threads)
    model = str(make_random_token_classifier(family="bert", size="base"))
    comp: Any = get_compressor("llmlingua2", model=model, device=args.device, tokenizer="tiktoken:cl100k_base")
    comp.score("warm up the model " * 50)
    started = time.perf_counter()
    load_before = load_avg()
    rows = []
    for n in args.lengths:
        texts = texts_of_length(n, args.count)
        items = [(t, None) for t in texts]
        best: dict[str, tuple[float, float]] = {}
        one_by_one: list[Any] = []
        batched: list[Any] = []
        for _ in range(args.repeats):
            for name in ("score", "score_batch"):
                if name == "score":
                    wall, cpu, one_by_one = timed(lambda ts=texts: [comp.score(t) for t in ts])
                else:
                    wall, cpu, batched = timed(lambda its=items: comp.score_batch(its))
                prev = best.get(name)
                best[name] = (min(wall, prev[0]), min(cpu, prev[1])) if prev else (wall, cpu)
        same = sum(bool(np.array_equal(comp.select(a, 0.33).keep, comp.select(b, 0.33).keep))
                   for a, b in zip(one_by_one, batched, strict=True))
        tokens = sum(s.extras["model_tokens"] for s in batched)
        rows.append((n, tokens, best["score"], best["score_batch"], same))
        print(n, tokens, best, same, flush=True)

    lines = [SECTION, "",
             f"`llmlingua2` scoring {args.count} inputs one by one (`score`) and in one call (`score_batch`, what the "
             "service and `compress_many` use), same model: a randomly initialised token classifier with "
             "`bert-base-multilingual-cased`'s arithmetic (12 layers, hidden 768), device "
             f"{args.device}, {args.threads} torch threads, fp32, best of {args.repeats} interleaved runs; inputs "
             "are LongBench multi_news paragraphs cut to the length in cl100k tokens. Seconds for all the inputs; "
             "speedup = one by one / batched.", "",
             "| input (cl100k tokens) | model tokens, all inputs | one by one: wall / CPU s | batched: wall / CPU s "
             "| speedup wall | speedup CPU | same words kept at 0.33 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, tokens, (w1, c1), (w2, c2), same in rows:
        lines.append(f"| {n:,} | {tokens:,} | {w1:.2f} / {c1:.2f} | {w2:.2f} / {c2:.2f} | **{w1 / w2:.2f}x** "
                     f"| {c1 / c2:.2f}x | {same} of {args.count} |")
    lines += ["", "Command: `python benchmarks/" + Path(__file__).name + " " + " ".join(argv or sys.argv[1:]) + "`  ",
              f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; total run "
              f"{time.perf_counter() - started:.0f} s.  ",
              f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
              f"{torch.__version__}; load average {load_before} before the run, {load_avg()} after."]
    write_section(args.out, SECTION, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
