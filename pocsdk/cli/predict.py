"""``pocsdk train-predictor``, ``pocsdk fit-calibration`` and ``pocsdk evaluate``.

Labels files can be given after one ``--labels`` (``--labels a.jsonl b.jsonl``) or with
repeated ``--labels`` options; shell globs work either way.
"""

from __future__ import annotations

import json
import random
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from pocsdk.cli.app import app
from pocsdk.errors import ConfigError, PocError


def _labels(first: list[Path], extra: Optional[list[Path]]) -> list[Path]:
    return [*first, *(extra or [])]


def _fail(exc: Exception) -> None:
    """Bad options or inputs (unreadable labels, a wrong predictor, a floor of 1.5) exit 2; other I/O 1."""
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {exc}")
    usage = not isinstance(exc, OSError) or isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError))
    raise typer.Exit(2 if usage else 1) from None


def _few_examples_note(n: int) -> str | None:
    """Split conformal needs (n + 1) * (1 - confidence) >= 1: say which confidences n examples cannot back."""
    if n >= 19:
        return None
    lowest = 1.0 / (n + 1)
    return (f"{n} examples cannot back a confidence above {1 - lowest:.2f} (about {1 - lowest:.0%}): at higher "
            "confidences the calibration promises nothing and every input passes through; 9 examples are needed "
            "for 0.9, 19 for 0.95 (30-100 recommended)")


@app.command("train-predictor")
def train_predictor(
    labels: list[Path] = typer.Option(..., "--labels", "-l", help="Labels JSONL files (one compressor)."),
    more: Optional[list[Path]] = typer.Argument(None, help="More labels files.", show_default=False),
    kind: str = typer.Option("lightgbm", "--kind", "-k", help="lightgbm, mlp or agnostic."),
    output: Path = typer.Option(..., "--output", "-o", help="Predictor directory to write (e.g. predictors/skim/)."),
    calibration: str = typer.Option(
        "cross_dataset", "--calibration",
        help="cross_dataset: refit without each labels file (dataset) and calibrate on its out-of-dataset "
             "predictions; the predictor itself is fitted on all labels (needs >= 3 files, else falls back to "
             "holdout). holdout: hold out --calibration-share of the labels."),
    per_dataset: bool = typer.Option(True, "--per-dataset/--pooled",
                                     help="cross_dataset: the promise must hold on each dataset separately."),
    calibration_share: float = typer.Option(0.25, "--calibration-share", min=0.0, max=0.9,
                                            help="holdout: share of examples held out to fit calibration.json "
                                                 "(0: no calibration)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a predictor and fit its calibration (cross-dataset by default); save both with a card."""
    import numpy as np

    from pocsdk.prediction.conformal import Calibration, cross_dataset_calibration, fit_calibration
    from pocsdk.prediction.evaluate import load_records_with_sources, split_fit_cal
    from pocsdk.prediction.floor import CALIBRATION_FILE
    from pocsdk.prediction.predictors import Predictor, make_predictor

    try:
        if calibration not in ("cross_dataset", "holdout"):
            raise ValueError(f"--calibration must be cross_dataset or holdout, not {calibration!r}")
        records, sources = load_records_with_sources(_labels(labels, more))
        params = {"seed": seed} if kind in ("lightgbm", "mlp") else {}
        method = calibration
        if method == "cross_dataset" and len(set(sources)) < 3:
            from rich.console import Console

            Console(stderr=True).print(
                f"[yellow]warning:[/yellow] cross-dataset calibration needs >= 3 labels files (datasets), got "
                f"{len(set(sources))}; falling back to --calibration holdout (the promise then only holds "
                "in-distribution)")
            method = "holdout"
        calib: Calibration | None = None
        cal: list = []
        origin = {id(r): s for r, s in zip(records, sources, strict=True)}

        def make(recs: list) -> Predictor:  # balances labels files, as the calibration's datasets
            return make_predictor(kind, **params).fit(recs, groups=[origin[id(r)] for r in recs])

        if method == "cross_dataset":
            predictor = make(records)
            (output / CALIBRATION_FILE).unlink(missing_ok=True)  # the old model's: a new one is written below
            predictor.save(output)  # sets the checksum the calibration vouches for
            calib = cross_dataset_calibration(records, make, sources=sources, predictor=predictor,
                                              per_dataset=per_dataset)
            pred_t, act_t = calib.groups["*"].arrays()
            predictor.metrics_ = {"out_of_dataset_mae": float(np.abs(pred_t - act_t).mean()),
                                  "out_of_dataset_examples": float(len(pred_t))}
            fit_n = len(records)
        else:
            if calibration_share > 0:
                fit, cal = split_fit_cal(records, random.Random(seed), calibration_share)
            else:
                fit, cal = records, []
            predictor = make(fit)
            if cal:
                preds = predictor.predict_records(cal)
                actual = [np.asarray(r.performance) for r in cal]
                predictor.metrics_ = {
                    "heldout_mae": float(np.mean([np.abs(p - a).mean() for p, a in zip(preds, actual, strict=False)])),
                    "heldout_examples": float(len(cal)),
                }
            fit_n = len(fit)
            (output / CALIBRATION_FILE).unlink(missing_ok=True)  # the old model's: a new one is written below
        predictor.save(output)
        summary: dict[str, object] = {"predictor": str(output), "kind": kind, "compressor": predictor.compressor_,
                                      "examples": fit_n, "metrics": predictor.metrics_, "calibration_method": method}
        if method == "holdout" and cal:
            calib = fit_calibration(predictor, cal, notes=f"held out {len(cal)} of {len(records)} examples")
        if calib is None:  # an older calibration.json vouches for another model: it must not stay beside this one
            (output / CALIBRATION_FILE).unlink(missing_ok=True)
        else:
            calib.save(output / CALIBRATION_FILE)
            summary["calibration"] = str(output / CALIBRATION_FILE)
            summary["margins_conf_0.9"] = calib.margins_table([0.8, 0.9, 0.95], 0.9)
            weights = {f"{f:g}": calib.weight(f, 0.9) for f in (0.8, 0.9, 0.95)}
            summary["weights_conf_0.9"] = {k: (w if np.isfinite(w) else None) for k, w in weights.items()}
    except ValueError as exc:
        _fail(exc)
        return
    except (PocError, OSError) as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(summary, indent=2))


@app.command("fit-calibration")
def fit_calibration_cmd(
    labels: list[Path] = typer.Option(..., "--labels", "-l", help="Labelled examples of your task (30-100)."),
    more: Optional[list[Path]] = typer.Argument(None, help="More labels files.", show_default=False),
    predictor: str = typer.Option(..., "--predictor", "-p",
                                  help="Predictor directory, or a shipped name (default, agnostic, mlp)."),
    output: Path = typer.Option(..., "--output", "-o", help="Calibration JSON to write."),
    min_group: int = typer.Option(50, "--min-group", min=1, help="Examples a task needs for its own margins."),
) -> None:
    """Few-shot calibration on your task: margins for ``Compressor(floor=..., confidence=..., calibration=...)``.

    Usually compresses more than the shipped cross-dataset calibration, which must cover the hardest
    of its calibration datasets; this one only has to cover your task.
    """
    from pocsdk.prediction.conformal import fit_calibration
    from pocsdk.prediction.evaluate import common_grid, load_records
    from pocsdk.prediction.floor import PREDICTOR_NAMES, default_predictor_dir
    from pocsdk.prediction.predictors import load_predictor
    from pocsdk.prediction.predictors.design import single_compressor

    try:
        records, _ = common_grid(load_records(_labels(labels, more)))
        comp = single_compressor(records, None)  # one calibration per compressor
        pdir = default_predictor_dir(comp, predictor) if predictor in PREDICTOR_NAMES else Path(predictor)
        pred = load_predictor(pdir, compressor=comp)
        calib = fit_calibration(pred, records, min_group=min_group, method="few_shot",
                                notes=f"few-shot calibration on {len(records)} examples")
        calib.save(output)
    except (PocError, OSError) as exc:
        _fail(exc)
        return
    if note := _few_examples_note(len(records)):
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]warning:[/yellow] {note}", highlight=False)
    typer.echo(json.dumps({"calibration": str(output), "examples": len(records), "predictor": pred.name,
                           "margins_conf_0.9": calib.margins_table([0.8, 0.9, 0.95], 0.9)}, indent=2))


