"""The floor search: validation, most aggressive valid factor, pass-through, calibration wiring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pocsdk import Compressor
from pocsdk.compressors import get_compressor
from pocsdk.errors import ArtifactError, ConfigError, InvalidRateError
from pocsdk.prediction.conformal import fit_calibration
from pocsdk.prediction.decision import PASSTHROUGH, choose_tradeoff
from pocsdk.prediction.features import context_features, factor_features
from pocsdk.prediction.floor import FloorPolicy, predictors_root
from pocsdk.prediction.predictors import LightGBMPredictor
from pocsdk.prediction.synthetic import synthetic_records

TEXT = " ".join(f"Sentence number {i} talks about topic {i % 7} and the river Danube." for i in range(80))
GRID = [1.0, 2.0, 4.0, 8.0, 16.0]


class StubPredictor:
    """Predicts a fixed curve over the grid, whatever the input."""

    kind = "stub"
    compressor_ = "extractive"
    sha256_ = ""
    name = "stub"

    def __init__(self, curve: Sequence[float]) -> None:
        self.curve = np.asarray(curve, dtype=np.float64)
        self.factors_ = list(GRID)

    def predict(self, context: Mapping[str, float], factors: Sequence[float],
                factor_features: Any = None) -> np.ndarray:
        assert list(factors) == GRID
        assert factor_features is not None and len(factor_features[0]) == len(GRID)
        return self.curve.copy()


def _policy(curve: Sequence[float]) -> FloorPolicy:
    return FloorPolicy(StubPredictor(curve), compressor="extractive", factors=GRID)  # type: ignore[arg-type]


@pytest.fixture()
def scored():  # type: ignore[no-untyped-def]
    comp = get_compressor("extractive")
    return comp, comp.score(TEXT, "Which river?")


def test_picks_most_aggressive_valid_factor(scored) -> None:  # type: ignore[no-untyped-def]
    comp, s = scored
    res = _policy([1.0, 0.97, 0.93, 0.85, 0.5]).compress(comp, s, 0.9)
    assert res.floor is not None and res.floor.met and res.floor.chosen_factor == 4.0
    assert res.floor.predicted_performance == pytest.approx(0.93)
    assert res.floor.grid == GRID and len(res.floor.predictions) == 5
    assert not res.passthrough and 3.0 < res.compression_factor < 5.0  # achieved, near 4x
    assert res.timings.predict_ms > 0
    res2 = _policy([1.0, 0.97, 0.93, 0.85, 0.5]).compress(comp, s, 0.8)
    assert res2.floor is not None and res2.floor.chosen_factor == 8.0


def test_passthrough_when_no_factor_meets(scored) -> None:  # type: ignore[no-untyped-def]
    comp, s = scored
    res = _policy([1.0, 0.8, 0.7, 0.6, 0.5]).compress(comp, s, 0.9)
    assert res.passthrough and res.reason == "floor_not_met"
    assert res.floor is not None and not res.floor.met and res.floor.chosen_factor == 1.0
    assert "passed through" in res.floor.reason
    assert res.compressed_tokens == res.original_tokens and res.text == TEXT
    # the whole context comes back: its performance is 1.0 (the grid's predictions are in `predictions`)
    off_grid = FloorPolicy(StubPredictor([0.8] * 5), compressor="extractive", factors=GRID)  # type: ignore[arg-type]
    assert res.floor.predicted_performance == 1.0 == off_grid.compress(comp, s, 0.9).floor.predicted_performance


@pytest.mark.parametrize("curve", [[0.9], [0.9, 0.8], [1.0] * 6])
def test_a_custom_predictor_must_predict_one_value_per_factor(scored, curve: list[float]) -> None:  # type: ignore[no-untyped-def]
    comp, s = scored
    with pytest.raises(ArtifactError, match=f"returned {len(curve)} predictions for a grid of 5 factors"):
        _policy(curve).compress(comp, s, 0.9)


def test_floor_one_passes_through_unless_predicted_perfect(scored) -> None:  # type: ignore[no-untyped-def]
    comp, s = scored
    assert _policy([1.0, 0.999, 0.9, 0.8, 0.7]).compress(comp, s, 1.0).passthrough
    res = _policy([1.0, 1.0, 0.9, 0.8, 0.7]).compress(comp, s, 1.0)
    assert res.floor is not None and res.floor.chosen_factor == 2.0


@pytest.mark.parametrize("floor", [0.0, -0.1, 1.01, float("nan")])
def test_floor_out_of_range(scored, floor: float) -> None:  # type: ignore[no-untyped-def]
    comp, s = scored
    with pytest.raises(InvalidRateError):
        _policy([1.0] * 5).compress(comp, s, floor)
    with pytest.raises(InvalidRateError):
        Compressor(floor=floor, predictor=StubPredictor([1.0] * 5))


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.2])
def test_confidence_out_of_range(scored, confidence: float) -> None:  # type: ignore[no-untyped-def]
    comp, s = scored
    with pytest.raises(InvalidRateError):
        _policy([1.0] * 5).compress(comp, s, 0.9, confidence)


def test_confidence_needs_calibration(scored) -> None:  # type: ignore[no-untyped-def]
    comp, s = scored
    with pytest.raises(ConfigError):
        _policy([1.0] * 5).compress(comp, s, 0.9, 0.9)


def test_facade_with_stub_predictor() -> None:
    c = Compressor(floor=0.9, compressor="extractive", predictor=StubPredictor([1.0, 0.97, 0.93, 0.85, 0.5]))
    c._policy_for().factors = GRID
    res = c.compress(TEXT, "Which river?")
    assert res.floor is not None and res.floor.chosen_factor == 4.0 and res.floor.predictor == "stub"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pred") / "extractive"
    recs = synthetic_records(300, seed=3)
    p = LightGBMPredictor(n_estimators=40).fit(recs[:200])
    p.save(d)
    fit_calibration(p, recs[200:]).save(d / "calibration.json")
    return d


def test_policy_from_directory_with_calibration(trained: Path) -> None:
    pol = FloorPolicy.for_compressor("extractive", predictor=str(trained))
    assert pol.calibration is not None and pol.factors == sorted(pol.factors)
    comp = get_compressor("extractive")
    s = comp.score(TEXT, "Which river?")
    plain = pol.compress(comp, s, 0.9)
    cal = pol.compress(comp, s, 0.9, 0.9)
    assert plain.floor is not None and cal.floor is not None
    assert cal.floor.margin >= 0.0 and cal.floor.confidence == 0.9
    assert cal.floor.chosen_factor <= plain.floor.chosen_factor
    res = Compressor(floor=0.9, confidence=0.9, compressor="extractive", predictor=str(trained),
                     calibration=str(trained / "calibration.json")).compress(TEXT, "Which river?")
    assert res.floor is not None and res.floor.predictor == "lightgbm:extractive"


def test_predictor_or_calibration_for_other_compressor(trained: Path) -> None:
    with pytest.raises(ArtifactError):
        FloorPolicy.for_compressor("skim", predictor=str(trained))
    other = synthetic_records(60, seed=5, compressor="skim")
    p = LightGBMPredictor(n_estimators=5).fit(other)
    with pytest.raises(ArtifactError):
        FloorPolicy.for_compressor("extractive", predictor=str(trained), calibration=fit_calibration(p, other))


def test_calibration_for_another_model(trained: Path, tmp_path: Path) -> None:
    recs = synthetic_records(120, seed=7)
    other = LightGBMPredictor(n_estimators=7).fit(recs)
    other.save(tmp_path / "other")
    cal = fit_calibration(other, recs)
    with pytest.raises(ArtifactError, match="another predictor"):
        FloorPolicy.for_compressor("extractive", predictor=str(trained), calibration=cal)


def test_calibration_of_an_unsaved_predictor_is_bound_to_it(trained: Path) -> None:
    # Fitted in memory, never saved: the calibration still records the model's checksum (what its
    # card will say), so it can't be used with another model, e.g. the shipped one.
    recs = synthetic_records(120, seed=8)
    fresh = LightGBMPredictor(n_estimators=6).fit(recs)
    cal = fit_calibration(fresh, recs)
    assert cal.predictor_sha256 and cal.predictor_sha256 == fit_calibration(fresh, recs[:60]).predictor_sha256
    with pytest.raises(ArtifactError, match="another predictor"):
        FloorPolicy.for_compressor("extractive", predictor=str(trained), calibration=cal)
    FloorPolicy(fresh, cal, compressor="extractive")  # its own model: accepted


def test_calibration_for_a_predictor_without_checksum_needs_its_name(trained: Path) -> None:
    cal = FloorPolicy.for_compressor("extractive", predictor=str(trained)).calibration
    assert cal is not None
    stub = StubPredictor([1.0, 0.95, 0.9, 0.8, 0.5])  # no checksum, another name
    with pytest.raises(ArtifactError, match="fitted for predictor 'lightgbm:extractive', not 'stub'"):
        FloorPolicy(stub, cal.model_copy(update={"factors": GRID}), compressor="extractive")  # type: ignore[arg-type]


def test_tradeoff_never_chooses_a_factor_without_a_finite_prediction() -> None:
    pred = np.array([[1.0, 0.999, np.nan, np.inf], [np.nan, np.nan, np.nan, np.nan]])
    idx = choose_tradeoff(pred, [1.0, 2.0, 4.0, 8.0], 146.0)
    assert idx.tolist() == [1, PASSTHROUGH]
    no_one = choose_tradeoff(np.full((1, 4), np.nan), [2.0, 4.0, 8.0, 16.0], 146.0)  # a grid without 1x
    assert no_one.tolist() == [PASSTHROUGH]


def test_an_infinite_tradeoff_weight_survives_json() -> None:
    from pocsdk.types import FloorDecision

    d = FloorDecision(floor=0.9, confidence=0.999, predicted_performance=1.0, chosen_factor=1.0, met=False,
                      reason="nothing can be promised", predictor="p", rule="tradeoff", weight=float("inf"))
    assert FloorDecision.model_validate_json(d.model_dump_json()).weight == float("inf")
    margin = d.model_copy(update={"rule": "margin", "weight": None})
    assert FloorDecision.model_validate_json(margin.model_dump_json()).weight is None
    # a custom predictor's NaN is written as null and read back (a remote client must not choke on it)
    nan = d.model_copy(update={"predicted_performance": float("nan"), "predictions": [1.0, float("nan")]})
    back = FloorDecision.model_validate_json(nan.model_dump_json())
    assert np.isnan(back.predicted_performance) and back.predictions[0] == 1.0 and np.isnan(back.predictions[1])


def test_missing_shipped_predictor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POCSDK_PREDICTORS", str(tmp_path))
    with pytest.raises(ArtifactError, match="no shipped predictor"):
        FloorPolicy.for_compressor("extractive")


@pytest.mark.parametrize("name", ["extractive", "skim"])
def test_shipped_default_predictor(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POCSDK_PREDICTORS", raising=False)
    if not (predictors_root() / name / "card.json").is_file():
        pytest.skip(f"no shipped predictor for {name}")
    res = Compressor(floor=0.9, confidence=0.9, compressor=name).compress(TEXT, "Which river?")
    assert res.floor is not None and res.floor.predictor.endswith(name)


def test_rules(trained: Path) -> None:
    comp = get_compressor("extractive")
    s = comp.score(TEXT, "Which river?")
    for rule in ("tradeoff", "margin"):
        pol = FloorPolicy.for_compressor("extractive", predictor=str(trained), rule=rule)
        res = pol.compress(comp, s, 0.9, 0.9)
        assert res.floor is not None and res.floor.confidence == 0.9 and res.floor.reason
        assert res.floor.rule == rule  # the decision says which rule made it, and the weight it used
        assert (res.floor.weight is not None) == (rule == "tradeoff")
        if rule == "tradeoff":
            assert res.floor.weight == pol.weight(0.9, 0.9)
    plain = FloorPolicy.for_compressor("extractive", predictor=str(trained)).compress(comp, s, 0.9)
    assert plain.floor is not None and plain.floor.rule is None and plain.floor.weight is None
    with pytest.raises(ConfigError):
        FloorPolicy.for_compressor("extractive", predictor=str(trained), rule="greedy")
    # the facade picks the rule too, and a margin decision is the policy's own
    facade = Compressor(floor=0.9, confidence=0.9, compressor="extractive", predictor=str(trained), floor_rule="margin")
    via_facade = facade.compress(TEXT, "Which river?")
    direct = FloorPolicy.for_compressor("extractive", predictor=str(trained), rule="margin").compress(comp, s, 0.9, 0.9)
    assert via_facade.floor is not None and direct.floor is not None
    assert via_facade.floor.rule == "margin" and via_facade.floor.chosen_factor == direct.floor.chosen_factor
    assert Compressor(floor=0.9, confidence=0.9, compressor="extractive", predictor=str(trained)).compress(
        TEXT, "Which river?").floor.rule == "tradeoff"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="floor_rule"):
        Compressor(floor=0.9, floor_rule="greedy")
    with pytest.raises(ConfigError, match="floor_rule"):
        Compressor(floor=0.9, endpoint="http://127.0.0.1:9/", floor_rule="margin")


@pytest.mark.parametrize("name", ["extractive", "skim"])
@pytest.mark.parametrize("kind", ["default", "agnostic", "mlp"])
def test_search_equals_its_rate_by_rate_definition(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Selections in one pass and feature arrays give what selecting rate by rate and dict features give."""
    monkeypatch.delenv("POCSDK_PREDICTORS", raising=False)
    if not (predictors_root() / name / "card.json").is_file():
        pytest.skip(f"no shipped predictor for {name}")
    policy = FloorPolicy.for_compressor(name, predictor=kind)
    comp = get_compressor(name)
    for text, query in ((TEXT, "Which river?"), ("\n\n".join([TEXT] * 6), None)):
        scored = comp.score(text, query)
        pred, selections = policy.predict(comp, scored)
        rate_by_rate = [comp.select(scored, 1.0 / f) if f > 1 else selections[0] for f in policy.factors]
        for a, b in zip(selections[1:], rate_by_rate[1:], strict=True):
            assert np.array_equal(a.keep, b.keep) and a.partial == b.partial
            assert (a.skim is None) == (b.skim is None) and (a.skim is None or np.array_equal(a.skim, b.skim))
        ctx = context_features(scored, policy.task, policy._needed)
        ff = factor_features(scored, policy.factors, rate_by_rate)
        assert np.array_equal(pred, policy.predictor.predict(ctx, policy.factors, [ff]))


