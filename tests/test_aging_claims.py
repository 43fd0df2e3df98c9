"""Aging passes on one PostgreSQL take sessions in turn: a session another pass is aging is
left to it, so no page is drawn twice (the version check alone made each change commit once,
but both passes drew it)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from optical_memory import AgingPolicy, MemoryManager
from optical_memory.aging import AgingReport
from optical_memory.claims import CLAIM_NAMESPACE, claim_key

pytestmark = pytest.mark.postgres

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


def test_a_session_another_pass_is_aging_is_left_to_that_pass(pg_url: str) -> None:
    with MemoryManager(pg_url, policy=POLICY) as mm, MemoryManager(pg_url) as other:
        for sid in ("held", "free"):
            mm.add_turns(sid, _history(sid))
        key = {"ns": CLAIM_NAMESPACE, "key": claim_key(_row_id(mm, "held"))}
        # Another process's pass, in the middle of aging "held": it holds the session's claim.
        with other.database.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"), key).scalar_one()
            try:
                report = mm.age(now=LATER)
                assert report.errors == [] and report.sessions_busy == 1
                assert mm.pages("held") == [] and mm.pages("free")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), key)
        report = mm.age(now=LATER)  # the other pass let go of it: this one ages it
        assert report.sessions_busy == 0 and report.pages_created > 0
        assert {p.tier for p in mm.pages("held")} == {"tiny"}
        # The pass let go of every session it held: another connection can take them all.
        with other.database.engine.connect() as conn:
            for sid in ("held", "free"):
                mine = {"ns": CLAIM_NAMESPACE, "key": claim_key(_row_id(mm, sid))}
                assert conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"), mine).scalar()
                conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), mine)


def test_two_passes_at_once_draw_every_page_once(pg_url: str) -> None:
    """Two managers (their own connections, as two processes) pass over the same due sessions
    at the same moment: each session is aged by one of them, no drawing is lost to the
    version check (``pages_skipped``), and the pages come out as one pass alone makes them
    (the same sessions under another owner, aged by a single pass)."""
    with MemoryManager(pg_url, policy=POLICY) as mm:
        for owner in ("pair", "alone"):
            for sid in SESSIONS:
                mm.scoped(owner).add_turns(sid, _history(sid))
    managers = [MemoryManager(pg_url, policy=POLICY) for _ in range(3)]
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
