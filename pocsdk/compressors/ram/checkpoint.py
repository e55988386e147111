"""Save and load RAM weights (safetensors + JSON), and map the official release's parameter names.

A pocsdk checkpoint is a folder with ``ram_config.json`` (the :class:`RAMConfig`, where the backbone
came from) and ``ram_weights.safetensors`` (the alignment layer plus whatever training changed: LoRA
adapters, or the whole separate encoder). The backbone itself is never copied.

Official layout (``Twilightaaa/RAM``, read from ``llm_modeling_revised.py`` and ``QA.py``; no weights
were available to check against): the released file is the ``state_dict`` of ``LLMCompressor``,
loaded with ``load_state_dict`` (strict) by ``QA.py``. Its names are

* ``llm_encoder.model.{embed_tokens,layers.<i>,norm}.*`` -- the encoder, a full copy of the backbone
  truncated to ``num_compressor_encoder_layers`` (8 in ``qa.sh``), trained in full;
* ``llm_encoder.lm_head.weight`` -- unused by RAM;
* ``semantic_alignment_layer.{weight,bias}`` -- ``nn.Linear(encoder hidden, decoder hidden)`` applied
  to the skim vectors only;
* ``llm.model.*``, ``llm.lm_head.weight`` -- the decoder, present because ``qa.sh`` runs with
  ``is_train=True``; training unfreezes its ``q_proj``/``k_proj``/``v_proj`` weights, so they differ
  from the base model;
* ``memory_fusion_layer.*`` (a 1-layer copy of the decoder), ``dimension_alignment_layer.*`` (only
  when the widths differ), ``adaptive_temperature``, ``alpha_select``, ``beta_select``,
  ``alpha_merge``, ``beta_merge`` -- built by the constructor but unused on the RAM path.

The official inference also uses the encoder's own embedding table for close-read tokens, a
segment width of 50 tokens and the decoder prompt ``"Question:" + q + "\\nAnswer:"``; the loader
sets those. Only ``.safetensors`` is read (a ``.bin`` is a pickle; convert it yourself first), as one
file or as the shards a ``*.safetensors.index.json`` lists.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pocsdk.compressors.ram.config import (
    OFFICIAL_QUERY_TEMPLATE,
    OFFICIAL_SEGMENT_TOKENS,
    RAMConfig,
)
from pocsdk.compressors.ram.model import RAMModel, load_backbone
from pocsdk.errors import ArtifactError, ConfigError

CONFIG_FILE = "ram_config.json"
WEIGHTS_FILE = "ram_weights.safetensors"
FORMAT = "pocsdk-ram"
VERSION = 1

OFFICIAL_UNUSED_PREFIXES = ("memory_fusion_layer.", "dimension_alignment_layer.", "llm_encoder.lm_head.",
                            "memory_token_embed.")
OFFICIAL_UNUSED = frozenset({"adaptive_temperature", "alpha_select", "beta_select", "alpha_merge", "beta_merge"})
_ENC_LAYER = re.compile(r"^llm_encoder\.model\.layers\.(\d+)\.")


def trained_parameter_names(model: RAMModel) -> list[str]:
    """Names saved in a checkpoint: the alignment layer, then LoRA adapters or the whole separate encoder."""
    cfg = model.ram_config
    names = [n for n, _ in model.named_parameters() if n.startswith("align.")]
    if cfg.lora_r:
        names += [n for n, _ in model.encoder.named_parameters() if "lora_" in n]
        names = [n if n.startswith("align.") else f"encoder.{n}" for n in names]
    elif cfg.separate_encoder:
        names += [f"encoder.{n}" for n, _ in model.encoder.named_parameters()]
    if model.source.get("official_checkpoint") or model.source.get("decoder_weights"):
        # the decoder is not the backbone's: an official release ships its own, so the checkpoint carries it
        names += [n for n, _ in model.named_parameters() if n.startswith("decoder.")]
    return names


def architecture(decoder: Any) -> dict[str, Any]:
    """What a checkpoint must be loaded onto: the backbone's kind and shape."""
    cfg = getattr(decoder, "config", None)
    return {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers")}


def _check_architecture(recorded: Any, decoder: Any, where: str) -> None:
    if not isinstance(recorded, dict):
        return  # checkpoints written before pocsdk recorded it
    here = architecture(decoder)
    differ = {k: (recorded.get(k), here[k]) for k in here if recorded.get(k) is not None and recorded.get(k) != here[k]}
    if differ:
        said = ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differ.items())
        raise ArtifactError(f"{where} was trained on another backbone ({said}): load it onto the backbone it was "
                            "trained on")