def test_reason_says_when_protected_text_holds_the_factor_back() -> None:
    txt = " ".join(f"You must always check the order number {i} before replying." for i in range(120))
    res = Compressor(floor=0.9, compressor="extractive").compress(txt + " The warehouse is in Leeds.", "Where?")
    assert res.floor is not None and res.floor.chosen_factor > 2.0 and res.compression_factor < 1.1
    assert f"achieved {res.compression_factor:.2f}x" in res.floor.reason
    plain = Compressor(floor=0.9, compressor="extractive").compress(TEXT, "Which river?")
    assert plain.floor is not None and "achieved" not in plain.floor.reason


def test_shipped_predictor_warns_when_the_compressor_is_configured_unlike_its_training() -> None:
    import warnings

    from pocsdk.errors import PredictorMismatchWarning

    if not (predictors_root() / "skim" / "card.json").is_file():
        pytest.skip("no shipped predictor for skim")
    with pytest.warns(PredictorMismatchWarning, match="skim_share=0.5"):
        Compressor(floor=0.9, compressor="skim", skim_share=0.5).compress(TEXT, "Which river?")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PredictorMismatchWarning)
        Compressor(floor=0.9, compressor="skim").compress(TEXT, "Which river?")  # defaults: no warning
        Compressor(floor=0.9, compressor="skim", tokenizer="heuristic").compress(TEXT, "Which river?")
        Compressor(keep_rate=0.5, compressor="skim", skim_share=0.5).compress(TEXT, "Which river?")  # no predictor


