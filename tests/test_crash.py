"""Crash safety: SIGKILL an aging pass at chosen points. Every turn survives unchanged, every
page's image matches its tier, and the next pass ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import make_history, read_safetensors
from sqlalchemy import create_engine, text
from workers.hardening import ThumbnailEncoder, check_pages_match_tiers

from optical_memory import MemoryManager

T0 = datetime(2024, 1, 1, tzinfo=UTC)
STAGE1 = T0 + timedelta(hours=5)  # the first pages reach the large tier (with renditions)
FINAL = T0 + timedelta(days=40)  # the pass under test: pack the rest, fade everything to tiny
WORKER = Path(__file__).parent / "workers" / "crash_age.py"
TRIALS = 24


def _snapshot(path: Path) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    """Turns, pages (with image bytes and versions), renditions and visual tokens, raw."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            q = conn.execute
            return {
                "turns": [
                    tuple(r)
                    for r in q(
                        text(
                            "SELECT s.key, t.seq, t.role, t.content, t.at, t.tokens, t.metadata "
                            "FROM om_turns t JOIN om_sessions s ON s.id = t.session_id "
                            "ORDER BY s.key, t.seq"
                        )
                    )
                ],
                "pages": [
                    tuple(r)
                    for r in q(
                        text(
                            "SELECT s.key, p.first_seq, p.last_seq, p.tier, p.version, p.png, "
                            "p.token_cost, s.paged_until FROM om_pages p "
                            "JOIN om_sessions s ON s.id = p.session_id ORDER BY s.key, p.first_seq"
                        )
                    )
                ],
                "renditions": [
                    tuple(r)
                    for r in q(
                        text(
                            "SELECT p.first_seq, r.tier, r.png FROM om_page_renditions r "
                            "JOIN om_pages p ON p.id = r.page_id ORDER BY p.session_id, p.first_seq, r.tier"
                        )
                    )
                ],
                "tokens": [
                    tuple(r)
                    for r in q(
                        text(
                            "SELECT p.first_seq, v.tier, v.data FROM om_visual_tokens v "
                            "JOIN om_pages p ON p.id = v.page_id ORDER BY p.session_id, p.first_seq"
                        )
                    )
                ],
            }
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """A store with pages already at the large tier and more turns waiting to be packed; and
    the state an uninterrupted pass at FINAL leaves behind."""
    root = tmp_path_factory.mktemp("crash")
    template = root / "template.db"
    with MemoryManager(f"sqlite:///{template}", encoder=ThumbnailEncoder()) as mm:
        mm.add_turns(
            "a",
            make_history(
                70,
                lambda i: f"a{i}: naïve café ✓ " + "pack my box with five dozen jugs " * 12,
                T0,
                metadata=lambda i: {"i": i},
            ),
        )
        assert mm.age(now=STAGE1).pages_moved.get("large", 0) >= 2
        mm.add_turns(
            "b",
            make_history(
                50, lambda i: f"b{i}: 😀 " + "sphinx of black quartz " * 15, STAGE1, roles=["user"]
            ),
        )
        mm.add_turns(
            "a",
            make_history(
                30, lambda i: f"late {i} " + "judge my vow " * 30, STAGE1, roles=["assistant"]
            ),
        )
    assert not Path(f"{template}-wal").exists() or Path(f"{template}-wal").stat().st_size == 0
    before = _snapshot(template)

    reference = root / "reference.db"
    shutil.copyfile(template, reference)
    with MemoryManager(f"sqlite:///{reference}", encoder=ThumbnailEncoder()) as mm:
        report = mm.age(now=FINAL)
        assert not report.errors and report.pages_created >= 2 and report.pages_moved["tiny"] >= 4
    after = _snapshot(reference)
    assert all(p[3] == "tiny" for p in after["pages"])
    return {"template": template, "before": before, "after": after}


