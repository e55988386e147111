"""MemoSight special tokens: step splitter, memory tokens, continue token, foresight token.

Added as special tokens so the tokenizer never splits them, and appended to the embedding matrix with
the mean embedding as their start value (deterministic, unlike transformers' sampled mean resizing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pocsdk.errors import ConfigError


@dataclass(frozen=True)
class SpecialTokens:
    """Names of the MemoSight tokens. Memory token ``k`` is ``memory_template.format(k=k)``."""

    splitter: str = "<|splitter|>"
    continue_: str = "<|continue|>"
    foresight: str = "<|foresight|>"
    memory_template: str = "<|memory_{k}|>"
    max_memory: int = 256
    """Distinct memory tokens; a step never gets more than this many (m is clamped)."""

    def names(self) -> list[str]:
        """All token strings, in the order they are added to the vocabulary."""
        if self.max_memory < 1:
            raise ConfigError("max_memory must be >= 1")
        mem = [self.memory_template.format(k=k) for k in range(self.max_memory)]
        return [self.splitter, self.continue_, self.foresight, *mem]


@dataclass(frozen=True)
class TokenIds:
    """Resolved ids of the MemoSight tokens in one tokenizer."""

    splitter: int
    continue_: int
    foresight: int
    memory: tuple[int, ...]
    eos: int | None = None

    @property
    def max_memory(self) -> int:
        return len(self.memory)

    def special(self) -> set[int]:
        """Ids that never appear in user-visible text."""
        return {self.splitter, self.continue_, self.foresight, *self.memory}


def resolve_token_ids(tokenizer: Any, tokens: SpecialTokens | None = None) -> TokenIds:
    """Ids of the MemoSight tokens; ConfigError when the tokenizer lacks them (call ``add_special_tokens``)."""
    tokens = tokens or SpecialTokens()
    vocab = tokenizer.get_vocab()
    missing = [n for n in tokens.names() if n not in vocab]
    if missing:
        raise ConfigError(f"tokenizer lacks {len(missing)} MemoSight tokens (first: {missing[0]!r}); "
                          "call pocsdk.reasoning.memosight.add_special_tokens first")
    names = tokens.names()
    return TokenIds(splitter=vocab[names[0]], continue_=vocab[names[1]], foresight=vocab[names[2]],
                    memory=tuple(vocab[n] for n in names[3:]), eos=tokenizer.eos_token_id)


def add_special_tokens(tokenizer: Any, model: Any | None = None, tokens: SpecialTokens | None = None) -> TokenIds:
    """Add the tokens to ``tokenizer`` (idempotent) and grow ``model``'s embeddings to match.

    New input (and untied output) rows start at the mean of the existing rows, so an untrained model
    treats the new tokens like an average token instead of noise.
    """
    tokens = tokens or SpecialTokens()
    vocab = tokenizer.get_vocab()
    new = [n for n in tokens.names() if n not in vocab]
    first_new = len(tokenizer)
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    if model is not None:
        _resize(model, len(tokenizer), first_new if new else len(tokenizer))
    return resolve_token_ids(tokenizer, tokens)


def _resize(model: Any, size: int, first_new: int | None = None) -> None:
    """Make room for ``size`` rows; the rows of the new tokens (from ``first_new``) start at the mean of
    the rows before them, also when a padded table already had room (Qwen pads its vocabulary)."""
    import torch

    old = int(model.get_input_embeddings().weight.shape[0])
    first_new = min(old, size) if first_new is None else first_new
    if old < size:
        model.resize_token_embeddings(size, mean_resizing=False)
    if first_new >= size:
        return
    with torch.no_grad():
        inp = model.get_input_embeddings().weight
        inp[first_new:size] = inp[:first_new].mean(dim=0, keepdim=True)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != inp.data_ptr():
            out.weight[first_new:size] = out.weight[:first_new].mean(dim=0, keepdim=True)
            bias = getattr(out, "bias", None)
            if bias is not None:
                bias[first_new:size] = bias[:first_new].mean()
