"""Judges and answer metrics on hand cases; the LLM judge against a fake endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from pocsdk.calibration.datasets import Example
from pocsdk.calibration.judges import (
    METRICS,
    RetentionJudge,
    answer_match,
    choice_match,
    content_tokens,
    exact_match,
    f1_score,
    get_judge,
    normalize_answer,
    rouge_l,
)
from pocsdk.calibration.llm_judge import LLMJudge, build_messages, metric_for
from pocsdk.errors import ConfigError, RemoteError


def ex(**kw: object) -> Example:
    base: dict[str, object] = {"id": "x", "dataset": "t", "task": "qa", "context": "c", "query": "q?"}
    base.update(kw)
    return Example.model_validate(base)


# -- metrics ----------------------------------------------------------------------------------


def test_normalize_answer_squad_style() -> None:
    assert normalize_answer("  The  Eiffel-Tower! ") == "eiffel tower"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("25,000") == normalize_answer("25 000")


def test_exact_match_and_answer_match() -> None:
    assert exact_match("The Beatles.", ["beatles", "x"]) == 1.0
    assert exact_match("The Beatles were great", ["beatles"]) == 0.0
    assert answer_match("I think it was The Beatles.", ["beatles"]) == 1.0
    assert answer_match("1800 people", ["18"]) == 0.0  # whole words only


def test_f1_hand_case() -> None:
    # pred {paris, france} vs gold {paris}: P = 1/2, R = 1 -> F1 = 2/3
    assert f1_score("Paris, France", ["Paris"]) == pytest.approx(2 / 3)
    assert f1_score("Paris, France", ["Lyon", "Paris"]) == pytest.approx(2 / 3)
    assert f1_score("nothing", ["Paris"]) == 0.0


def test_rouge_l_hand_case() -> None:
    # pred: police killed gunman ; gold: police kill gunman -> LCS = 2 (police, gunman); P = R = 2/3
    assert rouge_l("police killed the gunman", ["the police kill the gunman"]) == pytest.approx(2 / 3)
    assert rouge_l("a b c d", ["a b c d"]) == pytest.approx(1.0)
    assert rouge_l("", ["x"]) == 0.0


# -- retention --------------------------------------------------------------------------------


def test_retention_span_mode() -> None:
    judge = RetentionJudge()
    e = ex(answers=["Wilhelm Röntgen", "Röntgen"])
    full = "The first Nobel Prize in Physics went to Wilhelm Röntgen in 1901."
    v = judge.judge(e, full, [full, "Physics prize 1901.", "went to röntgen"])
    assert v.scorable and v.full_score == 1.0
    assert v.performance == [1.0, 0.0, 1.0]
    assert v.details["mode"] == "span"


def test_retention_span_unscorable_when_full_lacks_answer() -> None:
    v = RetentionJudge().judge(ex(answers=["Lyon"]), "Paris is big.", ["Paris"])
    assert not v.scorable and "full context" in (v.reason or "")


def test_retention_span_whole_words() -> None:
    v = RetentionJudge().judge(ex(answers=["18"]), "He was 18 in 1800.", ["born in 1800"])
    assert v.scorable and v.performance == [0.0]


def test_retention_recall_formula() -> None:
    # reference content tokens: cat(2) sat mat red ; full supports cat(2) sat mat -> |R| = 4
    ref = "The cat sat on the mat. The red cat."
    full = "A cat and another cat sat on a mat."
    v = RetentionJudge().judge(ex(task="summarization", reference=ref), full, [full, "one cat sat", ""])
    assert v.scorable
    assert v.full_score == pytest.approx(4 / 5)
    assert v.performance == pytest.approx([1.0, 2 / 4, 0.0])
    assert v.details["mode"] == "recall"


def test_retention_long_answers_use_recall() -> None:
    long = "the treaty was signed in paris by four nations after long talks"
    v = RetentionJudge().judge(ex(answers=[long]), "Four nations signed the treaty in Paris.", ["treaty paris"])
    assert v.details["mode"] == "recall"
    # R = {treaty, signed, paris, four, nations}; 'long', 'talks' are not in the full context
    assert v.performance == pytest.approx([2 / 5])


def test_retention_long_answers_recall_exact() -> None:
    ref = "treaty signed paris four nations long talks"
    full = "Four nations signed the treaty in Paris."
    r = [t for t in content_tokens(ref) if t in content_tokens(full)]
    assert r == ["treaty", "signed", "paris", "four", "nations"]
    v = RetentionJudge().judge(ex(reference=ref), full, ["treaty paris"])
    assert v.performance == pytest.approx([2 / 5])


def test_retention_unscorable_cases() -> None:
    judge = RetentionJudge()
    assert not judge.judge(ex(task="few_shot", answers=["18"]), "18", ["18"]).scorable
    assert not judge.judge(ex(answers=["x"], metadata={"unanswerable": True}), "x", ["x"]).scorable
    assert not judge.judge(ex(reference="zebra"), "no such animal", [""]).scorable


def test_get_judge() -> None:
    assert get_judge("retention").name == "retention"
    with pytest.raises(ConfigError):
        get_judge("nope")
    with pytest.raises(ConfigError):
        get_judge("llm", base_url="", model="")


# -- LLM judge ----------------------------------------------------------------------------------


class FakeLLM:
    """A tiny OpenAI-compatible endpoint: answers 'Paris' when the context mentions Paris."""

    def __init__(self, fail_first: int = 0, status: int = 429) -> None:
        self.calls = 0
        self.fail_first = fail_first
        self.status = status
        self.seen: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        assert request.url.path.endswith("/v1/chat/completions")
        assert request.headers["authorization"] == "Bearer sk-test"
        if self.calls <= self.fail_first:
            return httpx.Response(self.status, headers={"retry-after": "0"}, json={"error": "slow down"})
        body = json.loads(request.content)
        self.seen.append(body)
        user = body["messages"][-1]["content"]
        answer = "Paris" if "Paris" in user else "I don't know"
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": answer}}]})


def make_judge(fake: FakeLLM, tmp_path: Path | None = None, **kw: object) -> LLMJudge:
    return LLMJudge(base_url="http://fake/v1", model="fake-model", api_key="sk-test", backoff=0.0,
                    transport=httpx.MockTransport(fake),
                    cache_path=(tmp_path / "cache.sqlite") if tmp_path else None, **kw)  # type: ignore[arg-type]


def test_llm_judge_scores_relative_performance() -> None:
    fake = FakeLLM()
    judge = make_judge(fake)
    e = ex(answers=["Paris"], query="Capital of France?")
    full = "France's capital is Paris. It is large."
    v = judge.judge(e, full, [full, "It is large."])
    assert v.scorable and v.full_score == 1.0
    assert v.performance == [1.0, 0.0]
    assert fake.calls == 2  # full and factor-1 contexts are identical: asked once
    assert fake.seen[0]["temperature"] == 0


def test_llm_judge_unscorable_when_full_fails() -> None:
    v = make_judge(FakeLLM()).judge(ex(answers=["Paris"]), "nothing here", ["nothing"])
    assert not v.scorable


def test_llm_judge_retries_on_429_and_5xx() -> None:
    for status in (429, 503):
        fake = FakeLLM(fail_first=2, status=status)
        judge = make_judge(fake)
        v = judge.judge(ex(answers=["Paris"]), "Paris", ["Paris"])
        assert v.scorable and v.performance == [1.0]
        assert fake.calls == 3 and judge.requests == 3


def test_llm_judge_gives_up_and_does_not_retry_4xx() -> None:
    judge = make_judge(FakeLLM(fail_first=10), max_retries=2)
    with pytest.raises(RemoteError, match="after 3 attempts"):
        judge.judge(ex(answers=["Paris"]), "Paris", ["x"])
    fake = FakeLLM(fail_first=10, status=401)
    with pytest.raises(RemoteError) as info:
        make_judge(fake).judge(ex(answers=["Paris"]), "Paris", ["Paris"])  # one unique context
    assert info.value.status_code == 401 and fake.calls == 1


def test_llm_judge_retries_timeouts() -> None:
    calls = {"n": 0}
    inner = FakeLLM()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return inner(request)

    judge = LLMJudge(base_url="http://fake/v1", model="m", api_key="sk-test", backoff=0.0,
                     transport=httpx.MockTransport(handler))
    assert judge.judge(ex(answers=["Paris"]), "Paris", ["Paris"]).scorable


def test_llm_judge_cache_hits(tmp_path: Path) -> None:
    fake = FakeLLM()
    e = ex(answers=["Paris"])
    first = make_judge(fake, tmp_path).judge(e, "Paris is the capital.", ["the capital"])
    assert fake.calls == 2
    again = make_judge(fake, tmp_path).judge(e, "Paris is the capital.", ["the capital"])
    assert fake.calls == 2  # every answer came from the on-disk cache
    assert first.performance == again.performance
    other = LLMJudge(base_url="http://fake/v1", model="other-model", api_key="sk-test", backoff=0.0,
                     transport=httpx.MockTransport(fake), cache_path=tmp_path / "cache.sqlite")
    other.judge(e, "Paris is the capital.", ["the capital"])
    assert fake.calls == 4  # the key includes the model


def test_llm_judge_retries_empty_answers_and_never_caches_them(tmp_path: Path) -> None:
    """An endpoint answering "" now and then made examples unscorable for good: the empty reply was scored
    and cached, so --retry-failed and later runs got it back."""
    inner = FakeLLM()
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] % 2:
            return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": ""}}]})
        return inner(request)

    judge = LLMJudge(base_url="http://fake/v1", model="m", api_key="sk-test", backoff=0.0,
                     transport=httpx.MockTransport(flaky), cache_path=tmp_path / "cache.sqlite")
    v = judge.judge(ex(answers=["Paris"]), "Paris is the capital.", ["the capital"])
    assert v.scorable and v.performance == [0.0] and calls["n"] == 4

    def always_empty(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": None}}]})

    silent = LLMJudge(base_url="http://fake/v1", model="m2", api_key="sk-test", backoff=0.0, max_retries=1,
                      transport=httpx.MockTransport(always_empty), cache_path=tmp_path / "cache.sqlite")
    calls["n"] = 0
    # no answer for the full context is a failure (which --retry-failed reruns), not an unscorable example
    with pytest.raises(RemoteError, match="answered the full context with nothing"):
        silent.judge(ex(answers=["Paris"]), "Paris.", ["x"])
    assert calls["n"] == 2 * 2  # two contexts, retried once each
    with pytest.raises(RemoteError):
        silent.judge(ex(answers=["Paris"]), "Paris.", ["x"])
    assert calls["n"] == 2 * 2 * 2  # asked again: nothing empty was cached


def test_llm_judge_concurrency_limit() -> None:
    import asyncio

    active = {"now": 0, "peak": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        active["now"] += 1
        active["peak"] = max(active["peak"], active["now"])
        await asyncio.sleep(0.01)
        active["now"] -= 1
        return httpx.Response(200, json={"choices": [{"message": {"content": "Paris"}}]})

    judge = LLMJudge(base_url="http://fake/v1", model="m", api_key="sk-test", concurrency=2,
                     transport=httpx.MockTransport(handler))
    v = judge.judge(ex(answers=["Paris"]), "Paris 0", [f"Paris {i}" for i in range(1, 8)])
    assert v.performance == [1.0] * 7
    assert active["peak"] == 2


def test_metric_per_task_and_prompt() -> None:
    assert metric_for(ex(task="summarization", reference="r")) == "rouge_l"
    assert metric_for(ex(task="long_qa", answers=["a"])) == "f1"
    assert metric_for(ex(task="qa", answers=["a"])) == "match"
    assert metric_for(ex(task="qa", answers=["one two three four five six seven eight nine ten"])) == "f1"
    msgs = build_messages(ex(answers=["a"], query="Who?"), "CTX")
    assert "CTX" in msgs[-1]["content"] and "Who?" in msgs[-1]["content"]
    assert "sk-" not in repr(make_judge(FakeLLM()))


@pytest.mark.parametrize(("reply", "gold", "score"), [
    ("A", "A", 1.0),            # "a" is an English article to normalize_answer: letters must not go through it
    ("(A) because the text says so", "A", 1.0),
    ("A, C", "AC", 1.0),
    ("A and C", "A, C", 1.0),
    ("BD", "B, D", 1.0),
    ("The answer is B.", "B", 1.0),
    ("A", "A, C", 0.0),         # a subset of the options is not the answer
    ("B", "A", 0.0),
    ("Apples grow on trees", "A", 0.0),
    ("A new law was passed", "A", 0.0),  # a leading "A" followed by words is an article
    ("The answer is a lot of things", "A", 0.0),
    ("Answer: B", "B", 1.0),
    ("**B**", "B", 1.0),
    ("B: Paris", "B", 1.0),
    ("The answer is: B", "B", 1.0),
    ("Final answer: D", "D", 1.0),
    ("Option B", "B", 1.0),
    ("[B]", "B", 1.0),
    ("b", "B", 1.0),
    ("The answer is b", "B", 1.0),
    ("C\n\nExplanation: the text says so.", "C", 1.0),
    ("I think it's B", "B", 1.0),
])
def test_multiple_choice_compares_option_letters(reply: str, gold: str, score: float) -> None:
    assert choice_match(reply, [gold]) == score


def test_llm_judge_scores_multiple_choice_by_letters() -> None:
    from pocsdk.calibration.llm_judge import TASK_METRICS

    assert METRICS[TASK_METRICS["multiple_choice"]] is choice_match


def test_retention_finds_answers_in_scripts_without_spaces() -> None:
    """A Chinese or Japanese answer next to other characters was "not in the full context": unscorable."""
    from pocsdk.calibration.judges import contains_answer

    zh = normalize_answer("故宫位于北京市中心，是明清两代的皇宫。")
    ja = normalize_answer("富士山の高さは3776メートルです。")
    assert contains_answer(zh, normalize_answer("北京")) and contains_answer(ja, normalize_answer("3776メートル"))
    assert contains_answer(normalize_answer("서울에 있다"), normalize_answer("서울"))
    assert not contains_answer(normalize_answer("we restart 北京"), "art")  # Latin edges still need spaces
    assert not contains_answer(normalize_answer("请问是否需要帮助"), "否")  # one character: whole words only
    v = RetentionJudge().judge(ex(answers=["北京"]), "故宫位于北京市中心。", ["故宫位于北京市中心。", "故宫。"])
    assert v.scorable and v.performance == [1.0, 0.0]


def test_retention_refuses_option_letters() -> None:
    """Gold "B" was matched as any word "b" (non-monotone labels), and "A" normalised to nothing."""
    for letters in (["B"], ["a"], ["(C)"], ["D."]):
        v = RetentionJudge().judge(ex(answers=letters), "Option B is the bridge, a tower, (C) and D.", ["B"])
        assert not v.scorable and "reference" in (v.reason or ""), letters
    with_text = Example(id="mc", dataset="t", task="multiple_choice", context="x", answers=["B"],
                        reference="The bridge opened in 1931.")
    assert RetentionJudge().judge(with_text, "The bridge opened in 1931.", ["The bridge opened in 1931."]).scorable
    assert RetentionJudge().judge(ex(answers=["Paris"]), "Paris is big.", ["Paris"]).scorable


def test_truth_values_are_scored_by_their_first_truth_word() -> None:
    """A True/False gold went through answer_match: "False, it is not true" matched the gold True."""
    from pocsdk.calibration.judges import choice_match

    assert choice_match("True.", ["True"]) == 1.0
    assert choice_match("False, it is not true.", ["True"]) == 0.0
    assert choice_match("no", ["No"]) == 1.0 and choice_match("B", ["B"]) == 1.0
    # yes is true and no is false; the opening word decides, else the gold's own pair of words
    assert choice_match("Yes, it is true.", ["True"]) == 1.0
    assert choice_match("No, the statement is false.", ["False"]) == 1.0
    assert choice_match("There is no doubt: True", ["True"]) == 1.0
    assert choice_match("I think it is false", ["False"]) == 1.0 and choice_match("The answer is B", ["B"]) == 1.0


def test_truth_value_golds_get_a_true_false_prompt_and_no_retention_score() -> None:
    """L-Eval sci_fi asked for "the letter(s) of the correct option(s)" of a True/False question, and its
    retention labels measured the question's own words."""
    tf = ex(task="multiple_choice", answers=["False"], query="Humans travel to Sirius, True or False?")
    assert build_messages(tf, "ctx")[-1]["content"].endswith("Answer True or False only.")
    assert metric_for(tf) == "choice"
    verdict = RetentionJudge().judge(tf, "Humans travel to Sirius. It is true.", ["Humans travel."])
    assert not verdict.scorable and "truth value" in (verdict.reason or "")


