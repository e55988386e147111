"""The ``llm`` judge: ask an OpenAI-compatible endpoint to answer from the full and the compressed contexts.

Each answer is scored against the gold with a metric chosen per task (:data:`TASK_METRICS`):
ROUGE-L for summaries, token F1 for free-form QA, answer match (normalised gold contained in
the answer) for short-answer QA, retrieval and few-shot maths, and the set of option letters
named for multiple choice. Relative
performance = score(compressed) / score(full), clipped to [0, 1]; an example whose full-context
answer scores 0 is unscorable.

Requests go to ``{base_url}/chat/completions`` (temperature 0) through httpx with a concurrency
limit (asyncio semaphore), retries with exponential backoff on 429, 5xx, timeouts and connection
errors (honouring ``Retry-After``), and an on-disk SQLite cache keyed by sha256 of (endpoint, model,
messages, parameters) so reruns and resumed runs cost nothing. The limit holds across concurrent
``ajudge`` calls on one event loop. A full-context answer that stays empty after the retries is a
failure (``--retry-failed`` asks again), not an unscorable example. Configuration: arguments, else
``$POCSDK_LLM_BASE_URL``, ``$POCSDK_LLM_MODEL``, ``$POCSDK_LLM_API_KEY`` (falling back to ``$OPENAI_BASE_URL`` /
``$OPENAI_API_KEY``; ``api_key=""`` sends none). The base URL and the key get the LLM client's checks
(:mod:`pocsdk.llm._core`) when the judge is built: a query string (Azure's ``?api-version=``) goes with every
request, ``user:password@`` as Basic auth, and neither a password nor a header value is ever shown in ``repr``,
an error or a labels file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pocsdk.calibration.judges import (
    METRICS,
    TRUE_FALSE,
    Judgement,
    answer_tokens,
    clip01,
    is_short,
    is_truth_value,
)
from pocsdk.errors import ConfigError, RemoteError
from pocsdk.llm import _core

if TYPE_CHECKING:
    from pocsdk.calibration.datasets import Example

TASK_METRICS: dict[str, str] = {
    "summarization": "rouge_l",
    "long_qa": "f1",
    "multi_doc_qa": "match",
    "qa": "match",
    "retrieval": "match",
    "multiple_choice": "choice",
    "few_shot": "match",
}

_INSTRUCTIONS: dict[str, str] = {
    "summarization": "Write a concise summary of the context.",
    "multiple_choice": "Answer with the letter(s) of the correct option(s) only.",
    "few_shot": "Solve the problem step by step like the examples, then give the final number after '####'.",
    "retrieval": "Answer with the requested value only.",
}

_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


def metric_for(example: Example) -> str:
    """The metric name for an example's task; long free-form answers use F1 rather than match, and truth
    values ("True", "no") the first truth word of the answer (``choice``)."""
    if example.answers and all(is_truth_value(a) for a in example.answers):
        return "choice"
    name = TASK_METRICS.get(example.task, "f1")
    if name == "match" and example.task in ("qa", "multi_doc_qa") and not is_short(example.answers):
        return "f1"
    return name


def build_messages(example: Example, context: str) -> list[dict[str, str]]:
    """Chat messages asking the model to answer ``example`` from ``context`` only."""
    if example.answers and all(is_truth_value(a) for a in example.answers):  # L-Eval sci_fi, BoolQ-like data
        instruction = "Answer True or False only." if any(answer_tokens(a)[0] in TRUE_FALSE
                                                            for a in example.answers) else "Answer yes or no only."
    else:
        instruction = _INSTRUCTIONS.get(example.task, "Answer the question using the context. Be brief.")
    user = f"Context:\n{context}\n\n"
    if example.query:
        user += f"{example.query}\n\n"
    user += instruction
    return [{"role": "system", "content": "You answer from the given context."}, {"role": "user", "content": user}]


def extract_answer(example: Example, text: str) -> str:
    """Post-process a raw reply: the number after '####' for few-shot maths, else the reply."""
    if example.task == "few_shot" and "####" in text:
        return text.rsplit("####", 1)[1].strip()
    return text.strip()  # multiple choice: the "choice" metric reads the option letters itself


class AnswerCache:
    """SQLite answer cache keyed by sha256(endpoint, model, messages, params); safe across worker processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, answer TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    @staticmethod
    def key(model: str, messages: list[dict[str, str]], params: dict[str, Any], endpoint: str = "") -> str:
        """Two endpoints serving one model name (another quantisation, another provider) answer apart."""
        blob = json.dumps({"endpoint": endpoint, "model": model, "messages": messages, "params": params},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, model: str, answer: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO answers (key, model, answer) VALUES (?, ?, ?)", (key, model, answer))


class LLMJudge:
    """Judge by asking an LLM (see the module docstring)."""

    name = "llm"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 120.0,
        cache_path: str | Path | None = None,
        max_tokens: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model = model or os.environ.get("POCSDK_LLM_MODEL") or ""
        given = base_url or next((os.environ[env] for env in _core.BASE_URL_ENVS if os.environ.get(env, "").strip()),
                                 None)
        if not given or not self.model:  # no default endpoint: OpenAI's would bill an account nobody chose
            raise ConfigError("the llm judge needs a base URL and a model (--llm-base-url/--llm-model or "
                              "$POCSDK_LLM_BASE_URL/$POCSDK_LLM_MODEL)")
        # the LLM client's checks, when the judge is built: a bad URL is a ConfigError that never quotes it (it
        # may hold a password), a key or header no request can carry an InvalidTypeError that never quotes it
        self.base_url = _core.resolve_base_url(base_url)
        """The base URL as given (whitespace and trailing slashes dropped): a password in it stays here, never
        in ``repr``, messages or requests' URLs (see :func:`pocsdk.llm._core.split_base_url`)."""
        key = _core.resolve_api_key(api_key)
        self._headers = _core.auth_headers(key, None)
        key_source = "" if not key else "the api_key argument" if api_key is not None else \
            next((f"${env}" for env in _core.API_KEY_ENVS if os.environ.get(env)), "the environment")
        # a query string (Azure's ?api-version=) goes with every request; user:password@ as Basic auth
        self._endpoint = _core.split_base_url(self.base_url, self._headers, key_source)
        self._shown = _core.display_url(self.base_url)
        self._cache_endpoint = self.base_url if self._endpoint.auth is None else \
            str(httpx.URL(self.base_url).copy_with(userinfo=b""))  # answers do not depend on the password
        if concurrency < 1 or max_retries < 0 or backoff < 0 or timeout <= 0:
            raise ConfigError("concurrency >= 1, max_retries >= 0, backoff >= 0 and timeout > 0 are required")
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.cache = AnswerCache(cache_path) if cache_path else None
        self._transport = transport
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())
        self._limits_lock = threading.Lock()
        self.requests = 0
        """HTTP requests sent (retries included); cache hits send none."""

    def __repr__(self) -> str:  # never show the key, nor a password in the base URL
        return f"LLMJudge(base_url={self._shown!r}, model={self.model!r})"

    # -- public -------------------------------------------------------------------------------
    def judge(self, example: Example, full_context: str, compressed: Sequence[str]) -> Judgement:
        """Sync shell over :meth:`ajudge`; inside a running event loop (a notebook) it runs in a thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ajudge(example, full_context, compressed))
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.ajudge(example, full_context, compressed)).result()

    async def ajudge(self, example: Example, full_context: str, compressed: Sequence[str]) -> Judgement:
        golds = list(example.answers) or ([example.reference] if example.reference else [])
        if not golds:
            return Judgement(scorable=False, reason="no gold answer or reference")
        metric_name = metric_for(example)
        metric = METRICS[metric_name]
        contexts = [full_context, *compressed]
        unique = list(dict.fromkeys(contexts))  # factor 1 usually equals the full context: ask once
        sem = self._limit()
        async with self._client() as client:
            replies = await asyncio.gather(*(self._answer(client, sem, example, c) for c in unique))
        by_ctx = dict(zip(unique, replies, strict=True))
        if not by_ctx[full_context].strip():  # a failure to retry (--retry-failed), not an unscorable example
            raise RemoteError(f"the LLM endpoint answered the full context with nothing, {self.max_retries + 1} "
                              "times; a later run with --resume --retry-failed asks again")
        scores = [metric(extract_answer(example, by_ctx[c]), golds) for c in contexts]
        full = scores[0]
        details = {"mode": "llm", "metric": metric_name, "model": self.model, "scores": scores[1:]}
        if full <= 0.0:
            return Judgement(scorable=False, reason=f"full-context answer scores 0 ({metric_name})", details=details)
        return Judgement(scorable=True, full_score=full, performance=[clip01(s / full) for s in scores[1:]],
                         details=details)

    # -- transport ----------------------------------------------------------------------------
    def _limit(self) -> asyncio.Semaphore:
        """The judge's request limit on this event loop: concurrent ``ajudge`` calls share it."""
        loop = asyncio.get_running_loop()
        with self._limits_lock:
            sem = self._limits.get(loop)
            if sem is None:
                sem = self._limits[loop] = asyncio.Semaphore(self.concurrency)
        return sem

    def _client(self) -> httpx.AsyncClient:
        endpoint = self._endpoint  # no credentials in the URL (httpx logs it), no query string (httpx would
        # append the path after it): they go as Basic auth and as parameters of every request
        return httpx.AsyncClient(base_url=endpoint.url, params=endpoint.params, auth=endpoint.auth,
                                 headers=self._headers, timeout=self.timeout, transport=self._transport)

    async def _answer(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, example: Example,
                      context: str) -> str:
        messages = build_messages(example, context)
        params = {"temperature": 0, "max_tokens": self.max_tokens or (400 if example.task in
                                                                      ("summarization", "few_shot") else 64)}
        key = AnswerCache.key(self.model, messages, params, self._cache_endpoint)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        async with sem:
            answer = await self._post(client, {"model": self.model, "messages": messages, **params})
        if self.cache is not None and answer.strip():  # an empty reply is never remembered: ask again next run
            self.cache.put(key, self.model, answer)
        return answer

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> str:
        """The reply's text; errors and empty replies are retried with backoff (an endpoint that keeps
        replying with nothing gets its empty answer scored, uncached, for a compressed context; for the
        full context it is a failure, see :meth:`ajudge`)."""
        last: str = ""
        empty = False
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * (2**attempt)
            try:
                self.requests += 1
                resp = await client.post("/chat/completions", json=body)
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:  # never sent: retries cannot
                # help; its text may quote a header value (h11: "Illegal header value b'Bearer <key>'"), and this
                # message ends up in the labels file: name its type only, and chain nothing (a traceback or
                # logging.exception prints the cause's text)
                raise RemoteError(f"request to {self._shown} could not be sent (check the base URL and the API "
                                  f"key for stray characters): {type(exc).__name__}") from None
            except httpx.TransportError as exc:  # timeouts included
                last, empty = f"{type(exc).__name__}: {exc}", False
            else:
                empty = False
                if resp.status_code == 200:
                    content = _content(resp)
                    if content.strip():
                        return content
                    empty = True
                    last = "an empty answer"
                    if attempt < self.max_retries:
                        await asyncio.sleep(delay)
                    continue
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in _RETRYABLE:
                    raise RemoteError(f"LLM endpoint answered {last}", status_code=resp.status_code)
                delay = max(delay, _retry_after(resp))
            if attempt < self.max_retries:
                await asyncio.sleep(delay)
        if empty:  # the last attempt, too, answered with nothing
            return ""
        raise RemoteError(f"LLM endpoint failed after {self.max_retries + 1} attempts: {last}")


def _content(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RemoteError(f"LLM endpoint returned an unexpected body: {resp.text[:200]}") from exc
    return content if isinstance(content, str) else ""


def _retry_after(resp: httpx.Response) -> float:
    raw = resp.headers.get("retry-after")
    try:
        return min(float(raw), 60.0) if raw else 0.0
    except ValueError:
        return 0.0
