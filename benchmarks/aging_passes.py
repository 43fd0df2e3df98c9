"""Two aging processes on one database at once, against one alone: what each draws, how much
of that the version check throws away, and the CPU they spend.

    python -m benchmarks.aging_passes --pg-url postgresql://postgres@127.0.0.1:5432/test
    python -m benchmarks.aging_passes --sqlite                # one SQLite file instead
    python -m benchmarks.aging_passes --sessions 4 --turns 200 --pg-url ...   # quicker

Makes a scratch database on the server (or a SQLite file), with ``--sessions`` sessions of ``--turns`` turns of
varied chat (``benchmarks.chatgen``) under two owners, the same turns under each. One process
ages the first owner's sessions alone (a pass 40 days later: every page drawn to tiny); then two
processes, started together, each run that pass over the second owner's. Reported: pages moved,
pages skipped (a drawing thrown away: another process committed that page first), sessions
left to the other process (``sessions_busy``), each process's CPU and the wall time, and the
ratios of the pair's CPU and wall time to the one process alone. Service workers each run
such passes (``--age-every``), so the pair's CPU is what they take from the requests.
A measurement of one machine at one time, never an assertion.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.chatgen import conversation
from benchmarks.scratch import scratch_pg_database
from optical_memory import AgingPolicy, MemoryManager

START = datetime(2025, 3, 1, tzinfo=UTC)
POLICY = AgingPolicy(keep_last_turns=4, min_fill=0)


def _age(url: str, owner: str, now: datetime, go: Any, out: Any) -> None:
    """One aging process: a pass over ``owner``'s sessions once ``go`` is set."""
    with MemoryManager(url, policy=POLICY) as mm:
        mine = mm.scoped(owner)
        mine.sessions()  # connected and migrated before the start
        go.wait(120)
        cpu, wall = time.process_time(), time.perf_counter()
        report = mine.age(now=now)
        out.put(
            {
                "cpu": time.process_time() - cpu,
                "wall": time.perf_counter() - wall,
                "moved": sum(report.pages_moved.values()),
                "created": report.pages_created,
                "skipped": report.pages_skipped,
                "busy": getattr(report, "sessions_busy", 0),  # (absent before claims: an A/B)
                "errors": report.errors[:3],
            }
        )


def _run(url: str, owner: str, now: datetime, processes: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_age, args=(url, owner, now, go, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # every process imported and connected
    go.set()
    results = [out.get(timeout=1200) for _ in procs]
    for p in procs:
        p.join(60)
    return results


@contextmanager
def _scratch(pg_url: str | None) -> Iterator[str]:
    """A new, empty database: on the PostgreSQL server, else a SQLite file."""
    if pg_url is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'passes.db'}"
        return
    with scratch_pg_database(pg_url, "om_bench_passes") as url:
        yield url


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pg-url", default=os.environ.get("OPTICAL_MEMORY_TEST_PG_URL"))
    ap.add_argument("--sqlite", action="store_true", help="a SQLite file, not PostgreSQL")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--turns", type=int, default=400)
    args = ap.parse_args(argv)
    if not args.pg_url and not args.sqlite:
        ap.error("needs --sqlite, or a PostgreSQL server: --pg-url or $OPTICAL_MEMORY_TEST_PG_URL")
    with _scratch(None if args.sqlite else args.pg_url) as url:
        with MemoryManager(url, policy=POLICY) as mm:
            for i in range(args.sessions):
                turns = conversation(args.turns, START, timedelta(minutes=2), seed=100 + i)
                for owner in ("alone", "pair"):
                    mm.scoped(owner).add_turns(f"s{i}", turns)
        now = START + timedelta(days=40)
        (alone,) = _run(url, "alone", now, 1)
        pair = _run(url, "pair", now, 2)
    for label, rs in (("one process", [alone]), ("two processes", pair)):
        for r in rs:
            print(
                f"{label}: created {r['created']} pages, moved {r['moved']}, skipped {r['skipped']} (drawn for nothing), "
                f"left {r['busy']} sessions to the other; CPU {r['cpu']:.2f} s, wall "
                f"{r['wall']:.2f} s; errors {r['errors']}"
            )
    cpu = sum(r["cpu"] for r in pair)
    wall = max(r["wall"] for r in pair)
    print(
        f"{args.sessions} sessions x {args.turns} turns: the pair moved "
        f"{sum(r['moved'] for r in pair)} pages (alone {alone['moved']}), threw away "
        f"{sum(r['skipped'] for r in pair)} drawings; CPU {cpu:.2f} s against {alone['cpu']:.2f} s "
        f"alone ({cpu / alone['cpu']:.2f}x), wall {wall:.2f} s against {alone['wall']:.2f} s "
        f"({wall / alone['wall']:.2f}x)"
    )


if __name__ == "__main__":
    main()
