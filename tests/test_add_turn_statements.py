"""add_turn's round trips: PostgreSQL sends one statement (the session's seq reserved and the
turn inserted by one data-modifying CTE), SQLite its two built statements on the driver's own
cursor; the turns come back exactly, numbered in order, in their owner's namespace, and stored
as the same bytes as the many-turn path (SQLAlchemy Core) stores them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, text

from optical_memory import MemoryManager
from optical_memory.errors import ContentTooLarge, SessionChanged, UnknownSession

_SKIP = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA", "SET", "SHOW", "SAVEPOINT", "RELEASE")


def _sent(mm: MemoryManager, fn) -> list[tuple[str, bool]]:  # type: ignore[no-untyped-def]
    """Each statement ``fn`` sends (not transaction control), and whether it ran outside a
    transaction (PostgreSQL: on a connection in autocommit, so no BEGIN or COMMIT round trip
    was sent for it)."""
    sent: list[tuple[str, bool]] = []

    def record(conn, _cur, statement, _p, _ctx, _many) -> None:  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(_SKIP):
            raw = conn.connection.dbapi_connection
            if conn.dialect.name == "postgresql":  # psycopg sends BEGIN unless in autocommit
                outside = raw.autocommit
            else:  # sqlite3 reports the transaction the store's own BEGIN opened
                outside = not raw.in_transaction
            sent.append((statement, outside))

    event.listen(mm.database.engine, "before_cursor_execute", record)
    try:
        fn()
    finally:
        event.remove(mm.database.engine, "before_cursor_execute", record)
    return sent


def _statements(mm: MemoryManager, fn) -> list[str]:  # type: ignore[no-untyped-def]
    return [statement for statement, _ in _sent(mm, fn)]


def _transactions(mm: MemoryManager, fn) -> list[tuple[str, bool]]:  # type: ignore[no-untyped-def]
    """Each statement's first word, and whether it ran outside a transaction."""
    return [(statement.split()[0].upper(), outside) for statement, outside in _sent(mm, fn)]


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


@pytest.mark.postgres
def test_on_postgresql_one_plain_turn_is_one_round_trip_outside_a_transaction(
    pg_url: str,
) -> None:
    mm = MemoryManager(pg_url)
    try:
        assert _transactions(mm, lambda: mm.add_turn("s", "user", "hello")) == [("WITH", True)]
        # Several turns, or a turn with images, are several statements: one transaction.
        many = _transactions(mm, lambda: mm.add_turns("s", [("user", "a"), ("assistant", "b")]))
        assert many and not any(outside for _, outside in many)
        assert [t.content for t in mm.turns("s")] == ["hello", "a", "b"]
    finally:
        mm.close()


def test_turns_is_one_statement_that_tells_a_missing_session_from_an_empty_tail(
    mm: MemoryManager,
) -> None:
    mm.add_turns("s", [("user", "one"), ("assistant", "two")])
    sent = _transactions(mm, lambda: mm.turns("s", since=1))
    assert sent == [("SELECT", True)]  # the session and its turns, outside a transaction
    assert [t.content for t in mm.turns("s", since=1)] == ["two"]
    assert mm.turns("s", since=2) == [] and mm.turns("s", since=0, limit=1)[0].content == "one"
    assert mm.turns("s", limit=0) == []
    with pytest.raises(UnknownSession):
        mm.turns("missing")
    with pytest.raises(UnknownSession):
        mm.turns("missing", limit=0)
    with pytest.raises(UnknownSession):  # another owner's session of the same id
        mm.scoped("bob").turns("s")
    mm.add_turn("s", "user", "with a picture", attachments=[_png()])
    pictured = mm.turns("s")[-1]
    assert pictured.attachments[0].data == _png() and len(mm.turns("s")) == 3


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_assembling_a_young_session_reads_only_what_it_has(mm: MemoryManager) -> None:
    """No turn paged yet: the pages are not read; no pin: the pins are not read. A pin brings
    its reads back. (Sessions with pages: every assembly test over an aged session.)"""
    mm.add_turns("s", [("user", "question 0"), ("assistant", "answer 0")])
    mm.add_turns("s", [("user", "my code is 4417"), ("assistant", "noted")])

    def reads() -> list[str]:
        sent = _statements(mm, lambda: mm.assemble("s", budget=4000))
        return [" ".join(q.split()[:6]) for q in sent]

    young = reads()
    assert len(young) == 2 and "om_sessions" in young[0] and "om_turns" in young[1]
    mm.pin("s", 3)
    assert len(reads()) == 3  # the pins (shown in the recent text: not read again)
    shown = [getattr(seg, "turn", None) for seg in mm.assemble("s", budget=4000).segments]
    assert [t.content for t in shown if t is not None][2] == "my code is 4417"


