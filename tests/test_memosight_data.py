"""MemoSight data construction on small golden cases (pure Python, no torch)."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import pytest

from pocsdk.errors import ConfigError, InvalidInputError, InvalidRateError
from pocsdk.reasoning.memosight.data import (
    CONTINUE,
    FORESIGHT,
    IGNORE,
    MEMORY,
    PROMPT,
    SPLIT,
    TEXT,
    build_layout,
    memory_positions,
    num_memory,
    split_output,
    split_steps,
)
from pocsdk.reasoning.memosight.session import ratio_for_floor
from pocsdk.reasoning.memosight.tokens import TokenIds
from pocsdk.reasoning.memosight.training import parse_record

S, C, F, EOS = 100, 101, 102, 1
IDS = TokenIds(splitter=S, continue_=C, foresight=F, memory=(110, 111, 112, 113), eos=EOS)
M0, M1 = 110, 111


def test_num_memory_is_ceil_n_over_c_at_least_one() -> None:
    assert num_memory(7, 4, 256) == 2
    assert num_memory(1, 16, 256) == 1
    assert num_memory(16, 16, 256) == 1
    assert num_memory(17, 16, 256) == 2
    assert num_memory(300, 2, 256) == 150
    assert num_memory(600, 2, 256) == 256  # clamped to the distinct memory tokens
    with pytest.raises(ConfigError):
        num_memory(4, 0, 8)


def test_memory_positions_are_share_centres() -> None:
    assert memory_positions(10, 5, 2) == [11, 13]  # s = 2.5: floor(1.25), floor(3.75)
    assert memory_positions(0, 8, 2) == [2, 6]
    assert memory_positions(0, 7, 3) == [1, 3, 5]  # s = 7/3
    assert memory_positions(4, 1, 1) == [4]
    for n in range(1, 40):
        for m in range(1, n + 1):
            pos = memory_positions(0, n, m)
            s = Fraction(n, m)
            assert pos == [math.floor(k * s + s / 2) for k in range(m)]
            assert all(0 <= p < n for p in pos) and pos == sorted(pos)


def test_layout_golden_case() -> None:
    lay = build_layout([10, 11], [[20, 21, 22]], [30, EOS], IDS, ratio=2)
    assert lay.input_ids == [10, 11, 20, 21, 22, S, M0, M1, C, 30, EOS]
    assert lay.position_ids == [0, 1, 2, 3, 4, 5, 3, 5, 6, 7, 8]
    assert lay.kinds == [PROMPT, PROMPT, TEXT, TEXT, TEXT, SPLIT, MEMORY, MEMORY, CONTINUE, TEXT, TEXT]
    assert lay.targets == [IGNORE, 20, 21, 22, S, IGNORE, IGNORE, IGNORE, 30, EOS, IGNORE]
    assert lay.raw_step == [-1, -1, 0, 0, 0, 0, -1, -1, -1, 1, 1]
    assert lay.ncont == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_later_text_keeps_its_positions() -> None:
    """Positions of text after compressed steps equal those of the plain sequence with one continue per step."""
    steps = [[20, 21, 22, 23, 24], [25, 26]]
    for ratio in (2, 4, 6, 8, 16):
        lay = build_layout([10], steps, [30, 31], IDS, ratio=ratio)
        stream = [p for p, k in zip(lay.position_ids, lay.kinds, strict=True) if k != MEMORY]
        assert stream == list(range(len(stream)))


def test_foresight_golden_case() -> None:
    lay = build_layout([10, 11], [[20, 21]], [30], IDS, ratio=4, max_offset=1, offsets=[1])
    assert lay.input_ids == [10, 11, F, 20, F, 21, S, M0, C, 30]
    assert lay.position_ids == [0, 1, 2, 2, 3, 3, 4, 3, 5, 6]
    fore = [i for i, k in enumerate(lay.kinds) if k == FORESIGHT]
    assert [lay.targets[i] for i in fore] == [21, S]  # the token d + 1 = 2 ahead of the anchor
    assert [lay.offsets[i] for i in fore] == [1, 1]
    lay0 = build_layout([10, 11], [[20, 21]], [30], IDS, ratio=4, max_offset=0, offsets=[0])
    fore0 = [i for i, k in enumerate(lay0.kinds) if k == FORESIGHT]
    assert [lay0.targets[i] for i in fore0] == [20, 21, S, 30]  # d = 0 repeats next-token prediction


def test_random_offsets_stay_in_range_and_segment() -> None:
    lay = build_layout([10], [[20, 21, 22, 23], [24, 25]], [30, 31, 32], IDS, ratio=2, max_offset=2, seed=3)
    for i, k in enumerate(lay.kinds):
        if k == FORESIGHT:
            assert 0 <= lay.offsets[i] <= 2
            assert lay.targets[i] != IGNORE


def test_split_steps_and_output() -> None:
    assert split_steps("a b\n\nc\n  \n d\n") == ["a b", "c", "d"]
    assert split_steps("x\ny\n\nz", mode="line") == ["x", "y", "z"]
    with pytest.raises(ConfigError):
        split_steps("x", mode="words")
    assert split_output([5, 6, S, 7, S, 8], IDS) == ([[5, 6, S], [7, S]], [8])


def test_bad_inputs() -> None:
    with pytest.raises(InvalidInputError):
        build_layout([], [[1]], [], IDS, 4)
    with pytest.raises(InvalidRateError):
        ratio_for_floor(1.5)
    assert ratio_for_floor(1.0) is None
    assert ratio_for_floor(0.95) == 4.0
    assert ratio_for_floor(0.5) == 16.0


def test_parse_records() -> None:
    gsm = parse_record({"question": "q?", "answer": "a = 1\nb = 2\n#### 3"})
    assert gsm is not None and gsm.steps == ["a = 1", "b = 2"] and gsm.answer == "#### 3"
    bespoke = {"system": "sys", "conversations": [
        {"from": "user", "value": "Q"},
        {"from": "assistant", "value": "<|begin_of_thought|>\n\nx\n\ny\n\n<|end_of_thought|>\n\n"
                                       "<|begin_of_solution|>\n\nz\n\n<|end_of_solution|>"}]}
    tr = parse_record(bespoke)
    assert tr is not None and tr.steps == ["x", "y"] and tr.answer == "z" and tr.system == "sys"
    assert parse_record({"text": "nothing"}) is None


def test_import_does_not_import_torch() -> None:
    code = "import sys, pocsdk, pocsdk.reasoning.memosight; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
