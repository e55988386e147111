"""``pocsdk compress``: compress a JSON Lines file record by record, resumably.

Each input record yields exactly one output record, in input order, so outputs can be
joined back to inputs by position or by ``line``. A bad record becomes an error record and
the run goes on; the exit status says whether any record failed. See :class:`OutputRecord`
for the output schema.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO, NoReturn, Optional

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pocsdk.cli.app import app
from pocsdk.cli.jsonl import (
    STDIO,
    JsonlWriter,
    OutputLock,
    RawLine,
    ResumePoint,
    find_resume_point,
    iter_lines,
    json_type,
    open_input,
    parse_object,
)
from pocsdk.cli.params import PARAM_HELP, parse_params
from pocsdk.compressor import DEFAULT_COMPRESSOR, Compressor
from pocsdk.compressors.base import changed_parameters
from pocsdk.errors import (
    ConfigError,
    InputTooLargeError,
    InvalidInputError,
    InvalidTypeError,
    PocError,
    RemoteError,
)
from pocsdk.text.tokens import get_token_counter
from pocsdk.types import CompressionResult

DEFAULT_MAX_RECORD_BYTES = 32 * 1024 * 1024
EXIT_RECORD_ERRORS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ErrorInfo(BaseModel):
    """Why one record failed (``PocError.to_dict()``); ``code`` is stable, ``message`` is for people."""

    type: str
    code: str
    message: str


class OutputRecord(BaseModel):
    """One output line: ``{"id", "line", "result"}`` on success, ``{"id", "line", "error"}`` on failure.

    ``id`` is the input's id field (string or integer), the 0-based line number when the
    record has none, or ``null`` when the record could not be read far enough to find it.
    ``line`` is the 0-based input line number. ``result`` is a ``CompressionResult``.
    """

    id: str | int | None
    line: int
    result: CompressionResult | None = None
    error: ErrorInfo | None = None

    def to_json_line(self) -> bytes:
        """Compact UTF-8 JSON on one line; an infinite compression factor is written as ``null``."""
        return self.model_dump_json(exclude={"error"} if self.error is None else {"result"}).encode("utf-8")


@dataclass(frozen=True)
class RecordFields:
    """Where to find things in an input record."""

    text: str = "text"
    query: str | None = "query"
    id: str = "id"
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES


def compress_record(compressor: Compressor, raw: RawLine, fields: RecordFields) -> OutputRecord:
    """Compress one input line; every failure becomes an error record instead of an exception."""
    record_id: str | int | None = None
    try:
        if raw.too_large:
            raise InputTooLargeError(f"line is over the limit of {fields.max_bytes} bytes (--max-record-bytes)")
        obj = parse_object(raw.data)
        record_id = _record_id(obj, fields.id, raw.number)
        context = _context(obj, fields.text)
        query = _query(obj, fields.query)
        return OutputRecord(id=record_id, line=raw.number, result=compressor.compress(context, query))
    except PocError as exc:
        return OutputRecord(id=record_id, line=raw.number, error=ErrorInfo(**exc.to_dict()))
    except Exception as exc:  # a bug or a missing feature must not stop a long batch
        error = ErrorInfo(type=type(exc).__name__, code="internal_error", message=str(exc))
        return OutputRecord(id=record_id, line=raw.number, error=error)


def _record_id(obj: dict[str, Any], field_name: str, line: int) -> str | int:
    value = obj.get(field_name)
    if value is None:
        return line
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidTypeError(f"field {field_name!r} must be a string or an integer, got {json_type(value)}")
    return value


def _context(obj: dict[str, Any], field_name: str) -> str | list[Any]:
    if field_name not in obj:
        raise InvalidInputError(f"record has no {field_name!r} field")
    value = obj[field_name]
    if not isinstance(value, (str, list)):
        raise InvalidTypeError(
            f"field {field_name!r} must be a string or a list of documents, got {json_type(value)}"
        )
    return value


def _query(obj: dict[str, Any], field_name: str | None) -> str | None:
    value = obj.get(field_name) if field_name else None
    if value is not None and not isinstance(value, str):
        raise InvalidTypeError(f"field {field_name!r} must be a string, got {json_type(value)}")
    return value


@dataclass
class RunStats:
    """Totals of one run (records kept by ``--resume`` are counted apart, in ``resumed``)."""

    resumed: int = 0
    resumed_failed: int = 0
    """Error records among the resumed ones (they count for the exit status)."""
    ok: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    factor_sum: float = 0.0
    factor_count: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, record: OutputRecord) -> None:
        if record.result is None:
            self.failed += 1
            self.errors[record.error.code if record.error else "unknown"] += 1
            return
        self.ok += 1
        self.tokens_in += record.result.original_tokens
        self.tokens_out += record.result.compressed_tokens
        if math.isfinite(record.result.compression_factor):
            self.factor_sum += record.result.compression_factor
            self.factor_count += 1

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    @property
    def mean_factor(self) -> float | None:
        """Mean of the per-record compression factors (records that kept nothing are left out)."""
        return self.factor_sum / self.factor_count if self.factor_count else None

    @property
    def overall_factor(self) -> float | None:
        """Total tokens in / total tokens out."""
        return self.tokens_in / self.tokens_out if self.tokens_out else None


def run_batch(
    compressor: Compressor,
    lines: Iterator[RawLine],
    writer: JsonlWriter,
    fields: RecordFields,
    stats: RunStats,
    on_record: Callable[[RawLine, RunStats], None] | None = None,
) -> RunStats:
    """Compress every line and write its output record at once (constant memory)."""
    for raw in lines:
        record = compress_record(compressor, raw, fields)
        try:
            line = record.to_json_line()
        except Exception as exc:  # e.g. metadata nested past the serializer's depth: the record fails, not the run
            error = ErrorInfo(type=type(exc).__name__, code="invalid_input",
                              message=f"the result cannot be written as JSON: {exc}")
            record = OutputRecord(id=record.id, line=record.line, error=error)
            line = record.to_json_line()
        writer.write(line)
        stats.add(record)
        if on_record is not None:
            on_record(raw, stats)
    return stats


def skip_done(lines: Iterator[RawLine], point: ResumePoint, fields: RecordFields) -> RawLine | None:
    """Consume the input records an earlier run already wrote; check that its last one matches this input."""
    raw: RawLine | None = None
    for _ in range(point.records):
        raw = next(lines, None)
        if raw is None:
            raise ConfigError(f"cannot resume: the output has {point.records} records but the input has fewer")
    if raw is None:
        return None
    same = raw.number == point.last_line
    if same and point.last_id is not None:
        try:
            same = _record_id(parse_object(raw.data), fields.id, raw.number) == point.last_id
        except PocError:
            same = False
    if not same:
        raise ConfigError(
            f"cannot resume: output record {point.records} (input line {point.last_line}, id {point.last_id!r}) "
            f"does not match line {raw.number} of this input; is this the same input?"
        )
    return raw


_FACADE_OPTIONS = frozenset({"keep_rate", "target_tokens", "floor", "confidence", "compressor", "predictor",
                             "calibration", "task", "tokenizer", "endpoint", "api_key"})
"""Compressor() arguments that have their own option; ``--param`` takes the compressor's own."""


