"""add_turn's round trips: PostgreSQL sends one statement (the session's seq reserved and the
turn inserted by one data-modifying CTE), SQLite its two built statements on the driver's own
cursor; the turns come back exactly, numbered in order, in their owner's namespace, and stored
as the same bytes as the many-turn path (SQLAlchemy Core) stores them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, text

from optical_memory import MemoryManager
from optical_memory.errors import ContentTooLarge

_SKIP = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA", "SET", "SHOW", "SAVEPOINT", "RELEASE")


def _statements(mm: MemoryManager, fn) -> list[str]:  # type: ignore[no-untyped-def]
    sent: list[str] = []

    def record(_c, _cur, statement, _p, _ctx, _many) -> None:  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(_SKIP):
            sent.append(statement)

    event.listen(mm.database.engine, "before_cursor_execute", record)
    try:
        fn()
    finally:
        event.remove(mm.database.engine, "before_cursor_execute", record)
    return sent


def test_add_turn_round_trips_and_numbering(mm: MemoryManager) -> None:
    at = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    sent = _statements(mm, lambda: mm.add_turn("s", "user", "first\x00 東京", at=at))
    # PostgreSQL: one statement through SQLAlchemy; SQLite: none (both go to the driver).
    assert len(sent) == (1 if mm.database.dialect == "postgresql" else 0)
    mm.add_turns("s", [("assistant", "second"), ("user", "third")])  # the many-turn path
    t4 = mm.add_turn("s", "tool", "fourth", metadata={"tool_call_id": "c1", "name": "f"})
    other = mm.scoped("bob").add_turn("s", "user", "bob's first")
    assert [t.seq for t in mm.turns("s")] == [1, 2, 3, 4]
    first = mm.turns("s")[0]
    assert (first.content, first.at, first.role) == ("first\x00 東京", at, "user")
    assert t4 == mm.turns("s")[3] and t4.metadata == {"tool_call_id": "c1", "name": "f"}
    assert other.seq == 1 and [t.content for t in mm.scoped("bob").turns("s")] == ["bob's first"]
    assert [r.turn.seq for r in mm.recall("s", "東京")] == [1]


def test_rejected_turn_writes_nothing(mm: MemoryManager) -> None:
    mm.add_turn("s", "user", "kept")
    with pytest.raises(ContentTooLarge):
        mm.add_turn("s", "user", "x" * (mm.max_content_bytes + 1))
    assert mm.add_turn("s", "assistant", "next").seq == 2
    assert [t.content for t in mm.turns("s")] == ["kept", "next"]


def test_one_turn_stored_as_the_many_turn_path_stores_it(mm: MemoryManager) -> None:
    at = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    meta = {"name": "Zoë", "tool_calls": [{"id": "c1", "args": {"x": [1, 2.5, None]}}]}
    content = "nul\x00 and 東京 and émoji 🙂"
    mm.add_turn("one", "assistant", content, at=at, metadata=meta)
    mm.add_turns("many", [{"role": "assistant", "content": content, "at": at, "metadata": meta}])
    with mm.database.engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT s.key, t.seq, t.role, t.content, t.at, t.tokens, "
                "CAST(t.metadata AS TEXT), t.search_text FROM om_turns t "
                "JOIN om_sessions s ON s.id = t.session_id ORDER BY s.key"
            )
        ).all()
    assert [r[0] for r in stored] == ["many", "one"]
    assert tuple(stored[0])[1:] == tuple(stored[1])[1:]
    assert mm.turns("one")[0].metadata == meta and mm.turns("one")[0].content == content
