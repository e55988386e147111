"""The calibration runner: examples in, one labels line per example out.

For each example the compressor scores the context once; then, for each factor f of the grid,
it selects at keep rate 1/f and renders, and the judge compares every compressed context
with the full one. Features come from :func:`pocsdk.prediction.features.featurize` when it
is importable (else empty, flagged in ``metadata.features``).

Runs are resumable: ids already in the output file (labels and error lines alike) are
skipped and new lines are appended; with ``retry_failed``, failed examples (a 503 from the LLM
endpoint, say; not unscorable ones) run again and their new lines are appended after the old
error lines, which readers skip. The file is only ever appended to.
With several workers, examples run in a process pool and lines are still written in input
order. A failed or unscorable example is written as
``{"id": ..., "error": {...}}``, which :func:`pocsdk.calibration.labels.read_labels` skips.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from pocsdk._files import lock_exclusively
from pocsdk.calibration.datasets import Example, InvalidExample
from pocsdk.calibration.judges import Judge, get_judge
from pocsdk.calibration.labels import DEFAULT_FACTORS, LabelRecord
from pocsdk.compressors import DEFAULT_COMPRESSOR, TextCompressor, get_compressor, render
from pocsdk.compressors.base import changed_parameters
from pocsdk.errors import ConfigError, InvalidRateError, PocError

FeaturizeFn = Callable[..., tuple[dict[str, float], list[dict[str, float]]]]


def load_featurize() -> FeaturizeFn | None:
    """The shared featurizer, or None while ``pocsdk.prediction.features`` is not available."""
    try:
        from pocsdk.prediction.features import featurize
    except ImportError:
        return None
    return featurize


def check_factors(factors: Sequence[float]) -> list[float]:
    """Factors must be finite numbers >= 1, strictly increasing."""
    out = [float(f) for f in factors]
    if not out:
        raise InvalidRateError("give at least one compression factor")
    for f in out:
        if not math.isfinite(f) or f < 1.0:
            raise InvalidRateError(f"compression factors must be finite and >= 1, got {f!r}")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise InvalidRateError("compression factors must be strictly increasing")
    return out


class RunStats(BaseModel):
    """What a run did."""

    output: str
    total: int = 0
    skipped: int = 0
    """Already in the output (resume)."""
    retried: int = 0
    """Failed examples (error lines other than unscorable) that ``retry_failed`` ran again."""
    written: int = 0
    unscorable: int = 0
    failed: int = 0
    seconds: float = 0.0
    features: str = "featurize"
    errors: dict[str, int] = Field(default_factory=dict)


# -- one example ------------------------------------------------------------------------------


class _State:
    """Per-process state: the compressor and judge are built once per worker."""

    compressor: TextCompressor | None = None
    judge: Judge | None = None
    factors: tuple[float, ...] = ()
    featurize: FeaturizeFn | None = None


_STATE = _State()


def _init_worker(compressor: str, compressor_params: dict[str, Any], judge: str, judge_options: dict[str, Any],
                 factors: list[float]) -> None:
    _STATE.compressor = get_compressor(compressor, **compressor_params)
    _STATE.judge = get_judge(judge, **judge_options)
    _STATE.factors = tuple(factors)
    _STATE.featurize = load_featurize()


def _init_pool_worker(run: int, output: tuple[int, int, int] | None, *init_args: Any) -> None:
    """A pool worker: lets go of the output (a forked worker inherits its locked descriptor, and one that
    outlived a killed run kept the lock), exits when the run (process ``run``) is gone, then loads like any
    worker. ``output`` is (descriptor, device, inode): the descriptor is closed only when it is that file (a
    spawned or forkserver worker did not inherit it, and the number may be another file there)."""
    if output is not None:
        fd, dev, ino = output
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) == (dev, ino):
                os.close(fd)
        except OSError:
            pass
    watch = threading.Thread(target=_exit_with_run, args=(run, os.getppid()), daemon=True, name="pocsdk-orphan-watch")
    watch.start()
    _init_worker(*init_args)


def _exit_with_run(run: int, parent: int, every_s: float = 0.5) -> None:
    """Leave when the run is gone: the worker's parent changed (fork, spawn) or the run's process ended (under
    forkserver the parent is the forkserver, which a live worker keeps alive)."""
    while os.getppid() == parent and _alive(run):
        time.sleep(every_s)
    os._exit(1)  # the run is gone (killed): nothing reads this worker's results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed run stays a zombie until its own parent reaps it
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _work(example_json: str) -> str:
    """Worker entry point: an example as JSON in, one output line out."""
    example = Example.model_validate_json(example_json)
    assert _STATE.compressor is not None and _STATE.judge is not None  # set by _init_worker
    return label_line(example, _STATE.compressor, _STATE.judge, _STATE.factors, _STATE.featurize)


def label_line(example: Example, compressor: TextCompressor, judge: Judge, factors: Sequence[float],
               featurize: FeaturizeFn | None) -> str:
    """Label one example; any failure becomes an error line instead of stopping the run."""
    try:
        obj = label_example(example, compressor, judge, factors, featurize)
    except Exception as exc:  # one bad example must not end a long run; it is recorded instead
        err = exc.to_dict() if isinstance(exc, PocError) else {"type": type(exc).__name__, "message": str(exc)}
        obj = {"id": example.id, "dataset": example.dataset, "error": err}
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def label_example(example: Example, compressor: TextCompressor, judge: Judge, factors: Sequence[float],
                  featurize: FeaturizeFn | None) -> dict[str, Any]:
    """Score once, compress at every factor, judge; a LabelRecord dict or an ``unscorable`` error dict."""
    t0 = time.perf_counter()
    context: Any = example.context if isinstance(example.context, str) else [d.model_dump() for d in example.context]
    scored = compressor.score(context, example.query)
    full_text = "\n\n".join(d.text for d in scored.documents)
    texts: list[str] = []
    achieved: list[float] = []
    compressed_tokens: list[int] = []
    for f in factors:
        res = render(scored, compressor.select(scored, 1.0 / f), requested_keep_rate=1.0 / f)
        texts.append(res.text)
        compressed_tokens.append(res.compressed_tokens)
        # nothing kept reads as the largest factor the input allows (JSON has no infinity)
        achieved.append(res.compression_factor if math.isfinite(res.compression_factor)
                        else float(max(res.original_tokens, 1)))
    compress_ms = (time.perf_counter() - t0) * 1000.0
    verdict = judge.judge(example, full_text, texts)
    if not verdict.scorable:
        return {"id": example.id, "dataset": example.dataset,
                "error": {"type": "unscorable", "code": "unscorable", "message": verdict.reason or "unscorable"}}
    ctx_feats: dict[str, float] = {}
    fac_feats: list[dict[str, float]] = []
    features_status = "missing"
    if featurize is not None:
        try:
            ctx_feats, fac_feats = featurize(compressor, scored, list(factors), task=example.task)
            ctx_feats = {k: float(v) for k, v in ctx_feats.items()}
            fac_feats = [{k: float(v) for k, v in d.items()} for d in fac_feats]
            features_status = "ok"
        except Exception as exc:  # labels stay useful without features; the lead can re-featurize
            features_status = f"error: {type(exc).__name__}: {exc}"[:300]
            ctx_feats, fac_feats = {}, []
    meta = {k: v for k, v in example.metadata.items() if _small_json(v)}
    meta.update({
        "compressed_tokens": compressed_tokens,
        "passthrough": scored.passthrough_reason,
        "judge": verdict.details,
        "features": features_status,
        "compress_ms": round(compress_ms, 2),
        "compressor_params": scored.parameters,
    })
    record = LabelRecord(
        id=example.id, dataset=example.dataset, task=example.task, compressor=compressor.name, judge=judge.name,
        factors=list(factors), achieved_factors=achieved, performance=verdict.performance,
        full_score=verdict.full_score, original_tokens=scored.total_tokens,
        context_features=_finite(ctx_feats), factor_features=[_finite(d) for d in fac_feats], metadata=meta,
    )
    return record.model_dump(mode="json")


def _finite(d: dict[str, float]) -> dict[str, float]:
    return {k: (v if math.isfinite(v) else 0.0) for k, v in d.items()}


def _small_json(v: Any) -> bool:
    try:
        return len(json.dumps(v, allow_nan=False)) <= 2000
    except (TypeError, ValueError):
        return False


# -- the run ----------------------------------------------------------------------------------


def done_ids(path: Path, failed: set[str] | None = None) -> set[str]:
    """Ids already in an output file; a torn last line (a killed run) is cut off so appends stay valid.

    With ``failed`` (a set to fill), ids whose only lines are failures (not unscorable) are left out of the
    result and collected there instead, so a retry labels them again; their old error lines stay in the
    file (readers skip error lines) and a later success line counts as done.
    """
    if not path.exists():
        return set()
    errored: set[str] = set()
    data = path.read_bytes()
    ids: set[str] = set()
    lines = data.split(b"\n")
    good_len = 0
    for i, raw in enumerate(lines):
        if raw.strip():
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                if i == len(lines) - 1:  # torn last line
                    break
                raise ConfigError(f"{path}:{i + 1}: not valid JSON; fix or remove the line before resuming") from None
            if isinstance(obj, dict) and "id" in obj:
                err = obj.get("error")
                if failed is not None and isinstance(err, dict) and err.get("type") != "unscorable":
                    errored.add(str(obj["id"]))
                else:
                    ids.add(str(obj["id"]))
        good_len += len(raw) + 1
    if good_len < len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_len)
    elif data and not data.endswith(b"\n"):
        with path.open("ab") as fh:
            fh.write(b"\n")
    if failed is not None:
        failed |= errored - ids
    return ids


def check_resumable(path: Path, compressor: str, judge: str, factors: Sequence[float],
                    parameters: dict[str, Any] | None = None, judge_model: str | None = None,
                    filled_on_load: Sequence[str] = ()) -> None:
    """Refuse to append labels made another way (compressor and its parameters, judge and its model, factor
    grid) to ``path``: a file mixing them trains a predictor on two different compressors."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict) or "compressor" not in obj:
                continue  # error lines carry no configuration
            theirs = (obj.get("compressor"), obj.get("judge"), [float(f) for f in obj.get("factors") or []])
            ours = (compressor, judge, [float(f) for f in factors])
            if theirs != ours:
                raise ConfigError(
                    f"{path} holds labels made with compressor {theirs[0]!r}, judge {theirs[1]!r}, factors "
                    f"{theirs[2]}; this run uses {ours[0]!r}, {ours[1]!r}, {ours[2]}: write to a new file, "
                    "or pass --overwrite instead of --resume")
            meta = obj.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            their_params = meta.get("compressor_params")
            ours_params = json.loads(json.dumps(parameters, default=str)) if parameters is not None else None
            changed = changed_parameters(their_params, ours_params, filled_on_load)
            if changed and isinstance(their_params, dict) and ours_params is not None:
                there = {k: their_params.get(k) for k in changed}
                here = {k: ours_params.get(k) for k in changed}
                raise ConfigError(f"{path} holds labels made with other compressor parameters ({there} there, "
                                  f"{here} here): write to a new file, or pass --overwrite instead of --resume")
            judged = meta.get("judge")
            their_model = judged.get("model") if isinstance(judged, dict) else None
            if their_model is not None and judge_model is not None and their_model != judge_model:
                raise ConfigError(f"{path} holds labels judged by the model {their_model!r}; this run asks "
                                  f"{judge_model!r}: write to a new file, or pass --overwrite instead of --resume")
            return


