"""MemoSight: compress a reasoning model's finished thought steps into memory tokens, draft with foresight tokens.

arXiv 2604.14889 (official code: helldog-star/MemoSight). Needs the ``[neural]`` extra (training: ``[train]``);
importing this package does not import torch.

* :mod:`.tokens`   special tokens and embedding resize
* :mod:`.data`     trace -> layout (EPL positions, targets, mask metadata), pure Python
* :mod:`.model`    4D masks, positions, DynamicCache eviction for HF causal LMs
* :mod:`.generate` greedy decoding with KV eviction and fused self-speculative drafting
* :mod:`.session`  :class:`ReasoningSession` with pydantic stats
* :mod:`.training` SFT with 0.7 LM + 0.3 multi-token-prediction loss
"""

from __future__ import annotations

from pocsdk.reasoning.memosight.data import RATIOS, Layout, build_layout, memory_positions, num_memory, split_steps
from pocsdk.reasoning.memosight.generate import DecodeConfig, DecodeResult, decode
from pocsdk.reasoning.memosight.session import (
    FLOOR_TO_RATIO,
    ReasoningResult,
    ReasoningSession,
    ReasoningStats,
    ratio_for_floor,
)
from pocsdk.reasoning.memosight.tokens import SpecialTokens, TokenIds, add_special_tokens, resolve_token_ids

__all__ = [
    "FLOOR_TO_RATIO",
    "RATIOS",
    "DecodeConfig",
    "DecodeResult",
    "Layout",
    "ReasoningResult",
    "ReasoningSession",
    "ReasoningStats",
    "SpecialTokens",
    "TokenIds",
    "add_special_tokens",
    "build_layout",
    "decode",
    "memory_positions",
    "num_memory",
    "ratio_for_floor",
    "resolve_token_ids",
    "split_steps",
]
