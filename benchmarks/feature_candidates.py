"""Candidate predictor features, tested before they earn a features-version change (issue 3).

Two steps. ``extract`` re-scores every labelled input with the label's compressor and writes
candidate features (relevance of what each selection drops, query-term coverage of what it keeps)
to a side file keyed by example id; the labels themselves are not touched::

    python benchmarks/feature_candidates.py extract --labels L/skim -o /tmp/cand/skim

``compare`` trains LightGBM (the shipped hyper-parameters, datasets balanced) with and without
the candidates, leave-one-dataset-out, and prints the pooled unseen MAE next to the
context-agnostic predictor's, plus a *bound*: the share of the oracle's factor reached when one
margin (or trade-off weight) is tuned on the test fold itself so that 90% of inputs meet floor 0.9.
No calibration can beat that bound, so it compares feature sets without calibration noise::

    python benchmarks/feature_candidates.py compare --labels L/skim --candidates /tmp/cand/skim

``--family semantic`` embeds the query and every unit with MiniLM (``EmbeddingRelevance``'s model, offline)
and writes semantic candidates instead: the share of the semantic relevance mass each selection keeps, the
best dropped unit's cosine, whether the semantic top units are kept, agreement of the kept set with MiniLM's
own top units, and per input the peak cosine, the entropy of the semantic relevance and its rank correlation
with the compressor's BM25. Several label folders share one embedding cache (the units are the same text);
``--per-dataset N`` (or ``N,kv75=M``) subsamples (the same inputs for every folder; LEval by whole documents)::

    python benchmarks/feature_candidates.py extract --family semantic --per-dataset 300 \
        --labels L/skim L/extractive -o C/sem      # writes C/sem/skim, C/sem/extractive

``compare`` takes several candidate folders (merged per input; only inputs present in all are used, so a
semantic subsample restricts the lexical sets to the same inputs) and ``--split random`` for an
in-distribution bound (4 random folds of 25%, pooled) next to the leave-one-dataset-out one.

``L`` comes from ``bash benchmarks/make_labels.sh L``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocsdk.calibration.datasets import load_dataset
from pocsdk.calibration.labels import LabelRecord
from pocsdk.compressors import get_compressor
from pocsdk.prediction.decision import choose, choose_tradeoff, outcome
from pocsdk.prediction.evaluate import arrays, load_records
from pocsdk.prediction.features import MONOTONE
from pocsdk.prediction.predictors import (
    LIGHTGBM_FEATURES,
    ContextAgnosticPredictor,
    record_context,
    record_factor_features,
)
from pocsdk.text.relevance import terms

SPECS = {"nq_mixed": "nq_mixed:n=1500", "squad_articles": "squad_articles:n=600", "leval": "leval",
         "multi_news": "multi_news", "kv75": "kv:keys=75,n=200"}
"""Label file stem -> dataset spec, as in make_labels.sh."""

RELEVANCE = ("x_best_dropped_rel", "x_last_kept_rel", "x_competitors_kept")
COVERAGE = ("x_qcov_kept", "x_best_kept_unit_qcov", "x_best_dropped_unit_qcov", "x_qcov_gap")
CANDIDATE_MONOTONE = {"x_best_dropped_rel": -1, "x_competitors_kept": 1, "x_qcov_kept": 1,
                      "x_best_kept_unit_qcov": 1, "x_best_dropped_unit_qcov": -1}
SEM_INPUT = ("x_sem_max", "x_sem_top2_gap", "x_sem_entropy", "x_sem_bm25_rho")
SEM_FACTOR = ("x_sem_mass_kept", "x_sem_pos_mass_kept", "x_sem_best_dropped", "x_sem_drop_gap", "x_sem_top1_kept",
              "x_sem_top3_kept", "x_sem_top10pct_kept", "x_sem_agree_kept", "x_sem_kept_mean_pct")
SEMANTIC = SEM_INPUT + SEM_FACTOR
SEM_RELATIVE = ("x_sem_mass_kept", "x_sem_best_dropped", "x_sem_top1_kept", "x_sem_top3_kept", "x_sem_top10pct_kept",
                "x_sem_agree_kept")
"""Semantic candidates that are shares or ratios within one input (no raw cosine level, which can identify datasets)."""
CANDIDATE_MONOTONE.update({"x_sem_mass_kept": 1, "x_sem_pos_mass_kept": 1, "x_sem_best_dropped": -1,
                           "x_sem_drop_gap": 1, "x_sem_top1_kept": 1, "x_sem_top3_kept": 1,
                           "x_sem_top10pct_kept": 1, "x_sem_agree_kept": 1})
SEM_TEMPERATURE = 0.05
"""Softmax temperature over cosines for the semantic relevance mass (MiniLM cosines spread over ~0.1-0.7)."""
FLOOR, CONFIDENCE = 0.9, 0.9


# -- extract -------------------------------------------------------------------------------
def unit_term_presence(scored: Any, query_terms: Sequence[str]) -> np.ndarray:
    """``(units, terms)`` bool: does the unit's lower-cased text contain the term."""
    u = scored.units
    spans = zip(u.doc, u.start, u.end, strict=True)
    texts = (scored.documents[int(d)].text[int(s):int(e)].lower() for d, s, e in spans)
    return np.array([[t in tx for t in query_terms] for tx in texts], dtype=bool).reshape(len(u), len(query_terms))


