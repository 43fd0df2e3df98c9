"""Concurrency: threads and processes writing the same sessions lose nothing and duplicate
nothing; concurrent aging workers on PostgreSQL age every page exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from workers.writer import content

from optical_memory import MemoryManager

WORKERS = Path(__file__).parent / "workers"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SESSIONS = ["shared-1", "shared-2", "shared-3"]


def _spawn(script: str, *args: object) -> subprocess.Popen:  # type: ignore[type-arg]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(  # the workers, and tests/ for `helpers`
            filter(None, [str(WORKERS), str(WORKERS.parent), os.environ.get("PYTHONPATH")])
        ),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKERS / script), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_ready(procs: list[subprocess.Popen]) -> None:  # type: ignore[type-arg]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            p.kill()
            raise AssertionError(
                f"worker failed to start: {line!r} {p.stderr.read() if p.stderr else ''}"
            )


def _go(procs: list[subprocess.Popen]) -> None:  # type: ignore[type-arg]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def _finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[dict]:  # type: ignore[type-arg]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"worker failed ({p.returncode}):\n{out}\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _thread_writer(mm: MemoryManager, writer: str, n: int, out: dict, errors: list) -> None:  # type: ignore[type-arg]
    wrote: dict[str, list[list[int]]] = {s: [] for s in SESSIONS}
    i = call = 0
    while i < n:
        sid = SESSIONS[call % len(SESSIONS)]
        at = T0 + timedelta(seconds=i)
        try:
            if call % 3 == 2 and i + 1 < n:
                turns = mm.add_turns(
                    sid,
                    [("user", content(writer, i), at), ("assistant", content(writer, i + 1), at)],
                )
            else:
                turns = [mm.add_turn(sid, "user", content(writer, i), at)]
            wrote[sid].extend([i + k, t.seq, len(turns)] for k, t in enumerate(turns))
            i += len(turns)
        except Exception as exc:  # must never happen: recorded and asserted on
            errors.append(f"{writer}: {type(exc).__name__}: {exc}")
            i += 1
        call += 1
    out[writer] = wrote


def _check_sessions(
    mm: MemoryManager, reports: dict[str, dict[str, list[list[int]]]], n: int
) -> None:
    """Every turn exactly once, seqs 1..N gapless, each writer's turns in its own order, each
    batch contiguous, and what each caller was told matches what was stored."""
    expected = Counter()
    for writer, wrote in reports.items():
        for sid, pairs in wrote.items():
            for i, seq, _ in pairs:
                expected[(sid, content(writer, i), seq)] += 1
        assert sum(len(v) for v in wrote.values()) == n, f"{writer} lost turns"
    stored = Counter()
    for sid in SESSIONS:
        turns = mm.turns(sid)
        assert [t.seq for t in turns] == list(range(1, len(turns) + 1)), f"{sid}: gap or duplicate"
        info = next(s for s in mm.sessions() if s.session_id == sid)
        assert info.turns == len(turns)
        for t in turns:
            stored[(sid, t.content, t.seq)] += 1
    assert stored == expected, "stored turns differ from what the writers were told"
    assert all(v == 1 for v in stored.values())
    for wrote in reports.values():
        for pairs in wrote.values():
            seqs = [seq for _, seq, _ in pairs]
            assert seqs == sorted(seqs), "a writer's turns are out of its own order"
    # The two turns of one add_turns call got consecutive seqs.
    batches = 0
    for wrote in reports.values():
        for pairs in wrote.values():
            k = 0
            while k < len(pairs):
                if pairs[k][2] == 2:
                    assert pairs[k + 1][0] == pairs[k][0] + 1
                    assert pairs[k + 1][1] == pairs[k][1] + 1, "a batch was interleaved"
                    batches += 1
                    k += 2
                else:
                    k += 1
    assert batches > 0


@pytest.mark.slow
def test_threads_and_processes_share_one_sqlite_file(sqlite_url: str) -> None:
    n = 45
    procs = [_spawn("writer.py", sqlite_url, f"p{k}", n, ",".join(SESSIONS), 0) for k in range(4)]
    try:
        # The processes race to create and migrate the fresh file; so does this one.
        with MemoryManager(sqlite_url) as shared:
            _wait_ready(procs)
            own = [MemoryManager(sqlite_url) for _ in range(4)]
            out: dict[str, dict] = {}  # type: ignore[type-arg]
            errors: list[str] = []
            threads = [
                threading.Thread(
                    target=_thread_writer,
                    args=(shared if k < 4 else own[k - 4], f"t{k}", n, out, errors),
                )
                for k in range(8)
            ]
            _go(procs)
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads)
            results = _finish(procs)
            for m in own:
                m.close()
            assert errors == [], errors
            for r in results:
                assert r["errors"] == []
                out[r["writer"]] = r["wrote"]
            assert len(out) == 12
            _check_sessions(shared, out, n)
            assert sum(len(shared.turns(s)) for s in SESSIONS) == 12 * n
            with shared.database.engine.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_postgres_writers_and_two_agers_age_every_page_once(pg_url: str, tmp_path: Path) -> None:
    n = 60
    stop = tmp_path / "stop"
    with MemoryManager(pg_url) as mm:  # create the schema first: the agers start reading at once
        pass
    writers = [_spawn("writer.py", pg_url, f"p{k}", n, ",".join(SESSIONS), 0.01) for k in range(4)]
    agers = [_spawn("ager.py", pg_url, stop) for _ in range(2)]
    procs = writers + agers
    try:
        _wait_ready(procs)
        _go(agers)
        _go(writers)
        written = _finish(writers)
        stop.touch()
        aged = _finish(agers, timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r in written + aged:
        assert r["errors"] == [], r["errors"]

    with MemoryManager(pg_url) as mm:
        _check_sessions(mm, {r["writer"]: r["wrote"] for r in written}, n)
        with mm.database.engine.connect() as conn:
            pages = conn.execute(
                text(
                    "SELECT p.id, s.key, p.first_seq, p.last_seq, p.tier, p.version, s.paged_until, "
                    "s.next_seq FROM om_pages p JOIN om_sessions s ON s.id = p.session_id "
                    "ORDER BY s.key, p.first_seq"
                )
            ).all()
            tokens = Counter(
                r[0] for r in conn.execute(text("SELECT page_id FROM om_visual_tokens"))
            )
            renditions = conn.execute(text("SELECT COUNT(*) FROM om_page_renditions")).scalar_one()
        moves = sum(r["moved"] for r in aged)
        created = sum(r["created"] for r in aged)
        merges = sum(r["merges"] for r in aged)
        merged = sum(r["merged"] for r in aged)
        steps = moves + sum(r["prepared"] for r in aged)
        # Exactly once: the workers' reports add up to the pages in the store (packing seals
        # pages, each merge replaces several with one) and to their versions: each move, merge
        # and preparation is one version step, and the steps of a page merged away (at most 3)
        # or of an open page replaced (at most 1) went with it.
        assert created + merges - merged == len(pages)
        versions = sum(p.version - 1 for p in pages)
        assert versions <= steps <= versions + 3 * merged + sum(r["opened"] for r in aged)
        assert moves > len(pages), "pages should have faded more than once on average"
        assert all(p.tier == "tiny" for p in pages)
        assert all(2 <= p.version <= 4 for p in pages)  # at most text→large→base/small→tiny
        assert renditions == 0  # tiny is the faintest: nothing fainter to keep
        assert tokens == Counter({p.id: 1 for p in pages}), "visual tokens missing or duplicated"
        # Pages tile each session's paged turns: no duplicates, no overlaps, no gaps.
        for sid in SESSIONS:
            mine = [p for p in pages if p.key == sid]
            assert mine, f"{sid} has no pages"
            assert [p.first_seq for p in mine] == [1] + [p.last_seq + 1 for p in mine[:-1]]
            assert mine[-1].last_seq == mine[-1].paged_until
            assert mine[-1].next_seq - mine[-1].paged_until >= 8  # the text window stays text
        # Nothing is left to do.
        assert not mm.age(now=T0 + timedelta(days=40)).changed
