"""Selections at a whole grid of keep rates in one pass, for the floor search.

The floor search needs the compressor's selection at every factor of its grid. Calling
``select`` once per rate repeats the same sort and the same greedy walk; here the rates share
them. :func:`fill_budgets` is :func:`~pocsdk.compressors.base.fill_budget` for many budgets at
once (same result row by row), and :func:`select_many` gives, for any compressor, exactly the
selections that ``select`` would give rate by rate.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

import numpy as np

from pocsdk.compressors.base import (
    Scored,
    Selection,
    TextCompressor,
    UnitCompressor,
    budget_for,
    early_selection,
    fill_budget,
)
from pocsdk.compressors.topup import top_up


def select_many(compressor: TextCompressor, scored: Scored, keep_rates: Sequence[float]) -> list[Selection]:
    """``[compressor.select(scored, r) for r in keep_rates]``, shared work where the compressor allows it.

    A compressor may offer its own ``select_many(scored, keep_rates)``; compressors that keep
    :meth:`UnitCompressor.select` use :func:`unit_select_many`; any other is asked rate by rate.
    """
    many = getattr(compressor, "select_many", None)
    if callable(many):
        return list(many(scored, keep_rates))
    if getattr(type(compressor), "select", None) is UnitCompressor.select:
        return unit_select_many(scored, keep_rates)
    return [compressor.select(scored, r) for r in keep_rates]


def unit_select_many(scored: Scored, keep_rates: Sequence[float]) -> list[Selection]:
    """:meth:`UnitCompressor.select` at each rate, sorting once and filling every budget together."""
    budgets = [budget_for(scored, r) for r in keep_rates]
    out = [early_selection(scored, r) for r in keep_rates]
    todo = [i for i, sel in enumerate(out) if sel is None]
    if todo:
        u = scored.units
        order = np.argsort(-u.relevance, kind="stable")
        keeps = fill_budgets(order, u.tokens, [budgets[i] for i in todo], u.protected)
        for keep, used, i in zip(keeps, (keeps @ u.tokens).tolist(), todo, strict=True):
            partial = top_up(scored, order, keep, budgets[i], used=used)
            out[i] = Selection(keep=keep, keep_rate=keep_rates[i], partial=partial)
    return [sel for sel in out if sel is not None]


def fill_budgets(
    order: np.ndarray,
    costs: np.ndarray,
    budgets: Sequence[int] | np.ndarray,
    chosen: np.ndarray,
    blocked: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy knapsack fill (:func:`~pocsdk.compressors.base.fill_budget`) for many budgets at once.

    Row ``i`` of the ``(len(budgets), n)`` result walks ``order`` and takes each item that still
    fits ``budgets[i]``, on top of ``chosen`` (taken already; their costs count first). ``costs``
    (non-negative), ``chosen`` and ``blocked`` (never taken, as if absent from ``order``) are one
    row shared by all budgets or one row per budget. Row by row the result equals ``fill_budget``.
    """
    b = np.asarray(budgets, dtype=np.int64)
    m, n = len(b), np.shape(chosen)[-1]
    cost = np.asarray(costs)
    if m == 1:  # one budget: the plain walk is cheaper than setting up the shared one
        walk = order if blocked is None else order[~np.reshape(blocked, -1)[order]]
        return fill_budget(walk, np.reshape(cost, -1), int(b[0]), np.reshape(chosen, -1).copy())[None, :]
    remaining = b - np.where(chosen, cost, 0).sum(axis=-1)
    skip = chosen if blocked is None else chosen | blocked
    taken = fill_walk(cost.take(order, axis=-1), remaining, skip.take(order, axis=-1))
    # back from walk order to item order (items not in ``order`` read the last, empty column)
    rank = np.full(n, len(order))
    rank[order] = np.arange(len(order))
    return np.concatenate([taken, np.zeros((m, 1), dtype=bool)], axis=1).take(rank, axis=1) | chosen