def candidates(compressor: Any, example: Any, factors: Sequence[float]) -> list[dict[str, float]]:
    """Candidate features of one input at each factor."""
    context = example.context if isinstance(example.context, str) else [d.model_dump() for d in example.context]
    scored = compressor.score(context, example.query)
    rel = scored.units.relevance.astype(np.float64)
    top = float(rel.max()) if rel.size else 0.0
    competitors = rel >= 0.5 * top if top > 0 else np.zeros(rel.size, dtype=bool)
    q = sorted(set(terms(example.query or "")))
    pres = unit_term_presence(scored, q)
    df = pres.sum(axis=0)
    idf = np.log1p(rel.size / np.maximum(df, 1))
    total_idf = float(idf[df > 0].sum())
    out = []
    for f in factors:
        sel = compressor.select(scored, 1.0 / max(float(f), 1.0))
        passthrough = sel.passthrough_reason is not None or scored.passthrough_reason is not None
        keep = np.ones(rel.size, dtype=bool) if passthrough else sel.keep
        drop = ~keep
        cov = (pres * idf).sum(axis=1) / total_idf if total_idf > 0 else np.zeros(rel.size)
        kept_cov = float((pres[keep].any(axis=0) * idf).sum() / total_idf) if total_idf > 0 else 0.0
        best_kept = float(cov[keep].max()) if keep.any() else 0.0
        best_drop = float(cov[drop].max()) if drop.any() else 0.0
        out.append({
            "x_best_dropped_rel": float(rel[drop].max() / top) if drop.any() and top > 0 else 0.0,
            "x_last_kept_rel": float(rel[keep].min() / top) if keep.any() and top > 0 else 0.0,
            "x_competitors_kept": float(keep[competitors].mean()) if competitors.any() else 1.0,
            "x_qcov_kept": kept_cov,
            "x_best_kept_unit_qcov": best_kept,
            "x_best_dropped_unit_qcov": best_drop,
            "x_qcov_gap": best_kept - best_drop,
        })
    return out


class Embedder:
    """MiniLM unit and query embeddings (the model ``EmbeddingRelevance`` loads), cached by text."""

    def __init__(self, threads: int = 1) -> None:
        import torch

        from pocsdk.text.relevance import EmbeddingRelevance, _load_sentence_model

        torch.set_num_threads(threads)
        rel = EmbeddingRelevance()
        self.model = _load_sentence_model(rel.model_path, rel.device)
        self.batch_size = rel.batch_size
        self.cache: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            t0 = time.perf_counter()
            emb = np.asarray(self.model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True))
            self.seconds += time.perf_counter() - t0
            self.cache.update(zip(todo, emb, strict=True))
        return np.array([self.cache[t] for t in texts]).reshape(len(texts), -1)