def run_calibration(
    examples: Iterable[Example | InvalidExample],
    output: str | Path,
    *,
    compressor: str = DEFAULT_COMPRESSOR,
    compressor_params: dict[str, Any] | None = None,
    judge: str = "retention",
    judge_options: dict[str, Any] | None = None,
    factors: Sequence[float] = DEFAULT_FACTORS,
    workers: int = 2,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
) -> RunStats:
    """Label ``examples`` into ``output`` (JSONL); see the module docstring."""
    grid = check_factors(factors)
    if workers < 1:
        raise ConfigError("workers must be >= 1")
    out = Path(output)
    if out.exists() and not (resume or overwrite):
        raise ConfigError(f"{out} exists: pass --resume to continue it or --overwrite to replace it")
    # Built here once before the output is touched: a bad option fails now with its own error, not
    # later in the worker processes, after --overwrite has already removed the old labels.
    built = get_compressor(compressor, **(compressor_params or {}))
    judged = get_judge(judge, **(judge_options or {}))
    if retry_failed and not resume:
        raise ConfigError("--retry-failed continues an output: give --resume too")
    out.parent.mkdir(parents=True, exist_ok=True)
    existed = out.exists()
    # The lock comes first, before anything reads or replaces the output: a second run (even one given
    # --overwrite) is refused while this one writes.
    with out.open("a", encoding="utf-8") as fh:
        lock_exclusively(fh, out, "wait for it, or write to another file")
        try:
            if resume and existed:  # the names records carry (a registered alias builds a compressor of its own name)
                params = getattr(built, "parameters", None)
                check_resumable(out, built.name, judged.name, grid, params() if callable(params) else None,
                                getattr(judged, "model", None), tuple(getattr(built, "filled_on_load", ())))
            if overwrite and not resume:
                fh.truncate(0)
            stats, todo, invalid = _plan(examples, out, resume, retry_failed)
        except BaseException:
            if not existed:  # a run refused before its first line leaves no empty file behind
                out.unlink(missing_ok=True)
            raise
        init_args = (compressor, dict(compressor_params or {}), judge, dict(judge_options or {}), grid)
        t0 = time.perf_counter()
        with _progress(progress, len(todo)) as advance:
            for bad in invalid:  # input lines that are no example: their error lines first
                line = json.dumps({"id": bad.id, "dataset": bad.dataset, "error": bad.error}, ensure_ascii=False)
                fh.write(line + "\n")
                _count(stats, line)
            fh.flush()
            for line in _lines(todo, workers, init_args, fh.fileno()):
                fh.write(line + "\n")
                fh.flush()
                _count(stats, line)
                advance()
    stats.seconds = round(time.perf_counter() - t0, 2)
    return stats


