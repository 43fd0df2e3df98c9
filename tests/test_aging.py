"""The forgetting engine: pages are cut, sealed and faded down the ladder, losslessly."""

from __future__ import annotations

import logging
import struct
import time
from datetime import UTC, datetime, timedelta

import pytest
from helpers import read_png
from PIL import Image
from sqlalchemy import select

from benchmarks.chatgen import conversation
from optical_memory import AgingPolicy, MemoryManager, Tier, TimeLadder, get_target
from optical_memory.encoder import EncodedPage
from optical_memory.scheduler import AgingScheduler
from optical_memory.store import PageRow, RenditionRow, VisualTokenRow

START = datetime(2023, 3, 1, 9, 0, tzinfo=UTC)
TWO_MONTHS = conversation(600, START, timedelta(hours=2, minutes=24))  # 60 days
NOW = TWO_MONTHS[-1]["at"] + timedelta(minutes=10)


@pytest.fixture(scope="module")
def aged(tmp_path_factory) -> MemoryManager:
    url = f"sqlite:///{tmp_path_factory.mktemp('aged') / 'm.db'}"
    mm = MemoryManager(url)
    mm.add_turns("two-months", TWO_MONTHS)
    mm.report = mm.age(now=NOW)  # type: ignore[attr-defined]
    yield mm
    mm.close()


def test_a_two_month_conversation_lands_in_the_expected_tiers(aged: MemoryManager) -> None:
    pages = aged.pages("two-months")
    assert len(pages) >= 5
    ladder = TimeLadder()
    for p in pages:
        assert p.tier == ladder.tier_for(NOW - p.last_at).label, p
    tiers = {p.tier for p in pages}
    assert {"tiny", "small", "base"} <= tiers
    # oldest is faintest: tiers never get sharper going back in time
    ranks = [Tier.parse(p.tier) for p in pages]
    assert ranks == sorted(ranks, reverse=True)
    report = aged.report  # type: ignore[attr-defined]
    assert report.pages_created == len(pages)
    assert sum(report.pages_moved.values()) == sum(p.tier != "text" for p in pages)
    assert report.tokens_after < report.tokens_before
    assert report.text_tokens_replaced > 5 * report.tokens_after


def test_pages_cover_the_old_turns_without_gaps_and_the_window_stays_text(
    aged: MemoryManager,
) -> None:
    pages = aged.pages("two-months")
    assert pages[0].first_seq == 1
    for a, b in zip(pages, pages[1:], strict=False):
        assert b.first_seq == a.last_seq + 1
    assert pages[-1].last_seq <= len(TWO_MONTHS) - AgingPolicy().keep_last_turns


def test_each_image_has_its_tier_size_and_fainter_renditions(aged: MemoryManager) -> None:
    target = get_target("deepseek-ocr")
    with aged.database.read() as s:
        for page in s.scalars(select(PageRow)):
            if page.tier == "text":
                assert page.png is None
                continue
            img = read_png(page.png)
            assert img.size == target.spec(page.tier).size == (page.width, page.height)
            assert img.mode == "L"
            rends = s.scalars(select(RenditionRow).where(RenditionRow.page_id == page.id)).all()
            assert sorted(Tier.parse(r.tier) for r in rends) == [
                t for t in (Tier.BASE, Tier.SMALL, Tier.TINY) if t > Tier.parse(page.tier)
            ]
            for r in rends:
                assert read_png(r.png).size == target.spec(r.tier).size


def test_turns_are_unchanged_after_aging(aged: MemoryManager) -> None:
    turns = aged.turns("two-months")
    assert [(t.role, t.content, t.at) for t in turns] == [
        (t["role"], t["content"], t["at"]) for t in TWO_MONTHS
    ]


def test_a_second_pass_with_the_same_now_is_a_no_op(aged: MemoryManager) -> None:
    before = [(p.page_id, p.tier, p.version) for p in aged.pages("two-months")]
    report = aged.age(now=NOW)
    assert not report.changed and report.pages_skipped == 0
    assert [(p.page_id, p.tier, p.version) for p in aged.pages("two-months")] == before


def test_png_bytes_are_deterministic_across_databases(aged: MemoryManager, tmp_path) -> None:
    with MemoryManager(tmp_path / "again.db") as other:
        other.add_turns("two-months", TWO_MONTHS[:200])
        other.age(now=NOW)
        theirs = other.pages("two-months")[0]
        ours = aged.pages("two-months")[0]
        assert (theirs.first_seq, theirs.last_seq, theirs.tier) == (
            ours.first_seq,
            ours.last_seq,
            ours.tier,
        )
        assert other.page_image("two-months", theirs.page_id) == aged.page_image(
            "two-months", ours.page_id
        )


def test_a_page_only_fades_down(tmp_path) -> None:
    with MemoryManager(tmp_path / "m.db") as mm:
        mm.add_turns("s", TWO_MONTHS[:300])
        mm.age(now=NOW)
        tiers = [p.tier for p in mm.pages("s")]
        mm.age(now=TWO_MONTHS[299]["at"])  # the clock going back moves nothing up
        assert [p.tier for p in mm.pages("s")] == tiers