def unit_texts(scored: Any) -> list[str]:
    u = scored.units
    spans = zip(u.doc, u.start, u.end, strict=True)
    return [scored.documents[int(d)].text[int(s):int(e)] for d, s, e in spans]


def _ranks(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.size)
    out[np.argsort(x, kind="stable")] = np.arange(x.size)
    return out


def semantic_candidates(compressor: Any, example: Any, factors: Sequence[float], embed: Embedder,
                        ) -> list[dict[str, float]]:
    """Semantic candidate features of one input at each factor (MiniLM cosines of units to the query).

    "Kept" is what the reader sees: the units kept verbatim plus, for ``skim``, the best unit of each
    skimmed segment (its excerpt).
    """
    context = example.context if isinstance(example.context, str) else [d.model_dump() for d in example.context]
    scored = compressor.score(context, example.query)
    texts = unit_texts(scored)
    n = len(texts)
    emb = embed(texts)
    if example.query and example.query.strip():
        target = embed([example.query])[0]
    else:
        mean = emb.mean(axis=0) if n else np.zeros(emb.shape[1] if emb.ndim == 2 else 1)
        target = mean / (np.linalg.norm(mean) or 1.0)
    cos = emb @ target if n else np.zeros(0)
    bm25 = scored.units.relevance.astype(np.float64)
    top = float(cos.max()) if n else 0.0
    order = np.argsort(-cos, kind="stable")
    soft = np.exp((cos - top) / SEM_TEMPERATURE) if n else cos
    soft = soft / soft.sum() if n else soft
    pos = np.clip(cos, 0.0, None)
    pos_total = float(pos.sum())
    entropy = float(-(soft * np.log(np.maximum(soft, 1e-300))).sum() / math.log(n)) if n > 1 else 0.0
    rho = float(np.corrcoef(_ranks(cos), _ranks(bm25))[0, 1]) if n > 2 and bm25.std() > 0 and cos.std() > 0 else 0.0
    pct = 1.0 - _ranks(cos) / max(n - 1, 1)  # 1 = MiniLM's top unit, 0 = its last
    top3, top10 = order[:3], order[: max(1, math.ceil(0.1 * n))]
    per_input = {"x_sem_max": top, "x_sem_top2_gap": float(top - cos[order[1]]) if n > 1 else 0.0,
                 "x_sem_entropy": entropy, "x_sem_bm25_rho": rho}
    best_unit = scored.extras.get("best_unit") if scored.extras else None
    out = []
    for f in factors:
        sel = compressor.select(scored, 1.0 / max(float(f), 1.0))
        passthrough = sel.passthrough_reason is not None or scored.passthrough_reason is not None
        keep = np.ones(n, dtype=bool) if passthrough else sel.keep.copy()
        if not passthrough and sel.skim is not None and best_unit is not None:
            keep[np.asarray(best_unit)[sel.skim]] = True
        drop = ~keep
        k = int(keep.sum())
        best_drop = float(cos[drop].max()) if drop.any() else 0.0
        out.append({
            **per_input,
            "x_sem_mass_kept": float(soft[keep].sum()) if n else 1.0,
            "x_sem_pos_mass_kept": float(pos[keep].sum() / pos_total) if pos_total > 0 else 1.0,
            "x_sem_best_dropped": best_drop / top if drop.any() and top > 0 else 0.0,
            "x_sem_drop_gap": top - best_drop if drop.any() else 1.0,
            "x_sem_top1_kept": float(keep[order[0]]) if n else 1.0,
            "x_sem_top3_kept": float(keep[top3].mean()) if n else 1.0,
            "x_sem_top10pct_kept": float(keep[top10].mean()) if n else 1.0,
            "x_sem_agree_kept": float(keep[order[:k]].mean()) if k else 0.0,
            "x_sem_kept_mean_pct": float(pct[keep].mean()) if k else 0.0,
        })
    return out