def _plan(examples: Iterable[Example | InvalidExample], out: Path, resume: bool, retry_failed: bool
          ) -> tuple[RunStats, list[Example], list[InvalidExample]]:
    """What this run labels: examples not in the output yet (and, with ``retry_failed``, failed ones)."""
    failed: set[str] | None = set() if retry_failed else None
    skip = done_ids(out, failed) if resume else set()
    retried = len(failed or ())
    todo: list[Example] = []
    invalid: list[InvalidExample] = []
    seen: set[str] = set()
    total = 0
    for ex in examples:
        total += 1
        if ex.id in seen:
            raise ConfigError(f"example id {ex.id!r} appears twice in the input")
        seen.add(ex.id)
        if isinstance(ex, InvalidExample):
            if ex.id not in skip and ex.id not in (failed or ()):  # its error line is written once
                invalid.append(ex)
        elif ex.id not in skip:
            todo.append(ex)
    featurize = load_featurize()
    stats = RunStats(output=str(out), total=total, skipped=total - len(todo) - len(invalid), retried=retried,
                     features="featurize" if featurize is not None else "missing")
    return stats, todo, invalid


def _lines(todo: list[Example], workers: int, init_args: tuple[Any, ...], output_fd: int = -1) -> Iterable[str]:
    """Output lines in input order, from this process or a pool with a bounded window."""
    if workers == 1 or len(todo) <= 1:
        _init_worker(*init_args)
        for ex in todo:
            yield _work(ex.model_dump_json())
        return
    window = workers * 4
    output = None
    if output_fd >= 0:
        info = os.fstat(output_fd)
        output = (output_fd, info.st_dev, info.st_ino)
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_pool_worker,
                             initargs=(os.getpid(), output, *init_args)) as pool:
        pending: list[Future[str]] = []
        it = iter(todo)
        for ex in it:
            pending.append(pool.submit(_work, ex.model_dump_json()))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def _count(stats: RunStats, line: str) -> None:
    obj = json.loads(line)
    err = obj.get("error")
    if not err:
        stats.written += 1
        return
    kind = str(err.get("type", "error"))
    if kind == "unscorable":
        stats.unscorable += 1
        kind = f"unscorable: {err.get('message', '')}"
    else:
        stats.failed += 1
    stats.errors[kind] = stats.errors.get(kind, 0) + 1


class _progress:
    """A rich progress bar (or nothing) exposing one ``advance`` callable."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # stderr, so that stdout carries only the closing JSON summary
        self._bar = Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True))
        self._bar.__enter__()
        task = self._bar.add_task("calibrate", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

