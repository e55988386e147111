"""MemoSight data construction: reasoning traces into token layouts with positions, targets and mask metadata.

A trace is a prompt, reasoning steps and a final answer. After each step comes the splitter, then
``m = max(1, ceil(n / c))`` memory tokens (``n`` = step tokens including the splitter, ``c`` = compression
ratio), then the continue token. Positions follow EPL: text tokens, the splitter and the continue token
count positions as ordinary text (so later text keeps the positions it would have without memory
tokens); memory token ``k`` of a step starting at ``p0`` sits at ``p0 + floor((k + 1/2) * n / m)``
(integer arithmetic). Foresight tokens are optional extra queries placed before a text token: one anchored
on the previous text token at position ``p`` sits at ``p + d`` and is trained to predict the text token at
``p + d + 1`` of the same segment; no other token attends to it.

Pure Python (no torch) so layouts can be built and tested without the neural extra.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pocsdk.errors import ConfigError, InvalidInputError
from pocsdk.reasoning.memosight.tokens import TokenIds

IGNORE = -100
RATIOS = (2, 4, 6, 8, 16)
"""Compression ratios the paper trains and evaluates."""

PROMPT, TEXT, SPLIT, MEMORY, CONTINUE, FORESIGHT = range(6)
"""Token kinds in a layout."""


@dataclass
class Layout:
    """One training sequence: tokens, EPL positions, per-position targets and what the mask needs.

    ``targets[i]`` is the token the logits at ``i`` must predict (already shifted), ``IGNORE`` if none.
    ``raw_step[i]`` is the step a raw output token (text or splitter) belongs to, -1 otherwise;
    ``ncont[i]`` counts continue tokens at or before ``i``. Raw tokens of step ``g`` are hidden from
    query ``i`` when ``g + window < ncont[i]`` (``window`` > 0 is the HybridThinker variant).
    """

    input_ids: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    raw_step: list[int] = field(default_factory=list)
    ncont: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    """Foresight offset ``d`` of foresight tokens, -1 for every other token."""
    window: int = 0
    ratio: float = 0.0

    def __len__(self) -> int:
        return len(self.input_ids)

    def _add(self, tok: int, pos: int, kind: int, raw_step: int, ncont: int, offset: int = -1) -> None:
        self.input_ids.append(tok)
        self.position_ids.append(pos)
        self.kinds.append(kind)
        self.raw_step.append(raw_step)
        self.ncont.append(ncont)
        self.targets.append(IGNORE)
        self.offsets.append(offset)


def num_memory(step_tokens: int, ratio: float, max_memory: int) -> int:
    """Memory tokens for a step of ``step_tokens`` tokens (splitter included): ``max(1, ceil(n / c))``."""
    if ratio <= 0:
        raise ConfigError(f"compression ratio must be > 0, got {ratio}")
    return min(max_memory, max(1, math.ceil(step_tokens / ratio)))


def memory_positions(p0: int, n: int, m: int) -> list[int]:
    """EPL positions of ``m`` memory tokens summarising ``n`` tokens that start at ``p0``.

    Token ``k`` sits at the centre of its share: ``p0 + floor(k * s + s / 2)`` with ``s = n / m``,
    computed as ``(2k + 1) * n // (2m)`` so no float rounding can move it.
    """
    return [p0 + ((2 * k + 1) * n) // (2 * m) for k in range(m)]


def split_steps(text: str, mode: str = "blank_line") -> list[str]:
    """Reasoning text into steps: at blank lines (default) or at every line break (``mode='line'``)."""
    if mode not in ("blank_line", "line"):
        raise ConfigError(f"unknown step split mode {mode!r}: use 'blank_line' or 'line'")
    pattern = r"\n\s*\n" if mode == "blank_line" else r"\n+"
    return [s.strip() for s in re.split(pattern, text) if s.strip()]


def build_layout(
    prompt: Sequence[int],
    steps: Sequence[Sequence[int]],
    final: Sequence[int],
    ids: TokenIds,
    ratio: float,
    *,
    window: int = 0,
    max_offset: int | None = None,
    seed: int | None = 0,
    offsets: Sequence[int] | None = None,
) -> Layout:
    """The full training layout of one trace.

    ``steps`` are token lists that end with the splitter (added when missing); ``final`` is the answer
    (not compressed). ``max_offset`` None means no foresight tokens; otherwise every text token gets a
    foresight token before it with offset ``d`` drawn from ``0..max_offset`` (``seed``) or taken
    cyclically from ``offsets``, skipped when its target would leave the segment.
    """
    if not prompt:
        raise InvalidInputError("the prompt must have at least one token")
    if window < 0:
        raise ConfigError("window must be >= 0")
    rng = random.Random(seed)
    out = Layout(window=window, ratio=float(ratio))
    stream: list[int] = []  # layout indices of the text stream (prompt, text, splitter, continue)
    for tok in prompt:
        stream.append(len(out))
        out._add(int(tok), len(stream) - 1, PROMPT, -1, 0)
    ncont = 0
    n_fore = 0
    segments = [(list(s) if s and s[-1] == ids.splitter else [*s, ids.splitter], True) for s in steps]
    if final:
        segments.append((list(final), False))
    for step_id, (seg, closed) in enumerate(segments):
        p0 = len(stream)
        for k, tok in enumerate(seg):
            if max_offset is not None:
                d = (offsets[n_fore % len(offsets)] if offsets else rng.randint(0, max_offset))
                if k + d < len(seg):
                    n_fore += 1
                    anchor = stream[-1]
                    out._add(ids.foresight, out.position_ids[anchor] + d, FORESIGHT, -1, ncont, d)
                    out.targets[-1] = int(seg[k + d])
            out.targets[stream[-1]] = int(tok)  # the previous stream token predicts this one
            stream.append(len(out))
            kind = SPLIT if closed and k == len(seg) - 1 else TEXT
            out._add(int(tok), len(stream) - 1, kind, step_id, ncont)
        if not closed:
            break
        n = len(seg)
        m = num_memory(n, ratio, ids.max_memory)
        for k, pos in enumerate(memory_positions(p0, n, m)):
            out._add(ids.memory[k], pos, MEMORY, -1, ncont)
        ncont += 1
        stream.append(len(out))
        out._add(ids.continue_, p0 + n, CONTINUE, -1, ncont)
    return out


def split_output(output: Sequence[int], ids: TokenIds) -> tuple[list[list[int]], list[int]]:
    """A generated visible stream (text and splitters) back into closed steps and the open tail."""
    steps: list[list[int]] = []
    cur: list[int] = []
    for tok in output:
        cur.append(int(tok))
        if tok == ids.splitter:
            steps.append(cur)
            cur = []
    return steps, cur


def format_prompt(tokenizer: Any, question: str, system: str | None = None) -> list[int]:
    """Prompt token ids: the chat template with a generation prompt when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = (f"{system}\n\n" if system else "") + f"Question: {question}\nAnswer:\n"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_trace(
    tokenizer: Any,
    ids: TokenIds,
    question: str,
    steps: Sequence[str],
    answer: str,
    ratio: float,
    *,
    system: str | None = None,
    window: int = 0,
    max_offset: int | None = 2,
    seed: int | None = 0,
    max_length: int | None = None,
) -> Layout:
    """Tokenise one trace (each step as ``step + '\\n'`` then the splitter) and build its layout.

    Trailing steps that would push the layout past ``max_length`` are dropped (the answer with them).
    """
    prompt = format_prompt(tokenizer, question, system)
    step_ids = [[*tokenizer(s + "\n", add_special_tokens=False)["input_ids"], ids.splitter] for s in steps]
    final = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if ids.eos is not None:
        final.append(ids.eos)
    layout = build_layout(prompt, step_ids, final, ids, ratio, window=window, max_offset=max_offset, seed=seed)
    while max_length is not None and len(layout) > max_length and (step_ids or final):
        if final:
            final = []
        else:
            step_ids.pop()
        layout = build_layout(prompt, step_ids, final, ids, ratio, window=window, max_offset=max_offset, seed=seed)
    return layout
