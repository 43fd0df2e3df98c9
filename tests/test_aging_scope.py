"""Owner-scoped aging and verification keep to the owner by query: the statements they send
carry a bounded number of parameters however many sessions the owner has (PostgreSQL takes at
most 65,535 a statement), and a string is never taken for a list of ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, text

from benchmarks.chatgen import conversation
from optical_memory import MemoryManager
from optical_memory.errors import InvalidInput

START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
LATER = START + timedelta(days=3)
MANY = 3_000  # far more sessions than any statement of a scoped pass may carry parameters


def _widest_statement(mm: MemoryManager, call) -> int:  # type: ignore[no-untyped-def]
    """The most bound parameters any one statement of ``call()`` carried."""
    widest = 0

    def count(_conn, _cursor, _statement, parameters, _context, executemany) -> None:  # type: ignore[no-untyped-def]
        nonlocal widest
        rows = parameters if executemany else [parameters]
        for row in rows:
            widest = max(widest, len(row or ()))

    engine = mm.database.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return widest


def test_owner_scoped_age_and_verify_send_a_bounded_number_of_parameters(db_url: str) -> None:
    with MemoryManager(db_url) as root:
        alice, bob = root.scoped("alice"), root.scoped("bob")
        alice.add_turns("real", conversation(40, START, timedelta(minutes=2)))
        bob.add_turns("bobs", conversation(40, START, timedelta(minutes=2)))
        with root.database.engine.begin() as conn:  # many empty sessions of alice's, raw
            conn.execute(
                text(
                    "INSERT INTO om_sessions (key, owner, created_at, metadata, next_seq, "
                    "paged_until) VALUES (:k, 'alice', :t, '{}', 0, 0)"
                ),
                [{"k": f"empty-{i}", "t": START} for i in range(MANY)],
            )
        reports = []
        widest_age = _widest_statement(alice, lambda: reports.append(alice.age(now=LATER)))
        assert reports[0].errors == [] and reports[0].pages_created >= 1
        assert alice.pages("real") and bob.pages("bobs") == []  # bob's session untouched
        checks = []
        widest_verify = _widest_statement(alice, lambda: checks.append(alice.verify()))
        assert checks[0].ok and checks[0].pages_checked == len(alice.pages("real"))
        # One statement per page or turn batch may carry a row's columns; never one per session.
        assert widest_age < 40 and widest_verify < 10, (widest_age, widest_verify)
        # An explicit list is still honoured within the owner: bob's id is not alice's.
        assert alice.age(now=LATER, sessions=["bobs"]).sessions_visited == 0
        assert alice.verify(sessions=["bobs"]).pages_checked == 0


@pytest.mark.parametrize("call", ["age", "verify"])
def test_a_string_is_one_id_refused_as_a_list_not_its_letters(call: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with MemoryManager(tmp_path / "m.db", owner="alice") as mm:
        mm.add_turns("chat-1", conversation(30, START, timedelta(minutes=2)))
        run = {
            "age": lambda s: mm.age(now=LATER, sessions=s),
            "verify": lambda s: mm.verify(sessions=s),
        }
        with pytest.raises(InvalidInput, match=r"\['chat-1'\]"):
            run[call]("chat-1")
        assert mm.pages("chat-1") == []  # nothing was aged
        assert run[call](["chat-1"]) is not None


def test_a_pass_with_nothing_due_is_one_query_and_no_write(db_url: str) -> None:
    """The "due pages" query: with nothing to do a pass sends one query and writes nothing;
    once the clock makes pages due, the same sessions are found and aged."""
    with MemoryManager(db_url) as mm:
        for k in range(12):
            mm.add_turns(f"s{k}", conversation(30, START, timedelta(minutes=2), seed=k))
        first = mm.age(now=LATER)  # sealed, prepared, moved to base
        assert first.errors == [] and first.pages_moved.get("base") == 12
        sent: list[str] = []

        def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
            sent.append(" ".join(statement.split()[:2]).upper())

        event.listen(mm.database.engine, "before_cursor_execute", record)
        try:
            idle = mm.age(now=LATER + timedelta(hours=1))
        finally:
            event.remove(mm.database.engine, "before_cursor_execute", record)
        assert not idle.changed and idle.sessions_visited == 0
        verbs = [s.split()[0] for s in sent]
        assert verbs.count("SELECT") == 1, sent
        assert not {"INSERT", "UPDATE", "DELETE"} & set(verbs), sent
        assert "BEGIN IMMEDIATE" not in sent, sent  # SQLite: no write transaction opened
        later = mm.age(now=START + timedelta(days=8))  # now due for small
        assert later.sessions_visited == 12 and later.pages_moved == {"small": 12}
