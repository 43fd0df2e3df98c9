"""The page images assembly sends are kept between calls: read once, never stale, bounded."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from helpers import sent_sql

from benchmarks.chatgen import conversation
from optical_memory import AgingPolicy, MemoryManager
from optical_memory.errors import InvalidConfiguration
from optical_memory.image_cache import CachedImage, ImageCache

START = datetime(2023, 1, 2, 8, 0, tzinfo=UTC)
HISTORY = conversation(400, START, timedelta(hours=3))
NOW = HISTORY[-1]["at"] + timedelta(minutes=30)
LATER = NOW + timedelta(days=120)  # every page fades a tier or more by then


def _image_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if "png" in s.lower() and "select" in s.lower()]


@pytest.fixture
def aged(tmp_path) -> MemoryManager:
    m = MemoryManager(tmp_path / "m.db", policy=AgingPolicy(keep_last_turns=10))
    m.add_turns("s", HISTORY)
    m.age(now=NOW)
    yield m
    m.close()


def test_a_shown_image_is_read_once_then_served_from_memory(aged: MemoryManager) -> None:
    first = sent_sql(aged, lambda: aged.assemble("s", budget=4096, now=NOW))
    assert _image_reads(first), "the first assembly reads the images it shows"
    out = []
    again = sent_sql(aged, lambda: out.append(aged.assemble("s", budget=4096, now=NOW)))
    assert _image_reads(again) == []
    with MemoryManager(aged.url, image_cache_bytes=0) as cold:
        fresh = cold.assemble("s", budget=4096, now=NOW)
        assert _image_reads(sent_sql(cold, lambda: cold.assemble("s", budget=4096, now=NOW)))
    assert out[0].fingerprint() == fresh.fingerprint()
    assert [p.png for p in out[0].pages] == [p.png for p in fresh.pages]
    for page in out[0].pages:  # the kept base64 text is the bytes' own
        assert page.base64 == base64.b64encode(page.png).decode("ascii")
        assert page.data_url == f"data:image/png;base64,{page.base64}"


def test_a_shown_images_data_url_is_made_once_and_both_texts_are_the_bytes_own(
    aged: MemoryManager,
) -> None:
    """The OpenAI formats send each page as a data URL: kept between calls, it is the same
    string each time, not a new 140 kB copy per page; base64 and data URL asked in either
    order (and another media type) are the bytes' own."""
    one = aged.assemble("s", budget=4096, now=NOW)
    two = aged.assemble("s", budget=4096, now=NOW)
    assert one.pages, "the fixture's prompt shows pages"
    for a, b in zip(one.pages, two.pages, strict=True):
        assert a.data_url is b.data_url
        assert b.base64 == base64.b64encode(b.png).decode("ascii")
    for first in ("base64", "data_url"):
        entry = CachedImage(bytes(range(256)) * 3)
        text = base64.b64encode(entry.png).decode("ascii")
        if first == "base64":
            assert entry.base64 == text
        assert entry.data_url("image/png") == f"data:image/png;base64,{text}"
        assert entry.data_url("image/webp") == f"data:image/webp;base64,{text}"
        assert entry.base64 == text


def test_a_page_that_fades_is_read_again_even_when_another_process_aged_it(
    aged: MemoryManager,
) -> None:
    """Aging in another manager (its own connections, as another process would have) moves
    pages to fainter tiers and new versions: the kept images of the old versions are never
    sent again."""
    before = aged.assemble("s", budget=4096, now=NOW)
    with MemoryManager(aged.url, policy=AgingPolicy(keep_last_turns=10)) as other:
        report = other.age(now=LATER)
        assert sum(report.pages_moved.values()) > 0
    after = aged.assemble("s", budget=4096, now=LATER)
    with MemoryManager(aged.url, image_cache_bytes=0) as cold:
        fresh = cold.assemble("s", budget=4096, now=LATER)
    assert after.fingerprint() == fresh.fingerprint()
    assert after.fingerprint() != before.fingerprint()
    assert {(p.page_id, p.tier) for p in after.pages} != {(p.page_id, p.tier) for p in before.pages}


def test_the_cache_holds_at_most_its_capacity_and_zero_turns_it_off() -> None:
    cache = ImageCache(capacity=10_000)
    for i in range(10):
        cache.put((i, 1, "tiny"), bytes(1500))  # charged 3,500 each (bytes and base64)
    assert cache.held <= 10_000 and len(cache) == 2
    assert cache.get((9, 1, "tiny")) is not None and cache.get((0, 1, "tiny")) is None
    cache.get((8, 1, "tiny"))
    cache.put((10, 1, "tiny"), bytes(1500))  # the least recently used (9) goes
    assert cache.get((9, 1, "tiny")) is None and cache.get((8, 1, "tiny")) is not None
    too_big = cache.put((11, 1, "tiny"), bytes(5000))
    assert too_big.png == bytes(5000) and cache.get((11, 1, "tiny")) is None
    off = ImageCache(capacity=0)
    off.put((1, 1, "tiny"), b"png")
    assert len(off) == 0 and off.get((1, 1, "tiny")) is None


@pytest.mark.parametrize("value", [-1, 1.5, "64", True, None])
def test_a_bad_capacity_is_refused_with_what_to_pass(tmp_path, value) -> None:
    with pytest.raises(InvalidConfiguration, match="image_cache_bytes"):
        MemoryManager(tmp_path / "m.db", image_cache_bytes=value)


def test_a_scoped_view_shares_its_managers_images(aged: MemoryManager) -> None:
    aged.assemble("s", budget=4096, now=NOW)
    view = aged.scoped(None)
    assert _image_reads(sent_sql(aged, lambda: view.assemble("s", budget=4096, now=NOW))) == []


def test_an_image_repaired_at_the_same_tier_is_read_again(aged: MemoryManager) -> None:
    """A repair redraws a damaged page at the tier it has (a new version, same id and
    tier): what was kept of the damaged bytes is never sent after it."""
    from sqlalchemy import text

    shown = aged.assemble("s", budget=4096, now=NOW).pages[-1]
    assert shown.tier == shown.stored_tier  # the stored image itself, not a rendition
    with aged.database.engine.begin() as conn:
        conn.execute(
            text("UPDATE om_pages SET png = :b WHERE id = :i"),
            {"b": b"garbage" * 100, "i": shown.page_id},
        )
    with MemoryManager(aged.url, policy=AgingPolicy(keep_last_turns=10)) as mm:
        damaged = mm.assemble("s", budget=4096, now=NOW)  # keeps the damaged bytes
        assert [p.png for p in damaged.pages if p.page_id == shown.page_id] == [b"garbage" * 100]
        assert mm.verify(repair=True).pages_repaired == 1
        repaired = mm.assemble("s", budget=4096, now=NOW)
        assert [p.png for p in repaired.pages if p.page_id == shown.page_id] == [shown.png]