def test_a_task_reading_predictor_predicts_for_the_task_it_was_calibrated_on(scored) -> None:  # type: ignore[no-untyped-def]
    """Few-shot calibration predicted with the examples' task, the run time with 'other': the agnostic and MLP
    predictors then chose factors the calibration never vouched for (0-35% met the floor in a review)."""
    import warnings

    from pocsdk.errors import PredictorMismatchWarning
    from pocsdk.prediction.predictors import ContextAgnosticPredictor

    easy = synthetic_records(300, seed=1, task="qa", shift=-0.5)
    hard = synthetic_records(300, seed=2, task="summarization", shift=2.5, dataset="sum")
    pred = ContextAgnosticPredictor().fit(easy + hard)
    cal = fit_calibration(pred, synthetic_records(80, seed=3, task="summarization", shift=2.5, dataset="sum2"),
                          method="few_shot")
    assert cal.task == "summarization"
    policy = FloorPolicy(pred, cal, compressor="extractive")
    assert policy.task == "summarization"
    named = FloorPolicy(pred, cal, compressor="extractive", task="qa")
    comp, s = scored
    chosen = policy.compress(comp, s, 0.8, 0.9).floor
    as_qa = named.compress(comp, s, 0.8, 0.9).floor
    assert chosen is not None and as_qa is not None and chosen.chosen_factor < as_qa.chosen_factor
    mixed = fit_calibration(pred, easy[:100] + hard[:100])  # several tasks: run time must name one
    assert mixed.task is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FloorPolicy(pred, mixed, compressor="extractive").compress(comp, s, 0.8)  # no promise asked for
        FloorPolicy(pred, mixed, compressor="extractive", task="qa").compress(comp, s, 0.8, 0.9)
        unnamed = FloorPolicy(pred, mixed, compressor="extractive")
        unnamed.compress(comp, s, 0.8, 0.9)
        unnamed.compress(comp, s, 0.8, 0.9)  # once per policy
    assert [w.category for w in caught] == [PredictorMismatchWarning]


