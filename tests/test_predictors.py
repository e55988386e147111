"""Predictors: monotone over the factor, save/load round trip, and refusal of bad artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pocsdk.calibration.labels import DEFAULT_FACTORS
from pocsdk.errors import ArtifactError, ConfigError, LabelsError
from pocsdk.prediction.predictors import (
    ContextAgnosticPredictor,
    LightGBMPredictor,
    MLPPredictor,
    Predictor,
    group_weights,
    load_predictor,
    make_predictor,
)
from pocsdk.prediction.synthetic import synthetic_records

KINDS = {
    "agnostic": lambda: ContextAgnosticPredictor(min_task_examples=20),
    "lightgbm": lambda: LightGBMPredictor(n_estimators=60),
    "mlp": lambda: MLPPredictor(hidden=(16,), max_iter=80),
}


@pytest.fixture(scope="module")
def records():  # type: ignore[no-untyped-def]
    return synthetic_records(300, seed=1) + synthetic_records(100, seed=2, dataset="other", task="summarization")


@pytest.fixture(scope="module")
def fitted(records):  # type: ignore[no-untyped-def]
    return {k: make().fit(records) for k, make in KINDS.items()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_monotone_over_factor(kind: str, fitted, records) -> None:  # type: ignore[no-untyped-def]
    p: Predictor = fitted[kind]
    preds = p.predict_records(records[:50])
    for row in preds:
        assert row.shape == (len(DEFAULT_FACTORS),)
        assert np.all(np.diff(row) <= 1e-12)
        assert np.all((row >= 0) & (row <= 1))
    # unsorted grid, random (even adversarial) per-factor features: still non-increasing in the factor
    rng = np.random.default_rng(0)
    grid = [8.0, 1.0, 3.0, 20.0, 2.0]
    ctx = [r.context_features for r in records[:20]]
    ff = [[{"mass_kept": float(rng.random()), "achieved_factor": f} for f in grid] for _ in ctx]
    out = p.predict(ctx, grid, ff)
    assert out.shape == (20, 5)
    order = np.argsort(grid)
    assert np.all(np.diff(out[:, order], axis=1) <= 1e-12)
    single = p.predict(ctx[0], grid)
    assert single.shape == (5,)


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_load_round_trip(kind: str, fitted, records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p: Predictor = fitted[kind]
    p.save(tmp_path / kind)
    card = json.loads((tmp_path / kind / "card.json").read_text())
    assert card["schema"] == "pocsdk.predictor" and card["kind"] == kind and card["compressor"] == "extractive"
    assert len(card["sha256"]) == 64 and card["training"]["examples"] == len(records)
    q = load_predictor(tmp_path / kind, compressor="extractive")
    assert type(q) is type(p) and q.sha256_ == card["sha256"]
    a = np.stack(p.predict_records(records[:40]))
    b = np.stack(q.predict_records(records[:40]))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    if kind == "lightgbm":
        assert (tmp_path / kind / "model.txt").read_text().startswith("tree\n")


def test_lightgbm_beats_agnostic_on_context_signal(fitted, records) -> None:  # type: ignore[no-untyped-def]
    test = synthetic_records(200, seed=9, binary=False)
    actual = np.array([r.performance for r in test])
    mae = {k: float(np.abs(np.stack(fitted[k].predict_records(test)) - actual).mean())
           for k in ("agnostic", "lightgbm")}
    assert mae["lightgbm"] < mae["agnostic"]


@pytest.fixture()
def saved(fitted, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "lgb"
    fitted["lightgbm"].save(d)
    return d


def test_corrupted_model_file(saved: Path) -> None:
    model = saved / "model.txt"
    model.write_text(model.read_text().replace("Tree=1", "Tree=9"))
    with pytest.raises(ArtifactError, match="checksum"):
        load_predictor(saved)


def test_wrong_checksum_in_card(saved: Path) -> None:
    card = json.loads((saved / "card.json").read_text())
    card["sha256"] = "0" * 64
    (saved / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="checksum"):
        load_predictor(saved)


def test_garbage_model_with_matching_checksum(saved: Path) -> None:
    import hashlib

    (saved / "model.txt").write_bytes(b"tree\nthis is not a model\n")
    card = json.loads((saved / "card.json").read_text())
    card["sha256"] = hashlib.sha256(b"tree\nthis is not a model\n").hexdigest()
    (saved / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError):
        load_predictor(saved)


@pytest.mark.parametrize("mutation", [
    {"schema": "something.else"},
    {"card_version": 99},
    {"features_version": 999},
    {"kind": "xgboost"},
    {"model_file": "../model.txt"},
    {"unexpected": 1},
])
def test_foreign_card(saved: Path, mutation: dict[str, object]) -> None:
    card = json.loads((saved / "card.json").read_text())
    card.update(mutation)
    (saved / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError):
        load_predictor(saved)


def test_card_not_json_or_missing(saved: Path, tmp_path: Path) -> None:
    (saved / "card.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        load_predictor(saved)
    with pytest.raises(ArtifactError):
        load_predictor(tmp_path / "nowhere")


def test_card_for_another_compressor(saved: Path) -> None:
    with pytest.raises(ArtifactError, match="compressor"):
        load_predictor(saved, compressor="skim")
    with pytest.raises(ArtifactError):
        MLPPredictor.load(saved)  # a LightGBM artifact is not an MLP


def test_mixed_compressors_and_unknown_kind(records) -> None:  # type: ignore[no-untyped-def]
    mixed = records[:5] + synthetic_records(5, compressor="skim")
    with pytest.raises(LabelsError):
        LightGBMPredictor(n_estimators=5).fit(mixed)
    with pytest.raises(ConfigError):
        make_predictor("forest")
    with pytest.raises(ArtifactError):
        LightGBMPredictor().predict({}, [1.0, 2.0])


def test_residual_lightgbm_round_trip_and_monotone(records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = LightGBMPredictor(n_estimators=40, residual=True).fit(records)
    assert p.base_curve is not None and len(p.base_curve[0]) == len(p.base_curve[1])
    a = np.stack(p.predict_records(records[:40]))
    assert np.all(np.diff(a, axis=1) <= 1e-12) and np.all((a >= 0) & (a <= 1))
    p.save(tmp_path / "r")
    q = load_predictor(tmp_path / "r", compressor="extractive")
    assert isinstance(q, LightGBMPredictor) and q.residual
    np.testing.assert_allclose(a, np.stack(q.predict_records(records[:40])), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", [*KINDS, "residual"])
def test_predict_columns_equals_predict(kind: str, fitted, records) -> None:  # type: ignore[no-untyped-def]
    p: Predictor = LightGBMPredictor(n_estimators=20, residual=True).fit(records) if kind == "residual" \
        else fitted[kind]
    grid = [1.0, 1.5, 3.0, 8.0, 20.0]
    rng = np.random.default_rng(3)
    for rec in records[:10]:
        rows = [{"factor": f, "log_factor": float(np.log(f)), "achieved_factor": f * (1 + rng.random()),
                 "mass_kept": float(rng.random()), "keep_rate": 1 / f} for f in grid]
        columns = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        columns["log_achieved_factor"] = np.log(columns["achieved_factor"])
        for r, v in zip(rows, columns["log_achieved_factor"], strict=True):
            r["log_achieved_factor"] = float(v)
        want = p.predict(rec.context_features, grid, [rows])
        assert np.array_equal(p.predict_columns(rec.context_features, grid, columns), want)
        assert np.array_equal(p.predict_columns(rec.context_features, grid, {"mass_kept": columns["mass_kept"]}),
                              p.predict(rec.context_features, grid, [[{"mass_kept": r["mass_kept"]} for r in rows]]))


def test_group_weights_balance_groups_not_records() -> None:
    w = group_weights(["a"] * 30 + ["b"] * 10)
    assert w.mean() == pytest.approx(1.0)
    assert w[:30].sum() == pytest.approx(w[30:].sum())
    with pytest.raises(LabelsError):
        group_weights([])


def test_lightgbm_balances_the_groups_it_is_given(tmp_path: Path) -> None:
    # family "many" is 10 small sub-datasets (easy), family "one" a single harder dataset of the same size:
    # balancing datasets gives "many" 10/11 of the weight, balancing the families gives each half.
    many = [r for i in range(10) for r in synthetic_records(40, seed=10 + i, dataset=f"many_{i}")]
    one = synthetic_records(400, seed=3, dataset="one", shift=2.5)
    recs = many + one
    groups = ["many"] * len(many) + ["one"] * len(one)
    by_dataset = LightGBMPredictor(n_estimators=60).fit(recs)
    by_group = LightGBMPredictor(n_estimators=60).fit(recs, groups=groups)
    assert by_dataset.training_.groups == {}
    assert by_group.training_.groups == {"many": 400, "one": 400}
    actual = np.array([r.performance for r in one])
    err_dataset = np.abs(np.stack(by_dataset.predict_records(one)) - actual).mean()
    err_group = np.abs(np.stack(by_group.predict_records(one)) - actual).mean()
    assert err_group < err_dataset  # the under-weighted family is fitted better once it gets its share
    by_group.save(tmp_path / "p")
    assert load_predictor(tmp_path / "p").training_.groups == {"many": 400, "one": 400}
    with pytest.raises(LabelsError, match="one group per record"):
        LightGBMPredictor(n_estimators=5).fit(recs, groups=groups[:-1])


def _sklearn_version() -> tuple[int, ...]:
    import sklearn

    return tuple(int(x) for x in sklearn.__version__.split(".")[:2] if x.isdigit())


@pytest.mark.skipif(_sklearn_version() < (1, 7), reason="scikit-learn's MLP takes sample_weight from 1.7")
def test_mlp_honours_sample_weight(records) -> None:  # type: ignore[no-untyped-def]
    # weight only the "other" dataset: the fit then follows it instead of the 3x larger "synth" one
    w = np.array([0.0 if r.dataset == "synth" else 1.0 for r in records])
    plain = MLPPredictor(hidden=(16,), max_iter=80).fit(records)
    weighted = MLPPredictor(hidden=(16,), max_iter=80).fit(records, sample_weight=w)
    other = [r for r in records if r.dataset == "other"]
    actual = np.array([r.performance for r in other])
    assert (np.abs(np.stack(weighted.predict_records(other)) - actual).mean()
            < np.abs(np.stack(plain.predict_records(other)) - actual).mean())


def test_lightgbm_refuses_labels_without_its_features(records) -> None:  # type: ignore[no-untyped-def]
    # labels made before the coverage features: the default feature set needs them, an explicit set without them works
    old = [r.model_copy(update={"factor_features": [{k: v for k, v in ff.items() if not k.startswith(("qcov", "best_"))}
                                                    for ff in r.factor_features]}) for r in records[:100]]
    with pytest.raises(LabelsError, match="qcov_kept"):
        LightGBMPredictor(n_estimators=5).fit(old)
    without = [n for n in LightGBMPredictor().feature_names_ if not n.startswith(("qcov", "best_"))]
    assert LightGBMPredictor(n_estimators=5, features=without).fit(old).feature_names_ == without


def test_saving_over_a_calibrated_predictor_drops_its_stale_calibration(tmp_path: Path) -> None:
    """Re-saving a model into its folder left the old calibration.json, which the floor search then refused even
    without a confidence."""
    import shutil

    from pocsdk import Compressor
    from pocsdk.prediction.predictors import ContextAgnosticPredictor

    folder = tmp_path / "p"
    shutil.copytree(Path(__file__).resolve().parents[1] / "predictors" / "skim" / "agnostic", folder)
    assert (folder / "calibration.json").is_file()
    recs = synthetic_records(80, compressor="skim")
    with pytest.warns(UserWarning, match="fitted for the model this save replaced"):
        ContextAgnosticPredictor().fit(recs).save(folder)
    assert not (folder / "calibration.json").exists()
    text = "The river Ouse runs through York and past the minster. " * 40
    assert Compressor(floor=0.9, predictor=str(folder)).compress(text, "Which river?").floor is not None
    with pytest.raises(ConfigError, match="confidence needs a calibration"):
        Compressor(floor=0.9, confidence=0.9, predictor=str(folder)).prepare()  # not at the first compress


def test_a_lightgbm_predictor_with_categorical_task_splits_loads_back(tmp_path: Path) -> None:
    """The tree check refused categorical splits, which fit itself makes for task_code: the model saved, then
    could not be loaded."""
    from pocsdk.prediction.predictors import LightGBMPredictor, load_predictor

    recs = (synthetic_records(150, seed=2, task="summarization", dataset="s2", shift=2.0)
            + synthetic_records(150, seed=3, dataset="s3", task="qa"))
    p = LightGBMPredictor(features=["log_factor", "task_code"], n_estimators=30, num_leaves=7).fit(recs)
    p.save(tmp_path / "p")
    import re

    assert re.search(r"^num_cat=[1-9]", (tmp_path / "p" / "model.txt").read_text(), re.MULTILINE)
    back = load_predictor(tmp_path / "p")
    assert np.allclose(np.stack(back.predict_records(recs[:20])), np.stack(p.predict_records(recs[:20])))
