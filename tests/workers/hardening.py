"""Shared helpers of the hardening tests (issue 8): raw row counts, image checks, an encoder."""

from __future__ import annotations

import time
from collections.abc import Callable

from helpers import read_png, safetensors_bytes
from PIL import Image
from sqlalchemy import text

from optical_memory import EncodedPage, MemoryManager, get_target

TABLES = ("om_sessions", "om_turns", "om_pages", "om_page_renditions", "om_visual_tokens")


def row_counts(mm: MemoryManager) -> dict[str, int]:
    """Rows in every table of the store, read with plain SQL."""
    with mm.database.engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in TABLES}


def check_pages_match_tiers(conn, target_name: str | None = None) -> int:  # type: ignore[no-untyped-def]
    """Every page's image matches its tier: decodes, has the tier's canvas; text pages have no
    image; renditions exist exactly for the fainter tiers. Returns the pages checked."""
    order = ["text", "large", "base", "small", "tiny"]
    pages = conn.execute(
        text("SELECT id, tier, png, width, height, target FROM om_pages ORDER BY id")
    ).all()
    for p in pages:
        rend = {
            r.tier: r
            for r in conn.execute(
                text("SELECT tier, png, width, height FROM om_page_renditions WHERE page_id = :i"),
                {"i": p.id},
            )
        }
        if p.tier == "text":
            assert p.png is None and p.width is None and not rend, f"text page {p.id} has images"
            continue
        target = get_target(target_name or p.target)
        want = target.spec(p.tier).size
        assert read_png(p.png).size == want, f"page {p.id} image is not its {p.tier} canvas"
        assert (p.width, p.height) == want
        fainter = order[order.index(p.tier) + 1 :]
        assert sorted(rend) == sorted(fainter), f"page {p.id}: renditions {sorted(rend)}"
        for tier, r in rend.items():
            assert read_png(r.png).size == target.spec(tier).size
            assert (r.width, r.height) == target.spec(tier).size
    return len(pages)


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


class ThumbnailEncoder:
    """A small, real, deterministic visual encoder: 8x8 greyscale thumbnail as a float32
    tensor, serialised as safetensors. The ``marker`` lands in the safetensors metadata."""

    def __init__(self, marker: str = "") -> None:
        self.marker = marker
        self.calls = 0

    @property
    def key(self) -> str:
        return "test/thumbnail-8x8/float32"

    def encode(self, png: bytes, tier: str) -> EncodedPage:
        self.calls += 1
        small = read_png(png, "L").resize((8, 8), Image.Resampling.BOX)
        values = [v / 255.0 for v in small.tobytes()]  # rounds to float32 as numpy's did
        meta = {"marker": f"{self.marker}@{tier}"}
        data = safetensors_bytes({"tokens": ("F32", (1, 64), values)}, metadata=meta)
        return EncodedPage(data, "float32", (1, 64))
