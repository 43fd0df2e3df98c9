"""The aging pass draws with no transaction open: a write never waits for a drawing, and a page
that changes between the pass's read and its write is skipped, then redone by the next pass.

The drawing is held open deterministically: a renderer (the public ``renderer=`` seam) runs a
hook before its first drawing, and the test does its concurrent work inside that hook or while
the hook waits on an event, never by timing.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from workers.hardening import ThumbnailEncoder

from benchmarks.chatgen import conversation
from optical_memory import AgingPolicy, MemoryManager, PageRenderer, TimeLadder

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
STEP = timedelta(minutes=2)


class HookedRenderer(PageRenderer):
    """A real renderer that calls ``hook`` once, just before its first drawing."""

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self.hook: Callable[[], None] | None = hook

    def render(self, turns, canvas, sizes):  # type: ignore[no-untyped-def, override]
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return super().render(turns, canvas, sizes)


def _state(mm: MemoryManager) -> dict[str, Any]:
    """Turns, and every page as the prompt may show it: span, tier, open, the hash of each
    stored image and rendition, the tiers with visual tokens (ids and versions left out)."""
    with mm.database.engine.connect() as c:
        turns = [
            tuple(r)
            for r in c.execute(
                text(
                    "SELECT s.key, t.seq, t.role, t.content FROM om_turns t "
                    "JOIN om_sessions s ON s.id = t.session_id ORDER BY s.key, t.seq"
                )
            )
        ]
        pages = []
        for p in c.execute(
            text(
                "SELECT p.id, s.key, p.first_seq, p.last_seq, p.tier, p.open, p.png, "
                "p.token_cost, s.paged_until FROM om_pages p "
                "JOIN om_sessions s ON s.id = p.session_id ORDER BY s.key, p.first_seq"
            )
        ):
            forms = {p.tier: hashlib.sha256(p.png).hexdigest()} if p.png is not None else {}
            for r in c.execute(
                text("SELECT tier, png FROM om_page_renditions WHERE page_id = :i"), {"i": p.id}
            ):
                forms[r.tier] = hashlib.sha256(r.png).hexdigest()
            tokens = sorted(
                r.tier
                for r in c.execute(
                    text("SELECT tier FROM om_visual_tokens WHERE page_id = :i"), {"i": p.id}
                )
            )
            assert tokens == sorted(forms), f"page {p.id}: visual tokens {tokens} for {forms}"
            pages.append(
                (p.key, p.first_seq, p.last_seq, p.tier, bool(p.open), p.token_cost, forms)
            )
            assert p.paged_until >= p.last_seq
    return {"turns": turns, "pages": pages}


def _tiles(state: dict[str, Any], session: str) -> None:
    """Every paged turn of the session is on exactly one page."""
    spans = [(p[1], p[2]) for p in state["pages"] if p[0] == session]
    assert spans and spans[0][0] == 1
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:], strict=False)), spans


def test_a_write_does_not_wait_for_a_page_being_drawn(db_url: str) -> None:
    """While the pass draws the session's open page, add_turn to that very session, a new
    session and assemble all complete (each would hit the 2 s busy timeout if the pass held a
    lock); the pass then commits its page: a write alone changes nothing it read."""
    history = conversation(60, START, STEP, seed=3)
    now = history[-1]["at"] + timedelta(minutes=5)  # mid-sitting: an open page to draw
    drawing, release = threading.Event(), threading.Event()

    def hold() -> None:
        drawing.set()
        assert release.wait(120), "the test never released the drawing"

    with (
        MemoryManager(
            db_url, renderer=HookedRenderer(hold), encoder=ThumbnailEncoder(), busy_timeout=2
        ) as ager,
        MemoryManager(db_url, busy_timeout=2) as writer,
    ):
        writer.add_turns("s", history)
        out: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: out.update(report=ager.age(now=now)))
        worker.start()
        try:
            assert drawing.wait(120), "the pass never started drawing"
            turn = writer.add_turn("s", "user", "written while a page is drawn", at=now)
            other = writer.add_turns("t", conversation(3, now, STEP, seed=4))
            ctx = writer.assemble("s", budget=2000, now=now)
            still_drawing = worker.is_alive()
        finally:
            release.set()
            worker.join(120)
        assert still_drawing, "the writes ran after the drawing, not beside it"
        assert turn.seq == 61 and [t.seq for t in other] == [1, 2, 3]
        assert ctx.texts and ctx.texts[-1].turn.content == "written while a page is drawn"
        report = out["report"]
        assert report.errors == [] and report.pages_skipped == 0
        assert report.pages_opened == 1 and report.pages_prepared >= 1
        state = _state(writer)
        _tiles(state, "s")
        assert state["pages"][-1][4], "the open page was committed"
        assert [t[3] for t in state["turns"] if t[0] == "s"] == [
            *(h["content"] for h in history),
            "written while a page is drawn",
        ]


def test_a_page_changed_while_drawn_is_skipped_then_redone_next_pass(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A tier move whose page is rebuilt by ``verify`` while the move is drawn: the move is
    skipped (the version moved on), the pass goes on, and the next pass makes the move; the
    store ends exactly as an uninterrupted run leaves it, image for image."""
    history = conversation(100, START, STEP, seed=5, sentences=(4, 7))
    sealed = history[-1]["at"] + timedelta(hours=2)  # sealed and prepared, still text
    later = history[-1]["at"] + timedelta(days=3)  # every page moves to base
    slow = AgingPolicy(by_time=TimeLadder(large=timedelta(days=1), base=timedelta(days=2)))
    kw: dict[str, Any] = {"encoder": ThumbnailEncoder(), "policy": slow}
    with MemoryManager(tmp_path / "reference.db", **kw) as ref:
        ref.add_turns("s", history)
        ref.age(now=sealed)
        ref.pin("s", 1)  # the first page's move is drawn (not promoted): its marks changed
        ref.age(now=later)
        expected = _state(ref)
    assert len(expected["pages"]) >= 2 and {p[3] for p in expected["pages"]} == {"base"}

    with MemoryManager(db_url, **kw) as other:
        other.add_turns("s", history)
        assert other.age(now=sealed).errors == []
        other.pin("s", 1)
        first = other.pages("s")[0]
        assert first.tier == "text"

        def repair_the_page_being_drawn() -> None:
            with other.database.engine.begin() as c:  # damage a rendition of that page
                c.execute(
                    text("UPDATE om_page_renditions SET png = :b WHERE page_id = :i"),
                    {"b": b"\x00 not a png", "i": first.page_id},
                )
            fixed = other.verify(repair=True)
            assert fixed.pages_repaired == 1, fixed  # rebuilt: same tier, a new version

        with MemoryManager(
            db_url, renderer=HookedRenderer(repair_the_page_being_drawn), **kw
        ) as ager:
            report = ager.age(now=later)
            assert report.errors == []
            assert report.pages_skipped == 1
            assert report.pages_moved == {"base": len(expected["pages"]) - 1}
            assert other.pages("s")[0].tier == "text"  # not moved, not half-written
            again = ager.age(now=later)
            assert again.errors == [] and again.pages_skipped == 0
            assert again.pages_moved == {"base": 1}
            assert not ager.age(now=later).changed
        assert _state(other) == expected