@app.command("compress")
def compress_command(
    source: Annotated[str, typer.Argument(metavar="IN", help="Input JSON Lines file, or '-' for stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output JSON Lines file, or '-' for stdout.")],
    keep_rate: Annotated[
        Optional[float], typer.Option(help="Keep this fraction of tokens, in (0, 1].")] = None,
    target_tokens: Annotated[
        Optional[int], typer.Option(help="Compress each record to at most this many tokens.")] = None,
    floor: Annotated[
        Optional[float], typer.Option(help="Least relative task performance to keep, in (0, 1].")] = None,
    confidence: Annotated[
        Optional[float], typer.Option(help="With --floor: probability of meeting it, in (0, 1).")] = None,
    predictor: Annotated[
        Optional[str], typer.Option(help="With --floor: a shipped predictor name or a predictor directory.")] = None,
    calibration: Annotated[
        Optional[str], typer.Option(help="With --floor: a calibration file for the predictor.")] = None,
    task: Annotated[
        Optional[str], typer.Option(help="With --floor: the inputs' task type (qa, summarization, ...), for "
                                         "predictors that read it; default: the calibration's task.")] = None,
    compressor: Annotated[str, typer.Option(help="Registered compressor name.")] = DEFAULT_COMPRESSOR,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help=PARAM_HELP)] = None,
    endpoint: Annotated[
        Optional[str], typer.Option(help="Compress on a remote 'pocsdk serve' service at this URL.")] = None,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", envvar="POCSDK_API_KEY", help="Bearer key for --endpoint.")] = None,
    tokenizer: Annotated[
        Optional[str], typer.Option(
            help="'heuristic', 'tiktoken:<encoding>', 'hf:<local path>' or 'hf:<folder>::<file.gguf>'.")] = None,
    text_field: Annotated[
        str, typer.Option(help="Field holding a string or a list of documents (strings or {id, text, metadata}).")
    ] = "text",
    query_field: Annotated[str, typer.Option(help="Field holding the optional query.")] = "query",
    id_field: Annotated[
        str, typer.Option(help="Field holding the record id; records without one get their line number.")] = "id",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run: keep OUT's complete records.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it already has records.")] = False,
    max_record_bytes: Annotated[
        int, typer.Option(min=1, help="Longer input lines become input_too_large error records.")
    ] = DEFAULT_MAX_RECORD_BYTES,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
) -> None:
    """Compress each JSON record of IN; write one result or error record per input record to OUT, in order.

    Exit status: 0 when every record succeeded; 1 when any record failed (records kept by --resume included);
    2 for bad options (checked by compressing a built-in text once before any record);
    130 when interrupted (rerun with --resume).
    """
    err = Console(stderr=True)
    fields = RecordFields(text=text_field, query=query_field or None, id=id_field, max_bytes=max_record_bytes)
    lock = OutputLock.acquire(STDIO)
    finished = False
    try:
        try:
            _check_paths(source, output, resume=resume, overwrite=overwrite)
            lock = OutputLock.acquire(output)  # before the output is read or replaced
            modes = [m for m, v in (("--keep-rate", keep_rate), ("--target-tokens", target_tokens), ("--floor", floor))
                     if v is not None]
            if len(modes) != 1:
                raise ConfigError("give exactly one of --keep-rate, --target-tokens or --floor")
            if floor is None and (predictor is not None or calibration is not None or confidence is not None
                                  or task is not None):
                raise ConfigError("--confidence, --predictor, --calibration and --task apply to --floor")
            if tokenizer is not None:
                get_token_counter(tokenizer)  # fail now, not once per record
            engine = Compressor(keep_rate, target_tokens=target_tokens, floor=floor, confidence=confidence,
                                compressor=compressor, predictor=predictor, calibration=calibration, task=task,
                                tokenizer=tokenizer, endpoint=endpoint, api_key=api_key,
                                **parse_params(param, options=_FACADE_OPTIONS))
            if floor is not None:
                engine.prepare()  # a bad --predictor / --calibration fails now, not once per record
            point = find_resume_point(Path(output)) if resume else ResumePoint(0, 0, None)
            if resume:
                described = getattr(engine.compressor, "parameters", None)  # a registered compressor may not say
                local = json.loads(json.dumps(described(), default=str)) if endpoint is None and callable(described) \
                    else None
                policy = engine._policy if floor is not None and endpoint is None else None
                _check_resumed_settings(point, compressor, floor, keep_rate, confidence, local, target_tokens,
                                        policy, tuple(getattr(engine.compressor, "filled_on_load", ())))
            stream, size = open_input(source)
        except (PocError, OSError) as exc:
            _fail(err, exc)
        try:
            _probe(engine, err)  # a bad --param, model path or --endpoint fails now, not once per record
        except PocError as exc:
            if source != STDIO:
                stream.close()
            _fail(err, exc)
        try:
            stats = _run(engine, stream, size, output, point, fields, err, show_progress=not quiet and err.is_terminal)
        finally:
            if source != STDIO:
                stream.close()
        finished = True
        if not quiet:
            err.print(summary_table(stats))
        if stats.failed or stats.resumed_failed:
            raise typer.Exit(EXIT_RECORD_ERRORS)
    finally:
        lock.release(discard_new_empty=not finished)


