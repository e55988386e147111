"""The RAM network: a shallow encoder over parallel segments, an alignment layer, hybrid decoder input.

The encoder is the backbone's first ``encoder_layers`` layers plus its final norm (the official code
truncates a copy of the backbone the same way and reads ``hidden_states[-1]``, which is the normed
output). The query and every segment are separate rows of one right-padded batch, each starting at
position 0, so no segment attends to another or to the query. Relevance is the cosine between the
mean-pooled segment and mean-pooled query states; a skimmed segment is the softmax(cosine(token,
query))-weighted sum of its token states, mapped to the decoder's width by a learned linear layer.

This module imports torch at import time; :mod:`pocsdk.compressors.ram` only imports it lazily.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pocsdk.compressors._torch import (
    check_device_available,
    check_local_model,
    require_fast_tokenizer,
    resolve_device,
    resolve_dtype,
    split_gguf,
)
from pocsdk.compressors.ram.config import RAMConfig
from pocsdk.errors import ConfigError

FEATURE = "the RAM compressor"


@dataclass
class Encoded:
    """Encoder outputs for one input: everything ``select`` and the decoder need, for every segment."""

    relevance: torch.Tensor  # [S] float32, cosine(mean segment state, mean query state)
    skim: torch.Tensor  # [S, H_enc] float32, query-weighted sum of each segment's token states
    top_token: torch.Tensor  # [S] long, position of the highest-weighted token in each segment
    query_repr: torch.Tensor  # [H_enc] float32
    segment_repr: torch.Tensor  # [S, H_enc] float32


def load_backbone(
    backbone: str,
    *,
    gguf_file: str | None = None,
    device: str | None = "auto",
    dtype: str | None = "auto",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(causal LM, fast tokenizer) from a local folder, a hub id in the cache, or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = split_gguf(backbone, gguf_file)
    check_local_model(path)
    dev = resolve_device(device, FEATURE)
    check_device_available(dev, FEATURE)  # before loading gigabytes: torch would assert only at .to(device)
    dt = resolve_dtype(dtype, dev, FEATURE)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dt, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the RAM backbone {backbone!r}: {exc}") from exc
    require_fast_tokenizer(tokenizer, backbone)
    model.to(dev)
    model.eval()
    return model, tokenizer


def _base(model: Any) -> Any:
    """The bare transformer (embeddings, layers, norm) inside a causal LM."""
    prefix = getattr(model, "base_model_prefix", "model")
    base = getattr(model, prefix, None)
    if base is None or not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
        raise ConfigError(
            f"RAM needs a decoder-only backbone with .{prefix}.embed_tokens/.layers/.norm "
            f"(Llama, Qwen2, Qwen3, Mistral families); got {type(model).__name__}"
        )
    return base


def build_encoder(decoder: Any, layers: int, *, separate: bool) -> Any:
    """A base model running the decoder's first ``layers`` layers and final norm.

    Shared (``separate=False``): the modules are the decoder's own, so the encoder costs no memory.
    Separate: a deep copy, so training it (fully or with LoRA) leaves the decoder untouched.
    """
    from transformers import AutoModel

    base = _base(decoder)
    total = int(base.config.num_hidden_layers)
    if layers > total:
        raise ConfigError(f"encoder_layers={layers} but the backbone has only {total} layers")
    cfg = copy.deepcopy(base.config)
    cfg.num_hidden_layers = layers
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:layers]
    with torch.device("meta"):
        encoder = AutoModel.from_config(cfg)
    parts = {"embed_tokens": base.embed_tokens, "norm": base.norm, "rotary_emb": base.rotary_emb}
    stack = nn.ModuleList(list(base.layers[:layers]))
    if separate:
        parts = {k: copy.deepcopy(v) for k, v in parts.items()}
        stack = copy.deepcopy(stack)
    for name, module in parts.items():
        setattr(encoder, name, module)
    encoder.layers = stack
    left = [n for n, t in [*encoder.named_parameters(), *encoder.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ConfigError(f"cannot build a RAM encoder for {type(base).__name__}: unshared tensors {left[:4]}")
    encoder.eval()
    return encoder


class RAMModel(nn.Module):
    """Decoder (any HF causal LM), its shallow encoder, and the alignment layer for skim vectors."""

    def __init__(self, decoder: Any, tokenizer: Any, config: RAMConfig | None = None,
                 source: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.ram_config = config or RAMConfig()
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.source = dict(source or {})
        """Where the backbone came from (``backbone``, ``gguf_file``); written into checkpoints."""
        base = _base(decoder)
        self.encoder = build_encoder(decoder, self.ram_config.encoder_layers,
                                     separate=self.ram_config.separate_encoder)
        if self.ram_config.lora_r:
            self.add_encoder_lora()
        h_enc = int(base.config.hidden_size)
        h_dec = int(decoder.get_input_embeddings().weight.shape[1])
        weight = base.embed_tokens.weight
        self.align = nn.Linear(h_enc, h_dec, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():  # identity start: an untrained skim vector is the pooled state itself
            self.align.weight.zero_()
            if h_enc == h_dec:
                self.align.weight.copy_(torch.eye(h_enc, dtype=weight.dtype, device=weight.device))
            else:
                nn.init.xavier_uniform_(self.align.weight)
            self.align.bias.zero_()
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else (tokenizer.eos_token_id or 0))

    # -- structure -----------------------------------------------------------------------
    def add_encoder_lora(self) -> None:
        """Wrap a separate encoder with LoRA adapters (peft); the decoder stays frozen."""
        if not self.ram_config.separate_encoder:
            raise ConfigError("encoder LoRA needs separate_encoder=True (shared layers would change the decoder)")
        if getattr(self.encoder, "peft_config", None):
            return
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            from pocsdk.errors import MissingDependencyError

            raise MissingDependencyError("LoRA training of RAM", "train", "peft") from exc
        cfg = LoraConfig(r=self.ram_config.lora_r or 8, lora_alpha=self.ram_config.lora_alpha,
                         target_modules=list(self.ram_config.lora_targets), lora_dropout=0.0, bias="none")
        self.encoder = get_peft_model(self.encoder, cfg)

    def encoder_base(self) -> Any:
        """The encoder's bare model (under a peft wrapper when LoRA is on)."""
        enc = self.encoder
        return enc.get_base_model() if hasattr(enc, "get_base_model") else enc

    @property
    def device(self) -> torch.device:
        return self.align.weight.device

    @property
    def segment_tokens(self) -> int:
        return self.ram_config.segment_tokens

    # -- encoder -------------------------------------------------------------------------
    def _run(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded batch through the encoder: (states [n, L, H] float32, mask [n, L] bool)."""
        n = len(rows)
        width = max(len(r) for r in rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.encoder(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state.float(), mask.bool()

    def encode(self, segments: Sequence[Sequence[int]], query: Sequence[int]) -> Encoded:
        """Encode all segments and the query in parallel (chunks of ``encode_batch_size`` rows).

        The query is a row of the first batch when it fits the segment width, else its own batch;
        rows never see each other, so the result does not depend on the batching.
        An empty query is replaced by the mean of the segment representations (generic skimming).
        """
        if not segments:
            raise ConfigError("RAM needs at least one non-empty segment")
        bs = self.ram_config.encode_batch_size
        seg_rows = list(segments)
        states: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        q_state: torch.Tensor | None = None
        q_mask: torch.Tensor | None = None
        start = 0
        if query and len(query) <= self.segment_tokens:
            first = seg_rows[: bs - 1]
            h, m = self._run([query, *first])
            q_state, q_mask = h[:1], m[:1]
            states.append(h[1:])
            masks.append(m[1:])
            start = len(first)
        elif query:
            q_state, q_mask = self._run([query])
        for i in range(start, len(seg_rows), bs):
            h, m = self._run(seg_rows[i: i + bs])
            states.append(h)
            masks.append(m)
        seg_repr = torch.cat([_masked_mean(h, m) for h, m in zip(states, masks, strict=True)])
        if q_state is not None and q_mask is not None:
            query_repr = _masked_mean(q_state, q_mask)[0]
        else:
            query_repr = seg_repr.mean(dim=0)
        qn = F.normalize(query_repr, dim=-1)
        relevance = F.normalize(seg_repr, dim=-1) @ qn
        skims: list[torch.Tensor] = []
        tops: list[torch.Tensor] = []
        for h, m in zip(states, masks, strict=True):
            weights = token_weights(h, m, query_repr)
            skims.append(torch.einsum("nl,nlh->nh", weights, h))
            tops.append(weights.argmax(dim=-1))
        return Encoded(relevance=relevance, skim=torch.cat(skims), top_token=torch.cat(tops),
                       query_repr=query_repr, segment_repr=seg_repr)

    def aligned(self, skim: torch.Tensor) -> torch.Tensor:
        """Skim vectors in the decoder's embedding space."""
        return self.align(skim.to(self.align.weight.dtype))

    # -- decoder input -------------------------------------------------------------------
    def kept_embedding(self) -> Any:
        if self.ram_config.kept_embeddings == "encoder":
            return self.encoder_base().embed_tokens
        return self.decoder.get_input_embeddings()

    def prompt_ids(self, query: str | None) -> list[int]:
        """Decoder tokens after the memory: the query template filled in."""
        text = self.ram_config.query_template.format(query=query or "")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_ids(self) -> list[int]:
        """Decoder tokens before the memory: BOS (``add_bos``, when the tokenizer adds one) and ``context_prefix``."""
        text = self.ram_config.context_prefix
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.ram_config.add_bos and bos is not None:
            opened = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            if opened and opened[0] == bos:
                ids = [int(bos), *ids]
        return ids

    def separator_ids(self) -> list[int]:
        """Decoder tokens between two documents (``document_separator``)."""
        text = self.ram_config.document_separator
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def assemble(
        self,
        segments: Sequence[Sequence[int]],
        keep: Sequence[bool],
        skim_vectors: torch.Tensor | None,
        prompt: Sequence[int],
        answer: Sequence[int] = (),
        prefix: Sequence[int] = (),
        docs: Sequence[int] | None = None,
        separator: Sequence[int] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``prefix``, the hybrid memory in original order, then the prompt (and answer, for training).

        ``docs`` gives each segment's document; ``separator`` tokens go between two documents. Returns
        ``inputs_embeds`` [1, L, H_dec] and ``attention_mask`` [1, L].
        """
        kept_ids = [t for s, k in zip(segments, keep, strict=True) if k for t in s]
        dev = self.device
        kept = self.kept_embedding()(torch.as_tensor(kept_ids, dtype=torch.long, device=dev)) if kept_ids else None
        tail_ids = [*prompt, *answer]
        dec_embed = self.decoder.get_input_embeddings()
        tail = dec_embed(torch.as_tensor(tail_ids, dtype=torch.long, device=dev)) if tail_ids else None
        dtype = dec_embed.weight.dtype
        pieces: list[torch.Tensor] = []
        if prefix:
            pieces.append(dec_embed(torch.as_tensor(list(prefix), dtype=torch.long, device=dev)))
        sep = (dec_embed(torch.as_tensor(list(separator), dtype=torch.long, device=dev))
               if separator and docs is not None else None)
        pos = 0
        run_start: int | None = None  # consecutive skimmed segments are sliced in one piece
        for i, (seg, k) in enumerate(zip(segments, keep, strict=True)):
            if sep is not None and docs is not None and i > 0 and docs[i] != docs[i - 1]:
                if run_start is not None:
                    assert skim_vectors is not None
                    pieces.append(skim_vectors[run_start:i].to(dtype))
                    run_start = None
                pieces.append(sep.to(dtype))
            if k:
                if run_start is not None:
                    assert skim_vectors is not None
                    pieces.append(skim_vectors[run_start:i].to(dtype))
                    run_start = None
                assert kept is not None
                pieces.append(kept[pos: pos + len(seg)].to(dtype))
                pos += len(seg)
            elif run_start is None:
                if skim_vectors is None:
                    raise ConfigError("skimmed segments need skim vectors (run the encoder first)")
                run_start = i
        if run_start is not None:
            assert skim_vectors is not None
            pieces.append(skim_vectors[run_start:len(segments)].to(dtype))
        if tail is not None:
            pieces.append(tail)
        embeds = torch.cat(pieces, dim=0).unsqueeze(0)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=dev)
        return embeds, mask


def token_weights(states: torch.Tensor, mask: torch.Tensor, query_repr: torch.Tensor) -> torch.Tensor:
    """softmax over each row's tokens of cosine(token state, query); padding gets weight 0."""
    cos = F.normalize(states, dim=-1) @ F.normalize(query_repr, dim=-1)
    cos = cos.masked_fill(~mask, torch.finfo(cos.dtype).min)
    return torch.softmax(cos, dim=-1)


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
