"""The ``Compressor`` facade: a floor or a rate in, a typed result out.

It composes one text compressor (what to keep) with, under a floor, one predictor (how
hard to compress this input). ``compress`` and ``acompress`` share one implementation;
the async twin runs the CPU work in a worker thread so an event loop never blocks.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pocsdk.compressors import DEFAULT_COMPRESSOR, TextCompressor, get_compressor, render
from pocsdk.compressors.base import Scored, checked_documents
from pocsdk.errors import ConfigError, InvalidTypeError, PocError, PredictorMismatchWarning
from pocsdk.types import (
    CompressionResult,
    ContextLike,
    batch_items,
    check_keep_rate,
    check_target_tokens,
    check_unit_interval,
    unpack_item,
)

if TYPE_CHECKING:
    from pocsdk.llm.types import CompletionResult
    from pocsdk.prediction.floor import FloorPolicy
    from pocsdk.remote import RemoteCompressor



RATE_TOLERANCE = 0.10
"""For inputs of 200 tokens or more the achieved keep rate stays within this share above the requested one
(below it, protected text aside, selection already stays)."""
MANY_GROUP = 16
"""Inputs that ``compress_many`` scores in one ``score_batch`` call, for compressors that have one."""


class Compressor:
    """Compress contexts at a fixed rate, to a token target, or under a performance floor.

    Exactly one of ``keep_rate``, ``target_tokens`` or ``floor`` sets the default mode;
    each call may override it. ``compressor`` is a registry name or a compressor object;
    ``compressor_params`` go to its constructor. ``floor_rule`` is how a ``confidence`` is honoured
    (:class:`pocsdk.prediction.floor.FloorPolicy`): ``"tradeoff"`` (default) or ``"margin"``. ``task``
    is the task type of the inputs (``qa``, ``summarization``, ...), for predictors that read it
    (``agnostic``, ``mlp``); by default the task a few-shot calibration was fitted on.

    >>> Compressor(keep_rate=0.3).compress(long_text, query="Who won?").text  # doctest: +SKIP
    """

    def __init__(
        self,
        keep_rate: float | None = None,
        *,
        target_tokens: int | None = None,
        floor: float | None = None,
        confidence: float | None = None,
        compressor: str | TextCompressor | None = None,
        predictor: Any = None,
        calibration: Any = None,
        floor_rule: str | None = None,
        task: str | None = None,
        tokenizer: Any = None,
        endpoint: str | None = None,
        api_key: str | None = None,
        **compressor_params: Any,
    ) -> None:
        modes = [m for m, v in (("keep_rate", keep_rate), ("target_tokens", target_tokens), ("floor", floor))
                 if v is not None]
        if len(modes) > 1:
            raise ConfigError(f"give one of keep_rate, target_tokens or floor, not {' and '.join(modes)}")
        self.keep_rate = None if keep_rate is None else check_keep_rate(keep_rate)
        self.target_tokens = None if target_tokens is None else check_target_tokens(target_tokens)
        self.floor = None if floor is None else check_unit_interval("floor", floor)
        self.confidence = None if confidence is None else check_unit_interval(
            "confidence", confidence, closed_right=False)
        if self.confidence is not None and self.floor is None and not modes:
            raise ConfigError("confidence applies to a floor: give floor=... too")
        if floor_rule not in (None, "tradeoff", "margin"):
            raise ConfigError(f"floor_rule must be 'tradeoff' or 'margin', got {floor_rule!r}")
        self.floor_rule = floor_rule or "tradeoff"
        if task is not None and not isinstance(task, str):
            raise ConfigError(f"task must be a string such as 'qa' or 'summarization', not {type(task).__name__}")
        self.task = task
        self._remote: RemoteCompressor | None = None
        if endpoint is not None:  # compress on a `pocsdk serve` service (pocsdk.remote)
            from pocsdk.remote import RemoteCompressor

            self._remote = RemoteCompressor.for_facade(
                endpoint, api_key, compressor, keep_rate=self.keep_rate, target_tokens=self.target_tokens,
                floor=self.floor, confidence=self.confidence,
                local_only={"predictor": predictor, "calibration": calibration, "tokenizer": tokenizer,
                            "floor_rule": floor_rule, "task": task,
                            "compressor parameters": compressor_params})
        elif api_key is not None:
            raise ConfigError("api_key applies to a remote service: give endpoint=... too")
        name = compressor if compressor is not None else DEFAULT_COMPRESSOR
        if tokenizer is not None:
            compressor_params["tokenizer"] = tokenizer
        self.compressor: TextCompressor = self._remote or get_compressor(name, **compressor_params)
        self._predictor_spec = predictor
        self._calibration_spec = calibration
        self._policy: FloorPolicy | None = None
        self._policy_lock = threading.Lock()

    # -- public API ----------------------------------------------------------------------
    def compress(
        self,
        context: ContextLike,
        query: str | None = None,
        *,
        keep_rate: float | None = None,
        target_tokens: int | None = None,
        floor: float | None = None,
        confidence: float | None = None,
    ) -> CompressionResult:
        """Compress one context (a string or a list of documents) for an optional query."""
        if self._remote is not None:
            return self._remote.compress(context, query, keep_rate=keep_rate, target_tokens=target_tokens,
                                         floor=floor, confidence=confidence)
        t0 = time.perf_counter()
        mode, value, conf = self._checked_call(query, keep_rate, target_tokens, floor, confidence)
        return self._compress_scored(self.compressor.score(context, query), mode, value, conf, t0)

    def _checked_call(self, query: str | None, keep_rate: float | None = None, target_tokens: int | None = None,
                      floor: float | None = None, confidence: float | None = None
                      ) -> tuple[str, float, float | None]:
        """The call's mode, its value and the confidence, checked before any scoring."""
        if query is not None and not isinstance(query, str):
            raise InvalidTypeError(f"query must be a string or None, got {type(query).__name__}")
        mode, value = self._mode(keep_rate, target_tokens, floor)
        conf = self.confidence if confidence is None else check_unit_interval(
            "confidence", confidence, closed_right=False)  # checked in every mode, used under a floor
        return mode, value, conf

    def _compress_scored(self, scored: Scored, mode: str, value: float, conf: float | None,
                         t0: float) -> CompressionResult:
        if mode == "floor":
            result = self._policy_for().compress(self.compressor, scored, value, conf)
        else:
            if mode == "keep_rate":
                result = self._at_rate(scored, value)
                if result.original_tokens >= 200 and result.keep_rate > value * (1 + RATE_TOLERANCE):
                    # the units' prices leave out the whitespace between them, which tiktoken counts: in
                    # indented or tabbed text the output overshoots; cut it to the rate, as a budget is
                    result = self._within_target(scored, max(1, int(value * result.original_tokens)))
                    result.requested_keep_rate = value
            else:
                result = self._within_target(scored, int(value))
        result.timings.total_ms = (time.perf_counter() - t0) * 1000.0
        return result

    def prepare(self) -> Compressor:
        """Load now what the floor mode needs (the predictor and calibration), so that a bad artifact
        fails here rather than on the first input, and the first input does not pay for loading.

        Acts when a floor is the default mode or a predictor or calibration was given.
        """
        wanted = self.floor is not None or self._predictor_spec is not None or self._calibration_spec is not None
        if self._remote is None and wanted:
            policy = self._policy_for()
            if self.confidence is not None and policy.calibration is None:  # else the first compress says so
                policy.margin(self.floor if self.floor is not None else 0.9, self.confidence)
        return self

    async def acompress(self, context: ContextLike, query: str | None = None, **overrides: Any) -> CompressionResult:
        """Async twin of :meth:`compress` (runs in a worker thread)."""
        if self._remote is not None:
            return await self._remote.acompress(context, query, **overrides)
        return await asyncio.to_thread(self.compress, context, query, **overrides)

    def compress_many(
        self,
        items: Iterable[ContextLike | Mapping[str, Any] | tuple[ContextLike, str | None]],
        **overrides: Any,
    ) -> list[CompressionResult]:
        """Compress many inputs: each a context, a ``(context, query)`` pair or ``{context, query}``."""
        if self._remote is not None:
            return self._remote.compress_many(batch_items(items), **overrides)
        pairs = [unpack_item(it) for it in batch_items(items)]
        score_batch = getattr(self.compressor, "score_batch", None)
        if not callable(score_batch) or len(pairs) < 2:
            return [self.compress(ctx, q, **overrides) for ctx, q in pairs]
        # a model-backed compressor scores a group of inputs in one forward pass; results as compress gives
        unknown = set(overrides) - {"keep_rate", "target_tokens", "floor", "confidence"}
        if unknown:
            raise TypeError(f"compress_many() got unexpected keyword arguments: {sorted(unknown)}")
        out: list[CompressionResult] = []
        max_chars = getattr(self.compressor, "max_input_chars", None)
        all_calls = []
        for ctx, q in pairs:  # all inputs, in order, as compress checks them, before any model runs
            all_calls.append(self._checked_call(q, **overrides))
            if isinstance(max_chars, int):
                checked_documents(ctx, max_chars)
        for k in range(0, len(pairs), MANY_GROUP):
            group = pairs[k: k + MANY_GROUP]
            calls = all_calls[k: k + MANY_GROUP]
            try:
                scored = list(score_batch(group))
            except Exception:  # a failure the checks above did not foresee: one by one, as compress would fail
                for ctx, q in group:
                    out.append(self.compress(ctx, q, **overrides))
                continue
            for (mode, value, conf), s in zip(calls, scored, strict=True):
                # each result's clock counts its part of the group's scoring, as the compressor measured it
                out.append(self._compress_scored(s, mode, value, conf, time.perf_counter() - s.score_ms / 1000.0))
        return out

    async def acompress_many(
        self, items: Iterable[ContextLike | Mapping[str, Any] | tuple[ContextLike, str | None]], **overrides: Any
    ) -> list[CompressionResult]:
        """Async twin of :meth:`compress_many`; inputs run concurrently in worker threads."""
        if self._remote is not None:
            return await self._remote.acompress_many(batch_items(items), **overrides)
        pairs = [unpack_item(it) for it in batch_items(items)]
        tasks = [asyncio.ensure_future(self.acompress(c, q, **overrides)) for c, q in pairs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # one input failed (or the caller cancelled): the rest are not wanted, so those not yet
            # started never run, as in compress_many, which stops at the first error
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def complete(self, context: ContextLike, query: str, *, llm: Any, **kwargs: Any) -> CompletionResult:
        """Compress, ask ``llm``, return a ``CompletionResult`` (see :func:`pocsdk.llm.complete.complete`)."""
        from pocsdk.llm.complete import complete

        return complete(self, context, query, llm=llm, **kwargs)

    async def acomplete(self, context: ContextLike, query: str, *, llm: Any, **kwargs: Any) -> CompletionResult:
        """Async twin of :meth:`complete`."""
        from pocsdk.llm.complete import acomplete

        return await acomplete(self, context, query, llm=llm, **kwargs)

    @property
    def name(self) -> str:
        return self.compressor.name

    def close(self) -> None:
        """Close the remote client's connections (``endpoint=``); a local Compressor holds none."""
        if self._remote is not None:
            self._remote.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if self._remote is not None:
            await self._remote.aclose()

    def __enter__(self) -> Compressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Compressor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals -----------------------------------------------------------------------
    def _mode(self, keep_rate: float | None, target_tokens: int | None, floor: float | None) -> tuple[str, float]:
        given = [(m, v) for m, v in (("keep_rate", keep_rate), ("target_tokens", target_tokens), ("floor", floor))
                 if v is not None]
        if len(given) > 1:
            raise ConfigError("give at most one of keep_rate, target_tokens or floor per call")
        if given:
            mode, raw = given[0]
        elif self.keep_rate is not None:
            mode, raw = "keep_rate", self.keep_rate
        elif self.target_tokens is not None:
            mode, raw = "target_tokens", self.target_tokens
        elif self.floor is not None:
            mode, raw = "floor", self.floor
        else:
            raise ConfigError("no compression target: give keep_rate, target_tokens or floor")
        if mode == "keep_rate":
            return mode, check_keep_rate(raw)
        if mode == "target_tokens":
            return mode, float(check_target_tokens(raw))
        return mode, check_unit_interval("floor", raw)

    def _at_rate(self, scored: Scored, rate: float) -> CompressionResult:
        t = time.perf_counter()
        selection = self.compressor.select(scored, rate)
        select_ms = (time.perf_counter() - t) * 1000.0
        return render(scored, selection, select_ms=select_ms, requested_keep_rate=rate)

    def _within_target(self, scored: Scored, target: int) -> CompressionResult:
        """The selection at target / total tokens, shrunk while the output is over the target.

        A rate only approximates a budget: the units' counts leave out the whitespace between them
        (which tiktoken counts), the top-up may round a prefix up, and the separators between documents
        cost tokens too. A budget is a limit, so the rate is lowered (a few cheap selects) until the
        output, separators included, fits, or only protected text is left.
        """
        asked = _rate_for_target(scored, target)
        rate = asked
        result = self._at_rate(scored, rate)
        select_ms = result.timings.select_ms
        counter = scored.tokenizer

        def used(res: CompressionResult) -> int:  # the joined text when separators join documents: a
            # separator can cost more between texts than alone (BPE merges "\n\n" with what follows)
            joined = sum(1 for d in res.documents if d.text) > 1
            return counter.count(res.text) if joined else res.compressed_tokens

        spent = used(result)  # counted once per selection: with several documents it tokenizes the output
        stalls = 0
        for _ in range(8):  # the rate shrinks every round; a selection is kept only when it is smaller
            if spent <= target or scored.passthrough_reason or rate <= 1e-6 or stalls >= 2:
                break  # (two rounds without a smaller output: protected text alone is over the target)
            rate = max(rate * min(target / spent, 1.0) * 0.97, 1e-9)
            smaller = self._at_rate(scored, rate)
            select_ms += smaller.timings.select_ms
            smaller_spent = used(smaller)
            if smaller_spent < spent:
                result, spent, stalls = smaller, smaller_spent, 0
            else:
                stalls += 1
        result.requested_keep_rate = asked
        result.timings.select_ms = select_ms
        return result

    def _policy_for(self) -> FloorPolicy:
        if self._policy is None:
            with self._policy_lock:  # threads sharing a new Compressor load the predictor once
                if self._policy is None:
                    from pocsdk.prediction.floor import FloorPolicy

                    self._policy = FloorPolicy.for_compressor(
                        self.compressor.name, predictor=self._predictor_spec, calibration=self._calibration_spec,
                        task=self.task, rule=self.floor_rule,
                    )
                    self._warn_if_unlike_training()
        return self._policy

    def _warn_if_unlike_training(self) -> None:
        """Shipped predictors were trained on each compressor with its default parameters."""
        from pocsdk.prediction.floor import PREDICTOR_NAMES

        spec = self._predictor_spec
        if spec is not None and not (isinstance(spec, str) and spec in PREDICTOR_NAMES):
            return  # the user's own predictor: they know what it was trained on
        try:
            default = get_compressor(self.compressor.name)
        except PocError:
            return
        ours_of, defaults_of = getattr(self.compressor, "parameters", None), getattr(default, "parameters", None)
        if not callable(ours_of) or not callable(defaults_of):
            return
        ours, defaults = ours_of(), defaults_of()
        changed = sorted(k for k in ours if k not in _PARAMS_THE_PROMISE_IGNORES and ours[k] != defaults.get(k))
        if changed:
            warnings.warn(
                f"the shipped {self.compressor.name!r} predictor was trained with its default parameters, and its "
                f"predictions and promise do not cover {', '.join(f'{k}={ours[k]!r}' for k in changed)}; "
                "calibrate this configuration (pocsdk calibrate --param ..., pocsdk train-predictor) and pass "
                "predictor=<directory>", PredictorMismatchWarning, stacklevel=4)


_PARAMS_THE_PROMISE_IGNORES = frozenset({"tokenizer", "min_tokens"})
"""Counting tokens another way, or passing tiny inputs through, leaves what is kept unchanged."""


def _rate_for_target(scored: Scored, target: int) -> float:
    total = scored.total_tokens
    return 1.0 if total <= 0 else min(1.0, max(target / total, 1e-9))
