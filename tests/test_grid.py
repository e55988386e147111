"""Selections at a grid of rates in one pass equal the selections made rate by rate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pocsdk.compressors import get_compressor, grid
from pocsdk.compressors.base import Scored, Selection, fill_budget
from pocsdk.compressors.grid import fill_budgets, select_many

RATES = [1.0, 0.999, 0.9, 2 / 3, 0.5, 1 / 3, 0.25, 1 / 6, 0.125, 1 / 12, 0.0625, 0.05, 0.02, 0.004, 1.0, 0.3]
PARAGRAPH = ("The river Danube flows through ten countries. It rises in the Black Forest. Vienna, Budapest and "
             "Belgrade lie on its banks. Ships carry grain and steel on it. It is not navigable for large ships "
             "above Kelheim, but barges go further. Its delta is a nature reserve. Fishermen catch carp there. "
             "Many bridges cross it. The longest is in Romania.")
TEXTS = [
    "\n\n".join(PARAGRAPH.replace("Danube", f"Danube {i}") for i in range(12)),
    PARAGRAPH + " <keep>Never reveal the code 7.</keep> You must answer briefly.\n\n" + PARAGRAPH * 6,
    "Short text.",
    "\n\n".join(f"Item {i}: " + "word " * (i % 17 + 1) + "end." for i in range(120)),
]


def _same(a: Selection, b: Selection) -> bool:
    skims = (a.skim is None and b.skim is None) or (
        a.skim is not None and b.skim is not None and np.array_equal(a.skim, b.skim))
    return (np.array_equal(a.keep, b.keep) and skims and a.partial == b.partial and a.keep_rate == b.keep_rate
            and a.passthrough_reason == b.passthrough_reason)


@pytest.mark.parametrize(("name", "params"), [
    ("extractive", {}), ("skim", {}), ("skim", {"skim_share": 0.0}), ("skim", {"segment_tokens": 20}),
    ("truncate", {}), ("random", {}),
])
@pytest.mark.parametrize("text", range(len(TEXTS)))
def test_select_many_equals_select(name: str, params: dict[str, Any], text: int) -> None:
    comp = get_compressor(name, **params)
    for query in ("Where does the Danube rise?", None):
        scored = comp.score(TEXTS[text], query)
        many = select_many(comp, scored, RATES)
        assert len(many) == len(RATES)
        for rate, sel in zip(RATES, many, strict=True):
            assert _same(sel, comp.select(scored, rate)), rate


class _OnlySelect:
    """A compressor with nothing but the protocol: asked rate by rate."""

    name = "extractive"

    def __init__(self) -> None:
        self.inner = get_compressor("extractive")
        self.calls = 0

    def score(self, context: Any, query: str | None = None) -> Scored:
        return self.inner.score(context, query)

    def select(self, scored: Scored, keep_rate: float) -> Selection:
        self.calls += 1
        return self.inner.select(scored, keep_rate)


def test_select_many_falls_back_to_select() -> None:
    comp = _OnlySelect()
    scored = comp.score(TEXTS[0], "Danube")
    many = select_many(comp, scored, RATES[:4])  # type: ignore[arg-type]
    assert comp.calls == 4
    assert all(_same(a, comp.inner.select(scored, r)) for a, r in zip(many, RATES[:4], strict=True))


def test_fill_budgets_equals_fill_budget_row_by_row() -> None:
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n = int(rng.integers(0, 25))
        tokens = rng.integers(0, int(rng.choice([3, 10, 60])), n)
        tokens[rng.random(n) < 0.2] = 0  # zero costs: taken after an exact fill only in the prefix
        order = rng.permutation(n)[: int(rng.integers(0, n + 1))] if rng.random() < 0.3 else rng.permutation(n)
        m = int(rng.integers(1, 6))
        budgets = rng.integers(-5, int(tokens.sum()) + 5, m)
        chosen = rng.random(n) < 0.2 if rng.random() < 0.5 else rng.random((m, n)) < 0.2
        costs = tokens if rng.random() < 0.5 else np.stack([rng.permutation(tokens) for _ in range(m)])
        blocked = None if rng.random() < 0.5 else rng.random((m, n)) < 0.2
        got = fill_budgets(order, costs, budgets, chosen, blocked)
        for i in range(m):
            walk = order if blocked is None else order[~blocked[i][order]]
            want = fill_budget(walk, np.broadcast_to(costs, (m, n))[i], int(budgets[i]),
                               np.broadcast_to(chosen, (m, n))[i].copy())
            assert np.array_equal(got[i], want)


def test_small_walks_in_python_equal_the_vectorised_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(2000):
        m, n = int(rng.integers(2, 8)), int(rng.integers(1, 30))
        costs = rng.integers(0, int(rng.choice([3, 10, 60])), n if rng.random() < 0.5 else (m, n))
        skip = rng.random(n if rng.random() < 0.5 else (m, n)) < rng.random() * 0.6
        remaining = rng.integers(-3, int(costs.sum()) // m + 5, m)
        cases.append((costs, remaining, skip))
    small = [grid.fill_walk(*case) for case in cases]
    monkeypatch.setattr(grid, "SMALL_WALK", 0)
    for case, got in zip(cases, small, strict=True):
        assert np.array_equal(got, grid.fill_walk(*case))
