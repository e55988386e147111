"""The evaluation report: its rows, its Markdown tables and its PNG plots (see :mod:`pocsdk.prediction.evaluate`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from pocsdk.calibration.labels import LabelRecord
from pocsdk.prediction.predictors import ContextAgnosticPredictor, Predictor
from pocsdk.prediction.splits import arrays

METHODS = ("fixed", "agnostic", "lightgbm", "mlp", "agnostic+cal", "lightgbm+cal", "agnostic+tradeoff",
           "lightgbm+tradeoff", "agnostic+xcal", "agnostic+xcal-tradeoff", "lightgbm+xcal", "lightgbm+xcal-tradeoff",
           "agnostic+xcal-pooled", "agnostic+xcal-pooled-tradeoff", "lightgbm+xcal-pooled",
           "lightgbm+xcal-pooled-tradeoff",
           "lightgbm+fewshot", "lightgbm+fewshot-tradeoff", "oracle")


class EvalRow(BaseModel):
    split: str
    fold: str
    method: str
    floor: float
    confidence: float
    n: int
    mae: float | None = None
    meet: float
    factor: float
    of_oracle: float
    kept: float | None = None
    of_oracle_saving: float | None = None
    passthrough: float = 0.0
    margin: float | None = None


class EvalReport(BaseModel):
    compressor: str
    examples: int
    datasets: dict[str, int]
    factors: list[float]
    floors: list[float]
    confidence: float
    few_shot: int
    rows: list[EvalRow] = Field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    """Random split: share meeting the floor and mean factor per method over :data:`CURVE_FLOORS`."""
    command: str = ""
    markdown: str = ""

    def row(self, split: str, method: str, floor: float, fold: str = "all") -> EvalRow | None:
        for r in self.rows:
            if r.split == split and r.method == method and r.fold == fold and abs(r.floor - floor) < 1e-9:
                return r
        return None


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(rows: Sequence[EvalRow]) -> str:
    lines = ["| method | n | MAE | meet floor | mean factor | of oracle | kept | of oracle saving | pass-through | "
             "margin |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: order.get(r.method, 99)):
        lines.append(f"| {r.method} | {r.n} | {_fmt(r.mae)} | {r.meet:.3f} | {r.factor:.2f} | {r.of_oracle:.2f} | "
                     f"{_fmt(r.kept)} | {_fmt(r.of_oracle_saving, 2)} | {r.passthrough:.2f} | {_fmt(r.margin)} |")
    return "\n".join(lines)


def per_dataset_floor(floors: Sequence[float]) -> float:
    """The floor of the per-dataset table: 0.9 when evaluated, else the middle one."""
    return next((f for f in floors if abs(f - 0.9) < 1e-9), sorted(floors)[len(floors) // 2])


OF_ORACLE_NOTE = ("*of oracle* is the mean factor over the oracle's mean factor, so a pass-through (factor 1) "
                  "still scores 1 / the oracle's factor; *of oracle saving* weighs the tokens saved instead.")


def to_markdown(report: EvalReport) -> str:
    out = [f"### Compressor `{report.compressor}`", "",
           f"{report.examples} labelled inputs; datasets: "
           + ", ".join(f"{k} ({v})" for k, v in sorted(report.datasets.items()))
           + f"; grid {', '.join(f'{f:g}' for f in report.factors)}; confidence {report.confidence:g}.", "",
           OF_ORACLE_NOTE, ""]
    for split, title in (("random", "Random split (test 25% of inputs, whole documents)"),
                         ("lodo", "Unseen datasets (leave-one-dataset-out, pooled over folds)"),
                         ("fewshot", f"Few-shot calibration on {report.few_shot} examples of the unseen dataset "
                                     "(remaining examples, pooled over folds)")):
        for floor in report.floors:
            rows = [r for r in report.rows if r.split == split and r.fold == "all" and r.floor == floor]
            if rows:
                out += [f"**{title}, floor {floor:g}**", "", table(rows), ""]
    shown = per_dataset_floor(report.floors)
    per_ds = [r for r in report.rows if r.split == "lodo" and r.fold != "all" and r.method in
              ("lightgbm+cal", "lightgbm+tradeoff", "oracle", "agnostic", "lightgbm", "agnostic+xcal",
               "lightgbm+xcal", "lightgbm+xcal-tradeoff") and abs(r.floor - shown) < 1e-9]
    if per_ds:
        out += [f"**Per held-out dataset, floor {shown:g}**", "",
                "| held-out | method | n | MAE | meet | factor | of oracle | kept | of oracle saving |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(per_ds, key=lambda r: (r.fold, r.method)):
            out.append(f"| {r.fold} | {r.method} | {r.n} | {_fmt(r.mae)} | {r.meet:.3f} | {r.factor:.2f} | "
                       f"{r.of_oracle:.2f} | {_fmt(r.kept)} | {_fmt(r.of_oracle_saving, 2)} |")
        out.append("")
    return "\n".join(out)


def plot_report(report: EvalReport, recs: Sequence[LabelRecord], test: Sequence[LabelRecord],
                test_pred: dict[str, np.ndarray], preds: dict[str, Predictor], outdir: Path,
                source: Callable[[LabelRecord], str] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    actual, _ = arrays(test)
    factors = np.asarray(report.factors)

    # 1. predicted vs actual (binned means + scatter)
    fig, axes = plt.subplots(1, max(len(test_pred), 1), figsize=(4.2 * max(len(test_pred), 1), 4), squeeze=False)
    for ax, (k, pm) in zip(axes[0], test_pred.items(), strict=False):
        x, y = pm.ravel(), actual.ravel()
        ax.scatter(x, y + np.random.default_rng(0).uniform(-0.02, 0.02, y.size), s=3, alpha=0.15)
        bins = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(x, bins) - 1, 0, 9)
        bx = [x[which == b].mean() for b in range(10) if (which == b).any()]
        by = [y[which == b].mean() for b in range(10) if (which == b).any()]
        ax.plot(bx, by, "o-", color="C3", label="binned mean")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(title=f"{k} (MAE {np.abs(x - y).mean():.3f})", xlabel="predicted", ylabel="actual", xlim=(0, 1.02))
        ax.legend(loc="lower right")
    fig.suptitle(f"{report.compressor}: predicted vs actual relative performance (random-split test)")
    fig.tight_layout()
    paths.append(outdir / "pred_vs_actual.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 2. performance vs factor per dataset, with the agnostic curve
    fig, ax = plt.subplots(figsize=(6, 4))
    for ds in sorted(report.datasets):
        a, _ = arrays([r for r in recs if (source(r) if source else r.dataset) == ds])
        ax.plot(factors, a.mean(axis=0), "o-", label=f"{ds} (actual)")
    ag = preds.get("agnostic")
    if isinstance(ag, ContextAgnosticPredictor):
        kx, ky = ag.curves_["*"]
        ax.plot(factors, np.interp(np.log(factors), kx, ky), "k--", label="agnostic (pooled)")
    ax.set(xscale="log", xlabel="compression factor", ylabel="mean relative performance", ylim=(0, 1.05),
           title=f"{report.compressor}: performance vs factor")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(outdir / "perf_vs_factor.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 3. share meeting the floor (and mean factor) vs floor
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for method, c in report.curves.items():
        a1.plot(c["floor"], c["meet"], label=method)
        a2.plot(c["floor"], c["factor"], label=method)
    a1.axhline(report.confidence, color="k", ls=":", lw=0.8)
    a1.set(xlabel="floor", ylabel="share meeting the floor", title="share meeting the floor (random split)")
    a2.set(xlabel="floor", ylabel="mean achieved factor", yscale="log", title="mean compression factor")
    a1.legend(fontsize=7)
    fig.tight_layout()
    paths.append(outdir / "meet_vs_floor.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
