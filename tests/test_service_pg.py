"""Several service processes on one PostgreSQL: ``optical-memory serve --workers 2`` (two
uvicorn worker processes), aging passes requested from both at once, and every page is aged
exactly once (the workers' reports add up to the pages in the store and to their versions)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

pytest.importorskip("fastapi")

from benchmarks.service import ServiceProcess  # noqa: E402
from optical_memory import MemoryManager  # noqa: E402
from optical_memory.adapters.service import create_key  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SESSIONS = ["harbour-1", "harbour-2", "harbour-3"]


def _concurrent_passes(url: str, key: str, now: datetime, n: int = 6) -> list[dict[str, Any]]:
    """``n`` aging passes at ``now`` requested at the same moment, each on its own connection."""
    reports: list[dict[str, Any]] = []
    gate = threading.Barrier(n)

    def one() -> None:
        with httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=120
        ) as c:
            gate.wait()
            r = c.post("/v1/age", json={"now": now.isoformat()})
            r.raise_for_status()
            reports.append(r.json())

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reports


def test_two_worker_processes_on_one_postgres_age_every_page_once(pg_url: str) -> None:
    with MemoryManager(pg_url) as mm:
        key, _ = create_key(mm, "ops")
        ops = mm.scoped("ops")
        for sid in SESSIONS:
            ops.add_turns(
                sid,
                [
                    (
                        "user" if i % 2 == 0 else "assistant",
                        f"{sid} turn {i}: the tide table says {i % 7} metres at {i % 12} o'clock. "
                        * 4,
                        T0 + timedelta(minutes=3 * i),
                    )
                    for i in range(48)
                ],
            )
    reports: list[dict[str, Any]] = []
    with ServiceProcess(pg_url, "--workers", "2", "--age-every", "0") as svc:
        for later in (timedelta(hours=3), timedelta(days=2), timedelta(days=9), timedelta(days=40)):
            reports += _concurrent_passes(svc.url, key, T0 + later)
        pids = {r["pid"] for r in reports}
        for _ in range(20):  # the kernel spreads connections over the workers; make sure
            if len(pids) >= 2:
                break
            pids |= {r["pid"] for r in _concurrent_passes(svc.url, key, T0 + timedelta(days=41))}
    assert len(pids) == 2, "both worker processes should have run passes"
    assert all(r["errors"] == [] for r in reports), [r["errors"] for r in reports]

    with MemoryManager(pg_url) as mm, mm.database.engine.connect() as conn:
        pages = conn.execute(
            text(
                "SELECT p.id, s.key, p.first_seq, p.last_seq, p.tier, p.version, s.paged_until "
                "FROM om_pages p JOIN om_sessions s ON s.id = p.session_id "
                "ORDER BY s.key, p.first_seq"
            )
        ).all()
    created = sum(r["pages_created"] for r in reports)
    merges = sum(r["merges"] for r in reports)
    merged = sum(r["pages_merged"] for r in reports)
    moves = sum(sum(r["pages_moved"].values()) for r in reports)
    steps = moves + sum(r["pages_prepared"] for r in reports)
    opened = sum(r["pages_opened"] for r in reports)
    # Exactly once: sealed pages, less what merges replaced, are the pages in the store, and
    # every version step of a page is one move or preparation some worker reported.
    assert pages and created + merges - merged == len(pages)
    versions = sum(p.version - 1 for p in pages)
    assert versions <= steps <= versions + 3 * merged + opened
    assert {p.tier for p in pages} == {"tiny"}
    for sid in SESSIONS:  # pages tile each session's paged turns: no overlap, no gap
        mine = [p for p in pages if p.key == sid]
        assert mine and [p.first_seq for p in mine] == [1] + [p.last_seq + 1 for p in mine[:-1]]
        assert mine[-1].last_seq == mine[-1].paged_until
