"""The first drawing of a page is cheaper without changing a pixel: unfiltered PNG rows
(lossless: the decoded image is the image; zlib RLE for downsampled tiers), and plans that are
the same whatever the search skips."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from PIL import Image

from benchmarks.chatgen import conversation
from optical_memory import PageRenderer, get_target
from optical_memory.render import RenderTurn

TARGET = get_target("deepseek-ocr")
START = datetime(2024, 1, 1, tzinfo=UTC)


def _full_page(renderer: PageRenderer) -> list[RenderTurn]:
    cap = renderer.capacity(TARGET.layout)
    out: list[RenderTurn] = []
    fill = 0
    for t in conversation(400, START, timedelta(minutes=1), seed=2):
        turn = RenderTurn(t["role"], t["at"], t["content"], keep_whole=len(out) % 7 == 0)
        fill += renderer.footprint(turn, TARGET.layout)
        if fill > cap:
            return out
        out.append(turn)
    return out


def _plain_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def test_every_tier_decodes_to_the_drawn_pixels_and_the_faint_ones_are_smaller() -> None:
    """Unfiltered rows (memory/png.py) against Pillow's encoder at level 6: the same pixels
    at every tier, and fewer bytes on the downsampled tiers the aged history is made of."""
    renderer = PageRenderer()
    turns = _full_page(renderer)
    tiers = ("large", "base", "small", "tiny")
    images = renderer.render(turns, TARGET.layout, [TARGET.spec(t).size for t in tiers])
    for tier, image in zip(tiers, images, strict=True):
        size = TARGET.spec(tier).size
        plan = renderer.plan(turns, TARGET.layout, size)
        pixels = renderer.downsample(renderer.draw(plan.layout, plan.canvas), size)
        decoded = Image.open(io.BytesIO(image.png))
        assert decoded.mode == "L" and decoded.size == size
        assert decoded.tobytes() == pixels.tobytes(), tier  # lossless, whatever the settings
        plain = _plain_png(pixels)
        if tier == "large":
            assert len(image.png) <= 1.1 * len(plain)  # level 4: faster, about as small
        else:
            assert len(image.png) < len(plain), tier
    assert images[2].abridged and images[3].abridged  # the search was exercised
    again = PageRenderer().render(turns, TARGET.layout, [TARGET.spec(t).size for t in tiers])
    assert [i.png for i in again] == [i.png for i in images]  # deterministic
