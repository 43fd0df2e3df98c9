"""State that does not grow: the middleware removes archived messages from LangGraph state,
so a thread's checkpoint stays the same size however long it runs; and
``RunnableWithMessageHistory`` users get history and input within the budget."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import RecordingChatModel
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langgraph.checkpoint.sqlite import SqliteSaver

from optical_memory import MemoryManager
from optical_memory.adapters.langchain import (
    OpticalChatMessageHistory,
    OpticalMemoryMiddleware,
    OpticalRunnableWithMessageHistory,
    count_tokens_with_images,
)

T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
TEXT = "The ferry timetable changed again; the 7:40 now leaves from pier four. " * 3


def checkpoint_size(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (blob,) = conn.execute(
            "SELECT checkpoint FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
    return len(blob)


def run(tmp_path: Path, turns: int, *, prune: bool) -> tuple[dict[int, int], MemoryManager]:
    memory = MemoryManager(f"sqlite:///{tmp_path / f'memory-{prune}.db'}")
    model = RecordingChatModel(
        messages=iter(AIMessage(f"Answer {k}: {TEXT}") for k in range(turns)), received=[]
    )
    db = tmp_path / f"checkpoints-{prune}.db"
    conn = sqlite3.connect(db, check_same_thread=False)
    clock = [T0]
    mw = OpticalMemoryMiddleware(
        memory, budget=1500, now=lambda: clock[0], tools=False, prune_state=prune
    )
    agent = create_agent(model, middleware=[mw], checkpointer=SqliteSaver(conn))
    cfg = {"configurable": {"thread_id": "ferry"}}
    sizes = {}
    for k in range(turns):
        agent.invoke({"messages": [HumanMessage(f"Question {k}: {TEXT}")]}, cfg)
        clock[0] += timedelta(minutes=5)
        sizes[k + 1] = checkpoint_size(db)
    if prune:  # only the last exchange is left in state
        state = agent.get_state(cfg).values["messages"]
        last = turns - 1
        assert [m.text for m in state] == [f"Question {last}: {TEXT}", f"Answer {last}: {TEXT}"]
    conn.close()
    return sizes, memory


@pytest.mark.slow
def test_checkpoint_size_stays_flat_over_200_turns(tmp_path: Path) -> None:
    sizes, memory = run(tmp_path, 200, prune=True)
    assert max(sizes[k] for k in range(10, 201)) <= 1.1 * sizes[10] + 200, sizes
    # the archive holds every message once
    turns = memory.turns("ferry")
    assert len(turns) == 400 and turns[0].content == f"Question 0: {TEXT}"


def test_pruned_state_stays_small_and_unpruned_grows(tmp_path: Path) -> None:
    pruned, memory = run(tmp_path, 24, prune=True)
    grown, _ = run(tmp_path, 24, prune=False)
    assert pruned[24] <= 1.1 * pruned[6] + 200
    assert grown[24] > 3 * grown[6]
    assert len(memory.turns("ferry")) == 48  # stored once each, nothing lost


def test_runnable_with_message_history_stays_within_the_budget(sqlite_url: str) -> None:
    memory = MemoryManager(sqlite_url)
    budget = 2000
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are the harbour's assistant."), MessagesPlaceholder("history"),
         ("human", "{question}")]
    )  # fmt: skip

    def chain_with(cls: type[RunnableWithMessageHistory], sid: str) -> RecordingChatModel:
        model = RecordingChatModel(
            messages=iter(AIMessage(f"Answer {k}: {TEXT}") for k in range(40)), received=[]
        )
        chain = cls(
            prompt | model,
            lambda s: OpticalChatMessageHistory(memory, s, budget=budget),
            input_messages_key="question",
            history_messages_key="history",
        )
        for k in range(12):
            chain.invoke(
                {"question": f"Question {k}: {TEXT * 2}"}, {"configurable": {"session_id": sid}}
            )
        return model

    budgeted = chain_with(OpticalRunnableWithMessageHistory, "a")
    for request in budgeted.received:
        assert count_tokens_with_images(request[1:], target="deepseek-ocr") <= budget
    plain = chain_with(RunnableWithMessageHistory, "b")  # the input comes on top of the budget
    assert max(count_tokens_with_images(r[1:]) for r in plain.received) > budget
    assert len(memory.turns("a")) == len(memory.turns("b")) == 24