def save_ram(model: RAMModel, directory: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``ram_config.json`` and ``ram_weights.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    tensors = {n: params[n].detach().to("cpu").contiguous().clone() for n in trained_parameter_names(model)}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, "config": model.ram_config.to_dict(),
            "source": {**model.source, "architecture": architecture(model.decoder)}, **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read RAM checkpoint config {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{path} is not a pocsdk RAM checkpoint (format {found!r})")
    try:
        newer = int(meta.get("version", 0)) > VERSION
    except (TypeError, ValueError):
        raise ArtifactError(f"{path}: 'version' must be an integer, got {meta.get('version')!r}") from None
    if newer:
        raise ArtifactError(f"{path} has version {meta['version']}, newer than this pocsdk reads ({VERSION})")
    if not isinstance(meta.get("config"), dict):
        raise ArtifactError(f"{path}: 'config' must be an object of RAM settings")
    return meta


def _is_official(path: Path) -> bool:
    """An official release (a .safetensors file, a shard index, or a folder of them), not a pocsdk folder."""
    if path.is_file():
        return path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json")
    return path.is_dir() and not (path / CONFIG_FILE).exists() and (
        any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")))


def load_ram(
    checkpoint: str | Path | None = None,
    backbone: str | None = None,
    *,
    gguf_file: str | None = None,
    encoder_layers: int | None = None,
    segment_tokens: int | None = None,
    device: str | None = "auto",
    dtype: str | None = "auto",
    trust_remote_code: bool = False,
    decoder: Any = None,
    tokenizer: Any = None,
    query_template: str | None = None,
    context_prefix: str | None = None,
) -> RAMModel:
    """A RAMModel from a backbone alone (untrained alignment), a pocsdk checkpoint, or an official file.

    ``decoder``/``tokenizer`` skip loading the backbone (tests, or a model already in memory).
    ``segment_tokens``, ``query_template`` and ``context_prefix`` may differ from the checkpoint's (they are
    inference settings); ``encoder_layers`` may not.
    """
    prompts: dict[str, Any] = {k: v for k, v in (("query_template", query_template),
                                                  ("context_prefix", context_prefix)) if v is not None}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and _is_official(ckpt):
        if encoder_layers is not None and encoder_layers != official_encoder_layers(list(_shard_names(
                official_files(ckpt), None if not ckpt.name.endswith(".safetensors.index.json") else ckpt))):
            raise ConfigError(f"the official checkpoint has its own number of encoder layers, not {encoder_layers}")
        model = load_official(ckpt, backbone, gguf_file=gguf_file, segment_tokens=segment_tokens, device=device,
                              dtype=dtype, trust_remote_code=trust_remote_code, decoder=decoder, tokenizer=tokenizer)
        model.ram_config = replace(model.ram_config, **prompts)
        return model
    if ckpt is not None and ckpt.is_file():
        raise ArtifactError(f"{ckpt}: only .safetensors files or pocsdk RAM checkpoint folders are read (no pickles)")
    meta = read_meta(ckpt) if ckpt is not None else None
    try:
        cfg = RAMConfig.from_dict(meta["config"]) if meta else RAMConfig()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ArtifactError(f"{ckpt}: its RAM settings cannot be read ({exc})") from exc
    if encoder_layers is not None:
        if meta and encoder_layers != cfg.encoder_layers:
            raise ConfigError(f"checkpoint was trained with encoder_layers={cfg.encoder_layers}, not {encoder_layers}")
        cfg = replace(cfg, encoder_layers=encoder_layers)
    if segment_tokens is not None:
        cfg = replace(cfg, segment_tokens=segment_tokens)
    cfg = replace(cfg, **prompts)
    source = dict(meta.get("source", {})) if meta else {}
    backbone = backbone or source.get("backbone")
    gguf_file = gguf_file or (source.get("gguf_file") if backbone == source.get("backbone") else None)
    if decoder is None:
        if not backbone:
            raise ConfigError("give backbone=<model path> (the checkpoint does not name one)")
        decoder, tokenizer = load_backbone(backbone, gguf_file=gguf_file, device=device, dtype=dtype,
                                           trust_remote_code=trust_remote_code)
    if ckpt is not None:
        _check_architecture(source.get("architecture"), decoder, str(ckpt))
    model = RAMModel(decoder, tokenizer, cfg, source={"backbone": backbone, "gguf_file": gguf_file})
    if ckpt is not None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(ckpt / WEIGHTS_FILE), device="cpu")
        except Exception as exc:  # missing, truncated or not safetensors at all (SafetensorError)
            raise ArtifactError(f"{ckpt / WEIGHTS_FILE}: cannot read the RAM weights ({exc})") from exc
        _load_exact(model, state, str(ckpt))
        if any(k.startswith("decoder.") for k in state):
            model.source["decoder_weights"] = True  # so that saving it again keeps them
    model.eval()
    return model


def _load_exact(model: RAMModel, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``state`` into ``model``; every key must exist with the same shape."""
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ArtifactError(f"{where}: parameters not in this model: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    # what such a checkpoint trains must all be there (the decoder's weights are optional: the backbone's serve)
    missing = sorted(n for n in trained_parameter_names(model) if not n.startswith("decoder.") and n not in state)
    if missing:
        raise ArtifactError(f"{where}: trained parameters missing from the checkpoint (another backbone?): "
                            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, value in state.items():
            target = params[name]
            if tuple(target.shape) != tuple(value.shape):
                raise ArtifactError(f"{where}: {name} has shape {tuple(value.shape)}, model has {tuple(target.shape)}")
            target.copy_(value.to(dtype=target.dtype, device=target.device))


def map_official_names(names: list[str], decoder_prefix: str = "model") -> tuple[dict[str, str], list[str], list[str]]:
    """(official name -> pocsdk name, ignored names, unknown names) for an official state dict."""
    mapping: dict[str, str] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for raw in names:
        name = raw[len("module."):] if raw.startswith("module.") else raw
        if name in OFFICIAL_UNUSED or name.startswith(OFFICIAL_UNUSED_PREFIXES):
            ignored.append(raw)
        elif name.startswith("semantic_alignment_layer."):
            mapping[raw] = "align." + name.split(".", 1)[1]
        elif name.startswith("llm_encoder.model."):
            mapping[raw] = "encoder." + name[len("llm_encoder.model."):]
        elif name.startswith("llm.model."):
            mapping[raw] = f"decoder.{decoder_prefix}." + name[len("llm.model."):]
        elif name.startswith("llm.lm_head."):
            mapping[raw] = "decoder.lm_head." + name[len("llm.lm_head."):]
        else:
            unknown.append(raw)
    return mapping, ignored, unknown


def official_encoder_layers(names: list[str]) -> int:
    """Number of encoder layers in an official state dict (highest ``llm_encoder.model.layers.<i>`` + 1)."""
    idx = [int(m.group(1)) for n in names if (m := _ENC_LAYER.match(n.removeprefix("module.")))]
    if not idx:
        raise ArtifactError("no llm_encoder.model.layers.* parameters: not an official RAM checkpoint")
    return max(idx) + 1


def official_files(path: str | Path) -> list[Path]:
    """The safetensors files of an official release: one file, or every shard that a
    ``*.safetensors.index.json`` lists (given itself, or found in the folder given)."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        files = sorted(path.glob("*.safetensors"))
        if len(indexes) > 1:
            raise ArtifactError(f"{path}: several *.safetensors.index.json files; name the one to load")
        if indexes:
            path = indexes[0]
        elif len(files) == 1:
            return files
        else:
            raise ArtifactError(f"{path}: expected one .safetensors file or a *.safetensors.index.json, "
                                f"found {len(files)} .safetensors files and no index")
    if path.name.endswith(".safetensors.index.json"):
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ArtifactError(f"{path}: not a safetensors index ({exc!r})") from exc
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ArtifactError(f"{path}: 'weight_map' must map parameter names to shard file names")
        if not weight_map:
            raise ArtifactError(f"{path}: 'weight_map' lists no parameters")
        shards = []
        for name in sorted(set(weight_map.values())):
            shard = path.parent / name
            if Path(name).name != name or not name.endswith(".safetensors"):  # no paths out of the folder
                raise ArtifactError(f"{path}: shard {name!r} is not a .safetensors file name in the index's folder")
            if not shard.is_file():
                raise ArtifactError(f"{path}: shard {name} is missing (an incomplete download?)")
            shards.append(shard)
        return shards
    if path.suffix != ".safetensors" or not path.is_file():
        raise ArtifactError(f"{path}: an official RAM checkpoint is a .safetensors file, a *.safetensors.index.json "
                            "or a folder holding either")
    return [path]


def _shard_names(shards: list[Path], index: Path | None) -> dict[str, Path]:
    """Parameter name -> shard; each name in one shard only, and every name the index lists present."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt", device="cpu") as f:
                keys = list(f.keys())
        except Exception as exc:  # safetensors' own error type differs across versions
            raise ArtifactError(f"{shard}: not a readable safetensors file ({exc})") from exc
        for key in keys:
            if key in where:
                raise ArtifactError(f"{key} is in both {where[key].name} and {shard.name}")
            where[key] = shard
    if index is not None:
        listed = json.loads(index.read_text(encoding="utf-8"))["weight_map"]  # read once already by official_files
        absent = sorted(k for k, v in listed.items() if where.get(k) != index.parent / v)
        if absent:
            raise ArtifactError(f"{index}: {len(absent)} parameters it lists are not in their shards "
                                f"(an incomplete download?), e.g. {absent[:3]}")
    return where


def _missing_official(model: RAMModel, given: set[str]) -> list[str]:
    """What an official file must carry but does not: the whole encoder and alignment layer, and the
    whole decoder when it carries any of it (a partial one would mix trained and base weights)."""
    names = [n for n, _ in model.named_parameters()]  # tied parameters once, under their first name
    missing = [n for n in names if n.startswith(("encoder.", "align.")) and n not in given]
    if any(g.startswith("decoder.") for g in given):
        missing += [n for n in names if n.startswith("decoder.") and n not in given]
    return missing


def load_official(
    path: str | Path,
    backbone: str | None,
    *,
    gguf_file: str | None = None,
    segment_tokens: int | None = None,
    device: str | None = "auto",
    dtype: str | None = "auto",
    trust_remote_code: bool = False,
    decoder: Any = None,
    tokenizer: Any = None,
) -> RAMModel:
    """A RAMModel from the official release's state dict on top of its backbone.

    ``path``: one ``.safetensors`` file, a sharded release's ``*.safetensors.index.json``, or a folder
    with either. The backbone (Qwen3-4B-Instruct for RAM-Qwen3-4B) gives the architecture; every
    encoder, alignment and decoder tensor in the release replaces the backbone's. A release missing
    part of the encoder, the alignment layer or (when it has one) the decoder is refused, not
    completed with base weights.
    """
    from safetensors import safe_open

    path = Path(path)
    shards = official_files(path)
    index = None
    if path.name.endswith(".safetensors.index.json"):
        index = path
    elif path.is_dir() and shards[0].parent == path and len(list(path.glob("*.safetensors.index.json"))) == 1:
        index = next(path.glob("*.safetensors.index.json"))
    where = _shard_names(shards, index)
    names = list(where)
    layers = official_encoder_layers(names)
    mapping, _ignored, unknown = map_official_names(names, "model")
    if unknown:
        raise ArtifactError(f"{path}: unexpected parameters for an official RAM checkpoint: {unknown[:5]}")
    if not any(v.startswith("align.") for v in mapping.values()):
        raise ArtifactError(f"{path}: no semantic_alignment_layer.* parameters")
    if decoder is None:
        if not backbone:
            raise ConfigError("loading an official RAM checkpoint needs backbone=<the base model path>")
        decoder, tokenizer = load_backbone(backbone, gguf_file=gguf_file, device=device, dtype=dtype,
                                           trust_remote_code=trust_remote_code)
    cfg = RAMConfig(encoder_layers=layers, segment_tokens=segment_tokens or OFFICIAL_SEGMENT_TOKENS,
                    query_template=OFFICIAL_QUERY_TEMPLATE, kept_embeddings="encoder", separate_encoder=True,
                    temperature=0.05)
    model = RAMModel(decoder, tokenizer, cfg, source={"backbone": backbone, "gguf_file": gguf_file,
                                                       "official_checkpoint": str(path)})
    mapping, _ignored, _unknown = map_official_names(names, getattr(decoder, "base_model_prefix", "model"))
    missing = _missing_official(model, set(mapping.values()))
    if missing:
        raise ArtifactError(f"{path}: incomplete official RAM checkpoint, {len(missing)} parameters missing, "
                            f"e.g. {missing[:5]}")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            state.update({mapping[n]: f.get_tensor(n) for n in mapping if where[n] == shard})
    _load_exact(model, state, str(path))
    model.eval()
    return model
