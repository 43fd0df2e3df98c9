"""Page images reach the model but never LangGraph state: checkpoints grow with text only.

A ``create_agent`` run with a SQLite checkpointer over 30 turns, aged as it goes. The model
(a recording langchain-core fake) is shown page images; the checkpoint database must hold no
PNG (raw or base64) and its size must track the conversation's text, not the images.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import RecordingChatModel
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver

from optical_memory import AgingPolicy, MemoryManager
from optical_memory.adapters.langchain import OpticalMemoryMiddleware

PNG = b"\x89PNG\r\n\x1a\n"
PNG_B64 = base64.b64encode(PNG)[:10]  # b"iVBORw0KGg"
TURNS = 30
TEXT = "The ferry timetable changed again; the 7:40 now leaves from pier four. " * 4


@tool
def lookup(pier: int) -> str:
    """Look a pier's departures up."""
    return f"pier {pier}: 7:40, 9:10, 12:30"


def replies() -> Iterator[AIMessage]:
    for k in range(TURNS):
        if k % 6 == 3:
            yield AIMessage("", tool_calls=[{"name": "lookup", "args": {"pier": k}, "id": f"c{k}"}])
        yield AIMessage(f"Answer {k}: {TEXT}")


def blobs(db: Path) -> list[bytes]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT checkpoint, metadata FROM checkpoints").fetchall()
        rows += conn.execute("SELECT value, type FROM writes").fetchall()
    return [v if isinstance(v, bytes) else str(v).encode() for r in rows for v in r if v]


def latest_checkpoint_size(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (blob,) = conn.execute(
            "SELECT checkpoint FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
    return len(blob)


@pytest.mark.slow
def test_checkpoints_hold_text_not_page_images(tmp_path: Path) -> None:
    memory = MemoryManager(
        f"sqlite:///{tmp_path / 'memory.db'}", policy=AgingPolicy(keep_last_turns=4, min_fill=0)
    )
    clock_t = [datetime(2025, 5, 1, 8, 0, tzinfo=UTC)]
    model = RecordingChatModel(messages=replies(), received=[])
    db = tmp_path / "checkpoints.db"
    conn = sqlite3.connect(db, check_same_thread=False)
    agent = create_agent(
        model,
        tools=[lookup],
        middleware=[
            OpticalMemoryMiddleware(memory, budget=2000, now=lambda: clock_t[0], prune_state=False)
        ],
        checkpointer=SqliteSaver(conn),
    )
    cfg = {"configurable": {"thread_id": "ferry"}}
    sizes: dict[int, tuple[int, int]] = {}  # turn -> (checkpoint bytes, text chars in state)
    image_bytes_shown = 0
    for k in range(TURNS):
        agent.invoke({"messages": [HumanMessage(f"Question {k}: {TEXT}")]}, cfg)
        clock_t[0] += timedelta(hours=2)
        if k % 6 == 5:
            memory.age(now=clock_t[0])
        state = agent.get_state(cfg).values["messages"]
        sizes[k + 1] = (latest_checkpoint_size(db), sum(len(m.text) for m in state))
        for m in model.received[-1]:
            if isinstance(m.content, list):
                image_bytes_shown += sum(
                    len(b["base64"]) for b in m.content if b.get("type") == "image"
                )

    # the model was shown pages, and many more image bytes than the checkpoint holds
    assert image_bytes_shown > 4 * sizes[TURNS][0]
    assert memory.pages("ferry")

    # no PNG in any checkpoint or pending write, raw or base64
    for blob in blobs(db):
        assert PNG not in blob
        assert PNG_B64 not in blob

    # state holds exactly the conversation; the archive holds it once
    state = agent.get_state(cfg).values["messages"]
    assert [t.content for t in memory.turns("ferry")] == [m.text for m in state]
    conn.close()

    # the checkpoint grows with text: bytes per text character stay about constant
    ratios = [size / chars for size, chars in sizes.values() if chars > 5000]
    assert max(ratios) < 1.3 * min(ratios), ratios
    size30, chars30 = sizes[TURNS]
    assert size30 < 2.5 * chars30 + 5_000
