"""A turn larger than a page (a pasted document) is a page of its own that fades like any other:
its images show its opening, cut, so an old paste costs a faint page's price instead of its
whole text, and never pushes the older pages out of a tight budget. The archive keeps it whole."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from sqlalchemy import text

from benchmarks.ocr import tesseract_available, tesseract_read
from optical_memory import AgingPolicy, MemoryManager, PageSegment, TextSegment, migrations

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
OPENING = "Please summarise this charter for the harbour board meeting."
DOCUMENT = (
    OPENING
    + "\n"
    + "\n".join(
        f"Clause {i}: the harbour master may close berth {i % 40} when the tide is below "
        f"{i % 7 + 1} metres, and must log the closure within {i % 24 + 1} hours."
        for i in range(900)
    )
)


def sittings() -> list[list[dict[str, object]]]:
    """Three sittings a week apart; the middle one pastes the document."""

    def chat(day: int, tag: str) -> list[dict[str, object]]:
        return [
            {
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"{tag} {i}: the ferry to pier {i % 5} leaves at {i % 12 + 1} pm. " * 4,
                "at": T0 + timedelta(days=day, minutes=i),
            }
            for i in range(24)
        ]

    paste = [
        {"role": "user", "content": DOCUMENT, "at": T0 + timedelta(days=7)},
        {
            "role": "assistant",
            "content": "A summary follows.",
            "at": T0 + timedelta(days=7, minutes=1),
        },
    ]
    return [chat(0, "early"), paste, chat(14, "late")]


def fill(mm: MemoryManager) -> None:
    for group in sittings():
        mm.add_turns("s", group)
        mm.age(now=group[-1]["at"] + timedelta(hours=6))  # type: ignore[operator]


def document_page(mm: MemoryManager):  # type: ignore[no-untyped-def]
    seq = next(t.seq for t in mm.turns("s") if t.content == DOCUMENT)
    return next(p for p in mm.pages("s") if p.first_seq <= seq <= p.last_seq), seq


def test_an_oversized_turn_fades_to_an_image_of_its_opening(db_url: str) -> None:
    later = T0 + timedelta(days=60)
    with MemoryManager(db_url, target="deepseek-ocr", policy=AgingPolicy(keep_last_turns=2)) as mm:
        fill(mm)
        assert not mm.age(now=later).errors
        page, seq = document_page(mm)
        assert (page.first_seq, page.last_seq) == (seq, seq)  # alone on its page
        assert page.tier == "tiny" and page.text_tokens > 10_000
        img = Image.open(io.BytesIO(mm.page_image("s", page.page_id)))
        assert img.size == (page.width, page.height) and img.getextrema() != (255, 255)
        assert mm.read("s", seq, seq)[0].content == DOCUMENT  # the archive keeps it whole
        # A budget that every faint page fits but the document's text never could: the paste
        # costs a tiny page, and every older page is still shown.
        ctx = mm.assemble("s", budget=3000, target="deepseek-ocr", now=later)
        assert ctx.tokens <= 3000 and ctx.omitted_turns == 0
        shown = {s.page_id: s for s in ctx.segments if isinstance(s, PageSegment)}
        assert shown[page.page_id].tier == "tiny" and shown[page.page_id].tokens < 200
        assert not any(isinstance(s, TextSegment) and s.turn.seq == seq for s in ctx.segments)


@pytest.mark.skipif(not tesseract_available(), reason="needs the tesseract binary")
def test_the_faded_image_of_an_oversized_turn_shows_its_opening_legibly(sqlite_url: str) -> None:
    with MemoryManager(
        sqlite_url, target="deepseek-ocr", policy=AgingPolicy(keep_last_turns=2)
    ) as mm:
        fill(mm)
        mm.age(now=T0 + timedelta(days=60))
        page, _ = document_page(mm)
        read = tesseract_read(Image.open(io.BytesIO(mm.page_image("s", page.page_id))))
    words = [w.strip(".").lower() for w in OPENING.split()]
    found = sum(w in read.lower() for w in words)
    assert found >= len(words) - 2, read[:300]
    assert "clause 899" not in read.lower()  # cut: the end of the paste is not on the page


def test_migration_0012_lets_an_existing_oversized_page_fade(db_url: str) -> None:
    """Before 0012 a page of one oversized turn was written ``imageable = false`` and stayed
    text for ever; upgraded, the next aging pass draws it."""
    later = T0 + timedelta(days=60)
    with MemoryManager(db_url, target="deepseek-ocr", policy=AgingPolicy(keep_last_turns=2)) as mm:
        fill(mm)
        page, _ = document_page(mm)
        engine = mm.database.engine
        with engine.begin() as conn:  # as revision 0011 wrote such a page
            conn.execute(
                text(
                    "UPDATE om_pages SET imageable = :no, tier = 'text', png = NULL, width = NULL, "
                    "height = NULL, token_cost = text_tokens WHERE id = :id"
                ),
                {"no": False, "id": page.page_id},
            )
            conn.execute(
                text("DELETE FROM om_page_renditions WHERE page_id = :id"), {"id": page.page_id}
            )
        migrations.downgrade(engine, "0011")
    with MemoryManager(db_url, target="deepseek-ocr", policy=AgingPolicy(keep_last_turns=2)) as mm:
        assert migrations.current_revision(mm.database.engine) == migrations.head_revision()
        assert not mm.age(now=later).errors
        page, _ = document_page(mm)
        assert page.tier == "tiny"
