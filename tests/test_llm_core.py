"""The sans-I/O core of the LLM clients: retry decisions and stream parsing without a server."""

from __future__ import annotations

import httpx
import pytest

from pocsdk.llm._core import DeltaStream, Retrying, parse_chat_body, parse_models_body
from pocsdk.llm.types import LLMError, RetryPolicy

NO_JITTER = RetryPolicy(max_retries=2, backoff=0.1, max_backoff=1.0, jitter=False)


def test_retrying_backs_off_then_raises_on_transport_errors() -> None:
    r = Retrying(NO_JITTER, "http://h/v1")
    exc = httpx.ConnectError("refused")
    assert [r.after_transport_error(exc), r.after_transport_error(exc)] == [0.1, 0.2]
    with pytest.raises(LLMError, match="cannot reach http://h/v1") as info:
        r.after_transport_error(exc)
    assert info.value.status_code is None and info.value.__cause__ is exc


def test_retrying_on_statuses() -> None:
    r = Retrying(NO_JITTER, "http://h/v1")
    assert r.after_error_status(429, {"retry-after": "3"}, b"") == 3.0  # the header wins
    assert r.after_error_status(503, {}, b"") == 0.2
    with pytest.raises(LLMError) as info:  # retries spent
        r.after_error_status(503, {}, b'{"error":{"message":"busy"}}')
    assert info.value.status_code == 503 and "busy" in str(info.value)
    with pytest.raises(LLMError) as info:  # never retried
        Retrying(NO_JITTER, "u").after_error_status(400, {}, b'{"detail":"bad request"}')
    assert info.value.status_code == 400 and "bad request" in str(info.value)


def test_delta_stream() -> None:
    s = DeltaStream()
    lines = [": comment", "", 'data: {"choices":[{"delta":{"content":"Hel"}}]}', "",
             'data: {"choices":[{"delta":{"role":"assistant"}}]}', "", 'data: {"choices":[]}', "",
             'data: {"choices":[{"index":0,', 'data: "delta":{"content":"lo"}}]}', ""]
    assert [d for line in lines if (d := s.feed_line(line))] == ["Hel", "lo"]
    assert not s.done
    assert s.feed_line("data: [DONE]") is None and s.feed_line("") is None and s.done


def test_delta_stream_keeps_the_first_choice_when_n_is_above_one() -> None:
    s = DeltaStream()
    lines = ['data: {"choices":[{"index":0,"delta":{"content":"Paris"}}]}', "",
             'data: {"choices":[{"index":1,"delta":{"content":"Lyon"}}]}', "",
             'data: {"choices":[{"index":1,"delta":{"content":" is"}}]}', "",
             'data: {"choices":[{"index":0,"delta":{"content":" is"}}]}', ""]
    assert "".join(d for line in lines if (d := s.feed_line(line))) == "Paris is"


def test_delta_stream_unterminated_tail_and_errors() -> None:
    s = DeltaStream()
    assert s.feed_line('data: {"choices":[{"delta":{"content":"end"}}]}') is None
    assert s.finish() == "end"
    with pytest.raises(LLMError, match="text/html without a single event"):
        DeltaStream().finish({"content-type": "text/html"})
    s = DeltaStream()
    s.feed_line(": keep-alive")
    with pytest.raises(LLMError, match="no content type without a single event"):
        s.finish()
    s = DeltaStream()
    s.feed_line('data: {"error":{"message":"boom"}}')
    with pytest.raises(LLMError, match="LLM stream error: boom"):
        s.feed_line("")


def test_parse_bodies() -> None:
    body = b'{"model":"m","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}'
    assert parse_chat_body(body).content == "hi"
    assert parse_models_body(b'{"data":[{"id":"a"},{"id":"b"},3]}') == ["a", "b"]
    with pytest.raises(LLMError, match="invalid JSON"):
        parse_chat_body(b"<html>")


def test_usage_without_a_total_and_numeric_ids() -> None:
    """Some servers leave total_tokens out (it read as 0) or send a number as the id (the whole answer was
    thrown away as malformed)."""
    body = (b'{"id": 12345, "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],'
            b' "usage": {"prompt_tokens": 10, "completion_tokens": 5}}')
    result = parse_chat_body(body)
    assert result.content == "hi" and result.id == "12345"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (10, 5, 15)
    full = parse_chat_body(b'{"id": "c1", "choices": [{"message": {"content": "x"}}],'
                           b' "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 7}}')
    assert full.id == "c1" and full.usage.total_tokens == 7  # a total given is kept as sent
    assert parse_chat_body(b'{"choices": [{"message": {"content": "x"}}]}').id is None


def test_display_url_masks_any_credentials() -> None:
    """A token given as the user name alone (https://TOKEN@host/v1) was shown whole in repr and errors."""
    from pocsdk.llm._core import display_url

    assert display_url("https://sk-TOKEN9@h/v1") == "https://***@h/v1"
    assert display_url("https://svc:hunter2@h:8443/v1?api-version=1") == "https://svc:***@h:8443/v1?api-version=1"
    assert display_url("https://:hunter2@h/v1") == "https://***@h/v1"
    assert display_url("https://h/v1") == "https://h/v1"
    assert "hunter2" not in display_url("http://svc:hun/ter2@h/v1")  # not even a URL httpx parses
    r = Retrying(RetryPolicy(max_retries=0), "https://sk-TOKEN9@h/v1")
    with pytest.raises(LLMError, match=r"cannot reach https://\*\*\*@h/v1") as info:
        r.after_transport_error(httpx.ConnectError("refused"))
    assert "TOKEN9" not in str(info.value)


def test_keys_with_non_ascii_bytes_are_refused_and_header_bytes_are_sent_as_given() -> None:
    """A bytes key with a byte >= 0x80 passed (obs-text) and was decoded to a str that httpx encodes as ASCII:
    a raw UnicodeEncodeError holding the whole header. Keys are ASCII; bytes header values keep obs-text."""
    from pocsdk.errors import InvalidTypeError
    from pocsdk.llm._core import auth_headers

    for key in (b"sk-\xe9SECRET1", bytearray(b"sk-SECRET1\xff"), "sk-\xe9SECRET1"):
        with pytest.raises(InvalidTypeError, match="the API key contains a non-ASCII") as info:
            auth_headers(key, None)  # type: ignore[arg-type]
        assert "SECRET1" not in str(info.value)
    assert auth_headers(b"sk-1", None)["authorization"] == "Bearer sk-1"
    assert auth_headers(None, {"X-Team": b"caf\xe9"})["x-team"] == b"caf\xe9"  # type: ignore[dict-item]
    with pytest.raises(InvalidTypeError, match="non-ASCII character"):
        auth_headers(None, {"X-Team": "café"})
    for name in ("X Team", "Tëam", "", "X-Team:"):
        with pytest.raises(InvalidTypeError, match="not a valid HTTP header name"):
            auth_headers(None, {name: "v"})


def test_an_empty_key_variable_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command line cannot pass api_key="": POCSDK_LLM_API_KEY= (set, empty) now means "no key" instead of
    falling through to $OPENAI_API_KEY, so a base URL's own credentials can be used with it set."""
    from pocsdk.llm import LLMClient
    from pocsdk.llm._core import resolve_api_key

    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-tool")
    monkeypatch.delenv("POCSDK_LLM_API_KEY", raising=False)
    assert resolve_api_key(None) == "sk-other-tool"
    monkeypatch.setenv("POCSDK_LLM_API_KEY", "")
    assert resolve_api_key(None) is None
    LLMClient(base_url="http://user:pw@127.0.0.1:9/v1", model="m").close()  # no ConfigError: nothing else to send