def test_llm_judge_limit_is_shared_by_concurrent_calls_and_runs_inside_a_loop() -> None:
    import asyncio
    import threading

    state = {"now": 0, "peak": 0}
    lock = threading.Lock()
    inner = FakeLLM()

    async def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.01)
        with lock:
            state["now"] -= 1
        return inner(request)

    judge = LLMJudge(base_url="http://fake/v1", model="m", api_key="sk-test", concurrency=2,
                     transport=httpx.MockTransport(handler))

    async def five() -> None:
        await asyncio.gather(*(judge.ajudge(ex(answers=["Paris"]), "Paris is the capital.", ["a", "b", "c"])
                               for _ in range(5)))
        # the sync shell inside a running loop (a notebook) runs in a thread instead of failing
        assert judge.judge(ex(answers=["Paris"]), "Paris is the capital.", ["x"]).scorable

    asyncio.run(five())
    assert state["peak"] == 2  # was 10: each call had its own limit


def test_llm_judge_refuses_a_url_without_scheme_and_keys_answers_by_endpoint(tmp_path: Path) -> None:
    from pocsdk.calibration.llm_judge import AnswerCache

    with pytest.raises(ConfigError, match="http:// or https://"):
        LLMJudge(base_url="localhost:8000/v1", model="m")
    messages = [{"role": "user", "content": "q"}]
    assert AnswerCache.key("m", messages, {}, "http://a/v1") != AnswerCache.key("m", messages, {}, "http://b/v1")