@app.command("evaluate")
def evaluate_cmd(
    labels: list[Path] = typer.Option(..., "--labels", "-l", help="Labels JSONL files (one compressor)."),
    more: Optional[list[Path]] = typer.Argument(None, help="More labels files.", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="Report folder (report.json, report.md, PNGs)."),
    floors: str = typer.Option("0.8,0.9,0.95", "--floors", help="Comma-separated floors in (0, 1]."),
    confidence: float = typer.Option(0.9, "--confidence", help="Confidence of the calibrated promise."),
    few_shot: int = typer.Option(50, "--few-shot", min=0, help="Few-shot calibration size on unseen datasets."),
    kinds: str = typer.Option("agnostic,lightgbm,mlp", "--kinds", help="Predictor kinds to train and compare."),
    lodo_kinds: Optional[str] = typer.Option(None, "--lodo-kinds",
                                             help="Kinds for leave-one-dataset-out (default: --kinds)."),
    predictor: Optional[Path] = typer.Option(None, "--predictor", "-p",
                                             help="Evaluate this trained predictor on the labels instead."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Compare predictors and the floor decision: random split and leave-one-dataset-out."""
    from pocsdk.prediction.evaluate import evaluate_files, evaluate_predictor_files
    from pocsdk.types import check_unit_interval

    command = "pocsdk " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        known = ("agnostic", "lightgbm", "mlp")
        kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
        lodo_list = None if lodo_kinds is None else [k.strip() for k in lodo_kinds.split(",") if k.strip()]
        if unknown := sorted(set(kind_list) - set(known)):
            raise ConfigError(f"unknown --kinds {', '.join(unknown)}; known: {', '.join(known)}")
        if not kind_list:
            raise ConfigError(f"--kinds names no predictor kind; known: {', '.join(known)}")
        if lodo_list is not None and (outside := sorted(set(lodo_list) - set(kind_list))):
            raise ConfigError(f"--lodo-kinds {', '.join(outside)} not in --kinds {', '.join(kind_list)}")
        try:
            floor_list = list(dict.fromkeys(check_unit_interval("floor", float(x))  # 0.9,0.90: one section
                                            for x in floors.split(",") if x.strip()))
            if not floor_list:
                raise ValueError("no floor")
        except ValueError as exc:
            raise ConfigError(f"--floors must be comma-separated numbers in (0, 1], got {floors!r}") from exc
        check_unit_interval("confidence", confidence, closed_right=False)
        paths = _labels(labels, more)
        if predictor is not None:
            report = evaluate_predictor_files(paths, predictor, output, floors=floor_list, confidence=confidence,
                                              command=command)
        else:
            report = evaluate_files(paths, output, floors=floor_list, confidence=confidence, few_shot=few_shot,
                                    seed=seed, kinds=kind_list, command=command, lodo_kinds=lodo_list)
    except ValueError as exc:
        _fail(exc)
        return
    except (PocError, OSError) as exc:
        _fail(exc)
        return
    typer.echo(report.markdown)