def _run(engine: Compressor, stream: BinaryIO, size: int | None, output: str, point: ResumePoint,
         fields: RecordFields, err: Console, *, show_progress: bool) -> RunStats:
    """Skip what a resumed run already wrote, then compress the rest with a progress bar."""
    started = time.perf_counter()
    stats = RunStats(resumed=point.records, resumed_failed=point.failed)
    lines = iter_lines(stream, fields.max_bytes)
    try:
        done = skip_done(lines, point, fields)
    except PocError as exc:
        _fail(err, exc)
    try:
        opened = JsonlWriter.open(output, keep_bytes=point.keep_bytes)
    except OSError as exc:
        _fail(err, exc)
    progress = _progress(err, enabled=show_progress)
    try:
        with progress, opened as writer:
            task = progress.add_task("compressing", total=size, completed=done.end if done else 0,
                                     records=stats.resumed, failed=0)

            def advance(raw: RawLine, s: RunStats) -> None:
                progress.update(task, completed=raw.end, records=s.resumed + s.processed, failed=s.failed)

            run_batch(engine, lines, writer, fields, stats, advance)
            if size is not None:
                progress.update(task, completed=size)
    except KeyboardInterrupt:
        err.print(f"interrupted after {stats.resumed + stats.processed} records; rerun with --resume to continue")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OSError as exc:  # the output broke (disk full, gone): what was written stays, resumable
        then = "" if output == STDIO else ", rerun with --resume once fixed"
        err.print(f"[red]error:[/red] cannot write {escape(output)}: {escape(str(exc))}; "
                  f"{stats.resumed + stats.processed} records done{then}", highlight=False)
        raise typer.Exit(EXIT_RECORD_ERRORS) from None
    stats.seconds = time.perf_counter() - started
    return stats