def test_turns_packed_while_a_pass_draws_wait_for_its_next_pass_and_none_is_lost_or_doubled(
    db_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """While the pass draws the session's open page, more turns arrive and another worker
    packs the session: the first pass's cut is skipped (its snapshot is out of date; its
    pages would overlap), and the store ends as one pass over all the turns leaves it. Since
    passes claim the sessions they age (``test_aging_claims.py``), the other worker's pass
    finds the session held by this one and leaves it: this pass commits its cut, the next
    packs the rest, and the store ends the same."""
    history = conversation(60, START, STEP, seed=8)
    more = conversation(20, history[-1]["at"] + STEP, timedelta(minutes=1), seed=9)
    now = more[-1]["at"] + timedelta(minutes=5)  # mid-sitting, even without ``more``
    with MemoryManager(tmp_path / "reference.db", encoder=ThumbnailEncoder()) as ref:
        ref.add_turns("s", history + more)
        ref.age(now=now)
        expected = _state(ref)

    with MemoryManager(db_url, encoder=ThumbnailEncoder()) as other:
        other.add_turns("s", history)

        def pack_it_meanwhile() -> None:
            other.add_turns("s", more)
            theirs = other.age(now=now)  # the session is held by the pass drawing it
            assert theirs.sessions_busy == 1 and not theirs.changed

        with MemoryManager(
            db_url, encoder=ThumbnailEncoder(), renderer=HookedRenderer(pack_it_meanwhile)
        ) as ager:
            report = ager.age(now=now)
            assert report.errors == [] and report.pages_skipped == 0 and report.changed
            assert ager.age(now=now).changed  # the turns that came meanwhile
            assert not ager.age(now=now).changed  # nothing left to redo
        state = _state(other)
        _tiles(state, "s")
        assert state == expected


def test_turns_replaced_while_a_pass_draws_never_reach_a_page(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """While the pass draws the session's open page, another writer regenerates from a turn
    the pass is cutting into pages (unpaged, so the replace is allowed): the cut is skipped,
    not committed with the superseded versions (their text and token counts on a page), and
    the next pass pages the new version exactly as one pass over it leaves the store."""
    history = conversation(60, START, STEP, seed=11)
    new = [
        {"role": "assistant", "content": "a regenerated reply", "at": history[39]["at"]},
        {"role": "user", "content": "and the conversation goes on", "at": history[40]["at"]},
    ]
    now = history[-1]["at"] + timedelta(minutes=5)  # mid-sitting: an open page to draw
    with MemoryManager(tmp_path / "reference.db", encoder=ThumbnailEncoder()) as ref:
        ref.add_turns("s", history)
        ref.replace_turns("s", 40, new)
        ref.age(now=now)
        expected = _state(ref)
    assert expected["pages"], "the replaced version is paged in one pass"

    with MemoryManager(db_url, encoder=ThumbnailEncoder()) as other:
        other.add_turns("s", history)

        def regenerate_meanwhile() -> None:
            assert other.pages("s") == []  # nothing paged yet: turn 40 may be replaced
            assert [t.seq for t in other.replace_turns("s", 40, new)] == [61, 62]

        with MemoryManager(
            db_url, encoder=ThumbnailEncoder(), renderer=HookedRenderer(regenerate_meanwhile)
        ) as ager:
            report = ager.age(now=now)
            assert report.errors == [] and report.pages_skipped == 1
            assert other.pages("s") == []  # nothing of the old version was written
            assert ager.age(now=now).changed
            assert not ager.age(now=now).changed
        state = _state(other)
        _tiles(state, "s")
        live = {t.seq: t.tokens for t in other.turns("s")}
        for p in other.pages("s"):
            assert p.text_tokens == sum(
                n for q, n in live.items() if p.first_seq <= q <= p.last_seq
            )
        assert state == expected


class CountingRenderer(PageRenderer):
    """A real renderer that counts its drawings."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, turns, canvas, sizes):  # type: ignore[no-untyped-def, override]
        self.calls += 1
        return super().render(turns, canvas, sizes)


def test_a_tier_move_promotes_the_stored_renditions_byte_for_byte(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A page moving down the ladder already holds its new tier as a rendition: the move
    stores those bytes (and keeps their visual tokens) without drawing, and they are the
    bytes a fresh drawing gives. A page with a pinned turn is drawn again (its marks may
    have changed since the renditions were drawn)."""
    from optical_memory import get_target
    from optical_memory.render import RenderTurn

    history = conversation(100, START, STEP, seed=5, sentences=(4, 7))
    renderer = CountingRenderer()
    encoder = ThumbnailEncoder()
    with MemoryManager(tmp_path / "m.db", renderer=renderer, encoder=encoder) as mm:
        mm.add_turns("s", history)
        mm.age(now=history[-1]["at"] + timedelta(minutes=61))  # sealed, prepared, some large
        pages = mm.pages("s")
        assert len(pages) >= 2
        mm.pin("s", pages[-1].first_seq)
        drawn, before = renderer.calls, _state(mm)
        report = mm.age(now=history[-1]["at"] + timedelta(days=2))  # every page to base
        assert report.errors == [] and report.pages_moved == {"base": len(pages)}
        assert renderer.calls - drawn == 1  # only the page with a pinned turn was drawn
        after = _state(mm)
        target = get_target("deepseek-ocr")
        for old, new, page in zip(before["pages"], after["pages"], mm.pages("s"), strict=True):
            assert new[3] == "base" and set(new[6]) == {"base", "small", "tiny"}
            if page.page_id != pages[-1].page_id:
                assert {t: new[6][t] for t in new[6]} == {t: old[6][t] for t in new[6]}
            turns = mm.read("s", page.first_seq, page.last_seq)
            fresh = PageRenderer().render(
                [RenderTurn(t.role, t.at, t.content) for t in turns],
                target.layout,
                [target.spec("base").size],
            )[0]
            if page.page_id != pages[-1].page_id:  # unmarked: exactly a fresh drawing
                assert mm.page_image("s", page.page_id) == fresh.png