def _no_llm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("POCSDK_LLM_API_KEY", "OPENAI_API_KEY", "POCSDK_LLM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(env, raising=False)


def test_llm_judge_refuses_keys_and_urls_no_request_can_carry_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge built its own httpx client without the LLM client's checks: a key read from a .env file with
    its newline was retried as a transport error and the final RemoteError (written to the labels file) quoted
    it; a bad base URL failed at the first request. Both are refused when the judge is built, never quoted."""
    from pocsdk.errors import InvalidTypeError

    _no_llm_env(monkeypatch)
    for key in ("sk-SECRET1\n", "sk-SECRET1 ", " sk-SECRET1", "sk-SÉCRET1", b"sk-\xe9SECRET1"):
        with pytest.raises(InvalidTypeError, match="the API key") as error:
            LLMJudge(base_url="http://fake/v1", model="m", api_key=key)  # type: ignore[arg-type]
        assert "CRET1" not in str(error.value), key
    monkeypatch.setenv("POCSDK_LLM_API_KEY", "sk-SECRET1\r\n")
    with pytest.raises(InvalidTypeError, match="line break") as error:
        LLMJudge(base_url="http://fake/v1", model="m")
    assert "SECRET1" not in str(error.value)
    for url, message in {"http://fake/v 1": "contains a space", "http://fake:99999/v1": "outside 1-65535",
                         "http://svc:pa/ss@fake/v1": "not a valid URL", "ftp://fake/v1": "http:// or https://"}.items():
        with pytest.raises(ConfigError, match=message) as cfg:
            LLMJudge(base_url=url, model="m", api_key="")
        assert "ss@" not in str(cfg.value)


def test_llm_judge_never_retries_nor_quotes_a_request_that_cannot_be_sent() -> None:
    """h11 refuses a header naming its value ("Illegal header value b'Bearer <key>'"): the judge retried it as a
    connection error, then raised a RemoteError quoting it, which label_line wrote into the labels file."""
    import traceback

    from pocsdk.calibration.runner import label_line
    from pocsdk.compressors import get_compressor

    calls = {"n": 0}

    def refuse(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.LocalProtocolError("Illegal header value b'Bearer sk-SECRET3 '")

    judge = LLMJudge(base_url="http://fake/v1", model="m", api_key="sk-test", backoff=0.0, max_retries=3,
                     transport=httpx.MockTransport(refuse))
    with pytest.raises(RemoteError, match="could not be sent") as error:
        judge.judge(ex(answers=["Paris"]), "Paris", ["Paris"])
    assert calls["n"] == 1  # never sent: not retried
    assert "SECRET3" not in "".join(traceback.format_exception(error.value))
    example = Example(id="e1", dataset="d", task="qa", context="Paris is the capital of France. " * 5,
                      query="What is the capital?", answers=["Paris"])
    line = json.loads(label_line(example, get_compressor("extractive"), judge, [1.0, 2.0], None))
    assert line["error"]["type"] == "RemoteError" and "could not be sent" in line["error"]["message"]
    assert "SECRET3" not in json.dumps(line)


def test_llm_judge_keeps_the_query_string_and_sends_credentials_as_basic_auth(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """An Azure base URL (?api-version=) made the judge post to .../d?api-version=.../chat/completions; a
    password in the base URL went to httpx's request log and was shown by repr()."""
    import base64
    import logging

    _no_llm_env(monkeypatch)
    caplog.set_level(logging.INFO, logger="httpx")
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "Paris"}}]})

    azure = LLMJudge(base_url="https://upstream.test/openai/deployments/d/?api-version=2024-06-01", model="m",
                     api_key="sk-test", transport=httpx.MockTransport(answer))
    assert azure.judge(ex(answers=["Paris"]), "Paris", ["Paris"]).scorable
    assert str(seen[-1].url) == "https://upstream.test/openai/deployments/d/chat/completions?api-version=2024-06-01"
    assert seen[-1].headers["authorization"] == "Bearer sk-test"

    url = "https://svc:s3cr%2Ft@upstream.test/v1"
    judge = LLMJudge(base_url=url, model="m", transport=httpx.MockTransport(answer))
    assert judge.judge(ex(answers=["Paris"]), "Paris", ["Paris"]).scorable
    assert seen[-1].headers["authorization"] == "Basic " + base64.b64encode(b"svc:s3cr/t").decode()
    assert str(seen[-1].url) == "https://upstream.test/v1/chat/completions"
    assert "s3cr" not in caplog.text and "s3cr" not in repr(judge) and "svc:***@upstream.test" in repr(judge)
    token = LLMJudge(base_url="https://sk-TOKEN9@upstream.test/v1", model="m")
    assert "TOKEN9" not in repr(token) and "***@upstream.test" in repr(token)
    with pytest.raises(ConfigError, match=r"API key is set too \(the api_key argument\)") as error:
        LLMJudge(base_url=url, model="m", api_key="sk-test")
    assert "s3cr" not in str(error.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    with pytest.raises(ConfigError, match=r"API key is set too \(\$OPENAI_API_KEY\)"):
        LLMJudge(base_url=url, model="m")
    assert LLMJudge(base_url=url, model="m", api_key="")._endpoint.auth is not None  # "" sends the credentials