def _fail(err: Console, exc: BaseException) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
    raise typer.Exit(EXIT_USAGE) from None


_PROBE_TEXT = " ".join(
    f"Line {i} of the pocsdk start-up check reads a short sentence about river {i} and its bridge." for i in range(24))


_BUSY = frozenset({429, 502, 503, 504})
"""Statuses of a remote service that is there but busy: the run goes on, its records retry for themselves."""


def _probe(engine: Compressor, err: Console) -> None:
    """Compress a small built-in text once, so that settings that only fail when something is compressed (an
    unknown ``--param`` value, a missing model, an unreachable or refusing ``--endpoint``) stop the run before
    any record is written (exit 2), instead of failing every record in turn."""
    try:
        engine.compress(_PROBE_TEXT, "river bridge", keep_rate=0.5)
    except RemoteError as exc:
        if exc.status_code in _BUSY:
            err.print(f"[yellow]warning:[/yellow] the endpoint is busy ({escape(str(exc))}); going on",
                      highlight=False)
            return
        raise ConfigError(f"the compressor cannot run with these options: {exc}") from exc
    except PocError as exc:
        raise ConfigError(f"the compressor cannot run with these options: {exc}") from exc


def _check_resumed_settings(point: ResumePoint, compressor: str, floor: float | None, keep_rate: float | None,
                            confidence: float | None = None, parameters: dict[str, Any] | None = None,
                            target_tokens: int | None = None, policy: Any = None,
                            filled_on_load: Sequence[str] = ()) -> None:
    """Refuse to append records made with another compressor, floor, confidence, keep rate or token target,
    compressor parameters, predictor, task or calibration to an earlier run's output (as far as its last
    result shows them: a remote service's parameters are the service's)."""
    result = point.last_result
    if not result:
        return
    earlier = result.get("compressor")
    if isinstance(earlier, str) and earlier != compressor:
        raise ConfigError(f"cannot resume: the earlier run used compressor {earlier!r}, this one {compressor!r}")
    decision = result.get("floor")
    earlier_floor = decision.get("floor") if isinstance(decision, dict) else None
    if earlier_floor != floor:
        then = "no floor" if earlier_floor is None else f"floor {earlier_floor}"
        now = "no floor" if floor is None else f"floor {floor}"
        raise ConfigError(f"cannot resume: the earlier run used {then}, this one {now}")
    earlier_confidence = decision.get("confidence") if isinstance(decision, dict) else None
    if earlier_floor is not None and earlier_confidence != confidence:
        raise ConfigError(f"cannot resume: the earlier run used confidence {earlier_confidence}, this one {confidence}")
    requested = result.get("requested_keep_rate")
    if keep_rate is not None and earlier_floor is None and requested != keep_rate:
        raise ConfigError(f"cannot resume: the earlier run asked for keep rate {requested}, this one {keep_rate}")
    original = result.get("original_tokens")
    if target_tokens is not None and earlier_floor is None and isinstance(requested, (int, float)) \
            and isinstance(original, int) and original > 0 and not result.get("passthrough"):
        # a token target is recorded as the keep rate it asked for: target / original tokens
        if abs(requested - min(1.0, target_tokens / original)) > 1e-9:
            raise ConfigError(f"cannot resume: the earlier run asked for another rate ({requested:.4g} of "
                              f"{original} tokens), not --target-tokens {target_tokens}")
    if policy is not None and isinstance(decision, dict):
        now_name = getattr(policy.predictor, "name", type(policy.predictor).__name__)
        if decision.get("predictor") not in (None, now_name):
            raise ConfigError(f"cannot resume: the earlier run used predictor {decision.get('predictor')!r}, "
                              f"this one {now_name!r}")
        if "task" in decision and decision.get("task") != policy.task:
            raise ConfigError(f"cannot resume: the earlier run predicted for task {decision.get('task')!r}, "
                              f"this one for {policy.task!r}")
        if confidence is not None and floor is not None:  # the calibration shows in its margin or weight
            tradeoff = policy.rule == "tradeoff"
            now = policy.weight(floor, confidence) if tradeoff else policy.margin(floor, confidence)
            was = decision.get("weight" if tradeoff else "margin")
            was = math.inf if tradeoff and was is None else was
            if isinstance(was, (int, float)) and not math.isclose(was, now, rel_tol=1e-9, abs_tol=1e-12):
                raise ConfigError("cannot resume: the earlier run used another calibration (its "
                                  f"{'weight' if tradeoff else 'margin'} was {was:g}, this one's is {now:g})")
    changed = changed_parameters(result.get("parameters"), parameters, filled_on_load)
    if changed:
        raise ConfigError(f"cannot resume: the earlier run used other compressor parameters ({', '.join(changed)})")


