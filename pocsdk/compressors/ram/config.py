"""RAM settings and the keep-rate arithmetic, importable without torch.

Close reading keeps a fraction ``rho`` of the segments as text; every other segment becomes one
vector. With segments of ``w`` tokens the decoder reads ``rho + (1 - rho) / w`` of the original
tokens, so the effective compression factor is ``1 / (rho + (1 - rho) / w)``. The predictor speaks
in keep rates (decoder tokens / original tokens) for every compressor; these helpers translate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pocsdk.errors import ConfigError

OFFICIAL_ENCODER_LAYERS = 8
"""``num_compressor_encoder_layers`` in the official ``qa.sh``."""
OFFICIAL_SEGMENT_TOKENS = 50
"""``segment_size`` in the official ``qa.sh`` (the paper's ablations also use other widths)."""
OFFICIAL_QUERY_TEMPLATE = "Question:{query}\nAnswer:"
"""The decoder-side question prompt of the official ``InferDataset`` (no instruction, no chat template)."""


@dataclass
class RAMConfig:
    """Architecture and inference settings of one RAM model (saved as JSON with checkpoints)."""

    encoder_layers: int = OFFICIAL_ENCODER_LAYERS
    """The encoder is the backbone's first ``encoder_layers`` layers (plus its final norm)."""
    segment_tokens: int = 32
    """Width ``w`` of the fixed token windows; a skimmed segment costs one vector instead of ``w`` tokens."""
    encode_batch_size: int = 512
    """Segments per encoder forward pass (bounds memory at long inputs; results do not depend on it)."""
    query_template: str = OFFICIAL_QUERY_TEMPLATE
    """Decoder prompt after the hybrid memory; ``{query}`` is replaced by the question."""
    context_prefix: str = ""
    """Decoder text before the hybrid memory (empty in the official setup); e.g. a chat template's user turn."""
    add_bos: bool = True
    """Open the decoder input with the tokenizer's BOS token when the tokenizer adds one to a text by default
    (Llama's do), as the official code's tokenization does."""
    document_separator: str = "\n"
    """Text between two documents in the decoder input (the official code joins documents with a line break)."""
    kept_embeddings: Literal["decoder", "encoder"] = "decoder"
    """Embedding table for close-read tokens (the official code uses the encoder's own copy)."""
    separate_encoder: bool = False
    """True: the encoder owns a copy of its layers (needed to train it); False: it shares the decoder's."""
    temperature: float = 0.1
    """InfoNCE temperature (the official code hard-codes 0.05)."""
    contrastive_weight: float = 1.0
    """Weight of the InfoNCE term next to the answer LM loss (the official code adds them, weight 1)."""
    lora_r: int = 0
    """LoRA rank on the encoder (0: no LoRA); set by training, needed to rebuild the model on load."""
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        """Reject nonsense at construction, not deep inside a forward pass."""
        for name in ("encoder_layers", "segment_tokens", "encode_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.segment_tokens < 2:
            raise ConfigError("segment_tokens must be at least 2 (a one-token segment cannot be compressed)")
        if "{query}" not in self.query_template:
            raise ConfigError("query_template must contain '{query}'")
        try:
            self.query_template.format(query="")
        except (KeyError, IndexError, ValueError) as exc:  # other fields, or unbalanced braces
            raise ConfigError(f"query_template may hold no field but {{query}} (double other braces): "
                              f"{exc!r}") from None
        if self.kept_embeddings not in ("decoder", "encoder"):
            raise ConfigError(f"kept_embeddings must be 'decoder' or 'encoder', got {self.kept_embeddings!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.contrastive_weight, (int, float)) or self.contrastive_weight < 0:
            raise ConfigError(f"contrastive_weight must be >= 0, got {self.contrastive_weight!r}")
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ConfigError(f"lora_r must be an integer >= 0, got {self.lora_r!r}")
        self.lora_targets = tuple(self.lora_targets)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RAMConfig:
        """Build from JSON; unknown keys are an error (a checkpoint from another version should say so)."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"unknown RAM config keys: {', '.join(extra)}")
        # checkpoints written before these settings existed were trained without BOS or separators
        return cls(**{"add_bos": False, "document_separator": "", **data})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def keep_rate_for_rho(rho: float, segment_tokens: int) -> float:
    """Decoder tokens / original tokens when a fraction ``rho`` of full ``w``-token segments is read closely."""
    rho = min(max(float(rho), 0.0), 1.0)
    return rho + (1.0 - rho) / segment_tokens


def rho_for_keep_rate(keep_rate: float, segment_tokens: int) -> float:
    """The close-reading fraction whose decoder input is ``keep_rate`` of the original (clipped to [0, 1])."""
    floor = 1.0 / segment_tokens
    rho = (float(keep_rate) - floor) / (1.0 - floor)
    return min(max(rho, 0.0), 1.0)


def effective_factor(rho: float, segment_tokens: int) -> float:
    """Original tokens / decoder memory tokens: ``1 / (rho + (1 - rho) / w)``."""
    return 1.0 / keep_rate_for_rho(rho, segment_tokens)