def test_a_one_line_page_never_becomes_an_image_on_deepseek_ocr(tmp_path) -> None:
    policy = AgingPolicy(keep_last_turns=1, min_fill=0)
    with MemoryManager(tmp_path / "m.db", policy=policy) as mm:
        mm.add_turns("s", [("user", "ok", START), ("assistant", "sure", START)])
        mm.age(now=START + timedelta(days=400))
        pages = mm.pages("s")
        assert len(pages) == 1 and pages[0].text_tokens < 73
        assert pages[0].tier == "text" and pages[0].width is None


def test_a_page_becomes_an_image_only_at_a_tier_that_costs_less_than_its_text(tmp_path) -> None:
    turns = conversation(6, START, timedelta(minutes=1), sentences=(1, 2))  # ~150 text tokens
    policy = AgingPolicy(keep_last_turns=0, min_fill=0)
    with MemoryManager(tmp_path / "m.db", policy=policy) as mm:
        mm.add_turns("s", turns)
        text_tokens = sum(t.tokens for t in mm.turns("s"))
        assert 111 < text_tokens < 273
        mm.age(now=START + timedelta(days=2))  # due for base (273): does not pay
        assert mm.pages("s")[0].tier == "text"
        mm.age(now=START + timedelta(days=8))  # due for small (111): pays
        assert mm.pages("s")[0].tier == "small"


def test_a_small_partial_page_stays_open_until_the_sitting_ends(tmp_path) -> None:
    # It used to wait a week of quiet; now it is the open page, sealed after the sitting gap.
    turns = conversation(8, START, timedelta(minutes=1))
    with MemoryManager(tmp_path / "m.db", policy=AgingPolicy(keep_last_turns=2)) as mm:
        mm.add_turns("s", turns)
        report = mm.age(now=turns[-1]["at"] + timedelta(minutes=30))
        assert report.pages_created == 0 and report.pages_opened == 1
        assert [(p.last_seq, p.open) for p in mm.pages("s")] == [(6, True)]
        gap = AgingPolicy().sitting_gap
        assert mm.age(now=turns[-1]["at"] + gap).pages_created == 1
        assert [(p.last_seq, p.open) for p in mm.pages("s")] == [(6, False)]


def test_a_partial_page_of_at_least_min_fill_seals_after_an_hour(tmp_path) -> None:
    turns = conversation(200, START, timedelta(minutes=1))
    with MemoryManager(tmp_path / "m.db", policy=AgingPolicy(keep_last_turns=4)) as mm:
        mm.add_turns("s", turns)
        assert mm.age(now=turns[-1]["at"] + timedelta(minutes=30)).pages_created == 1  # a full one
        full = mm.pages("s")[0]
        assert mm.age(now=turns[-1]["at"] + timedelta(hours=2)).pages_created == 1
        assert mm.pages("s")[-1].first_seq == full.last_seq + 1
        assert mm.pages("s")[-1].last_seq == 196


def test_the_text_window_can_be_counted_in_tokens(tmp_path) -> None:
    turns = conversation(40, START, timedelta(minutes=1))
    policy = AgingPolicy(keep_last_turns=0, keep_last_tokens=500)
    with MemoryManager(tmp_path / "m.db", policy=policy) as mm:
        mm.add_turns("s", turns)
        mm.age(now=START + timedelta(days=8))
        last = mm.pages("s")[-1].last_seq
        kept = sum(t.tokens for t in mm.turns("s", since=last))
        assert kept <= 500 and kept + mm.turns("s")[last - 1].tokens > 500


def test_a_tool_call_is_never_split_from_its_results(tmp_path) -> None:
    turns = []
    for i in range(120):
        at = START + timedelta(minutes=i)
        turns.append({"role": "user", "content": f"question {i} " + "detail " * 40, "at": at})
        turns.append(
            {
                "role": "assistant",
                "content": "",
                "at": at,
                "metadata": {"tool_calls": [{"id": f"c{i}", "name": "lookup", "args": {}}]},
            }
        )
        turns.append(
            {
                "role": "tool",
                "content": "result " * 30,
                "at": at,
                "metadata": {"tool_call_id": f"c{i}"},
            }
        )
    with MemoryManager(tmp_path / "m.db", policy=AgingPolicy(keep_last_turns=2)) as mm:
        mm.add_turns("s", turns)
        mm.age(now=START + timedelta(days=3))
        roles = {t.seq: t.role for t in mm.turns("s")}
        pages = mm.pages("s")
        assert len(pages) >= 2
        for p in pages:
            assert roles[p.first_seq] != "tool"
            assert roles.get(p.last_seq + 1) != "tool"


