"""Provider rules: the view opens on a user message and keeps the system prompt first and
alone; tool-call groups stay whole; ``detail`` reaches an OpenAI-compatible server through a
real ``langchain_openai.ChatOpenAI`` (a local server records the request)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chat_server import RecordingChatServer
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver

from optical_memory import AgingPolicy, MemoryManager
from optical_memory.adapters.langchain import OpticalMemoryMiddleware, to_langchain_messages
from optical_memory.adapters.openai import record_openai_messages, to_openai_messages

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
FILLER = "We went over the ferry timetable and the harbour fees once more, line by line. " * 4


def conversation(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k in range(n):
        out.append({"role": "user", "content": f"Question {k}: {FILLER}"})
        out.append({"role": "assistant", "content": f"Answer {k}: {FILLER}"})
    return out


def test_the_view_opens_on_a_user_message(sqlite_url: str) -> None:
    memory = MemoryManager(sqlite_url)
    turns = [
        {"role": "assistant", "content": "Hello! I keep the harbour's logbook."},  # a greeting
        {"role": "user", "content": "Hi."},
        *conversation(6),
    ]
    record_openai_messages(memory, "s", turns, at=T0)
    roomy = memory.assemble("s", budget=100_000, now=T0)
    sent = to_openai_messages(roomy, system_prompt="Be brief.")
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[1]["role"] == "user" and sent[1]["content"] == "Hi."
    kept = to_openai_messages(roomy, start_on="any")
    assert kept[0]["role"] == "assistant"  # configurable
    # A budget that cuts the recent text just after a user turn: the cut lands on an answer.
    budget = sum(t.tokens for t in roomy.texts[-3:]) + 1
    tight = memory.assemble("s", budget=budget, now=T0)
    assert tight.texts[0].turn.role == "assistant"
    for msgs in (to_openai_messages(tight), to_langchain_messages(tight)):
        first = msgs[0]
        role = first["role"] if isinstance(first, dict) else first.type
        assert role in ("user", "human")


def test_stored_system_turns_do_not_come_between_turns(sqlite_url: str) -> None:
    memory = MemoryManager(sqlite_url)
    memory.add_turns(
        "s",
        [
            ("user", "Book the 9:40 ferry."),
            ("system", "The user is on the premium plan."),
            ("assistant", "Booked."),
            ("user", "Thanks."),
        ],
    )
    ctx = memory.assemble("s", budget=10_000)
    sent = to_openai_messages(ctx, system_prompt="Be brief.")
    assert [m["role"] for m in sent] == ["system", "user", "user", "assistant", "user"]
    assert sent[2]["content"] == "[system] The user is on the premium plan."
    lc = to_langchain_messages(ctx)
    assert not any(isinstance(m, SystemMessage) for m in lc)
    assert [m["role"] for m in to_openai_messages(ctx, system_first=False)][1] == "system"
    # what is sent is paid for: the label is in the turn's cost
    assert ctx.tokens >= sum(memory.count_tokens(m["role"], m["content"]) for m in sent[1:])


def test_detail_reaches_the_server_through_chat_openai(sqlite_url: str) -> None:
    pytest.importorskip("langchain_openai")
    from langchain_openai import ChatOpenAI

    memory = MemoryManager(
        sqlite_url, target="openai", policy=AgingPolicy(keep_last_turns=4, min_fill=0)
    )
    record_openai_messages(memory, "t1", conversation(14), at=T0)
    memory.age(now=T0 + timedelta(days=8))  # a week and more: the small tier (low detail)
    now = T0 + timedelta(days=8)
    ctx = memory.assemble("t1", budget=6000, now=now)
    wanted = sorted(p.detail or "" for p in ctx.pages)
    assert "low" in wanted
    with RecordingChatServer() as server:
        model = ChatOpenAI(
            model="gpt-4.1", base_url=server.base_url, api_key="sk-local", max_retries=0
        )
        mw = OpticalMemoryMiddleware(memory, budget=6000, now=lambda: now, tools=False)
        agent = create_agent(model, middleware=[mw], checkpointer=InMemorySaver())
        agent.invoke(
            {"messages": [HumanMessage("What did we say about the fees?")]},
            {"configurable": {"thread_id": "t1"}},
        )
    assert len(server.requests) == 1
    sent = server.requests[0]["body"]["messages"]
    images = [
        part["image_url"]
        for m in sent
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") == "image_url"
    ]
    assert images, "the pages reach the server as images"
    assert all(i["url"].startswith("data:image/png;base64,") for i in images)
    assert "low" in [i.get("detail") for i in images]  # the budget's 85 is what is billed
    assert all(i.get("detail") in ("low", "high") for i in images)
    assert sent[0]["role"] == "user"  # the memory message opens the conversation