def subsample(ids: Sequence[str], stem: str, per_dataset: int, seed: int = 0) -> set[str]:
    """Up to ``per_dataset`` ids, seeded by the dataset; LEval by whole documents (its inputs share contexts)."""
    if per_dataset <= 0 or len(ids) <= per_dataset:
        return set(ids)
    rng = random.Random(f"{seed}:{stem}")
    if stem != "leval":
        return set(rng.sample(sorted(ids), per_dataset))
    docs: dict[str, list[str]] = {}
    for i in sorted(ids):
        docs.setdefault(i.rsplit("-", 1)[0], []).append(i)
    keys = sorted(docs)
    rng.shuffle(keys)
    out: set[str] = set()
    for key in keys:
        if len(out) >= per_dataset:
            break
        out.update(docs[key])
    return out


def parse_caps(spec: str) -> dict[str, int]:
    """``"300"`` (every dataset) or ``"300,kv75=100"`` (a default and per-dataset caps); 0 = all."""
    caps = {stem: 0 for stem in SPECS}
    for part in filter(None, spec.split(",")):
        stem, _, n = part.rpartition("=")
        if stem:
            caps[stem] = int(n)
        else:
            caps = {s: (int(n) if s not in caps or caps[s] == 0 else caps[s]) for s in SPECS}
    return caps


def extract_semantic(labels: Sequence[Path], out: Path, per_dataset: dict[str, int], threads: int) -> None:
    embed = Embedder(threads)
    outs = [out] if len(labels) == 1 else [out / p.name for p in labels]
    for o in outs:
        o.mkdir(parents=True, exist_ok=True)
    for stem, spec in SPECS.items():
        recs = [{r.id: r for r in load_records([p / f"{stem}.jsonl"])} if (p / f"{stem}.jsonl").is_file() else {}
                for p in labels]
        if not all(recs):
            continue
        chosen = subsample(sorted(set.intersection(*(set(r) for r in recs))), stem, per_dataset.get(stem, 0))
        compressors = [get_compressor(next(iter(r.values())).compressor) for r in recs]
        handles = [(o / f"{stem}.jsonl").open("w", encoding="utf-8") for o in outs]
        t0, e0, done = time.perf_counter(), embed.seconds, 0
        for ex in load_dataset(spec):
            if ex.id not in chosen:
                continue
            for comp, rr, fh in zip(compressors, recs, handles, strict=True):
                per = semantic_candidates(comp, ex, rr[ex.id].factors, embed)
                fh.write(json.dumps({"id": ex.id, "per": per}) + "\n")
                fh.flush()
            done += 1
        for fh in handles:
            fh.close()
        embed.cache.clear()  # units recur within a dataset (LEval documents, both compressors), rarely across
        print(f"{stem}: {done} inputs, {time.perf_counter() - t0:.0f} s ({embed.seconds - e0:.0f} s embedding)",
              flush=True)


