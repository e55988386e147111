"""Typed errors: every failure a caller can act on has its own class.

All errors derive from :class:`PocError`, so ``except pocsdk.errors.PocError`` catches
everything pocsdk raises on purpose. Errors caused by the caller's input also derive
from :class:`ValueError` (or :class:`TypeError`), so generic handlers keep working.
"""

from __future__ import annotations


class PocError(Exception):
    """Base class of every error pocsdk raises on purpose."""

    code: str = "pocsdk_error"

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready description, used by the CLI and the servers."""
        return {"type": type(self).__name__, "code": self.code, "message": str(self)}


class InvalidInputError(PocError, ValueError):
    """The context, query or a parameter is malformed (empty, wrong value, bad encoding)."""

    code = "invalid_input"


class InvalidTypeError(PocError, TypeError):
    """An argument has the wrong type."""

    code = "invalid_type"


class EmptyContextError(InvalidInputError):
    """The context is empty or whitespace only: there is nothing to compress."""

    code = "empty_context"


class InputTooLargeError(InvalidInputError):
    """The input exceeds the configured size limit (``Limits.max_input_chars``)."""

    code = "input_too_large"


class InvalidRateError(InvalidInputError):
    """A keep rate, target token count, floor or confidence is out of range or NaN."""

    code = "invalid_rate"


class EncodingError(InvalidInputError):
    """Input bytes are not valid UTF-8."""

    code = "invalid_encoding"


class ConfigError(PocError, ValueError):
    """Options that contradict each other or name nothing known."""

    code = "invalid_config"


class UnknownCompressorError(ConfigError, KeyError):
    """No compressor is registered under that name."""

    code = "unknown_compressor"

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ArtifactError(PocError, ValueError):
    """A predictor artifact is missing, corrupted, foreign or does not match its use."""

    code = "invalid_artifact"


class LabelsError(InvalidInputError):
    """A calibration labels file has missing or malformed fields."""

    code = "invalid_labels"


class MissingDependencyError(PocError, ImportError):
    """An optional feature needs an extra that is not installed."""

    code = "missing_dependency"

    def __init__(self, feature: str, extra: str, package: str | None = None, *, install: str | None = None) -> None:
        pkg = f" ({package})" if package else ""
        command = install or f"pip install 'pocsdk[{extra}]'"
        super().__init__(f"{feature} needs the optional dependency{pkg}: {command}")
        self.feature = feature
        self.extra = extra


class RemoteError(PocError):
    """A remote service (LLM endpoint, compression service) failed or answered an error."""

    code = "remote_error"
    server_code = ""
    """The ``code`` of the server's error body, when it sent one (e.g. ``batch_too_large``)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class PredictorMismatchWarning(UserWarning):
    """A shipped predictor steers a compressor configured unlike the one it was trained on.

    Its predictions, and the calibrated promise, describe the compressor with its default
    parameters; calibrate the configured one (``pocsdk calibrate`` + ``pocsdk train-predictor``).
    """


class LabelsWarning(UserWarning):
    """Label records were left out (e.g. records on another factor grid than the rest)."""
