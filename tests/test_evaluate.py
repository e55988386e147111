"""Evaluation report and the prediction CLI commands (train-predictor, fit-calibration, evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pocsdk.cli import app
from pocsdk.prediction.evaluate import _row, evaluate_files, oracle_index, oracle_summary
from pocsdk.prediction.synthetic import synthetic_records


@pytest.fixture(scope="module")
def label_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("labels")
    paths = []
    for i, (name, shift) in enumerate((("easy", 0.0), ("hard", 0.6))):
        p = d / f"{name}.jsonl"
        p.write_text("".join(r.model_dump_json() + "\n"
                             for r in synthetic_records(120, seed=i, dataset=name, shift=shift)))
        paths.append(p)
    return paths


def test_kept_and_saving_columns_weigh_tokens_not_factors() -> None:
    factors = [1.0, 2.0, 4.0]
    actual = np.array([[1.0, 1.0, 1.0],    # the oracle compresses it 4x
                       [1.0, 1.0, 0.0]])   # ... and this one 2x
    achieved = np.array([factors, factors])
    oracle = oracle_summary(actual, achieved, oracle_index(actual, factors, 0.9))
    assert oracle.factor == pytest.approx(3.0) and oracle.kept == pytest.approx((0.25 + 0.5) / 2)
    # a method that passes the first input through and compresses the second 4x (and fails it)
    row = _row("random", "all", "m", 0.9, 0.9, np.array([-1, 2]), actual, achieved, oracle)
    assert row.meet == 0.5 and row.factor == pytest.approx(2.5) and row.of_oracle == pytest.approx(2.5 / 3.0)
    assert row.kept == pytest.approx((1.0 + 0.25) / 2)
    # saving 0.375 of the tokens against the oracle's 0.625
    assert row.of_oracle_saving == pytest.approx(0.375 / 0.625)


def test_evaluate_writes_json_md_png(label_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = evaluate_files(label_files, out, floors=[0.8, 0.9], confidence=0.9, few_shot=30,
                            kinds=["agnostic", "lightgbm"])
    for name in ("report.json", "report.md", "pred_vs_actual.png", "perf_vs_factor.png", "meet_vs_floor.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "pred_vs_actual.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "report.json").read_text())
    assert data["compressor"] == "extractive" and data["examples"] == 240
    splits = {r["split"] for r in data["rows"]}
    assert {"random", "lodo", "fewshot"} <= splits
    oracle = report.row("random", "oracle", 0.9)
    fixed = report.row("random", "fixed", 0.9)
    cal = report.row("random", "lightgbm+cal", 0.9)
    assert oracle is not None and fixed is not None and cal is not None
    assert oracle.meet == 1.0 and oracle.of_oracle == pytest.approx(1.0)
    assert oracle.of_oracle_saving == pytest.approx(1.0) and oracle.kept is not None and oracle.kept < 1.0
    pooled_oracle = report.row("lodo", "oracle", 0.9)
    assert pooled_oracle is not None and pooled_oracle.of_oracle_saving == pytest.approx(1.0)
    assert cal.mae is not None and cal.margin is not None
    assert report.row("lodo", "lightgbm", 0.9) is not None
    md = (out / "report.md").read_text()
    assert "| oracle |" in md and "leave-one-dataset-out" in md


def test_cli_train_calibrate_evaluate(label_files: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    pdir = tmp_path / "predictors" / "extractive"
    res = runner.invoke(app, ["train-predictor", "--labels", str(label_files[0]), str(label_files[1]),
                              "--kind", "agnostic", "-o", str(pdir)])
    assert res.exit_code == 0, res.output
    assert (pdir / "card.json").is_file() and (pdir / "calibration.json").is_file()
    out_json = json.loads(res.stdout)
    assert out_json["kind"] == "agnostic"
    # two labels files are too few datasets for the default cross-dataset calibration: holdout, with a warning
    assert out_json["calibration_method"] == "holdout" and "warning" in res.stderr
    assert json.loads((pdir / "calibration.json").read_text())["method"] == "holdout"

    calib = tmp_path / "calib.json"
    res = runner.invoke(app, ["fit-calibration", "--labels", str(label_files[1]), "--predictor", str(pdir),
                              "-o", str(calib)])
    assert res.exit_code == 0, res.output
    assert json.loads(calib.read_text())["schema"] == "pocsdk.calibration"
    assert json.loads(calib.read_text())["method"] == "few_shot"

    out = tmp_path / "rep"
    res = runner.invoke(app, ["evaluate", "--labels", str(label_files[1]), "--predictor", str(pdir),
                              "--floors", "0.8,0.9", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.json").is_file() and (out / "report.md").is_file()

    res = runner.invoke(app, ["evaluate", "--labels", str(label_files[0]), "--floors", "0.8,1.5", "-o", str(out)])
    assert res.exit_code == 2 and "floor" in res.output

    res = runner.invoke(app, ["train-predictor", "--labels", str(tmp_path / "missing.jsonl"), "-o", str(pdir)])
    assert res.exit_code == 2

    # unknown kinds used to evaluate nothing and exit 0; a bad --floors said "could not convert string"
    for bad in (["--kinds", "foo"], ["--kinds", "agnostic", "--lodo-kinds", "lightgbm"], ["--floors", "0.9,abc"],
                ["--floors", ","]):
        res = runner.invoke(app, ["evaluate", "--labels", str(label_files[0]), "-o", str(out), *bad])
        assert res.exit_code == 2 and "--" in res.output, bad

    # a few-shot calibration on too few examples to back the confidence says so
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(label_files[1].read_text().splitlines()[:5]) + "\n")
    res = runner.invoke(app, ["fit-calibration", "--labels", str(few), "--predictor", str(pdir),
                              "-o", str(tmp_path / "few.json")])
    assert res.exit_code == 0 and "cannot back a confidence above" in res.stderr


def test_cli_cross_dataset_calibration(tmp_path: Path) -> None:
    paths = []
    for i, shift in enumerate((0.0, 0.3, 0.6)):
        p = tmp_path / f"d{i}.jsonl"
        p.write_text("".join(r.model_dump_json() + "\n" for r in synthetic_records(60, seed=i, dataset=f"d{i}",
                                                                                    shift=shift)))
        paths.append(str(p))
    runner = CliRunner()
    pdir = tmp_path / "pred"
    res = runner.invoke(app, ["train-predictor", "--labels", *paths, "--kind", "agnostic", "-o", str(pdir)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["calibration_method"] == "cross_dataset" and out["examples"] == 180  # fitted on all labels
    cal = json.loads((pdir / "calibration.json").read_text())
    assert cal["method"] == "cross_dataset" and cal["per_dataset"] is True
    assert sorted(set(cal["groups"]["*"]["sources"])) == ["d0", "d1", "d2"]
    card = json.loads((pdir / "card.json").read_text())
    assert cal["predictor_sha256"] == card["sha256"] and "out_of_dataset_mae" in card["metrics"]

    res = runner.invoke(app, ["train-predictor", "--labels", *paths, "--kind", "agnostic", "--pooled",
                              "--calibration", "holdout", "-o", str(tmp_path / "p2")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p2" / "calibration.json").read_text())["method"] == "holdout"
    res = runner.invoke(app, ["train-predictor", "--labels", *paths, "--calibration", "nope", "-o", str(pdir)])
    assert res.exit_code == 2 and "cross_dataset" in res.output


def test_cli_lightgbm_balances_labels_files(tmp_path: Path) -> None:
    # one labels file holds a benchmark's 4 sub-datasets: training weighs each file as one dataset, like the
    # cross-dataset calibration does, not each sub-dataset
    paths = []
    for i, shift in enumerate((0.0, 0.3, 0.6)):
        p = tmp_path / f"bench{i}.jsonl"
        subsets = 4 if i == 0 else 1
        p.write_text("".join(r.model_dump_json() + "\n" for k in range(subsets)
                             for r in synthetic_records(60 // subsets, seed=10 * i + k, dataset=f"bench{i}_{k}",
                                                        shift=shift)))
        paths.append(str(p))
    pdir = tmp_path / "pred"
    res = CliRunner().invoke(app, ["train-predictor", "--labels", *paths, "--kind", "lightgbm", "-o", str(pdir)])
    assert res.exit_code == 0, res.output
    card = json.loads((pdir / "card.json").read_text())
    assert card["training"]["groups"] == {"bench0": 60, "bench1": 60, "bench2": 60}
    assert len(card["training"]["datasets"]) == 6


def test_nested_lodo_xcal_rows(tmp_path: Path) -> None:
    recs = []
    for i, shift in enumerate((0.0, 0.3, 0.6, 0.9)):
        recs += synthetic_records(60, seed=i, dataset=f"d{i}", shift=shift)
    from pocsdk.prediction.evaluate import evaluate_records

    report = evaluate_records(recs, floors=[0.8], confidence=0.8, few_shot=20, kinds=["agnostic"])
    for fold in ("d0", "d3"):
        assert report.row("lodo", "agnostic+xcal", 0.8, fold=fold) is not None
        assert report.row("lodo", "agnostic+xcal-tradeoff", 0.8, fold=fold) is not None
    assert report.row("lodo", "agnostic+xcal", 0.8) is not None  # pooled over folds
    assert "agnostic+xcal" in report.markdown


def _write(path: Path, records: list) -> Path:  # type: ignore[type-arg]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path


def test_labels_files_are_datasets_even_when_named_alike(tmp_path: Path) -> None:
    """nq/labels.jsonl, squad/labels.jsonl, kv/labels.jsonl are three datasets, not one; one file given
    twice, or one id twice, would count examples twice and inflate a promise."""
    from pocsdk.errors import LabelsError
    from pocsdk.prediction.evaluate import dataset_names, load_records_with_sources

    paths = [_write(tmp_path / name / "labels.jsonl", synthetic_records(40, seed=i, dataset=name, shift=0.2 * i))
             for i, name in enumerate(("nq", "squad", "kv"))]
    assert dataset_names(paths) == ["nq/labels", "squad/labels", "kv/labels"]
    assert dataset_names([tmp_path / "a.v1.jsonl", tmp_path / "x" / "b.jsonl"]) == ["a", "b"]
    assert dataset_names([tmp_path / "nq.dev.jsonl", tmp_path / "nq.test.jsonl"]) == ["nq.dev", "nq.test"]
    blob = _write(tmp_path / "blobs" / "9f2c1e", synthetic_records(3, seed=5))
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "nq.labels.jsonl").symlink_to(blob)  # DVC / git-annex / HF cache layouts
    assert dataset_names([tmp_path / "links" / "nq.labels.jsonl"]) == ["nq"]
    with pytest.raises(LabelsError, match="given twice"):
        dataset_names([blob, tmp_path / "links" / "nq.labels.jsonl"])
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(LabelsError, match="not valid UTF-8 JSON"):
        load_records_with_sources([deep])
    _, sources = load_records_with_sources(paths)
    assert len(set(sources)) == 3
    res = CliRunner().invoke(app, ["train-predictor", "--labels", *map(str, paths), "--kind", "agnostic",
                                   "-o", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["calibration_method"] == "cross_dataset"
    with pytest.raises(LabelsError, match="given twice"):
        load_records_with_sources([paths[0], tmp_path / "nq" / ".." / "nq" / "labels.jsonl"])
    recs = synthetic_records(5, seed=0)
    dup = _write(tmp_path / "dup.jsonl", [*recs, recs[2]])
    res = CliRunner().invoke(app, ["fit-calibration", "--labels", str(dup), "--predictor", "default",
                                   "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and "appears twice" in res.output


@pytest.mark.parametrize("field,value", [("performance", float("nan")), ("performance", float("inf")),
                                         ("factors", float("nan")), ("factors", 0.5)])
def test_non_finite_labels_are_refused(tmp_path: Path, field: str, value: float) -> None:
    """A NaN performance never counts as missing the floor, so it would buy a promise for free."""
    from pocsdk.calibration.labels import read_labels
    from pocsdk.errors import LabelsError

    recs = synthetic_records(3, seed=1)
    bad = recs[1].model_dump()
    bad[field] = [value, *bad[field][1:]] if field == "factors" else [*bad[field][:-1], value]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in (recs[0].model_dump(), bad)))
    with pytest.raises(LabelsError, match=rf"bad\.jsonl:2: .*{field} must be"):
        read_labels(path)


def test_fit_calibration_refuses_mixed_compressors_and_warns_about_other_grids(tmp_path: Path) -> None:
    from pocsdk.errors import LabelsWarning
    from pocsdk.prediction.evaluate import common_grid

    mixed = _write(tmp_path / "mixed.jsonl", synthetic_records(20, seed=0, compressor="extractive", dataset="a")
                   + synthetic_records(20, seed=1, compressor="skim", dataset="b"))
    res = CliRunner().invoke(app, ["fit-calibration", "--labels", str(mixed), "--predictor", "default",
                                   "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and "mix compressors" in res.output and not (tmp_path / "c.json").exists()
    recs = synthetic_records(25, seed=2) + synthetic_records(15, seed=3, factors=(1.0, 2.0, 4.0, 8.0))
    with pytest.warns(LabelsWarning, match="15 of 40 label records are on another factor grid"):
        kept, grid = common_grid(recs)
    assert len(kept) == 25 and len(grid) == 10


def test_retraining_leaves_no_stale_calibration_and_evaluate_checks_it(label_files: list[Path], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibration.json vouches for one model: retraining without one removes it, and `evaluate
    --predictor` refuses one made for another model, as the floor search does."""
    import shutil

    from pocsdk import Compressor

    runner = CliRunner()
    a, b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((a, "0"), (b, "1")):
        res = runner.invoke(app, ["train-predictor", "--labels", *map(str, label_files), "--kind", "lightgbm",
                                  "--seed", seed, "-o", str(out)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--labels", str(label_files[1]), "--predictor", str(a), "--floors", "0.9",
                              "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    methods = {r["method"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]}
    assert {"lightgbm", "lightgbm+cal", "lightgbm+tradeoff", "oracle"} <= methods
    shutil.copy(b / "calibration.json", a / "calibration.json")  # another model's calibration
    res = runner.invoke(app, ["evaluate", "--labels", str(label_files[1]), "--predictor", str(a), "--floors", "0.9",
                              "-o", str(tmp_path / "rep2")])
    assert res.exit_code == 2 and "calibration" in res.output
    # a folder named like a shipped predictor ("agnostic") is that folder, not the shipped one
    own = tmp_path / "agnostic"
    assert runner.invoke(app, ["train-predictor", "--labels", str(label_files[0]), "--kind", "agnostic",
                               "-o", str(own)]).exit_code == 0
    maes = []
    for given in (str(own), "agnostic"):
        monkeypatch.chdir(tmp_path)
        res = runner.invoke(app, ["evaluate", "--labels", str(label_files[1]), "--predictor", given,
                                  "--floors", "0.9", "-o", str(tmp_path / "rep3")])
        assert res.exit_code == 0, res.output
        rows = json.loads((tmp_path / "rep3" / "report.json").read_text())["rows"]
        maes.append(next(r["mae"] for r in rows if r["method"] == "agnostic"))
    assert maes[0] == maes[1]
    res = runner.invoke(app, ["train-predictor", "--labels", *map(str, label_files), "--kind", "lightgbm",
                              "--calibration", "holdout", "--calibration-share", "0", "-o", str(a)])
    assert res.exit_code == 0, res.output
    assert not (a / "calibration.json").exists()
    text = "The river Ouse runs through York. " * 40
    assert Compressor(floor=0.9, compressor="extractive", predictor=str(a)).compress(text, "Which river?").floor


def test_tampered_artifacts_are_refused_not_run(tmp_path: Path) -> None:
    """A LightGBM model cut short with its checksum recomputed used to crash the process inside
    LightGBM; card params of the wrong type, deeply nested JSON and an empty calibration grid used
    to escape as TypeError, RecursionError or numpy errors."""
    import hashlib
    import shutil

    from pocsdk.errors import ArtifactError
    from pocsdk.prediction.conformal import Calibration
    from pocsdk.prediction.predictors import load_predictor

    src = Path(__file__).parent.parent / "predictors" / "extractive"
    if not (src / "card.json").is_file():
        pytest.skip("no shipped extractive predictor")

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("agnostic", "mlp"))
        return dst

    cut = copy("cut")
    model = (cut / "model.txt").read_bytes()
    (cut / "model.txt").write_bytes(model[: len(model) // 2])
    card = json.loads((cut / "card.json").read_text())
    card["sha256"] = hashlib.sha256(model[: len(model) // 2]).hexdigest()
    (cut / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"not a whole LightGBM text model|cut short"):
        load_predictor(cut)
    typed = copy("typed")
    card = json.loads((typed / "card.json").read_text())
    card["params"]["features"] = 5
    (typed / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError):
        load_predictor(typed)
    nested = copy("nested")
    (nested / "card.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError):
        load_predictor(nested)
    (nested / "calibration.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError):
        Calibration.load(nested / "calibration.json")
    cal = json.loads((src / "calibration.json").read_text())
    for factors in ([], [1.0, float("nan")], [2.0, 1.0]):
        (tmp_path / "cal.json").write_text(json.dumps({**cal, "factors": factors}))
        with pytest.raises(ArtifactError):
            Calibration.load(tmp_path / "cal.json")


def test_splits_keep_each_document_on_one_side() -> None:
    """The random split put questions on one L-Eval book (or SQuAD article) in both train and test."""
    import random

    from pocsdk.prediction.evaluate import document_key, group_split, split_fit_cal

    recs = synthetic_records(300, seed=3)
    recs = [r.model_copy(update={"metadata": {"doc_index": i % 40, "leval_task": "quality"}})
            for i, r in enumerate(recs)]
    for split in (lambda rs: group_split(rs, random.Random(1), 0.25), lambda rs: split_fit_cal(rs, random.Random(2))):
        rest, held = split(recs)
        assert len(rest) + len(held) == 300 and 45 <= len(held) <= 100
        assert not {document_key(r) for r in rest} & {document_key(r) for r in held}
    one_doc = [r.model_copy(update={"metadata": {"title": "Same"}}) for r in recs[:20]]
    with pytest.warns(Warning, match="split by input"):
        rest, held = group_split(one_doc, random.Random(0), 0.25)  # one document: split the records
    assert len(held) == 5 and len(rest) == 15
    # one big document no longer takes most of the data: the held side stays near its share
    big = [r.model_copy(update={"metadata": {"title": "Big" if i < 60 else f"t{i}"}}) for i, r in enumerate(recs[:100])]
    for seed in range(20):
        rest, held = group_split(big, random.Random(seed), 0.25)
        assert 23 <= len(held) <= 28, (seed, len(held))


def _tasks_labels(d: Path) -> list[Path]:
    """Three datasets, each with two tasks of different difficulty (so per-task tables differ from pooled)."""
    paths = []
    for i, (name, shift) in enumerate((("a", 0.0), ("b", 0.3), ("c", 0.6))):
        recs = (synthetic_records(150, seed=10 + i, dataset=name, shift=shift, task="qa")
                + synthetic_records(150, seed=20 + i, dataset=name, shift=shift + 0.8, task="summarization"))
        recs = [r.model_copy(update={"id": f"{name}-{k}"}) for k, r in enumerate(recs)]
        p = d / f"{name}.jsonl"
        p.write_text("".join(r.model_dump_json() + "\n" for r in recs))
        paths.append(p)
    return paths


def test_curves_decide_as_the_table_rows(tmp_path: Path) -> None:
    """The plotted +cal curves used the pooled margin while the table used each record's task margin, and the
    trade-off rule (the default decision) had no curve."""
    report = evaluate_files(_tasks_labels(tmp_path), tmp_path / "r", floors=[0.8, 0.9], confidence=0.9,
                            few_shot=0, kinds=["agnostic", "lightgbm"], lodo_kinds=[])
    for method in ("lightgbm+cal", "agnostic+cal", "lightgbm+tradeoff", "agnostic+tradeoff", "oracle", "fixed"):
        curve = report.curves[method]
        for floor in (0.8, 0.9):
            row = report.row("random", method, floor)
            assert row is not None
            k = curve["floor"].index(floor)
            assert curve["meet"][k] == pytest.approx(row.meet) and curve["factor"][k] == pytest.approx(row.factor)


def test_evaluate_skips_a_fold_it_cannot_fit_and_shows_the_floors_asked(label_files: list[Path],
                                                                        tmp_path: Path) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(label_files[0].read_text().splitlines()[0] + "\n")
    with pytest.warns(Warning, match="fold 'easy' skipped"):
        report = evaluate_files([label_files[0], one], tmp_path / "r", floors=[0.8, 0.95], few_shot=0,
                                kinds=["agnostic"])
    assert report.row("random", "agnostic", 0.8) is not None  # the rest of the report is there
    assert report.row("lodo", "agnostic", 0.8, fold="one") is not None
    # without floor 0.9 the per-dataset table shows a floor that was evaluated (it was left out silently)
    report = evaluate_files(label_files, tmp_path / "r2", floors=[0.8, 0.95], few_shot=0, kinds=["agnostic"])
    assert "**Per held-out dataset, floor 0.95**" in report.markdown


def test_evaluate_cli_dedupes_floors_and_refuses_no_kinds(label_files: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r"
    res = runner.invoke(app, ["evaluate", "--labels", str(label_files[0]), str(label_files[1]), "-o", str(out),
                              "--floors", "0.9,0.90", "--kinds", "agnostic", "--few-shot", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["floors"] == [0.9]
    assert res.output.count("Random split") == 1
    res = runner.invoke(app, ["evaluate", "--labels", str(label_files[0]), "-o", str(out), "--kinds", ""])
    assert res.exit_code == 2 and "--kinds" in res.output


def test_evaluate_predictor_decides_per_task_and_checks_the_grid(tmp_path: Path) -> None:
    """--predictor used the pooled tables for every record, unlike the floor search, and accepted labels on
    another grid than its calibration's."""
    from pocsdk.prediction.evaluate import evaluate_predictor_files, load_records, task_margins

    paths = _tasks_labels(tmp_path)
    pdir = tmp_path / "pred"
    res = CliRunner().invoke(app, ["train-predictor", "--labels", *map(str, paths), "--kind", "agnostic",
                                   "-o", str(pdir)])
    assert res.exit_code == 0, res.output
    report = evaluate_predictor_files(paths, pdir, tmp_path / "r", floors=[0.9], confidence=0.9)
    from pocsdk.prediction.conformal import Calibration

    cal = Calibration.load(pdir / "calibration.json")
    recs = load_records(paths)
    margins = task_margins(cal, recs, 0.9, 0.9)
    assert len(set(np.round(margins, 6))) > 1  # the tasks' tables differ
    row = report.row("given", "agnostic+cal", 0.9)
    assert row is not None and row.margin == pytest.approx(float(margins.mean()))
    other = tmp_path / "grid.jsonl"
    other.write_text("".join(r.model_dump_json() + "\n"
                             for r in synthetic_records(60, seed=5, factors=(1.0, 2.0, 4.0, 8.0))))
    res = CliRunner().invoke(app, ["evaluate", "--labels", str(other), "--predictor", str(pdir), "-o",
                                   str(tmp_path / "r2")])
    assert res.exit_code == 2 and "grid" in res.output


@pytest.mark.parametrize(("old", "new", "says"), [
    ("left_child=1 ", "left_child=0 ", "no tree"),            # a node that is its own child: LightGBM looped forever
    ("num_leaves=15", "num_leaves=95", "num_leaves"),         # arrays of the wrong length: the process aborted
    ("num_cat=0", "num_cat=9", "categorical"),                # categorical splits without their tables: aborted
    ("split_feature=14 ", "split_feature=99 ", "feature"),    # a feature the model does not have: predicted anyway
])
def test_lightgbm_models_with_a_recomputed_checksum_are_checked_before_lightgbm_reads_them(
        tmp_path: Path, old: str, new: str, says: str) -> None:
    import hashlib
    import shutil

    from pocsdk.errors import ArtifactError
    from pocsdk.prediction.predictors import load_predictor

    src = Path(__file__).parent.parent / "predictors" / "skim"
    dst = tmp_path / "p"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("agnostic", "mlp", "calibration.json"))
    text = (dst / "model.txt").read_text()
    block = text.index("Tree=0")
    at = text.index(old, block)
    edited = text[:at] + new + text[at + len(old):]
    assert len(edited) == len(text)  # the header's tree sizes still match
    (dst / "model.txt").write_text(edited)
    card = json.loads((dst / "card.json").read_text())
    card["sha256"] = hashlib.sha256(edited.encode()).hexdigest()
    (dst / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=says):
        load_predictor(dst)


def test_model_files_over_the_size_limit_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole file was read before its checksum was compared: a 1 GiB model.txt took 1 GB of memory."""
    import shutil

    from pocsdk.errors import ArtifactError
    from pocsdk.prediction import artifacts
    from pocsdk.prediction.predictors import load_predictor

    dst = tmp_path / "p"
    shutil.copytree(Path(__file__).parent.parent / "predictors" / "skim", dst,
                    ignore=shutil.ignore_patterns("agnostic", "mlp", "calibration.json"))
    load_predictor(dst)
    monkeypatch.setattr(artifacts, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(ArtifactError, match="more than a predictor model may"):
        load_predictor(dst)


def test_few_shot_shots_share_no_document_with_the_rows_they_are_scored_on() -> None:
    import random

    from pocsdk.prediction.evaluate import document_key, few_shot_split

    recs = synthetic_records(400, seed=4)
    recs = [r.model_copy(update={"metadata": {"doc_index": i % 80, "leval_task": "quality"}})
            for i, r in enumerate(recs)]
    rest, shots = few_shot_split(recs, 50, random.Random(1))
    assert len(shots) == 50 and len(rest) >= 100
    assert not {document_key(r) for r in shots} & {document_key(r) for r in rest}
    few_docs = [r.model_copy(update={"metadata": {"title": f"t{i % 5}"}}) for i, r in enumerate(recs[:200])]
    rest, shots = few_shot_split(few_docs, 50, random.Random(1))  # 50 shots touch all 5: whole documents
    assert not {document_key(r) for r in shots} & {document_key(r) for r in rest} and rest
