"""Compress an agent's message history before the next model call; runs offline in seconds.

    python examples/agent_history.py                # keep_rate 0.3
    python examples/agent_history.py --floor 0.9    # a performance floor instead

Agents resend their whole history every turn, and tool outputs (search results, logs,
file dumps) dominate it. ``PocsdkCompressorRunnable`` compresses the long tool and user
messages for the latest question; the system prompt, the assistant turns and the final
question stay verbatim, and each compressed message carries its stats in
``response_metadata["pocsdk"]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from pocsdk.integrations.langchain import PocsdkCompressorRunnable


def _log_dump() -> str:
    lines = []
    for i in range(120):
        level = "ERROR" if i == 77 else "INFO"
        msg = ("payment worker crashed: connection pool exhausted (max_connections=20) while settling batch 4411"
               if i == 77 else f"request {1000 + i} served in {20 + (i * 7) % 50} ms by worker {i % 4}")
        lines.append(f"2026-03-0{1 + i % 9}T10:{i % 60:02d}:00Z {level} {msg}")
    return "\n".join(lines)


def _search_results() -> str:
    hits = [
        "Connection pool exhaustion happens when every pooled connection is checked out and none returns in time.",
        "Raising max_connections helps only if the database accepts more sessions; check its own limit first.",
        "A leaked connection (opened without a context manager) is the most common cause of pool exhaustion.",
    ]
    filler = ("Our newsletter covers databases, queues and caching every week, with interviews and tutorials "
              "for engineers at every level of experience.")
    return "\n\n".join(f"Result {i + 1}: {h} {filler} {filler}" for i, h in enumerate(hits * 3))


def history() -> list[BaseMessage]:
    """System prompt, a task, two tool calls with long outputs, and a follow-up question."""
    return [
        SystemMessage("You are an SRE assistant. Never run destructive commands. Answer in two sentences."),
        HumanMessage("The payment service failed last night. Find out why."),
        AIMessage("", tool_calls=[{"id": "call_logs", "name": "read_logs", "args": {"service": "payments"}}]),
        ToolMessage(_log_dump(), tool_call_id="call_logs"),
        AIMessage("", tool_calls=[{"id": "call_search", "name": "web_search", "args": {"q": "pool exhausted"}}]),
        ToolMessage(_search_results(), tool_call_id="call_search"),
        HumanMessage("Why did the payment worker crash, and what should we check first?"),
    ]


def main(argv: list[str] | None = None) -> list[BaseMessage]:
    ap = argparse.ArgumentParser(description="compress an agent history")
    ap.add_argument("--keep-rate", type=float, default=None)
    ap.add_argument("--floor", type=float, default=None)
    args = ap.parse_args(argv)
    keep_rate = args.keep_rate if args.keep_rate is not None or args.floor is not None else 0.3
    compress = PocsdkCompressorRunnable(keep_rate=keep_rate, floor=args.floor, min_tokens=200)
    before = history()
    after: list[Any] = compress.invoke(before)
    for old, new in zip(before, after, strict=True):
        stats = new.response_metadata.get("pocsdk")
        note = f"{stats['original_tokens']} -> {stats['compressed_tokens']} tokens" if stats else "verbatim"
        print(f"{type(old).__name__:<14} {len(old.content):>6} -> {len(new.content):>6} chars  ({note})")
    crash_kept = any("connection pool exhausted" in str(m.content) for m in after[3:4])
    print(f"the crash line survived: {crash_kept}")
    return after


if __name__ == "__main__":
    main()