def test_custom_predictors_need_a_grid_and_never_rise() -> None:
    """A duck-typed predictor without factors_ failed with a raw AttributeError; one whose curve rose at 20x was
    used as given, so floor 0.9 chose 20x though 1.5x was predicted at 0.2."""
    import numpy as np

    from pocsdk import Compressor
    from pocsdk.errors import ConfigError

    class Rising:
        name = "rising"
        compressor_ = None

        def predict(self, ctx: Any, factors: Any, factor_features: Any = None) -> Any:
            return np.array([1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.95])

    text = " ".join(f"Sentence {i} about the lighthouse keeper of Karsby and tower {i}." for i in range(60))
    with pytest.raises(ConfigError, match="factors_"):
        Compressor(floor=0.9, predictor=Rising()).compress(text, "lighthouse")
    Rising.factors_ = [1, 1.5, 2, 3, 4, 6, 8, 12, 16, 20]  # type: ignore[attr-defined]
    r = Compressor(floor=0.9, predictor=Rising()).compress(text, "lighthouse")
    assert r.floor is not None and r.floor.chosen_factor == 1.0 and not r.floor.met
    assert r.floor.predictions[-1] == pytest.approx(0.2)

    class NoneAtOne(Rising):  # no prediction where nothing is dropped: the others still count
        def predict(self, ctx: Any, factors: Any, factor_features: Any = None) -> Any:
            return np.array([np.nan, 0.96, 0.95, 0.94, 0.93, 0.5, 0.4, 0.3, 0.2, 0.1])

    r = Compressor(floor=0.9, predictor=NoneAtOne()).compress(text, "lighthouse")
    assert r.floor is not None and r.floor.chosen_factor == 4.0 and r.floor.met

    class InfAtTwenty(Rising):  # an infinite prediction is clipped like any other
        def predict(self, ctx: Any, factors: Any, factor_features: Any = None) -> Any:
            return np.array([1.0, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, np.inf])

    r = Compressor(floor=0.9, predictor=InfAtTwenty()).compress(text, "lighthouse")
    assert r.floor is not None and r.floor.chosen_factor == 1.5
