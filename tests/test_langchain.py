"""LangChain integration: the runnable, the document compressor, the chat model adapter, the examples."""

from __future__ import annotations

import asyncio
import os
import random
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField, RunnablePassthrough

from pocsdk.integrations.langchain import (
    EVENT,
    PocsdkChatModel,
    PocsdkCompressorRunnable,
    PocsdkDocumentCompressor,
)
from pocsdk.llm import ChatResult, Usage

REPO = Path(__file__).resolve().parents[1]
WORDS = "river castle engine orchard harbor glacier violin comet market forest".split()


def text(n: int, seed: int, fact: str = "") -> str:
    rng = random.Random(seed)
    sents = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(n)]
    if fact:
        sents.insert(n // 2, fact)
    return " ".join(sents)


FACT = "The treasure is buried under the old lighthouse."
QUESTION = "Where is the treasure buried?"


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


# -- the runnable --------------------------------------------------------------------------
def test_dict_input_compresses_context_and_reports_stats() -> None:
    rec = Recorder()
    r = PocsdkCompressorRunnable(keep_rate=0.3)
    out = r.invoke({"context": text(100, 1, FACT), "question": QUESTION, "extra": 7}, {"callbacks": [rec]})
    assert out["question"] == QUESTION and out["extra"] == 7
    stats = out["pocsdk"]
    assert stats["compressed_tokens"] < 0.4 * stats["original_tokens"]
    assert FACT in out["context"]
    assert rec.events and rec.events[0][0] == EVENT and rec.events[0][1]["compressed_tokens"] == stats[
        "compressed_tokens"]


def test_dict_input_accepts_langchain_documents() -> None:
    docs = [Document(text(40, 2)), Document(text(40, 3, FACT)), Document(text(40, 4))]
    out = PocsdkCompressorRunnable(keep_rate=0.3).invoke({"context": docs, "question": QUESTION})
    assert FACT in out["context"]


def _history() -> list[Any]:
    return [SystemMessage("Be brief. " + text(60, 5)),
            HumanMessage("Find the treasure."),
            AIMessage("Searching."),
            ToolMessage(text(120, 6, FACT), tool_call_id="t1"),
            HumanMessage(QUESTION)]


def test_message_list_compresses_long_tool_output_only() -> None:
    before = _history()
    after = PocsdkCompressorRunnable(keep_rate=0.3, min_tokens=200).invoke(before)
    assert [type(m) for m in after] == [type(m) for m in before]
    assert after[0].content == before[0].content  # system verbatim even though long
    assert after[1].content == before[1].content and after[4].content == QUESTION
    assert len(after[3].content) < 0.5 * len(before[3].content) and FACT in after[3].content
    assert after[3].tool_call_id == "t1"
    meta = after[3].response_metadata["pocsdk"]
    assert meta["compressed_tokens"] < meta["original_tokens"]
    assert "pocsdk" not in after[0].response_metadata


def test_prompt_values_keep_their_kind() -> None:
    r = PocsdkCompressorRunnable(keep_rate=0.3, min_tokens=200)
    prompt = ChatPromptTemplate.from_messages([("system", "sys"), ("human", "{context}\n\n{question}")])
    out = (prompt | r).invoke({"context": text(120, 7, FACT), "question": QUESTION})
    assert isinstance(out, ChatPromptValue)
    human = out.messages[1].content
    assert human.endswith("\n\n" + QUESTION) and FACT in human
    assert len(human) < 0.5 * len(text(120, 7, FACT))
    s = r.invoke(StringPromptValue(text=text(120, 7, FACT) + "\n\n" + QUESTION))
    assert isinstance(s, StringPromptValue) and s.text.endswith(QUESTION)


def test_configurable_fields_change_rate_per_call() -> None:
    r = PocsdkCompressorRunnable(keep_rate=0.2).configurable_fields(
        keep_rate=ConfigurableField(id="keep_rate", name="keep rate"))
    inp = {"context": text(100, 8, FACT), "question": QUESTION}
    low = r.invoke(inp)["pocsdk"]["keep_rate"]
    high = r.with_config(configurable={"keep_rate": 0.6}).invoke(inp)["pocsdk"]["keep_rate"]
    assert low == pytest.approx(0.2, abs=0.05) and high == pytest.approx(0.6, abs=0.05)


def test_modes_and_fields_checked_when_built() -> None:
    """Bad fields used to pass the constructor and fail at the first call (``min_tokens=0`` with a raw
    ValidationError from deep inside); two modes at once silently ran the floor."""
    from pydantic import ValidationError

    for bad in ({"floor": 2.0}, {"keep_rate": 0}, {"target_tokens": 0}, {"confidence": 1.0}, {"min_tokens": 0},
                {"compressor": "nope"}, {"keep_rate": 0.3, "confidence": 0.9},
                {"compressor_params": {"keep_rate": 0.5}, "confidence": 0.9}):
        with pytest.raises(ValidationError):
            PocsdkCompressorRunnable(**bad)
        with pytest.raises(ValidationError):
            PocsdkDocumentCompressor(**bad)
    # a name only a remote service hosts is fine with an endpoint
    PocsdkCompressorRunnable(compressor="hosted-elsewhere", compressor_params={"endpoint": "http://127.0.0.1:9"})
    # several modes: the floor wins, then target_tokens, then keep_rate (a keep-rate chain at a per-call floor)
    inp = {"context": text(100, 8, FACT), "question": QUESTION}
    r = PocsdkCompressorRunnable(keep_rate=0.3).configurable_fields(floor=ConfigurableField(id="floor"))
    assert r.with_config(configurable={"floor": 0.9}).invoke(inp)["pocsdk"]["floor"] == 0.9
    both = PocsdkCompressorRunnable(target_tokens=120, keep_rate=0.9).invoke(inp)["pocsdk"]
    assert both["compressed_tokens"] <= 120


def test_every_mode_reaches_the_compressor() -> None:
    """``compressor_params``' own mode and ``confidence`` used to be overridden by a floor of 0.9."""
    inp = {"context": text(100, 8, FACT), "question": QUESTION}
    by_params = PocsdkCompressorRunnable(compressor_params={"keep_rate": 0.5}).invoke(inp)["pocsdk"]
    assert by_params["keep_rate"] == pytest.approx(0.5, abs=0.05) and "floor" not in by_params
    budget = PocsdkCompressorRunnable(target_tokens=120).invoke(inp)["pocsdk"]
    assert 100 <= budget["compressed_tokens"] <= 120
    promised = PocsdkCompressorRunnable(floor=0.9, confidence=0.9).invoke(inp)["pocsdk"]
    assert promised["floor"] == 0.9 and promised["reason"] != "full_keep_rate"
    default = PocsdkCompressorRunnable().invoke(inp)["pocsdk"]
    assert default["floor"] == 0.9
    # objects that are no JSON (a Path, a loaded predictor) are fine as parameters
    skim = REPO / "predictors" / "skim"
    with_path = PocsdkCompressorRunnable(floor=0.9, compressor_params={"predictor": skim}).invoke(inp)["pocsdk"]
    assert with_path["floor"] == 0.9


def test_empty_retrieval_passes_through() -> None:
    """A retriever that finds nothing used to crash the chain with EmptyContextError."""
    r = PocsdkCompressorRunnable(keep_rate=0.3)
    for context, expected in (([], ""), ([Document(page_content="")], ""), ("   ", "   ")):
        out = r.invoke({"context": context, "question": QUESTION})
        assert out["context"] == expected and out["question"] == QUESTION
        assert out["pocsdk"]["passthrough"] and out["pocsdk"]["reason"] == "empty_context"
        assert out["pocsdk"]["original_tokens"] == 0
    out = asyncio.run(r.ainvoke({"context": [], "question": QUESTION}))
    assert out["context"] == "" and out["pocsdk"]["reason"] == "empty_context"
    # contexts the compressor reads are not taken for empty ({"page_content": ...} dicts)
    out = r.invoke({"context": [{"page_content": text(100, 8, FACT)}], "question": QUESTION})
    assert FACT in out["context"] and out["pocsdk"]["reason"] != "empty_context"
    # and "question": None falls back to "query"
    out = r.invoke({"context": text(100, 8, FACT), "question": None, "query": QUESTION})
    assert FACT in out["context"]


def test_question_before_the_context_stays_and_steers() -> None:
    """The widely used rag-prompt template asks before the context: its question line, instructions and
    answer cue used to be compressed away, and the last document was taken for the question."""
    template = ("You are an assistant for question-answering tasks. Use the following pieces of retrieved "
                "context to answer the question.\nQuestion: {question} \nContext: {context} \nAnswer:")
    docs = "\n\n".join([text(30, 20), text(30, 21, FACT), text(30, 22), text(30, 23)])
    r = PocsdkCompressorRunnable(keep_rate=0.3, min_tokens=200)
    for prompt in (ChatPromptTemplate.from_messages([("human", template)]),):
        out = (prompt | r).invoke({"question": QUESTION, "context": docs})
        human = out.messages[0].content
        assert human.startswith("You are an assistant for question-answering tasks.")
        assert f"Question: {QUESTION}" in human and human.endswith("\nAnswer:") and FACT in human
        assert len(human) < 0.5 * len(docs)
    first = r.invoke([HumanMessage(f"{QUESTION} Answer using the report below.\n\n{docs}")])[0].content
    assert first.startswith(f"{QUESTION} Answer using the report below.") and FACT in first


def test_emptied_messages_and_parts_hold_a_marker() -> None:
    """A long irrelevant message could come back as ``content=''`` and a text part as ``{'text': ''}``,
    which chat APIs refuse."""
    from pocsdk.llm.messages import OMITTED

    history = [HumanMessage(text(150, 30)), AIMessage("Noted."),
               HumanMessage(content=[{"type": "text", "text": text(150, 31)},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]),
               AIMessage("Noted."), HumanMessage(QUESTION)]
    # a tool output so relevant that it takes the whole budget
    tool = " ".join(f"The treasure map {i} shows where the treasure is buried, near marker {i}." for i in range(80))
    history.insert(4, ToolMessage(tool, tool_call_id="t1"))
    out = PocsdkCompressorRunnable(keep_rate=0.1, min_tokens=100, compressor="extractive").invoke(history)
    texts = [m.content if isinstance(m.content, str) else m.content[0]["text"] for m in out]
    assert texts[0] == OMITTED and texts[2] == OMITTED and "treasure" in texts[4]
    assert out[2].content[1] == history[2].content[1]  # the image part untouched


def test_chunks_and_chat_messages_get_their_roles() -> None:
    """Message chunks and ``ChatMessage(role="human")`` used to pass through uncompressed."""
    from langchain_core.messages import ChatMessage, HumanMessageChunk, ToolMessageChunk

    long = text(150, 33, FACT)
    for message in (ToolMessageChunk(content=long, tool_call_id="t1"), HumanMessageChunk(content=long),
                    ChatMessage(role="human", content=long), ChatMessage(role="user", content=long)):
        out = PocsdkCompressorRunnable(keep_rate=0.3, min_tokens=100).invoke([message, HumanMessage(QUESTION)])
        assert len(out[0].content) < 0.5 * len(long) and FACT in out[0].content, type(message).__name__
    out = PocsdkCompressorRunnable(keep_rate=0.3, min_tokens=100).invoke(
        [HumanMessageChunk(content=long + "\n\n" + QUESTION)])
    assert out[0].content.endswith(QUESTION) and FACT in out[0].content


def test_runnable_serializes_and_loads() -> None:
    from langchain_core.load import dumps, loads

    r = PocsdkCompressorRunnable(keep_rate=0.3, compressor="extractive", min_tokens=100)
    back = loads(dumps(r), valid_namespaces=["pocsdk"], allowed_objects=[PocsdkCompressorRunnable])
    assert isinstance(back, PocsdkCompressorRunnable)
    assert (back.keep_rate, back.compressor, back.min_tokens) == (0.3, "extractive", 100)
    remote = PocsdkCompressorRunnable(keep_rate=0.3, compressor_params={"endpoint": "http://x", "api_key": "sk-SECRET"})
    assert "sk-SECRET" not in dumps(remote)  # written as a secret reference
    back = loads(dumps(remote), valid_namespaces=["pocsdk"], allowed_objects=[PocsdkCompressorRunnable],
                 secrets_map={"POCSDK_API_KEY": "sk-SECRET"})
    assert back.api_key is not None and back.api_key.get_secret_value() == "sk-SECRET"
    assert "api_key" not in back.compressor_params and "sk-SECRET" not in repr(remote.model_dump())
    # a per-call endpoint comes with its own key, which wins over the default's
    per_call = remote.configurable_fields(compressor_params=ConfigurableField(id="cp"))
    configured, _ = per_call._prepare({"configurable": {"cp": {"endpoint": "http://y", "api_key": "sk-NEW"}}})
    assert configured.api_key.get_secret_value() == "sk-NEW"  # type: ignore[attr-defined]


def test_endpoint_credentials_are_a_secret_too() -> None:
    """Credentials in the endpoint (sent as Basic auth) were written in clear by repr and dumps."""
    from langchain_core.load import dumps, loads

    r = PocsdkCompressorRunnable(keep_rate=0.5, compressor="extractive",
                                 compressor_params={"endpoint": "http://svc:SECRETPW@127.0.0.1:9/"})
    assert "SECRETPW" not in dumps(r) and "SECRETPW" not in repr(r)
    assert r.compressor_params["endpoint"] == "http://127.0.0.1:9/"
    assert r._params()["endpoint"] == "http://svc:SECRETPW@127.0.0.1:9/"  # what the remote client gets
    back = loads(dumps(r), valid_namespaces=["pocsdk"], allowed_objects=[PocsdkCompressorRunnable],
                 secrets_map={"POCSDK_ENDPOINT_AUTH": "svc:SECRETPW"})
    assert back._params()["endpoint"] == "http://svc:SECRETPW@127.0.0.1:9/"
    docs = PocsdkDocumentCompressor(keep_rate=0.5, compressor="extractive",
                                    compressor_params={"endpoint": "http://svc:SECRETPW@127.0.0.1:9"})
    assert "SECRETPW" not in repr(docs)
    # a per-call endpoint elsewhere never receives the default endpoint's credentials
    per_call = r.configurable_fields(compressor_params=ConfigurableField(id="cp"))
    configured, _ = per_call._prepare({"configurable": {"cp": {"endpoint": "http://other-host:9"}}})
    assert configured._params()["endpoint"] == "http://other-host:9"  # type: ignore[attr-defined]
    moved = PocsdkDocumentCompressor(**{**docs.model_dump(), "compressor_params": {"endpoint": "http://b:9"}})
    assert moved._params()["endpoint"] == "http://b:9"
    with pytest.raises(ValueError) as info:  # no scheme: "svc" would read as one, the password kept as text
        PocsdkCompressorRunnable(keep_rate=0.5, compressor_params={"endpoint": "svc:SECRETPW@host:8000"})
    assert "SECRETPW" not in str(info.value)
    for endpoint in ("https://host/v1?owner=team@example.com", "https://host/@acme/pocsdk"):  # "@" past the host
        plain = PocsdkCompressorRunnable(keep_rate=0.5, compressor_params={"endpoint": endpoint})
        assert plain._params()["endpoint"] == endpoint and plain.endpoint_auth is None
    for cls in (PocsdkCompressorRunnable, PocsdkDocumentCompressor):  # errors name the field, never the key
        with pytest.raises(ValueError) as info:
            cls(keep_rate=0.5, confidence=0.9, compressor_params={"endpoint": "http://x", "api_key": "sk-LIVE"})
        assert "sk-LIVE" not in str(info.value) and "confidence" in str(info.value)


def test_paths_in_compressor_params_serialize_as_text(tmp_path: Path) -> None:
    """A Path was written as "not_implemented", which loads refused."""
    from langchain_core.load import dumps, loads

    predictor = REPO / "predictors" / "skim"
    r = PocsdkCompressorRunnable(floor=0.9, compressor="skim", compressor_params={"predictor": predictor})
    back = loads(dumps(r), valid_namespaces=["pocsdk"], allowed_objects=[PocsdkCompressorRunnable])
    assert back.compressor_params == {"predictor": str(predictor)}
    docs = text(40, 2, FACT)
    assert back.invoke({"context": docs, "question": QUESTION})["context"] == r.invoke(
        {"context": docs, "question": QUESTION})["context"]


def test_message_parts_are_read_as_one_message() -> None:
    """The question part before a document part is the query; a message split in parts counts as a whole."""
    r = PocsdkCompressorRunnable(keep_rate=0.3, compressor="extractive", min_tokens=100)
    doc = "\n\n".join(text(30, 20 + k, FACT if k == 1 else "") for k in range(4))
    msg = HumanMessage(content=[{"type": "text", "text": QUESTION}, {"type": "text", "text": doc}])
    recorder = Recorder()
    out = r.invoke([msg], config={"callbacks": [recorder]})[0]
    assert out.content[0] == {"type": "text", "text": QUESTION} and FACT in out.content[1]["text"]
    assert len(out.content[1]["text"]) < 0.5 * len(doc)
    parts = [text(20, s) for s in (1, 2, 3)]  # under 512 tokens each, about 800 together
    tool = ToolMessage(content=[{"type": "text", "text": p} for p in parts], tool_call_id="t")
    out = PocsdkCompressorRunnable(keep_rate=0.3, compressor="extractive").invoke([tool, HumanMessage(QUESTION)])[0]
    assert sum(len(b["text"]) for b in out.content) < 0.5 * sum(map(len, parts))


def test_message_lists_come_back_as_the_kind_they_came_in() -> None:
    """OpenAI-style dicts came back as message objects, which a following raw OpenAI call cannot send."""
    r = PocsdkCompressorRunnable(keep_rate=0.3, compressor="extractive", min_tokens=100)
    long_tool = text(40, 3)
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    inputs = [{"role": "system", "content": "Be brief."},
              {"role": "assistant", "content": None, "tool_calls": calls},
              {"role": "tool", "tool_call_id": "c1", "content": long_tool},
              ("human", "Short aside."),
              QUESTION]
    out = r.invoke(inputs)
    assert out[0] is inputs[0] and out[1] is inputs[1] and out[3] == inputs[3] and out[4] == QUESTION
    assert out[2]["role"] == "tool" and out[2]["tool_call_id"] == "c1" and set(out[2]) == {"role", "tool_call_id",
                                                                                          "content"}
    assert isinstance(out[2]["content"], str) and len(out[2]["content"]) < 0.5 * len(long_tool)
    assert asyncio.run(r.ainvoke(inputs)) == out
    # a serialised message (LangChain's dumpd envelope) gets its compressed text where LangChain reads it
    from langchain_core.load import dumpd
    from langchain_core.messages import convert_to_messages

    envelope = dumpd(ToolMessage(long_tool, tool_call_id="c1"))
    (back,) = r.invoke([envelope, QUESTION])[:1]
    assert set(back) == set(envelope) and len(convert_to_messages([back])[0].content) < 0.5 * len(long_tool)


async def test_ainvoke_abatch_and_custom_events() -> None:
    r = PocsdkCompressorRunnable(keep_rate=0.3, min_tokens=200)
    inputs = [{"context": text(80, s, FACT), "question": QUESTION} for s in range(3)]
    outs = await r.abatch(inputs)
    assert len(outs) == 3 and all(FACT in o["context"] for o in outs)
    msgs = await r.ainvoke(_history())
    assert len(msgs[3].content) < len(_history()[3].content)
    names = [e["name"] async for e in r.astream_events(inputs[0], version="v2") if e["event"] == "on_custom_event"]
    assert names == [EVENT]


def test_rag_chain_end_to_end_with_fake_model() -> None:
    llm = FakeListChatModel(responses=["Under the old lighthouse."])
    prompt = ChatPromptTemplate.from_messages([("human", "Context:\n{context}\n\nQuestion: {question}")])
    chain = PocsdkCompressorRunnable(keep_rate=0.3) | RunnablePassthrough.assign(
        answer=prompt | llm | StrOutputParser())
    out = chain.invoke({"context": text(100, 9, FACT), "question": QUESTION})
    assert out["answer"] == "Under the old lighthouse." and out["pocsdk"]["compression_factor"] > 2


# -- the document compressor ---------------------------------------------------------------
def test_document_compressor_one_output_per_input() -> None:
    docs = [Document(text(40, 10), metadata={"source": "a"}, id="a"),
            Document(text(40, 11, FACT), metadata={"source": "b"}, id="b"),
            Document(text(40, 12), metadata={"source": "c"}, id="c")]
    out = PocsdkDocumentCompressor(keep_rate=0.3).compress_documents(docs, QUESTION)
    assert [d.id for d in out] == ["a", "b", "c"]
    assert [d.metadata["source"] for d in out] == ["a", "b", "c"]
    assert FACT in out[1].page_content
    for d in out:
        s = d.metadata["pocsdk"]
        assert s["compressed_tokens"] <= s["original_tokens"]
        assert s["total"]["compressed_tokens"] < s["total"]["original_tokens"]
    async_out = asyncio.run(PocsdkDocumentCompressor(keep_rate=0.3).acompress_documents(docs, QUESTION))
    assert [d.page_content for d in async_out] == [d.page_content for d in out]


def test_document_compressor_keeps_metadata_pocsdk_could_not_read() -> None:
    """LangChain allows metadata keys that are not strings; they made compression fail."""
    docs = [Document(page_content=text(30, s, FACT if s == 1 else ""), metadata={1: "one", "src": s}) for s in range(3)]
    out = PocsdkDocumentCompressor(keep_rate=0.3, compressor="extractive").compress_documents(docs, QUESTION)
    assert [d.metadata[1] for d in out] == ["one"] * 3 and [d.metadata["src"] for d in out] == [0, 1, 2]
    assert sum(len(d.page_content) for d in out) < 0.5 * sum(len(d.page_content) for d in docs)
    assert PocsdkCompressorRunnable(keep_rate=0.3, compressor="extractive").invoke(
        {"context": docs, "question": QUESTION})["pocsdk"]["compressed_tokens"] > 0


def test_document_compressor_accepts_repeated_and_missing_ids() -> None:
    # one chunk retrieved twice, and an id-less document next to one whose id is "1"
    docs = [Document(text(40, 20, FACT), id="chunk-7"), Document(text(40, 20, FACT), id="chunk-7"),
            Document(text(40, 21)), Document(text(40, 22), id="1")]
    out = PocsdkDocumentCompressor(keep_rate=0.3).compress_documents(docs, QUESTION)
    assert [d.id for d in out] == ["chunk-7", "chunk-7", None, "1"]
    res = PocsdkCompressorRunnable(keep_rate=0.3).invoke({"context": docs, "question": QUESTION})
    assert FACT in res["context"]


def test_document_compressor_min_tokens_passes_short_inputs_through() -> None:
    docs = [Document(text(40, 23, FACT)), Document(text(40, 24))]
    total = PocsdkDocumentCompressor(keep_rate=0.3).compress_documents(docs, QUESTION)[0].metadata["pocsdk"]["total"]
    assert total["compressed_tokens"] < total["original_tokens"]
    high = PocsdkDocumentCompressor(keep_rate=0.3, min_tokens=total["original_tokens"] + 1)
    assert [d.page_content for d in high.compress_documents(docs, QUESTION)] == [d.page_content for d in docs]


def test_document_compressor_with_a_registered_compressor_without_min_tokens() -> None:
    from pocsdk.compressors import get_compressor, register

    register("lc-no-min-tokens", lambda: get_compressor("extractive"))  # a factory that takes no parameters
    docs = [Document(text(40, 25, FACT)), Document(text(40, 26))]
    out = PocsdkDocumentCompressor(keep_rate=0.3, compressor="lc-no-min-tokens").compress_documents(docs, QUESTION)
    assert len(out) == 2 and FACT in out[0].page_content


def test_document_compressor_empty_and_dropped_documents() -> None:
    assert PocsdkDocumentCompressor(keep_rate=0.5).compress_documents([], "q") == []
    docs = [Document(text(200, 13, FACT)), Document("Cats purr. " * 3)]
    kept = PocsdkDocumentCompressor(keep_rate=0.05).compress_documents(docs, QUESTION)
    assert len(kept) == 2
    dropped = [d for d in kept if d.metadata["pocsdk"]["dropped"]]
    for d in dropped:
        assert d.page_content == ""
    filtered = PocsdkDocumentCompressor(keep_rate=0.05, drop_empty=True).compress_documents(docs, QUESTION)
    assert len(filtered) == 2 - len(dropped)
    blank = [Document(page_content="", metadata={"source": "a"}), Document(page_content="  ", id="b")]
    for out in (PocsdkDocumentCompressor(keep_rate=0.5).compress_documents(blank, QUESTION),
                asyncio.run(PocsdkDocumentCompressor(keep_rate=0.5).acompress_documents(blank, QUESTION))):
        assert [d.page_content for d in out] == ["", "  "] and out[1].id == "b"  # stats on every output
        assert out[0].metadata["source"] == "a" and all(d.metadata["pocsdk"]["original_tokens"] == 0 for d in out)


# -- the chat model adapter ------------------------------------------------------------------
class _EchoClient:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def chat(self, messages: Any, model: str | None = None, **params: Any) -> ChatResult:
        self.calls.append((messages, model, params))
        return ChatResult(content="ok:" + messages[-1]["content"][-10:], model="echo",
                          usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7))