def fill_walk(costs: np.ndarray, remaining: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """:func:`fill_budgets` along the items' own order, ``remaining`` after what is chosen already.

    ``costs`` and ``skip`` (chosen or blocked: never taken, cost nothing) are ``(n,)`` or
    ``(len(remaining), n)``; returns the ``(len(remaining), n)`` items taken.
    """
    if len(remaining) == 1:  # one budget: the plain walk is cheaper than setting up the shared one
        items = np.flatnonzero(~np.reshape(skip, -1))
        cost = np.reshape(costs, -1)
        return fill_budget(items, cost, int(remaining[0]), np.zeros(len(cost), dtype=bool))[None, :]
    if not np.shape(costs)[-1]:
        return np.zeros((len(remaining), 0), dtype=bool)
    if (len(remaining) * np.shape(costs)[-1] <= SMALL_WALK and np.asarray(costs).dtype.kind in "iub"
            and np.asarray(remaining).dtype.kind in "iu"):
        return _walk_small(costs, remaining, skip)
    walk = np.atleast_2d(np.where(skip, 0, costs))
    csum = np.cumsum(walk, axis=1)
    # the longest prefix that fits, as fill_budget's fast path (nothing at all when nothing is left)
    prefix = csum <= np.where(remaining > 0, remaining, -1)[:, None]
    k = prefix.sum(axis=1)
    row = np.arange(len(remaining)) if len(csum) > 1 else 0
    left = remaining - np.where(k > 0, csum[row, k - 1], 0)
    free = ~np.atleast_2d(skip)
    take = prefix & free
    # fill_budget's slow path: only items no larger than what is left, after the prefix, may still fit
    late = (walk <= np.where(left > 0, left, -1)[:, None]) & ~prefix & free
    if late.any():
        take[_greedy_tails(walk, late, left)] = True
    return take


SMALL_WALK = 2048
"""Up to this many (budget, item) cells :func:`fill_walk` walks in plain Python: numpy's per-call overhead
would dominate (a floor search over a few thousand tokens)."""


def _walk_small(costs: np.ndarray, remaining: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """:func:`fill_walk` for integer costs with Python lists: per budget, the longest prefix of the free items
    that fits (a running sum, as ``fill_budget``'s), then each later item that still fits until nothing is left.

    Array methods, not ``np.`` functions: on arrays this small the functions' Python wrappers cost more.
    """
    m, n = len(remaining), np.shape(costs)[-1]
    free = ~np.asarray(skip, dtype=bool)
    cost = np.asarray(costs)
    if free.ndim == 1 and cost.ndim == 1:  # one walk shared by every budget
        items = free.nonzero()[0]
        shared = (items.tolist(), cost.take(items).tolist())
        row_items = [shared[0]] * m
        row_costs = [shared[1]] * m
        running = [list(accumulate(shared[1]))] * m
    else:
        if free.ndim == 1:
            free = free[None, :].repeat(m, axis=0)
        row_of, pos = free.nonzero()
        bounds = row_of.searchsorted(np.arange(m + 1)).tolist()
        pos_l = pos.tolist()
        cost_l = (cost.take(pos) if cost.ndim == 1 else cost[row_of, pos]).tolist()
        row_items = [pos_l[bounds[r]:bounds[r + 1]] for r in range(m)]
        row_costs = [cost_l[bounds[r]:bounds[r + 1]] for r in range(m)]
        running = [list(accumulate(c)) for c in row_costs]
    taken = bytearray(m * n)  # row by row; set in Python, read by numpy without converting index lists
    for r, left in enumerate(np.asarray(remaining).tolist()):
        if left <= 0:
            continue
        items_r, costs_r = row_items[r], row_costs[r]
        k = bisect_right(running[r], left)  # the prefix that fits
        base = r * n
        if k:
            for j in items_r[:k]:
                taken[base + j] = 1
            left -= running[r][k - 1]
        if left > 0:
            for j, c in zip(items_r[k:], costs_r[k:], strict=True):
                if c <= left:
                    taken[base + j] = 1
                    left -= c
                    if left <= 0:
                        break
    return np.frombuffer(taken, dtype=bool).reshape(m, n)


def _greedy_tails(walk: np.ndarray, late: np.ndarray, left: np.ndarray) -> tuple[list[int], list[int]]:
    """(rows, positions) of the items the greedy walk still takes after the prefix.

    ``late`` marks, per row, the only items that can fit (no larger than ``left``, after the prefix).
    """
    row_of, pos = np.nonzero(late)
    bounds = np.searchsorted(row_of, np.arange(len(left) + 1)).tolist()
    cost = (walk[0, pos] if len(walk) == 1 else walk[row_of, pos]).tolist()
    pos_l = pos.tolist()
    rows: list[int] = []
    taken: list[int] = []
    for i, remaining in enumerate(left.tolist()):
        a, b = bounds[i], bounds[i + 1]
        for c, p in zip(cost[a:b], pos_l[a:b], strict=True):
            if c <= remaining:
                rows.append(i)
                taken.append(p)
                remaining -= c
                if remaining <= 0:
                    break
    return rows, taken
