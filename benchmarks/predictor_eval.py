"""Predictor benchmark: synthetic labels for development, and the full evaluation on real labels.

Synthetic labels (no LLM): NQ-open questions with their gold passage among ``k`` distractor
passages; the judge says whether a gold answer string survives compression (1) or not (0).
Three pseudo-datasets differ in the number of distractors, so leave-one-dataset-out has
something to hold out::

    python benchmarks/predictor_eval.py synth --compressor extractive -n 300 -o /tmp/synth/extractive

Full evaluation (random split and nested leave-one-dataset-out with the cross-dataset calibration,
all predictors, floors), on real labels::

    python benchmarks/predictor_eval.py eval --labels /work/labels_v2/extractive/*.jsonl -o report/extractive

which is the same as ``pocsdk evaluate --labels ... --lodo-kinds agnostic,lightgbm -o ...``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

from pocsdk.calibration.datasets import data_root
from pocsdk.calibration.labels import DEFAULT_FACTORS, LabelRecord
from pocsdk.compressors import get_compressor
from pocsdk.prediction.features import featurize

NQ_FILE = Path("lost_in_the_middle") / "nq-open-oracle.jsonl.gz"


def nq_file() -> Path:
    """The NQ-open file under the data root (``$POCSDK_DATA`` or ``../shared/data``)."""
    return data_root() / NQ_FILE
SYNTH_DATASETS = {"nq_1doc": 0, "nq_5docs": 4, "nq_20docs": 19}


def synthetic_labels(compressor_name: str, n: int, seed: int = 0, nq_path: Path | None = None) -> list[LabelRecord]:
    """``n`` synthetic label records per pseudo-dataset (gold answer survives = 1, else 0)."""
    rng = random.Random(seed)
    with gzip.open(nq_path or nq_file(), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(4 * n + 200), fh, strict=False)]
    passages = [f"{r['ctxs'][0]['title']}\n{r['ctxs'][0]['text']}" for r in rows]
    comp = get_compressor(compressor_name)
    out: list[LabelRecord] = []
    for ds_i, (dataset, k) in enumerate(SYNTH_DATASETS.items()):
        for j in range(n):
            i = (ds_i * n + j) % len(rows)
            r = rows[i]
            others = rng.sample([p for t, p in enumerate(passages) if t != i], k)
            docs = [passages[i], *others]
            rng.shuffle(docs)
            scored = comp.score([{"id": str(t), "text": d} for t, d in enumerate(docs)], r["question"])
            ctx, ff = featurize(comp, scored, DEFAULT_FACTORS, task="qa" if k == 0 else "multi_doc_qa")
            perf: list[float] = []
            achieved: list[float] = []
            from pocsdk.compressors import render

            for f in DEFAULT_FACTORS:
                res = render(scored, comp.select(scored, 1.0 / f))
                text = res.text.lower()
                perf.append(1.0 if any(a.lower() in text for a in r["answers"]) else 0.0)
                achieved.append(min(res.compression_factor, 1e6))
            full = 1.0 if any(a.lower() in "\n".join(docs).lower() for a in r["answers"]) else 0.0
            if full == 0.0:
                continue
            out.append(LabelRecord(
                id=f"{dataset}-{j}", dataset=dataset, task="qa" if k == 0 else "multi_doc_qa",
                compressor=compressor_name, judge="answer_in_context", factors=list(DEFAULT_FACTORS),
                achieved_factors=achieved, performance=perf, full_score=full,
                original_tokens=scored.total_tokens, context_features=ctx, factor_features=ff,
            ))
    return out


def _cmd_synth(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    records = synthetic_labels(args.compressor, args.n, args.seed)
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    by_ds: dict[str, list[LabelRecord]] = {}
    for r in records:
        by_ds.setdefault(r.dataset, []).append(r)
    for ds, recs in by_ds.items():
        with (outdir / f"{ds}.jsonl").open("w", encoding="utf-8") as fh:
            for r in recs:
                fh.write(r.model_dump_json() + "\n")
    print(f"{len(records)} records in {time.perf_counter() - t0:.1f}s -> {outdir}")
    return 0


def _cmd_refeaturize(args: argparse.Namespace) -> int:
    """Recompute features of existing labels (after a features change) without re-judging."""
    from pocsdk.calibration.datasets import load_dataset
    from pocsdk.calibration.labels import read_labels

    records = read_labels(args.labels)
    by_id = {ex.id: ex for ex in load_dataset(args.dataset)}
    comp = get_compressor(records[0].compressor)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = 0
    with out.open("w", encoding="utf-8") as fh:
        for r in records:
            ex = by_id.get(r.id)
            if ex is None:
                missing += 1
                continue
            scored = comp.score(ex.context, ex.query)
            r.context_features, r.factor_features = featurize(comp, scored, r.factors, task=r.task)
            fh.write(r.model_dump_json() + "\n")
    print(f"{len(records) - missing} records re-featurized, {missing} not found -> {out}")
    return 0


def _cmd_timing(args: argparse.Namespace) -> int:
    """Cost of the floor search per input (features + predictions over the grid + decision)."""
    import numpy as np

    from pocsdk.prediction.floor import FloorPolicy

    with gzip.open(nq_file(), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(args.n + args.docs), fh, strict=False)]
    passages = [f"{r['ctxs'][0]['title']}\n{r['ctxs'][0]['text']}" for r in rows]
    result: dict[str, dict[str, float]] = {}
    for name in args.compressors:
        comp = get_compressor(name)
        policy = FloorPolicy.for_compressor(name, predictor=args.predictor)
        wall: list[float] = []
        cpu: list[float] = []
        fixed: list[float] = []
        tokens: list[int] = []
        for i in range(args.n):
            docs = [{"id": str(k), "text": passages[(i + k) % len(passages)]} for k in range(args.docs)]
            scored = comp.score(docs, rows[i]["question"])
            tokens.append(scored.total_tokens)
            t0, c0 = time.perf_counter(), time.process_time()
            policy.compress(comp, scored, 0.9, 0.9 if policy.calibration else None)
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            from pocsdk.compressors import render

            c0 = time.process_time()
            render(scored, comp.select(scored, 0.25))
            fixed.append((time.process_time() - c0) * 1000)
        result[name] = {"inputs": args.n, "mean_tokens": float(np.mean(tokens)),
                        "floor_ms_median": float(np.median(wall)), "floor_ms_p95": float(np.percentile(wall, 95)),
                        "floor_cpu_ms_median": float(np.median(cpu)),
                        "fixed_rate_cpu_ms_median": float(np.median(fixed)),
                        "added_cpu_ms_median": float(np.median(cpu) - np.median(fixed))}
    print(json.dumps(result, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pocsdk.prediction.evaluate import evaluate_files

    report = evaluate_files([Path(p) for p in args.labels], Path(args.output),
                            floors=[float(x) for x in args.floors.split(",")], confidence=args.confidence,
                            few_shot=args.few_shot, seed=args.seed,
                            lodo_kinds=[k for k in args.lodo_kinds.split(",") if k] if args.lodo_kinds else None)
    print(report.markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write synthetic labels (one JSONL per pseudo-dataset)")
    s.add_argument("--compressor", default="extractive")
    s.add_argument("-n", type=int, default=300, help="examples per pseudo-dataset")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", required=True)
    e = sub.add_parser("eval", help="evaluate all predictors on labels (random + leave-one-dataset-out)")
    e.add_argument("--labels", nargs="+", required=True)
    e.add_argument("--floors", default="0.8,0.9,0.95")
    e.add_argument("--confidence", type=float, default=0.9)
    e.add_argument("--few-shot", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--lodo-kinds", default="agnostic,lightgbm", help="kinds for leave-one-dataset-out")
    e.add_argument("-o", "--output", required=True)
    r = sub.add_parser("refeaturize", help="recompute the features of a labels file from its dataset spec")
    r.add_argument("--labels", required=True)
    r.add_argument("--dataset", required=True, help="dataset spec the labels came from, e.g. nq_mixed:n=1500")
    r.add_argument("-o", "--output", required=True)
    t = sub.add_parser("timing", help="cost of the floor search per input with a trained predictor")
    t.add_argument("--compressors", nargs="+", default=["extractive", "skim"])
    t.add_argument("--predictor", default=None, help="predictor directory or shipped name (default: shipped)")
    t.add_argument("-n", type=int, default=200)
    t.add_argument("--docs", type=int, default=20)
    args = ap.parse_args(argv)
    commands = {"synth": _cmd_synth, "eval": _cmd_eval, "refeaturize": _cmd_refeaturize, "timing": _cmd_timing}
    return int(commands[args.cmd](args))


if __name__ == "__main__":
    sys.exit(main())