def _check_consistent(path: Path, before: dict) -> dict[str, int]:  # type: ignore[type-arg]
    """What must hold however the pass was interrupted."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
            checked = check_pages_match_tiers(conn, "deepseek-ocr")
            tiers: dict[str, int] = {}
            for r in conn.execute(text("SELECT tier FROM om_pages")):
                tiers[r.tier] = tiers.get(r.tier, 0) + 1
            # Visual tokens: exactly one entry per form the page can be shown in (its stored
            # image and each rendition), decodable.
            for p in conn.execute(text("SELECT id, tier FROM om_pages")):
                toks = conn.execute(
                    text("SELECT tier, data FROM om_visual_tokens WHERE page_id = :i"), {"i": p.id}
                ).all()
                forms = [
                    r.tier
                    for r in conn.execute(
                        text("SELECT tier FROM om_page_renditions WHERE page_id = :i"), {"i": p.id}
                    )
                ]
                if p.tier != "text":
                    forms.append(p.tier)
                assert sorted(t.tier for t in toks) == sorted(forms)
                for t in toks:
                    assert read_safetensors(t.data)["tokens"].shape == (1, 64)
    finally:
        engine.dispose()
    now = _snapshot(path)
    assert now["turns"] == before["turns"], "a turn changed or disappeared"
    # Pages tile each session's paged turns from seq 1, without gaps or overlaps.
    by_session: dict[str, list[tuple]] = {}  # type: ignore[type-arg]
    for p in now["pages"]:
        by_session.setdefault(p[0], []).append(p)
    for pages in by_session.values():
        nxt = 1
        for _, first, last, *_rest in pages:
            assert first == nxt and last >= first
            nxt = last + 1
        assert pages[-1][-1] == nxt - 1  # paged_until
    assert checked == len(now["pages"])
    return tiers


class _Lines:
    """Lines from a child's stdout, read on a thread (select() on a buffered pipe would miss
    lines already sitting in Python's buffer)."""

    def __init__(self, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self._t.start()

    def _pump(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self._q.put(line.strip())
        self._q.put(None)

    def next(self, timeout: float) -> str:
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the crash worker went silent") from None
        assert line is not None, "the crash worker died"
        return line


def _run(proc: subprocess.Popen, out: _Lines, db: Path, kill_at: int) -> tuple[bool, list[str]]:  # type: ignore[type-arg]
    """One pass in a forked child, killed just before its ``kill_at``-th SQL statement
    (0: never). Returns whether it finished, and what the server said."""
    assert proc.stdin is not None
    proc.stdin.write(f"{db} {FINAL.isoformat()} {kill_at}\n")
    proc.stdin.flush()
    kind, pid, *_ = out.next(60).split(" ", 2)
    assert kind == "ready", kind
    lines = []
    while not (lines and lines[-1].startswith(f"exit {pid}")):
        lines.append(out.next(120))
    assert not any(line.startswith("error") for line in lines), lines
    finished = any(line.startswith("done") for line in lines)
    if not finished:
        assert lines[-1] == f"exit {pid} {int(signal.SIGKILL)}", lines
    return finished, lines


@pytest.mark.slow
def test_sigkill_during_aging_loses_nothing(prepared: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """SIGKILL the pass at chosen points, spread evenly over its SQL statements (inside
    transactions, before a COMMIT, between two transactions), instead of at random times:
    every trial is interrupted where it was meant to be, whatever the machine's load."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(  # the workers, and tests/ for `helpers`
                None, [str(WORKER.parent), str(WORKER.parent.parent), os.environ.get("PYTHONPATH")]
            )
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, str(WORKER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
    )
    out = _Lines(proc)
    states: set[tuple] = set()  # type: ignore[type-arg]
    interrupted = 0
    try:
        # An uninterrupted pass in the child: how many statements a pass sends.
        db = tmp_path / "count.db"
        shutil.copyfile(prepared["template"], db)
        finished, lines = _run(proc, out, db, 0)
        assert finished
        report = json.loads(lines[0].split(" ", 2)[2])
        assert report["errors"] == []
        total = report["statements"]
        assert total >= TRIALS, total
        points = sorted({1 + round(i * (total - 1) / (TRIALS - 1)) for i in range(TRIALS)})
        if os.environ.get("OM_CRASH_SEED"):  # more points, reproducibly, when asked for
            rng = random.Random(int(os.environ["OM_CRASH_SEED"]))
            points = sorted(set(points) | {rng.randint(1, total) for _ in range(TRIALS)})
        for trial, kill_at in enumerate(points):
            db = tmp_path / f"trial-{trial}.db"
            shutil.copyfile(prepared["template"], db)
            finished, _ = _run(proc, out, db, kill_at)
            # A pass may send a statement or two fewer than the counting pass did (a lock
            # wait retried, a cache warmed): a kill point past its end is no kill, and counts
            # as an uninterrupted trial; its state is checked all the same.
            interrupted += not finished

            tiers = _check_consistent(db, prepared["before"])
            states.add(tuple(sorted(tiers.items())))

            # The next pass completes and ends where an uninterrupted pass ends, byte for byte.
            with MemoryManager(f"sqlite:///{db}", encoder=ThumbnailEncoder()) as mm:
                report = mm.age(now=FINAL)
                assert report.errors == []
            _check_consistent(db, prepared["before"])
            assert _snapshot(db) == prepared["after"]
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(
        f"{interrupted} of {len(points)} kill points hit over {total} statements: "
        f"{len(states)} distinct states"
    )
    assert len(points) >= TRIALS // 2 and interrupted > 0
    assert len(states) >= 4, f"the kills hit too few distinct points: {states}"
