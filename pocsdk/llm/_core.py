"""Sans-I/O core of the OpenAI-compatible client: request building, retry decisions, response and SSE parsing.

The sync and async clients are thin shells around these functions, so both send the same
bytes, retry the same way and return the same results; only sending and waiting differ.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import httpx

from pocsdk.errors import ConfigError, InvalidTypeError
from pocsdk.llm.types import ChatResult, LLMError, RetryPolicy, Timeout, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_KEY_ENVS = ("POCSDK_LLM_API_KEY", "OPENAI_API_KEY")
BASE_URL_ENVS = ("POCSDK_LLM_BASE_URL", "OPENAI_BASE_URL")

MessageLike = Union[Mapping[str, Any], Any]
MessagesLike = Union[str, Sequence[MessageLike]]


def resolve_api_key(api_key: str | None) -> str | None:
    """The explicit key, else the first of ``$POCSDK_LLM_API_KEY`` / ``$OPENAI_API_KEY`` that is set.

    A variable set to the empty string means "no key" and stops the search: ``POCSDK_LLM_API_KEY=`` is how a
    command line (``pocsdk calibrate --judge llm``) sends a base URL's own credentials while ``$OPENAI_API_KEY``
    is set for other tools."""
    if api_key is not None:
        return api_key
    for env in API_KEY_ENVS:
        value = os.environ.get(env)
        if value is not None:
            return value or None
    return None


def resolve_base_url(base_url: str | None) -> str:
    """The explicit base URL, else ``$POCSDK_LLM_BASE_URL`` / ``$OPENAI_BASE_URL``, else OpenAI's; checked here.

    Whitespace around it (a URL read from a ``.env`` file keeps its newline) is dropped, trailing slashes
    of its path too; whitespace or control characters inside it, a scheme other than http(s), a missing
    host, a bad port or a fragment raise :class:`~pocsdk.errors.ConfigError` now, when the client is built,
    never as a raw ``httpx`` error at the first call. Error messages never quote the URL, which may hold a
    password. A query string (``?api-version=...``) and ``user:password@`` stay; see :func:`split_base_url`.
    """
    source = "the base_url argument"
    given: object = base_url
    if not base_url:
        given = None
        for env in BASE_URL_ENVS:
            value = os.environ.get(env)
            if value and value.strip():
                given, source = value, f"${env}"
                break
        if given is None:
            return DEFAULT_BASE_URL
    if isinstance(given, httpx.URL):
        given = str(given)
    if not isinstance(given, str):
        raise InvalidTypeError(f"base_url must be a string, got {type(given).__name__}")
    url = given.strip()
    for i, c in enumerate(url):
        if c.isspace() or unicodedata.category(c) == "Cc":
            kind = "a line break" if c in "\r\n" else "a space" if c.isspace() else "a control character"
            raise ConfigError(f"the base URL ({source}) contains {kind} (U+{ord(c):04X}) at position {i}; "
                              "a URL cannot carry it (percent-encode it as %XX if it belongs there)")
    if not url:
        raise ConfigError(f"the base URL ({source}) is empty")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:  # its text may quote a part of the URL: the password
        detail = f": {exc}" if "@" not in url else ""  # too when one holds a "/" or "?"
        raise ConfigError(f"the base URL ({source}) is not a valid URL{detail}") from None
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(f"the base URL ({source}) must start with http:// or https://")
    if not parsed.host:
        raise ConfigError(f"the base URL ({source}) names no host")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"the base URL ({source}) has port {port}, outside 1-65535")
    if "#" in url:
        raise ConfigError(f"the base URL ({source}) holds a '#', which starts a fragment HTTP never sends: "
                          "remove it, or write it as %23 where it belongs to the URL")
    head, mark, query = url.partition("?")
    head = head.rstrip("/")
    return f"{head}?{query}" if mark and query else head


@dataclass(frozen=True)
class Endpoint:
    """What the pooled httpx client is given for a base URL: the URL without credentials and query string,
    the query as default parameters of every request, and the credentials as Basic auth."""

    url: str
    params: httpx.QueryParams | None
    auth: httpx.BasicAuth | None


def split_base_url(base_url: str, headers: Mapping[str, str], key_source: str = "") -> Endpoint:
    """Split a :func:`resolve_base_url` result for httpx.

    httpx appends the request path after a base URL's query string, so the query (Azure's
    ``?api-version=...``) becomes default parameters sent with every request. Credentials
    (``https://user:password@host/v1``) become Basic auth, so they never reach httpx's request log;
    as the ``Authorization`` header can carry only one of them, credentials together with an API key
    (``key_source`` names where it came from) or an ``Authorization`` header are a ConfigError.
    """
    parsed = httpx.URL(base_url)
    auth = None
    if parsed.userinfo:
        if "authorization" in headers:
            given = f"an API key is set too ({key_source})" if key_source else "an Authorization header is given too"
            raise ConfigError(f"the base URL carries a user name and password (Basic auth) and {given}; both "
                              "would set the Authorization header: remove the credentials from the URL, or pass "
                              'api_key="" (and no Authorization header), or set POCSDK_LLM_API_KEY= (empty) in '
                              "the environment, to send them instead")
        auth = httpx.BasicAuth(parsed.username, parsed.password)
    params = parsed.params if parsed.query else None
    return Endpoint(str(parsed.copy_with(userinfo=b"", query=None)), params, auth)


def to_httpx_timeout(timeout: Timeout | float | None) -> httpx.Timeout:
    if timeout is None:
        return httpx.Timeout(None)
    if isinstance(timeout, (int, float)):  # every phase of an attempt; waiting for a pooled connection
        return httpx.Timeout(float(timeout), pool=None)  # is none (see Timeout.pool)
    return httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool)


def normalize_messages(messages: MessagesLike) -> list[dict[str, Any]]:
    """A string becomes one user message; mappings (and pydantic models) become plain dicts."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence):
        raise InvalidTypeError(f"messages must be a string or a list of messages, got {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if hasattr(m, "model_dump"):
            m = m.model_dump(exclude_none=True)
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InvalidTypeError(f"message {i} must be a mapping with a string 'role'")
        out.append(dict(m))
    return out


def chat_payload(
    messages: MessagesLike, model: str | None, params: Mapping[str, Any], *, stream: bool
) -> dict[str, Any]:
    if not model:
        raise InvalidTypeError("model is required: pass model=... to the client or to the call")
    payload: dict[str, Any] = {"model": model, "messages": normalize_messages(messages)}
    payload.update({k: v for k, v in params.items() if v is not None})
    if stream:
        payload["stream"] = True
    else:
        payload.pop("stream", None)
    return payload


def auth_headers(api_key: str | bytes | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Request headers; a value that HTTP cannot carry is refused here, naming the header, never the value
    (a key read from a file with its newline would otherwise end up, whole, in an error message)."""
    headers = {"accept": "application/json"}
    if api_key:
        # a key goes inside "Bearer ...", a str that httpx encodes as ASCII: a bytes key with a byte >= 0x80
        # (decoded to a character >= U+0080) failed there with a UnicodeEncodeError holding the whole header
        _check_header_value("the API key", api_key, obs_text=False)
        if isinstance(api_key, (bytes, bytearray)):  # sent as its characters, never as "b'...'"
            api_key = bytes(api_key).decode("ascii")
        headers["authorization"] = f"Bearer {api_key}"
    if extra:  # header names are case-insensitive: an "Authorization" given here replaces the key's
        for k, v in extra.items():
            name = _header_name(k)
            _check_header_name(name)
            # a bytes value goes to httpx as it is, so its high bytes (obs-text) are really sent
            _check_header_value(f"header {name!r}", v, obs_text=True)
        headers.update({_header_name(k).lower(): v for k, v in extra.items()})
    return headers


def _header_name(name: object) -> str:
    return bytes(name).decode("latin-1") if isinstance(name, (bytes, bytearray)) else str(name)


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_header_name(name: str) -> None:
    """A header name HTTP can carry (a token): httpx encodes names as ASCII (a raw UnicodeEncodeError) and
    h11 refuses other characters only when the request is sent."""
    if not name or any(c not in _TOKEN_CHARS for c in name):
        raise InvalidTypeError(f"header name {name!r} is not a valid HTTP header name (letters, digits and "
                               "!#$%&'*+-.^_`|~ only)")


def _check_header_value(what: str, value: object, *, obs_text: bool = False) -> None:
    """Refuse a value this client cannot send, naming ``what``, never quoting the value. ``obs_text``: a bytes
    value may hold bytes >= 0x80 (httpx sends bytes as they are); a str value never may (httpx encodes it as
    ASCII), nor any value that ends up inside a str header (the API key)."""
    raw = isinstance(value, (bytes, bytearray))
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        raise InvalidTypeError(f"{what} must be a string, got {type(value).__name__}")
    bad = next((c for c in value if not (" " <= c <= "~" or c == "\t" or (raw and obs_text and c >= "\x80"))),
               None)
    if bad is not None:
        kind = "a line break" if bad in "\r\n" else "a control character" if ord(bad) < 0x20 or bad == "\x7f" \
            else "a non-ASCII byte" if raw else "a non-ASCII character"
        code = f"0x{ord(bad):02X}" if raw else f"U+{ord(bad):04X}"
        hint = "strip it (a key read from a file keeps its newline)" if kind == "a line break" else \
            "an HTTP header cannot carry it (check the value was copied whole and unchanged)"
        raise InvalidTypeError(f"{what} contains {kind} ({code}), which this client cannot send; {hint}")
    if value[:1] in (" ", "\t") or value[-1:] in (" ", "\t"):  # HTTP cannot carry them: h11 refuses the
        end = "begins" if value[:1] in (" ", "\t") else "ends"  # request, quoting the value
        raise InvalidTypeError(f"{what} {end} with a space or tab, which this client cannot send; "
                               "strip it (a key copied from a web page or a .env file may keep one)")


def display_url(url: str) -> str:
    """``url`` with its credentials masked: for messages and ``repr``, never for requests.

    A password becomes ``***`` (``user:***@host``); a user name alone, often a token
    (``https://TOKEN@host/v1``), becomes ``***@host``."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return re.sub(r"//.*@", "//***@", url) if isinstance(url, str) else repr(url)
    if not parsed.userinfo:
        return url
    user, sep, _ = parsed.userinfo.partition(b":")
    masked = user + b":***" if sep and user else b"***"
    return str(parsed.copy_with(userinfo=masked))


def error_from_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> LLMError:
    """An :class:`LLMError` carrying the server's message (and ``server_code``) when the body is OpenAI-style
    JSON; a redirect names where it points, since the base URL is then what needs changing."""
    parsed: Any = None
    message = body[:500].decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    code = ""
    if isinstance(parsed, dict):
        message, code = _error_message(parsed, message)
    if 300 <= status < 400 and headers is not None and headers.get("location"):
        message = f"redirect to {headers['location']} (set the base URL to it). {message}".strip()
    error = LLMError(f"LLM endpoint answered HTTP {status}: {message}", status_code=status, body=parsed or message)
    error.server_code = code
    return error


def _error_message(parsed: Mapping[str, Any], default: str) -> tuple[str, str]:
    """The message and code of an OpenAI-style ``{"error": ...}`` body (or a FastAPI ``detail``)."""
    err = parsed.get("error")
    if isinstance(err, dict):
        code = err.get("code")
        message = err.get("message")
        return (message if isinstance(message, str) else default), (str(code) if code is not None else "")
    if isinstance(err, str):
        return err, ""
    if isinstance(parsed.get("detail"), str):
        return parsed["detail"], ""
    return default, ""


def parse_chat(data: Any) -> ChatResult:
    """Parse a ``chat.completion`` object; a malformed one raises :class:`LLMError`."""
    if isinstance(data, dict) and data.get("error") and "choices" not in data:  # an error sent with a 2xx status
        text, code = _error_message(data, json.dumps(data)[:500])
        error = LLMError(f"LLM endpoint answered an error: {text}", body=data)
        error.server_code = code
        raise error
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        usage = data.get("usage") or {}
        counts = {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        if not usage.get("total_tokens"):  # some servers leave the total out
            counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
        answer_id = data.get("id")
        return ChatResult(
            content=content,
            model=str(data.get("model") or ""),
            finish_reason=choice.get("finish_reason"),
            usage=Usage(**counts),
            id=str(answer_id) if answer_id is not None else None,  # some servers send a number
            raw=data,
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise LLMError(f"malformed chat completion response: {exc!r}") from exc


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise LLMError(f"LLM endpoint answered invalid JSON: {body[:200]!r}") from exc


def parse_chat_body(body: bytes) -> ChatResult:
    """A ``chat.completion`` response body as a :class:`ChatResult`."""
    return parse_chat(parse_json(body))


def parse_models_body(body: bytes) -> list[str]:
    """Model ids from a ``GET /models`` response body."""
    data = parse_json(body)
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise LLMError(f"malformed model list: expected {{\"data\": [...]}}, got {body[:200]!r}")
    return [str(m.get("id")) for m in models if isinstance(m, dict)]


# -- retries -------------------------------------------------------------------------------
@dataclass
class Retrying:
    """The retry decisions of one request, without the waiting.

    The shell sends; after a failed attempt it asks this object how long to wait before the
    next one, and sleeps (``time.sleep`` or ``asyncio.sleep``). When the policy says stop,
    the same methods raise the :class:`LLMError` to give the caller.
    """

    policy: RetryPolicy
    base_url: str
    attempt: int = 0
    """Retries made so far (0 during the first attempt)."""

    def after_transport_error(self, exc: Exception) -> float:
        """Seconds to wait after a connection error; raises when retries are spent, or at once when
        the request could never be sent (a URL without http(s), a header value with a newline)."""
        url = display_url(self.base_url)
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
            # the exception's text may quote a header value, the key included: name its type only, and chain
            # nothing (a traceback or logging.exception prints the cause's text)
            raise LLMError(f"request to {url} could not be sent (check the base URL and the API key "
                           f"or headers for stray characters): {type(exc).__name__}") from None
        if isinstance(exc, httpx.PoolTimeout):  # the server is fine: this client has too many calls at once
            raise LLMError(f"no pooled connection to {url} became free within Timeout.pool (every connection "
                           "is busy with other calls of this client); leave Timeout.pool at None to wait "
                           "for one") from exc
        if not isinstance(exc, httpx.TransportError):  # a body httpx cannot decode: sending again won't help
            raise LLMError(f"the answer of {url} could not be read: {exc!r}") from exc
        if self.attempt >= self.policy.max_retries:
            raise LLMError(f"cannot reach {url}: {exc!r}") from exc
        return self._next(self.policy.delay(self.attempt))

    def after_error_status(self, status: int, headers: Mapping[str, str], body: bytes) -> float:
        """Seconds to wait after an answer that is no success (status >= 300); raises when it is final.
        A redirect is final: the request carries the key, and the base URL is what needs fixing."""
        if self.attempt < self.policy.max_retries and self.policy.should_retry_status(status):
            return self._next(self.policy.delay(self.attempt, headers))
        raise error_from_response(status, body, headers)

    def _next(self, delay: float) -> float:
        self.attempt += 1
        return delay


class SSEDecoder:
    """Incremental Server-Sent Events decoder yielding the ``data`` payload of each event.

    Multi-line ``data:`` fields are joined with newlines; comments and other fields are
    ignored. ``[DONE]`` ends the stream.
    """

    def __init__(self) -> None:
        self._data: list[str] = []
        self._first = True
        self.done = False

    def feed_line(self, line: str) -> str | None:
        """Feed one line (without its newline); returns an event's data when an event ends."""
        if self._first:  # the SSE spec drops one byte-order mark at the start of the stream
            self._first = False
            line = line.removeprefix("\ufeff")
        if line == "":
            if not self._data:
                return None
            data = "\n".join(self._data)
            self._data = []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None

    def flush(self) -> str | None:
        return self.feed_line("")


_DONE = object()


def delta_from_event(data: str) -> object:
    """The text delta of one SSE payload, ``""`` when it has none, ``_DONE`` at the end; errors raise."""
    if data.strip() == "[DONE]":
        return _DONE
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise LLMError(f"malformed stream event: {data[:200]!r}") from exc
    if isinstance(chunk, dict) and chunk.get("error") is not None:  # "error": null is no error
        err = chunk["error"]
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise LLMError(f"LLM stream error: {msg}", body=chunk)
    try:
        choices = chunk.get("choices") or []
        # the first choice only: with n > 1 the chunks of every choice interleave
        first = next((c for c in choices if c.get("index", 0) == 0), None)
        if first is None:
            return ""
        delta = first.get("delta") or {}
        return delta.get("content") or ""
    except (AttributeError, TypeError) as exc:
        raise LLMError(f"malformed stream chunk: {data[:200]!r}") from exc


def is_done(value: object) -> bool:
    return value is _DONE


def is_json_answer(headers: Mapping[str, str]) -> bool:
    """A server that ignored ``stream: true`` answers one JSON ``chat.completion`` instead of SSE."""
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class DeltaStream:
    """Lines of a streamed chat completion in, text deltas out (sans-I/O).

    ``feed_line`` returns the non-empty delta an event carries (else ``None``) and sets
    ``done`` at ``[DONE]``, after which the shell stops reading; ``finish`` parses an event
    left unterminated when the body ended.
    """

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self.done = False
        self.events = 0

    def feed_line(self, line: str) -> str | None:
        data = self._sse.feed_line(line)
        if data is None:
            return None
        self.events += 1
        delta = delta_from_event(data)
        if is_done(delta):
            self.done = True
            return None
        return str(delta) if delta else None

    def finish(self, headers: Mapping[str, str] | None = None) -> str | None:
        """The delta of an unterminated last event; a body without a single event is an error (an HTML page
        or a plain-text answer from a wrong base URL must not read as an empty completion)."""
        tail = self._sse.flush()
        if tail is None:
            if not self.events:
                kind = (headers or {}).get("content-type") or "no content type"
                raise LLMError(f"the LLM endpoint answered {kind} without a single event, not a chat completion "
                               "stream (check the base URL)")
            return None
        self.events += 1
        delta = delta_from_event(tail)
        return delta if isinstance(delta, str) and delta else None
