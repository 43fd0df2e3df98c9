"""Idempotent recording: the same conversation sent again stores nothing; a regenerated reply
or an edited message becomes a new version of that turn (the archive keeps the old one,
superseded; prompts, pages, turns() and search show the current branch). Same for the LangChain
middleware when a graph is forked from an earlier checkpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import RecordingChatModel
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from optical_memory import AgingPolicy, InvalidInput, MemoryManager
from optical_memory.adapters.langchain import OpticalMemoryMiddleware
from optical_memory.adapters.openai import record_openai_messages, to_openai_messages

T0 = datetime(2025, 7, 1, 9, 0, tzinfo=UTC)


def chat(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for k in range(n):
        out.append({"role": "user", "content": f"Question {k} about the ferry."})
        out.append({"role": "assistant", "content": f"Answer {k}: the 7:40 from pier four."})
    return out


def contents(memory: MemoryManager, sid: str = "s") -> list[str]:
    return [t.content for t in memory.turns(sid)]


def test_resend_stores_nothing_regenerate_and_edit_make_versions(db_url: str) -> None:
    memory = MemoryManager(db_url)
    convo = chat(4)
    assert len(record_openai_messages(memory, "s", convo, at=T0)) == 8
    assert record_openai_messages(memory, "s", convo, at=T0) == []  # resent: nothing
    # regenerate: the same conversation with another last reply
    regenerated = [*convo[:-1], {"role": "assistant", "content": "Answer 3, again: pier two."}]
    stored = record_openai_messages(memory, "s", regenerated, at=T0)
    assert [t.content for t in stored] == ["Answer 3, again: pier two."]
    assert contents(memory)[-2:] == ["Question 3 about the ferry.", "Answer 3, again: pier two."]
    old = memory.superseded("s")
    assert [(t.seq, t.content) for t in old] == [(8, "Answer 3: the 7:40 from pier four.")]
    assert record_openai_messages(memory, "s", regenerated, at=T0) == []  # idempotent again
    # edit question 2: it and everything after it are replaced
    edited = [*regenerated[:5], {"role": "user", "content": "Question 2, edited: and pier six?"}]
    record_openai_messages(memory, "s", edited, at=T0)
    assert contents(memory) == [
        "Question 0 about the ferry.",
        "Answer 0: the 7:40 from pier four.",
        "Question 1 about the ferry.",
        "Answer 1: the 7:40 from pier four.",
        "Question 2, edited: and pier six?",
    ]
    assert len(memory.superseded("s")) == 1 + 4  # the first old reply, then q2, a2, q3, a3'
    # the prompt and search show the current branch only; the archive still has all
    ctx = memory.assemble("s", budget=10_000, now=T0)
    sent = " ".join(str(m["content"]) for m in to_openai_messages(ctx))
    assert "pier two" not in sent and "Question 3" not in sent and "pier six" in sent
    assert all("again" not in r.turn.content for r in memory.recall("s", "again pier two"))
    assert all(r.turn.seq > 0 for r in memory.recall("s", "Question 3 ferry"))
    # a new reply continues the new branch
    record_openai_messages(memory, "s", [*edited, {"role": "assistant", "content": "Yes."}])
    assert contents(memory)[-1] == "Yes." and len(memory.turns("s")) == 6


def test_regenerate_request_without_the_old_reply(sqlite_url: str) -> None:
    """A client's regenerate sends the conversation up to the question, then the reply."""
    memory = MemoryManager(sqlite_url)
    convo = chat(3)
    record_openai_messages(memory, "s", convo)
    record_openai_messages(memory, "s", convo[:-1])  # the request: without the old reply
    record_openai_messages(memory, "s", [{"role": "assistant", "content": "Another answer."}])
    assert contents(memory)[-2:] == ["Question 2 about the ferry.", "Another answer."]
    assert [t.content for t in memory.superseded("s")] == ["Answer 2: the 7:40 from pier four."]


def test_paged_turns_are_not_replaced(sqlite_url: str) -> None:
    memory = MemoryManager(sqlite_url, policy=AgingPolicy(keep_last_turns=2, min_fill=0))
    memory.add_turns("s", [("user", f"Turn {k}: " + "tide tables " * 30) for k in range(8)])
    memory.age(now=datetime.now(UTC) + timedelta(hours=3))
    paged_until = max(p.last_seq for p in memory.pages("s"))
    with pytest.raises(InvalidInput, match="on a page"):
        memory.replace_turns("s", paged_until, [("user", "edited")])
    assert len(memory.turns("s")) == 8 and not memory.superseded("s")  # nothing half-written