def test_pressure_fades_the_oldest_first_until_the_session_fits(tmp_path) -> None:
    recent = conversation(400, datetime(2024, 1, 1, tzinfo=UTC), timedelta(minutes=1))
    now = recent[-1]["at"] + timedelta(minutes=90)
    policy = AgingPolicy(by_time=None, budget=3000, seal_after=timedelta(minutes=30))
    with MemoryManager(tmp_path / "m.db", policy=policy) as mm:
        mm.add_turns("s", recent)
        mm.age(now=now)
        pages = mm.pages("s")
        assert len(pages) >= 3
        window = sum(t.tokens for t in mm.turns("s", since=pages[-1].last_seq))
        assert window + sum(p.token_cost for p in pages) <= 3000
        # and what the pass budgeted is what assembly shows: all of it, at the stored tiers
        ctx = mm.assemble("s", budget=3000, now=now)
        assert ctx.tokens <= 3000 and ctx.omitted_turns == 0
        assert all(p.tier == p.stored_tier for p in ctx.pages)
        ranks = [Tier.parse(p.tier) for p in pages]
        assert ranks == sorted(ranks, reverse=True)  # oldest faded most
        assert ranks[-1] < Tier.TINY  # the newest kept sharper


def test_without_pressure_or_time_pages_stay_text(tmp_path) -> None:
    policy = AgingPolicy(by_time=None, keep_last_turns=2)
    with MemoryManager(tmp_path / "m.db", policy=policy) as mm:
        mm.add_turns("s", TWO_MONTHS[:150])
        mm.age(now=NOW)
        assert {p.tier for p in mm.pages("s")} == {"text"}


class CountingEncoder:
    """A real (if trivial) encoder: a 4×4 average-pooled thumbnail as float32 features."""

    key = "thumbnail-4x4/float32"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode(self, png: bytes, tier: str) -> EncodedPage:
        self.calls.append(tier)
        img = read_png(png).resize((4, 4), Image.Resampling.BOX)
        data = struct.pack("16f", *(v / 255 for v in img.tobytes()))
        return EncodedPage(data=data, dtype="float32", shape=(16,))


def _cached(mm: MemoryManager) -> dict[int, set[str]]:
    with mm.database.read() as s:
        out: dict[int, set[str]] = {}
        for r in s.scalars(select(VisualTokenRow)):
            out.setdefault(r.page_id, set()).add(r.tier)
        return out


def test_the_encoder_hook_caches_visual_tokens_for_every_form_a_page_can_be_shown_in(
    tmp_path,
) -> None:
    enc = CountingEncoder()
    with MemoryManager(tmp_path / "m.db", encoder=enc) as mm:
        mm.add_turns("s", TWO_MONTHS[:200])
        mm.age(now=TWO_MONTHS[199]["at"] + timedelta(hours=3))
        fainter = {t.label for t in (Tier.LARGE, Tier.BASE, Tier.SMALL, Tier.TINY)}
        for p in mm.pages("s"):  # the stored tier and each fainter rendition, none sharper
            want = {t for t in fainter if Tier.parse(t) >= Tier.parse(p.tier)}
            assert _cached(mm).get(p.page_id, set()) == want, p
        assert len(enc.calls) == sum(len(v) for v in _cached(mm).values())
        with mm.database.read() as s:
            assert all(
                r.encoder_key == enc.key and r.shape == [16]
                for r in s.scalars(select(VisualTokenRow))
            )
        mm.age(now=TWO_MONTHS[199]["at"] + timedelta(days=40))  # -> tiny
        # the old tiers' entries went with the tier change
        assert _cached(mm) and all(v == {"tiny"} for v in _cached(mm).values())
        # assembly under a tight budget only shows forms that are cached
        ctx = mm.assemble("s", budget=600, now=TWO_MONTHS[199]["at"] + timedelta(days=40))
        cached = _cached(mm)
        assert all(p.tier in cached[p.page_id] for p in ctx.pages)
        mm.forget("s")
        assert _cached(mm) == {}


def test_the_scheduler_ages_in_the_background_and_survives_a_failing_pass(tmp_path, caplog) -> None:
    old = conversation(200, datetime(2020, 1, 1, tzinfo=UTC), timedelta(hours=1))
    with MemoryManager(tmp_path / "m.db") as mm:
        mm.add_turns("s", old)
        calls = {"n": 0}

        def flaky():  # the first pass fails, the next ones must still run
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("disk on fire")
            return mm.age()

        scheduler = AgingScheduler(flaky)
        with caplog.at_level(logging.ERROR, logger="optical_memory.scheduler"):
            scheduler.start(0.2, run_now=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(p.tier == "tiny" for p in _pages(mm)):
                time.sleep(0.1)
            scheduler.stop()
        assert scheduler.failures == 1 and scheduler.passes >= 1
        assert any(p.tier == "tiny" for p in mm.pages("s"))
        assert calls["n"] >= 2
        assert "disk on fire" in caplog.text


def _pages(mm: MemoryManager):
    try:
        return mm.pages("s")
    except Exception:
        return []
