"""Aging passes on one database take sessions in turn: a session another pass is aging is left
to it, so no page is drawn twice (the version check alone made each change commit once, but
both passes drew it). PostgreSQL claims with advisory locks, SQLite with lease rows."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from optical_memory import AgingPolicy, MemoryManager
from optical_memory.aging import AgingReport
from optical_memory.claims import CLAIM_NAMESPACE, claim_key

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
LATER = T0 + timedelta(days=40)  # every page due for tiny
SESSIONS = [f"s{i}" for i in range(6)]
POLICY = AgingPolicy(keep_last_turns=4, min_fill=0)


def _history(sid: str) -> list[tuple[str, str, datetime]]:
    return [
        (
            "user" if i % 2 == 0 else "assistant",
            f"{sid} turn {i}: the ferry leaves pier {i % 9} at {i % 12} o'clock. " * 5,
            T0 + timedelta(minutes=3 * i),
        )
        for i in range(60)
    ]


def _row_id(mm: MemoryManager, sid: str) -> int:
    with mm.database.engine.connect() as conn:
        return int(
            conn.execute(text("SELECT id FROM om_sessions WHERE key = :k"), {"k": sid}).scalar_one()
        )


@contextmanager
def _held_elsewhere(mm: MemoryManager, other: MemoryManager, sid: str) -> Iterator[None]:
    """Another process's pass, in the middle of aging ``sid``: its claim, taken as that
    pass takes it (an advisory lock on its own connection; a live lease row)."""
    row = _row_id(mm, sid)
    if mm.database.dialect == "postgresql":
        key = {"ns": CLAIM_NAMESPACE, "key": claim_key(row)}
        with other.database.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"), key).scalar()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), key)
        return
    lease = {"s": row, "until": int(time.time()) + 600}
    with other.database.engine.begin() as conn:
        conn.execute(text("INSERT INTO om_aging_claims VALUES (:s, 'another pass', :until)"), lease)
    try:
        yield
    finally:
        with other.database.engine.begin() as conn:
            conn.execute(text("DELETE FROM om_aging_claims WHERE session_id = :s"), lease)


def _claims_left(mm: MemoryManager) -> int:
    """Claims still held: leases in the table, or sessions whose advisory lock is taken."""
    with mm.database.engine.connect() as conn:
        if mm.database.dialect != "postgresql":
            return int(conn.execute(text("SELECT count(*) FROM om_aging_claims")).scalar_one())
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"ns": CLAIM_NAMESPACE},
            ).scalar_one()
        )


def test_a_session_another_pass_is_aging_is_left_to_that_pass(db_url: str) -> None:
    with MemoryManager(db_url, policy=POLICY) as mm, MemoryManager(db_url) as other:
        for sid in ("held", "free"):
            mm.add_turns(sid, _history(sid))
        with _held_elsewhere(mm, other, "held"):
            report = mm.age(now=LATER)
            assert report.errors == [] and report.sessions_busy == 1
            assert mm.pages("held") == [] and mm.pages("free")
        report = mm.age(now=LATER)  # the other pass let go of it: this one ages it
        assert report.sessions_busy == 0 and report.pages_created > 0
        assert {p.tier for p in mm.pages("held")} == {"tiny"}
        assert _claims_left(mm) == 0  # the pass let go of every session it held


def _dead_pid() -> int:
    """The process id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("left_by", ["expired", "killed"])
def test_a_lease_left_behind_is_taken_over(sqlite_url: str, left_by: str) -> None:
    """SQLite: a pass killed mid-session leaves its lease row. The next pass on its host
    takes it over at once (its process is gone); any other lease, once its time is over."""
    if left_by == "expired":
        holder, until = "another-host:1:0", int(time.time()) - 1
    else:
        holder, until = f"{socket.gethostname()[:24]}:{_dead_pid()}:0", int(time.time()) + 600
    with MemoryManager(sqlite_url, policy=POLICY) as mm:
        mm.add_turns("s", _history("s"))
        with mm.database.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO om_aging_claims VALUES (:s, :holder, :until)"),
                {"s": _row_id(mm, "s"), "holder": holder, "until": until},
            )
        report = mm.age(now=LATER)
        assert report.sessions_busy == 0 and report.pages_created > 0 and not report.errors
        assert _claims_left(mm) == 0


def test_a_live_lease_of_another_host_is_left_until_it_ends(sqlite_url: str) -> None:
    with MemoryManager(sqlite_url, policy=POLICY) as mm:
        mm.add_turns("s", _history("s"))
        with mm.database.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO om_aging_claims VALUES (:s, 'another-host:1:0', :until)"),
                {"s": _row_id(mm, "s"), "until": int(time.time()) + 600},
            )
        report = mm.age(now=LATER)
        assert report.sessions_busy == 1 and mm.pages("s") == []


def test_two_passes_at_once_draw_every_page_once(db_url: str) -> None:
    """Two managers (their own connections, as two processes) pass over the same due sessions
    at the same moment: each session is aged by one of them, no drawing is lost to the
    version check (``pages_skipped``), and the pages come out as one pass alone makes them
    (the same sessions under another owner, aged by a single pass)."""
    with MemoryManager(db_url, policy=POLICY) as mm:
        for owner in ("pair", "alone"):
            for sid in SESSIONS:
                mm.scoped(owner).add_turns(sid, _history(sid))
    managers = [MemoryManager(db_url, policy=POLICY) for _ in range(3)]
    reports: list[AgingReport] = []
    start = threading.Barrier(2)

    def age(m: MemoryManager) -> None:
        start.wait()
        reports.append(m.scoped("pair").age(now=LATER))

    try:
        threads = [threading.Thread(target=age, args=(m,)) for m in managers[:2]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        alone = managers[2].scoped("alone").age(now=LATER)
        pair, ref = managers[2].scoped("pair"), managers[2].scoped("alone")
        assert len(reports) == 2 and all(r.errors == [] for r in reports) and not alone.errors
        assert sum(r.pages_skipped for r in reports) == 0
        # Each pass found all six due; what one was aging the other left to it.
        assert sum(r.sessions_visited + r.sessions_busy for r in reports) == 2 * len(SESSIONS)
        for sid in SESSIONS:
            shape = [(p.first_seq, p.last_seq, p.tier) for p in pair.pages(sid)]
            assert shape and shape == [(p.first_seq, p.last_seq, p.tier) for p in ref.pages(sid)]
        for field in ("pages_created", "merges", "pages_merged", "pages_prepared"):
            assert sum(getattr(r, field) for r in reports) == getattr(alone, field), field
        assert sum(sum(r.pages_moved.values()) for r in reports) == sum(alone.pages_moved.values())
    finally:
        for m in managers:
            m.close()