def test_forget_removes_every_version(sqlite_url: str) -> None:
    memory = MemoryManager(sqlite_url)
    convo = chat(2)
    record_openai_messages(memory, "s", convo)
    record_openai_messages(memory, "s", [*convo[:-1], {"role": "assistant", "content": "v2"}])
    assert memory.superseded("s")
    memory.forget("s")
    memory.add_turn("s", "user", "fresh start")
    assert memory.superseded("s") == [] and contents(memory) == ["fresh start"]


def test_middleware_fork_from_a_checkpoint_supersedes_the_abandoned_branch(
    sqlite_url: str,
) -> None:
    memory = MemoryManager(sqlite_url)
    replies = iter([AIMessage(f"Reply {k}.") for k in range(10)])
    model = RecordingChatModel(messages=replies, received=[])
    mw = OpticalMemoryMiddleware(memory, tools=False, prune_state=False)
    agent = create_agent(model, middleware=[mw], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "f"}}
    for k in range(3):
        agent.invoke({"messages": [HumanMessage(f"Question {k}.")]}, cfg)
    assert contents(memory, "f") == [x for k in range(3) for x in (f"Question {k}.", f"Reply {k}.")]
    assert mw.record("f", agent.get_state(cfg).values["messages"]) == []  # replayed: nothing
    assert len(memory.turns("f")) == 6
    # fork from the checkpoint after the first exchange
    history = list(agent.get_state_history(cfg))
    first = next(
        h for h in history if [m.content for m in h.values.get("messages", [])] == [
            "Question 0.", "Reply 0."] and not h.next
    )  # fmt: skip
    agent.invoke({"messages": [HumanMessage("Question 1, asked differently.")]}, first.config)
    assert contents(memory, "f")[:3] == [
        "Question 0.",
        "Reply 0.",
        "Question 1, asked differently.",
    ]
    assert len(memory.turns("f")) == 4
    assert [t.content for t in memory.superseded("f")] == [
        "Question 1.", "Reply 1.", "Question 2.", "Reply 2."
    ]  # fmt: skip


def test_a_session_listing_counts_the_live_turns_not_the_versions(db_url: str) -> None:
    memory = MemoryManager(db_url)
    record_openai_messages(memory, "s", chat(3), at=T0)  # 6 turns
    regenerated = chat(3)[:-1] + [{"role": "assistant", "content": "Answer 2, again."}]
    record_openai_messages(memory, "s", regenerated, at=T0)  # the last reply: a new version
    edited = chat(3)[:3] + [{"role": "user", "content": "Question 1, edited."}]
    record_openai_messages(memory, "s", edited, at=T0)  # turns 3 on: superseded
    (info,) = memory.sessions()
    assert info.turns == len(memory.turns("s")) == 3
    assert len(memory.superseded("s")) == 5  # the old reply, then the 4 turns after the edit


def test_the_text_window_keeps_its_number_of_live_turns_across_versions(db_url: str) -> None:
    """``keep_last_turns`` counts the turns a prompt can show: not the superseded versions a
    regenerated reply left, nor the numbers a replacement skipped."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with MemoryManager(db_url, policy=AgingPolicy(keep_last_turns=4)) as mm:
        mm.add_turns(
            "s",
            [
                {
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": f"turn {i + 1} " + "word " * 30,
                    "at": t0 + timedelta(minutes=i),
                }  # fmt: skip
                for i in range(20)
            ],
        )
        mm.replace_turns("s", 18, [("assistant", "again", t0 + timedelta(minutes=21))])
        mm.replace_turns("s", 21, [])  # withdrawn again: numbers 18-21 hold no live turn now
        mm.add_turn("s", "user", "new question", t0 + timedelta(minutes=24))
        mm.age(now=t0 + timedelta(days=3))
        paged = max(p.last_seq for p in mm.pages("s"))
        kept = [t.content for t in mm.turns("s") if t.seq > paged]
        assert len(kept) == 4 and kept[-1] == "new question", kept