def test_chat_model_adapter_sync_and_async() -> None:
    client = _EchoClient()
    llm = PocsdkChatModel(client=client, model="m", params={"max_tokens": 5})
    msg = llm.invoke([SystemMessage("s"), HumanMessage("hello world")])
    assert msg.content == "ok:ello world" and msg.usage_metadata["total_tokens"] == 7
    assert client.calls[0][0][0] == {"role": "system", "content": "s"} and client.calls[0][2] == {"max_tokens": 5}
    assert asyncio.run(llm.ainvoke("hi")).content == "ok:hi"
    parts = [{"type": "text", "text": "Summarize:"}, {"type": "text", "text": "The report."}]
    llm.invoke([HumanMessage(content=parts)])  # type: ignore[arg-type]
    assert client.calls[-1][0] == [{"role": "user", "content": "Summarize:\n\nThe report."}]  # parts not glued


# -- examples ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rag_chain.py", "agent_history.py"])
def test_examples_run_offline(name: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / name)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "tokens" in proc.stdout


def test_rag_example_keeps_the_answer_sentence() -> None:
    ns = runpy.run_path(str(REPO / "examples" / "rag_chain.py"))
    out = ns["main"]([])
    assert "1931" in out["context"]
    after = runpy.run_path(str(REPO / "examples" / "agent_history.py"))["main"]([])
    assert "connection pool exhausted" in after[3].content


@pytest.mark.slow
def test_rag_chain_with_smollm2() -> None:
    pytest.importorskip("transformers")
    out = runpy.run_path(str(REPO / "examples" / "rag_chain.py"))["main"](["--smollm2"])
    assert isinstance(out["answer"], str) and out["answer"].strip()