def test_a_session_read_again_takes_one_read_of_its_recent_turns_and_the_same_prompt(
    db_url: str,
) -> None:
    """The first assembly reads recent turns in growing batches; the manager remembers how
    many it needed, so the next reads them at once. The prompt never depends on it."""
    with MemoryManager(db_url) as mm, MemoryManager(db_url) as fresh:
        mm.add_turns(
            "s", [("user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(300)]
        )

        def turn_reads(m: MemoryManager) -> int:
            sent = _statements(m, lambda: m.assemble("s", budget=4000))
            return sum(1 for q in sent if "FROM om_turns" in q)

        assert turn_reads(mm) >= 2  # 64, then 128, then 256 turns
        assert turn_reads(mm) == 1
        mm.add_turns("s", [("user", f"more {i}") for i in range(200)])  # the hint is short now
        assert turn_reads(mm) >= 2 and turn_reads(mm) == 1
        for budget in (300, 4000, 40_000):
            assert (
                mm.assemble("s", budget=budget).fingerprint()
                == fresh.assemble("s", budget=budget).fingerprint()
            )


@pytest.mark.postgres
def test_a_bulk_add_refreshes_postgresqls_planner_statistics(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table just filled looks empty to PostgreSQL's planner until autovacuum reaches it; a
    call that adds ANALYZE_AFTER_TURNS turns or more analyzes it before the first read (the
    threshold lowered here). A smaller call leaves it to autovacuum."""
    import optical_memory.manager as manager_module

    monkeypatch.setattr(manager_module, "ANALYZE_AFTER_TURNS", 50)

    def estimated_rows(mm: MemoryManager) -> float:
        with mm.database.engine.connect() as conn:
            return conn.execute(
                text("SELECT reltuples FROM pg_class WHERE relname = 'om_turns'")
            ).scalar_one()

    with MemoryManager(pg_url) as mm:
        mm.add_turns("small", [("user", f"turn {i}") for i in range(10)])
        assert estimated_rows(mm) < 0  # never analyzed yet
        mm.add_sessions({"a": [("user", f"a {i}") for i in range(30)], "b": [("user", "b")] * 30})
        assert estimated_rows(mm) == 70


def test_a_conditional_add_turn_is_still_one_statement_on_postgresql(mm: MemoryManager) -> None:
    """The adapters record with ``expected_last_turn``: on PostgreSQL the check is a compare-
    and-swap inside the same one statement, outside a transaction; only a failed check costs
    a transaction (which raises, or finds the session's last turns were only withdrawn)."""
    pg = mm.database.dialect == "postgresql"
    first = _transactions(mm, lambda: mm.add_turn("s", "user", "a", expected_last_turn=0))
    later = _transactions(mm, lambda: mm.add_turn("s", "assistant", "b", expected_last_turn=1))
    if pg:
        assert first == later == [("WITH", True)]  # one statement each, no BEGIN
    else:
        assert all(not outside for _, outside in first + later)  # in the write transaction
    with pytest.raises(SessionChanged):
        mm.add_turn("s", "user", "stale", expected_last_turn=1)
    mm.replace_turns("s", 2, [])  # "b" withdrawn: the counter is 2, the newest live turn 1
    sent = _transactions(mm, lambda: mm.add_turn("s", "user", "c", expected_last_turn=1))
    if pg:  # the swap finds 2, not 1: then the check in a transaction, which passes
        assert sent[0] == ("WITH", True) and all(not outside for _, outside in sent[1:])
    assert [(t.seq, t.content) for t in mm.turns("s")] == [(1, "a"), (3, "c")]
