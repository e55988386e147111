"""Streaming JSON Lines I/O for batch commands: one record at a time in, whole lines out.

Input is read as bytes and decoded line by line, so one bad byte sequence spoils only its
own record, and a line over the size limit is skipped without being held in memory.
Output is written one complete line per ``write`` and flushed at once: a killed run
leaves whole records plus at most one partial last line, which :func:`find_resume_point`
finds and a resumed run cuts off before appending.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from pocsdk._files import lock_exclusively
from pocsdk.errors import ConfigError, EncodingError, InvalidInputError, InvalidTypeError

STDIO = "-"
_CHUNK = 1 << 20
# A JSON escape of a UTF-16 surrogate; only records containing one need the full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class RawLine:
    """One non-blank input line, not yet decoded."""

    number: int
    """0-based line number in the input (blank lines count)."""
    data: bytes
    """The line without its line break; empty when ``too_large``."""
    end: int
    """Input bytes consumed up to and including this line (for progress)."""
    too_large: bool = False


def iter_lines(stream: BinaryIO, max_bytes: int) -> Iterator[RawLine]:
    """Yield the non-blank lines of ``stream``; lines longer than ``max_bytes`` come back flagged and empty."""
    number = -1
    consumed = 0
    while True:
        chunk = stream.readline(max_bytes + 2)  # a record of max_bytes plus "\r\n" fits
        if not chunk:
            return
        number += 1
        consumed += len(chunk)
        ended = chunk.endswith(b"\n")
        if not ended and len(chunk) > max_bytes + 1:  # the line goes on past the limit
            skipped, blank = _drain_line(stream)
            consumed += skipped
            if blank and not chunk.strip():  # a blank line is no record, however long
                continue
            yield RawLine(number, b"", consumed, too_large=True)
            continue
        data = (chunk[:-1] if ended else chunk).rstrip(b"\r")  # (not ended: the file's last line)
        if len(data) > max_bytes:
            yield RawLine(number, b"", consumed, too_large=True)
            continue
        if data.strip():
            yield RawLine(number, data, consumed)


def _drain_line(stream: BinaryIO) -> tuple[int, bool]:
    """Skip the rest of an over-long line in bounded chunks; return the bytes skipped and whether they
    were all whitespace."""
    skipped = 0
    blank = True
    while True:
        more = stream.readline(_CHUNK)
        skipped += len(more)
        blank = blank and not more.strip()
        if not more or more.endswith(b"\n"):
            return skipped, blank


def parse_object(data: bytes) -> dict[str, Any]:
    """Decode one line into a JSON object, raising a typed error that names what is wrong."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EncodingError(f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"line is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInputError("line is nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"line is not readable JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidTypeError(f"a record must be a JSON object, got {json_type(obj)}")
    if _SURROGATE_ESCAPE.search(data):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise EncodingError("record contains an unpaired surrogate escape (\\ud800-\\udfff)") from None
    return obj


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # 1e400: JSON allows it, but it would come back as null
        raise InvalidInputError(f"line is not valid JSON: {literal[:40]} is too large for a number")
    return value


def _reject_constant(name: str) -> Any:
    raise InvalidInputError(f"line is not valid JSON: {name} is not a JSON number")


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted output file stands."""

    records: int
    """Complete output lines already written."""
    keep_bytes: int
    """Length of the file up to its last complete line; anything after is a partial line."""
    last_line: int | None
    """Input line number of the last complete output record (``None`` when there is none)."""
    last_id: Any = None
    """The id of that record, as written."""
    failed: int = 0
    """Error records among them."""
    last_result: Any = None
    """The ``result`` object of the last record that has one (``None`` when all are errors)."""


def find_resume_point(path: Path) -> ResumePoint:
    """Count complete lines of an earlier run's output without loading it (read only)."""
    if not path.exists():
        return ResumePoint(0, 0, None)
    records = 0
    last_nl = -1
    offset = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            n = block.count(b"\n")
            if n:
                records += n
                last_nl = offset + block.rindex(b"\n")
            offset += len(block)
        if records == 0:
            return ResumePoint(0, 0, None)
        last = _line_ending_at(fh, last_nl)
    try:
        obj = json.loads(last)
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    line = obj.get("line") if isinstance(obj, dict) else None
    if not isinstance(line, int) or isinstance(line, bool):
        raise ConfigError(f"cannot resume: the last complete line of {path} is not a pocsdk output record")
    failed, last_ok = _scan_records(path, last_nl + 1)
    result = None
    if last_ok is not None:
        try:
            result = json.loads(last_ok).get("result")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            result = None
    return ResumePoint(records, last_nl + 1, line, obj.get("id"), failed, result if isinstance(result, dict) else None)


# An error record as the batch writes it: {"id":...,"line":N,"error":{...}} (ids are strings, integers or null).
_ERROR_RECORD = re.compile(rb'\{"id":(?:null|-?\d+|"(?:[^"\\]|\\.)*"),"line":\d+,"error":')


def _scan_records(path: Path, size: int) -> tuple[int, bytes | None]:
    """Error records among the first ``size`` bytes of an output file, and the last other record (one pass,
    a line at a time)."""
    count = 0
    last_ok: bytes | None = None
    with path.open("rb") as fh:
        while fh.tell() < size:
            line = fh.readline()
            if not line:
                break
            if _ERROR_RECORD.match(line):
                count += 1
            else:
                last_ok = line
    return count, last_ok


def _line_ending_at(fh: BinaryIO, newline_at: int) -> bytes:
    """The bytes of the line whose line break is at ``newline_at``, read backwards in blocks."""
    parts: list[bytes] = []
    pos = newline_at
    while pos > 0:
        start = max(0, pos - _CHUNK)
        fh.seek(start)
        block = fh.read(pos - start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            parts.append(block[cut + 1:])
            break
        parts.append(block)
        pos = start
    return b"".join(reversed(parts))


def open_input(source: str) -> tuple[BinaryIO, int | None]:
    """Open ``source`` (``-`` is stdin) for binary reading; also return its size when known."""
    if source == STDIO:
        return sys.stdin.buffer, None
    path = Path(source)
    fh = path.open("rb")
    info = os.fstat(fh.fileno())
    return fh, info.st_size if stat.S_ISREG(info.st_mode) else None  # a pipe (<(...)) has no size to show


class OutputLock:
    """One run writes an output at a time: a second one (a ``--resume`` started while the first still runs)
    would write over the first one's lines. An advisory ``flock`` held for the whole run, on a descriptor of
    its own; where ``fcntl`` is missing nothing is locked."""

    def __init__(self, fh: BinaryIO | None = None, path: Path | None = None, created: bool = False) -> None:
        self._fh = fh
        self._path = path
        self._created = created

    @classmethod
    def acquire(cls, target: str) -> OutputLock:
        if target == STDIO:
            return cls()
        path = Path(target).resolve()  # a symlink's target is what gets created (and removed again)
        if path.exists() and not path.is_file():  # /dev/null, a FIFO: several runs may share it
            return cls()
        created = not path.exists()
        fh = path.open("ab")
        try:
            lock_exclusively(fh, path, "wait for it to end (or stop it), then --resume")
        except ConfigError:
            fh.close()
            raise
        return cls(fh, path, created)

    def release(self, *, discard_new_empty: bool = False) -> None:
        """Let go; a run that stopped before writing anything removes the empty file it created."""
        if self._fh is None:
            return
        try:
            if discard_new_empty and self._created and self._path is not None and self._path.stat().st_size == 0:
                self._path.unlink()
        except OSError:
            pass
        self._fh.close()
        self._fh = None


class JsonlWriter:
    """Writes one complete, flushed line per record."""

    def __init__(self, stream: BinaryIO, *, close: bool) -> None:
        self._stream = stream
        self._close = close

    @classmethod
    def open(cls, target: str, *, keep_bytes: int = 0) -> JsonlWriter:
        """Open ``target`` (``-`` is stdout) keeping its first ``keep_bytes`` bytes (0: start afresh); append."""
        if target == STDIO:
            return cls(sys.stdout.buffer, close=False)
        path = Path(target)
        if keep_bytes <= 0 or not path.exists():
            return cls(path.open("wb"), close=True)
        fh = path.open("r+b")
        fh.truncate(keep_bytes)
        fh.seek(keep_bytes)
        return cls(fh, close=True)

    def write(self, line: bytes) -> None:
        """Write one serialised record (no line breaks inside) as a whole line, then flush."""
        self._stream.write(line + b"\n")
        self._stream.flush()

    def close(self) -> None:
        if self._close:
            self._stream.close()
        else:
            self._stream.flush()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