def _check_paths(source: str, output: str, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other")
    if output == STDIO:
        if resume:
            raise ConfigError("--resume needs an output file, not stdout")
        return
    out = Path(output)
    if source != STDIO and out.exists() and Path(source).exists() and out.samefile(source):
        raise ConfigError("the output file is the input file")
    if source == STDIO and out.exists() and _is_stdin(out):
        raise ConfigError("the output file is the input file (stdin reads it)")
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory")
    if not resume and not overwrite and out.exists() and out.stat().st_size > 0:
        raise ConfigError(f"{out} already has records: pass --resume to continue that run or --overwrite to replace it")


def _is_stdin(path: Path) -> bool:
    """Is stdin this regular file? (Devices such as /dev/null may be both.)"""
    try:
        here, there = os.fstat(sys.stdin.fileno()), path.stat()
    except (OSError, ValueError, AttributeError):  # no real stdin (a test runner's, a closed one)
        return False
    return stat.S_ISREG(there.st_mode) and (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _progress(console: Console, *, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[records]} records, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


def summary_table(stats: RunStats) -> Table:
    """The end-of-run summary (numbers of this run; records kept from a resumed run are listed apart)."""
    table = Table(title="pocsdk compress", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    if stats.resumed:
        table.add_row("records kept from the earlier run", f"{stats.resumed:,}")
        if stats.resumed_failed:
            table.add_row("  of which failed", f"[red]{stats.resumed_failed:,}[/red]")
    table.add_row("records compressed", f"{stats.ok:,}")
    table.add_row("records failed", f"[red]{stats.failed:,}[/red]" if stats.failed else "0")
    for code, n in sorted(stats.errors.items()):
        table.add_row(f"  {code}", f"{n:,}")
    table.add_row("tokens in", f"{stats.tokens_in:,}")
    table.add_row("tokens out", f"{stats.tokens_out:,}")
    table.add_row("mean compression factor", _fmt(stats.mean_factor))
    table.add_row("overall compression factor", _fmt(stats.overall_factor))
    table.add_row("seconds", f"{stats.seconds:.1f}")
    return table


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
