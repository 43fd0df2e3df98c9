"""Drawing in worker processes (``draw_workers``) changes where pages are drawn, nothing else:
the same pages, renditions, visual tokens and report as drawing in-process, on real SQLite
with real rendering in real spawned processes; the pool is started lazily, reused, and gone
when the manager closes; a worker's error is the error in-process drawing raises."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import struct
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import read_png
from PIL import Image
from sqlalchemy import select

from benchmarks.chatgen import conversation
from optical_memory import (
    AgingReport,
    DrawingFailed,
    InvalidInput,
    MemoryClosed,
    MemoryManager,
    PageRenderer,
    Tier,
    UnknownPage,
    get_target,
)
from optical_memory.draw_pool import DrawPool, check_draw_workers, usable_cores
from optical_memory.encoder import EncodedPage
from optical_memory.errors import InvalidConfiguration
from optical_memory.render import RenderTurn
from optical_memory.salience import salience as default_salience
from optical_memory.store import VisualTokenRow

pytestmark = pytest.mark.slow  # spawns interpreters and draws a few dozen pages twice

TARGET = get_target("deepseek-ocr")
START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
# A long sitting (full pages), and a session of short sittings a day apart, each aged as it
# ends (sparse pages, sealed as their sittings end, that merge as they reach the faint tiers).
LONG = conversation(400, START, timedelta(minutes=1), seed=3)
# The last sitting comes a week later: when the first six reach the small tier and merge, it
# moves to base in the same pass (a merge and a move: both go to the workers).
SITTINGS = [
    conversation(16, START + timedelta(days=day), timedelta(minutes=2), seed=10 + day)
    for day in (1, 2, 3, 4, 5, 6, 12)
]
NEWEST = SITTINGS[5][-1]["at"]
FIRST_PASS = LONG[-1]["at"] + timedelta(hours=2)
LATER = (NEWEST + timedelta(days=8), NEWEST + timedelta(days=40))


class ThumbEncoder:
    """A real (if trivial) encoder: a 4x4 average-pooled thumbnail as float32 features."""

    key = "thumbnail-4x4/float32"

    def encode(self, png: bytes, tier: str) -> EncodedPage:
        img = read_png(png).resize((4, 4), Image.Resampling.BOX)
        data = struct.pack("16f", *(v / 255 for v in img.tobytes()))
        return EncodedPage(data=data, dtype="float32", shape=(16,))


def _snapshot(mm: MemoryManager) -> list[Any]:
    """Every page of every session: its row, each stored image and its visual tokens."""
    out: list[Any] = []
    for info in mm.sessions():
        for p in mm.pages(info.session_id):
            images = {}
            for tier in (None, *(t.label for t in Tier if t is not Tier.TEXT)):
                with contextlib.suppress(UnknownPage):
                    images[tier] = mm.page_image(info.session_id, p.page_id, tier)
            out.append((asdict(p), images))
    with mm.database.read() as s:
        tokens = sorted(
            (r.page_id, r.tier, r.encoder_key, bytes(r.data))
            for r in s.scalars(select(VisualTokenRow))
        )
    out.append(tokens)
    return out


def _report(rep: AgingReport) -> dict[str, Any]:
    d = asdict(rep)
    d.pop("seconds")
    return d


def _drawn(rep: AgingReport) -> int:
    return rep.pages_prepared + sum(rep.pages_moved.values())


def _age_all(mm: MemoryManager) -> list[Any]:
    """The same history and passes for every manager: the first pass over a long sitting,
    a pass as each short sitting ends, then moves down the ladder (promotions, redrawings
    of pages with a pinned turn, merges)."""
    mm.add_turns("long", LONG)
    mm.pin("long", 20)  # a marked turn: drawn again (not promoted), kept whole when abridged
    states = []

    def age(now: datetime) -> None:
        rep = mm.age(now=now)
        assert not rep.errors, rep.errors
        states.append((_report(rep), _snapshot(mm)))

    age(FIRST_PASS)
    for sitting in SITTINGS:
        mm.add_turns("short", sitting)
        age(sitting[-1]["at"] + timedelta(hours=2))
    for now in LATER:
        age(now)
    return states


def _pool_children() -> set[int]:
    """This process's live child processes (the pool's workers: spawned, no fork server)."""
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def test_pages_drawn_in_worker_processes_are_byte_identical_to_in_process(
    tmp_path: Path,
) -> None:
    before = _pool_children()
    with MemoryManager(tmp_path / "here.db", encoder=ThumbEncoder()) as here:
        expected = _age_all(here)
        assert _pool_children() == before  # in-process: no worker
    with MemoryManager(tmp_path / "pool.db", encoder=ThumbEncoder(), draw_workers=2) as pooled:
        got = _age_all(pooled)
        assert len(_pool_children() - before) == 2  # the pages really went to the workers
    assert sum(expected[0][0]["pages_moved"].values()) >= 4  # drawn at every tier
    assert any(rep["merges"] for rep, _ in expected)  # consolidation drew merged pages
    assert sum(len(state[-1]) for _, state in expected) > 0  # visual tokens were compared
    for (rep_a, state_a), (rep_b, state_b) in zip(expected, got, strict=True):
        assert rep_b == rep_a
        assert state_b == state_a


def test_the_pool_starts_at_the_first_drawing_is_reused_and_goes_with_close(
    tmp_path: Path,
) -> None:
    before = _pool_children()
    mm = MemoryManager(tmp_path / "m.db", draw_workers=2)
    mm.add_turns("s", LONG)
    assert _pool_children() == before  # nothing started by opening, nor by writing
    rep = mm.age(now=FIRST_PASS)
    assert _drawn(rep) >= 2 and not rep.errors
    workers = _pool_children() - before
    assert len(workers) == 2
    rep = mm.age(now=LATER[1])  # a later pass reuses the same processes
    assert _drawn(rep) >= 2 and not rep.errors
    assert _pool_children() - before == workers
    mm.close()
    assert _pool_children() & workers == set()
    for pid in workers:  # reaped, not merely forgotten
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(MemoryClosed):
        mm.age(now=LATER[1])


def test_a_closed_pool_refuses_drawings() -> None:
    pool = DrawPool(PageRenderer(), 2)
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(MemoryClosed):
        pool.submit(_turns(), TARGET.layout, [(64, 64)])


def test_the_context_manager_and_a_view_leave_the_pool_to_the_root(tmp_path: Path) -> None:
    before = _pool_children()
    with MemoryManager(tmp_path / "m.db", draw_workers=2) as mm:
        mm.add_turns("s", LONG)
        view = mm.scoped(None)
        view.age(now=FIRST_PASS)  # a view's pass uses the root's pool
        workers = _pool_children() - before
        assert len(workers) == 2
        view.close()  # a view does not own the pool
        assert _pool_children() - before == workers
    assert _pool_children() - before == set()


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2", "many", None])
def test_a_bad_draw_workers_value_is_a_typed_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InvalidConfiguration, match="draw_workers"):
        MemoryManager(tmp_path / "m.db", draw_workers=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "m.db").exists()  # refused before anything was opened


def test_auto_leaves_one_core_and_one_draws_in_process(tmp_path: Path) -> None:
    assert check_draw_workers("auto") == max(1, usable_cores() - 1)
    assert check_draw_workers(1) == 1 and check_draw_workers(3) == 3
    before = _pool_children()
    with MemoryManager(tmp_path / "m.db") as mm:  # the default: no pool, ever
        mm.add_turns("s", LONG[:250])
        assert _drawn(mm.age(now=FIRST_PASS)) >= 2
        assert mm.draw_workers == 1 and _pool_children() == before


def test_a_subclassed_renderer_draws_in_process(tmp_path: Path) -> None:
    class Mine(PageRenderer):
        pass

    before = _pool_children()
    with MemoryManager(tmp_path / "m.db", renderer=Mine(), draw_workers=2) as mm:
        mm.add_turns("s", LONG[:250])
        assert _drawn(mm.age(now=FIRST_PASS)) >= 2
        assert _pool_children() == before


def _turns() -> list[RenderTurn]:
    return [RenderTurn(t["role"], t["at"], t["content"]) for t in LONG[:30]]


def test_a_workers_error_is_the_error_in_process_drawing_raises() -> None:
    renderer = PageRenderer()
    pool = DrawPool(renderer, 2)
    try:
        with pytest.raises(InvalidInput) as here:
            renderer.render(_turns(), (0, 0), [(64, 64)])
        with pytest.raises(InvalidInput) as there:
            pool.result(pool.submit(_turns(), (0, 0), [(64, 64)]))
        assert type(there.value) is type(here.value)
        assert str(there.value) == str(here.value)
        # and the pool goes on drawing, the same bytes as here
        sizes = [TARGET.spec(t).size for t in (Tier.LARGE, Tier.TINY)]
        got = pool.result(pool.submit(_turns(), TARGET.layout, sizes))
        assert got == renderer.render(_turns(), TARGET.layout, sizes)
    finally:
        pool.close()


def test_a_worker_killed_mid_drawing_fails_that_drawing_only(tmp_path: Path) -> None:
    before = _pool_children()
    pool = DrawPool(PageRenderer(), 2)
    try:
        sizes = [TARGET.spec(t).size for t in Tier if t is not Tier.TEXT] * 4
        future = pool.submit(_turns(), TARGET.layout, sizes)
        for pid in _pool_children() - before:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(DrawingFailed):
            pool.result(future)
        # the broken pool is dropped; the next drawing starts a fresh one
        small = [TARGET.spec(Tier.TINY).size]
        assert pool.result(pool.submit(_turns(), TARGET.layout, small)) == PageRenderer().render(
            _turns(), TARGET.layout, small
        )
    finally:
        pool.close()
    assert _pool_children() - before == set()


def test_a_pass_whose_worker_dies_commits_nothing_it_drew_and_the_next_pass_redoes_it(
    tmp_path: Path,
) -> None:
    """The salience function runs in the parent as each page is read, after the page before
    it went to the workers: there it kills them, mid-drawing, once."""
    before = _pool_children()
    killed: list[int] = []

    def killing_salience(role: str, content: str) -> float:
        workers = _pool_children() - before
        if workers and not killed:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed.extend(workers)
        return default_salience(role, content)

    with MemoryManager(tmp_path / "here.db") as here:
        here.add_turns("s", LONG)
        here.age(now=FIRST_PASS)
        expected = _snapshot(here)
    with MemoryManager(tmp_path / "pool.db", draw_workers=2, salience=killing_salience) as mm:
        mm.add_turns("s", LONG)
        rep = mm.age(now=FIRST_PASS)
        assert killed
        assert len(rep.errors) == 1 and "DrawingFailed" in rep.errors[0], rep.errors
        assert _snapshot(mm) != expected  # the pages it drew were not committed
        again = mm.age(now=FIRST_PASS)  # a fresh pool; the same pages, the same bytes
        assert not again.errors and _drawn(again) >= 2
        assert _snapshot(mm) == expected


def test_workers_killed_while_idle_are_replaced_at_the_next_drawing(tmp_path: Path) -> None:
    before = _pool_children()
    with MemoryManager(tmp_path / "m.db", draw_workers=2) as mm:
        mm.add_turns("warm", LONG[:60])
        assert not mm.age(now=FIRST_PASS).errors  # starts the workers
        for pid in _pool_children() - before:
            os.kill(pid, signal.SIGKILL)
        mm.add_turns("s", LONG)
        rep = mm.age(now=FIRST_PASS)
        assert not rep.errors and _drawn(rep) >= 2
    assert _pool_children() - before == set()


def test_a_drawing_that_outlasts_the_stall_check_still_comes_back_whole(monkeypatch) -> None:
    """While it waits, the pool wakes the executor every STALL_CHECK_SECONDS (so a worker
    that died unnoticed breaks the pool instead of hanging the pass): with the check far
    shorter than a drawing, the drawing still comes back, the same bytes, and the pool's
    workers stay as many as asked."""
    from optical_memory import draw_pool

    monkeypatch.setattr(draw_pool, "STALL_CHECK_SECONDS", 0.005)
    before = _pool_children()
    pool = DrawPool(PageRenderer(), 2)
    try:
        sizes = [TARGET.spec(t).size for t in Tier if t is not Tier.TEXT]
        drawn = pool.result(pool.submit(_turns(), TARGET.layout, sizes))
        assert drawn == PageRenderer().render(_turns(), TARGET.layout, sizes)
        assert len(_pool_children() - before) <= 2
    finally:
        pool.close()
    assert _pool_children() - before == set()