def extract(labels: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stem, spec in SPECS.items():
        recs = {r.id: r for r in load_records([labels / f"{stem}.jsonl"])}
        if not recs:
            continue
        compressor = get_compressor(next(iter(recs.values())).compressor)
        with (out / f"{stem}.jsonl").open("w", encoding="utf-8") as fh:
            for ex in load_dataset(spec):
                if ex.id in recs:
                    fh.write(json.dumps({"id": ex.id, "per": candidates(compressor, ex, recs[ex.id].factors)}) + "\n")
        print(f"{stem}: {len(recs)} inputs")


# -- compare -------------------------------------------------------------------------------
def design(recs: Sequence[LabelRecord], cand: dict[str, list[dict[str, float]]], names: Sequence[str]) -> np.ndarray:
    rows = []
    for r in recs:
        ctx = record_context(r)
        for ff, xx in zip(record_factor_features(r), cand[r.id], strict=True):
            row = {**ctx, **ff, **xx}
            rows.append([row.get(n, math.nan) for n in names])
    return np.array(rows, dtype=np.float64)


def fit_predict(x: np.ndarray, y: np.ndarray, groups: np.ndarray, tr: np.ndarray, te: np.ndarray, k: int,
                names: Sequence[str], seed: int = 0) -> np.ndarray:
    import lightgbm as lgb

    w = np.zeros(groups.size)
    for g in np.unique(groups[tr]):
        sel = tr[groups[tr] == g]
        w[sel] = 1.0 / sel.size
    rows_tr = (tr[:, None] * k + np.arange(k)).reshape(-1)
    rows_te = (te[:, None] * k + np.arange(k)).reshape(-1)
    params = {"objective": "cross_entropy", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 20,
              "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
              "monotone_constraints": [MONOTONE.get(n, CANDIDATE_MONOTONE.get(n, 0)) for n in names],
              "monotone_constraints_method": "advanced", "num_threads": 1, "seed": seed, "deterministic": True,
              "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x[rows_tr], label=y[rows_tr], weight=np.repeat(w[tr], k)), 300)
    pred = booster.predict(x[rows_te]).reshape(te.size, k)
    return np.asarray(np.minimum.accumulate(pred, axis=1))


def bound(pred: np.ndarray, actual: np.ndarray, achieved: np.ndarray, factors: Sequence[float]) -> tuple[float, float]:
    """Share of the oracle's factor at the loosest margin / weight that still meets the floor on 90% of inputs."""
    oracle = float(outcome(actual, achieved, choose(actual, factors, FLOOR))[1].mean())

    def first_ok(decisions: Any) -> float:
        for idx in decisions:
            perf, fac = outcome(actual, achieved, idx)
            if (perf >= FLOOR - 1e-9).mean() >= CONFIDENCE:
                return float(fac.mean()) / oracle
        return 1.0 / oracle

    margins = (choose(pred, factors, FLOOR, m) for m in np.linspace(-0.3, 0.6, 181))
    weights = (choose_tradeoff(pred, factors, w) for w in np.exp(np.linspace(-1, 6, 141)))
    return first_ok(margins), first_ok(weights)


def load_candidates(cand_dirs: Sequence[Path]) -> dict[str, list[dict[str, float]]]:
    """Candidates of the inputs present in every folder, merged factor by factor."""
    merged: dict[str, list[dict[str, float]]] | None = None
    for d in cand_dirs:
        cand: dict[str, list[dict[str, float]]] = {}
        for path in d.glob("*.jsonl"):
            for line in path.open(encoding="utf-8"):
                obj = json.loads(line)
                cand[obj["id"]] = obj["per"]
        if merged is None:
            merged = cand
        else:
            merged = {i: [{**a, **b} for a, b in zip(merged[i], cand[i], strict=True)] for i in merged if i in cand}
    return merged or {}


def splits(groups: np.ndarray, split: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(test, train) index pairs: one per held-out dataset, or four random folds (each a 25% test split)."""
    if split == "random":
        fold = np.random.default_rng(seed).permutation(groups.size) % 4
        return [(np.where(fold == i)[0], np.where(fold != i)[0]) for i in range(4)]
    return [(np.where(groups == g)[0], np.where(groups != g)[0]) for g in np.unique(groups)]


FEATURE_SETS = {
    "shipped": (),
    "shipped + relevance": RELEVANCE,
    "shipped + coverage": COVERAGE,
    "shipped + all lexical": RELEVANCE + COVERAGE,
    "shipped + semantic": SEMANTIC,
    "shipped + coverage + semantic": COVERAGE + SEMANTIC,
    "shipped + all lexical + semantic": RELEVANCE + COVERAGE + SEMANTIC,
    "shipped + semantic relative": SEM_RELATIVE,
    "shipped + coverage + semantic relative": COVERAGE + SEM_RELATIVE,
    "shipped + all lexical + semantic relative": RELEVANCE + COVERAGE + SEM_RELATIVE,
}


def compare(labels: Path, cand_dirs: Sequence[Path], split: str = "dataset", sets: Sequence[str] = (),
            seed: int = 0) -> None:
    recs = load_records(sorted(labels.glob("*.jsonl")))
    cand = load_candidates(cand_dirs)
    k = len(recs[0].factors)
    recs = [r for r in recs if r.id in cand and len(r.factors) == k]
    factors = recs[0].factors
    actual, achieved = arrays(recs)
    groups = np.array([r.dataset.split("/")[0] if not r.dataset.startswith("leval") else "leval" for r in recs])
    y = actual.reshape(-1)
    folds = splits(groups, split)
    test = np.concatenate([te for te, _ in folds])
    agnostic = np.zeros_like(actual)
    for te, tr in folds:
        model = ContextAgnosticPredictor().fit([recs[i] for i in tr])
        agnostic[te] = np.array(model.predict_records([recs[i] for i in te]))
    a, ach = actual[test], achieved[test]
    base_mae = float(np.abs(agnostic[test] - a).mean())
    counts = ", ".join(f"{g} {int((groups == g).sum())}" for g in sorted(set(groups)))
    where = "unseen (leave one dataset out)" if split == "dataset" else "in distribution (4 random folds, pooled)"
    print(f"{len(recs)} inputs ({counts}); {len(test)} test inputs, {where}")
    print("| features | MAE | / agnostic | bound, margin | bound, trade-off |")
    print("|---|---:|---:|---:|---:|")
    print(f"| context-agnostic | {base_mae:.3f} | 1.00x | %.2f | %.2f |" % bound(agnostic[test], a, ach, factors))
    shipped = list(LIGHTGBM_FEATURES)
    names_g = sorted(set(groups))
    by_group = [("context-agnostic", [float(np.abs(agnostic - actual)[groups == g].mean()) for g in names_g])]
    for label in sets or FEATURE_SETS:
        names = shipped + list(FEATURE_SETS[label])
        if any(n.startswith("x_") and n not in cand[recs[0].id][0] for n in names):
            continue  # a candidate family that was not extracted
        x = design(recs, cand, names)
        pred = np.zeros_like(actual)
        for te, tr in folds:
            pred[te] = fit_predict(x, y, groups, tr, te, k, names, seed)
        mae = float(np.abs(pred[test] - a).mean())
        b = bound(pred[test], a, ach, factors)
        print(f"| {label} | {mae:.3f} | {mae / base_mae:.2f}x | {b[0]:.2f} | {b[1]:.2f} |", flush=True)
        by_group.append((label, [float(np.abs(pred - actual)[groups == g].mean()) for g in names_g]))
    print("\nMAE by dataset (held out when the split is by dataset):\n")
    print("| features | " + " | ".join(names_g) + " |")
    print("|---|" + "---:|" * len(names_g))
    for label, maes in by_group:
        print(f"| {label} | " + " | ".join(f"{m:.3f}" for m in maes) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--labels", type=Path, nargs="+", required=True,
                   help="folder of one compressor's label files (semantic: several, one embedding pass)")
    e.add_argument("-o", "--out", type=Path, required=True,
                   help="side-file folder (several labels: one subfolder each)")
    e.add_argument("--family", choices=("lexical", "semantic"), default="lexical")
    e.add_argument("--per-dataset", type=parse_caps, default="0",
                   help="semantic: at most this many inputs per dataset, e.g. 300 or 300,kv75=100 (0: all)")
    e.add_argument("--threads", type=int, default=1, help="semantic: torch threads")
    c = sub.add_parser("compare")
    c.add_argument("--labels", type=Path, required=True)
    c.add_argument("--candidates", type=Path, nargs="+", required=True, help="candidate folders, merged per input")
    c.add_argument("--split", choices=("dataset", "random"), default="dataset")
    c.add_argument("--seed", type=int, default=0, help="LightGBM seed (bagging), to gauge the bound's noise")
    c.add_argument("--sets", nargs="*", default=(), choices=sorted(FEATURE_SETS), help="feature sets (default: all)")
    args = ap.parse_args()
    if args.cmd == "extract" and args.family == "semantic":
        extract_semantic(args.labels, args.out, args.per_dataset, args.threads)
    elif args.cmd == "extract":
        for labels in args.labels:
            extract(labels, args.out if len(args.labels) == 1 else args.out / labels.name)
    else:
        compare(args.labels, args.candidates, args.split, args.sets, args.seed)


if __name__ == "__main__":
    main()
