"""Thumbnails: an archived turn's images are drawn small on pages where they pay (at least
MIN_THUMB_PX on their short side in the image the model is sent), as their label otherwise;
pages with thumbnails never overflow, render deterministically, and forget removes them."""

from __future__ import annotations

import io
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import make_history, raw_sqlite_bytes
from PIL import Image, ImageChops, ImageStat

from benchmarks.ocr import synthetic_chat
from optical_memory import AgingPolicy, MemoryManager, get_target
from optical_memory.layout import max_lines
from optical_memory.render import PageRenderer, RenderTurn, TurnImage
from optical_memory.thumbnails import MIN_THUMB_PX, THUMB_LINES, box_size, draw_thumbnail, pays
from optical_memory.turn_text import image_label, page_text

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
TARGET = get_target("deepseek-ocr")
LAYOUT = TARGET.layout


def half_and_half(size: tuple[int, int] = (400, 300)) -> bytes:
    """Left half black, right half white: a pattern a thumbnail must keep."""
    im = Image.new("RGB", size, (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def as_render_turns(turns) -> list[RenderTurn]:
    """The archived turns as a page draws them (public names only)."""
    return [
        RenderTurn(
            t.role,
            t.at,
            page_text(t.role, t.content, t.metadata, t.attachments),
            images=tuple(TurnImage(a.width, a.height, a.data) for a in t.attachments),
        )
        for t in turns
    ]


def crop(png: bytes, layout, thumb) -> Image.Image:
    """The thumbnail's box in a page image drawn from ``layout``."""
    x, top = round(thumb.x), layout.margin + thumb.line * layout.line_height
    return Image.open(io.BytesIO(png)).crop((x, top, x + thumb.width, top + thumb.height))


@pytest.fixture(scope="module")
def renderer() -> PageRenderer:
    return PageRenderer()


def test_the_aging_pass_draws_an_archived_image_as_a_thumbnail(sqlite_url: str) -> None:
    png = half_and_half()
    policy = AgingPolicy(keep_last_turns=4, min_fill=0)
    with MemoryManager(sqlite_url, policy=policy) as mm:
        mm.add_turn("s", "user", "the map", T0, attachments=[png])
        mm.add_turns("s", make_history(40, lambda i: f"turn {i} " + "tide talk " * 60, T0))
        assert not mm.age(now=T0 + timedelta(hours=2)).errors
        page = mm.pages("s")[0]
        assert page.first_seq == 1 and page.tier == "large"
        large = mm.page_image("s", page.page_id)
        turns = as_render_turns(mm.read("s", page.first_seq, page.last_seq))
        plan = mm.renderer.plan(turns, LAYOUT, LAYOUT)
        # the stored page is exactly the renderer's drawing of the archived turns, images and all
        (drawn,) = mm.renderer.render(turns, LAYOUT, [LAYOUT])
        assert drawn.png == large
        (thumb,) = plan.layout.thumbs
        assert min(thumb.width, thumb.height) >= MIN_THUMB_PX
        assert thumb.height <= THUMB_LINES * plan.layout.line_height
        assert abs(thumb.width / thumb.height - 400 / 300) < 0.05  # aspect kept
        # its label is still in the text, on the line above the thumbnail
        label = image_label("image/png", 400, 300)
        assert label in plan.text_lines[thumb.line - 1]
        # the pixels in the box are the image: dark left half, light right half
        box = crop(large, plan.layout, thumb)
        w, h = box.size
        left = ImageStat.Stat(box.crop((3, 3, w // 2 - 3, h - 3))).mean[0]
        right = ImageStat.Stat(box.crop((w // 2 + 3, 3, w - 3, h - 3))).mean[0]
        assert left < 30 and right > 225
        # and resemble a plain downsampling of the image
        ref = Image.open(io.BytesIO(png)).convert("L").resize((w - 2, h - 2))
        diff = ImageChops.difference(box.crop((1, 1, w - 1, h - 1)), ref)
        assert ImageStat.Stat(diff).mean[0] < 12
        # a full page: the base tier downsamples it, thumbnail and all (38 px: it pays); the
        # faint tiers are abridged and show the label only
        base = mm.renderer.plan(turns, LAYOUT, TARGET.spec("base").size)
        assert not base.abridged and base.layout is not None and base.layout.thumbs
        for tier in ("small", "tiny"):
            faint = mm.renderer.plan(turns, LAYOUT, TARGET.spec(tier).size)
            assert faint.abridged and faint.layout.thumbs == ()
            assert label in " ".join(faint.text_lines)
            png_at = mm.page_image("s", page.page_id, tier)
            assert Image.open(io.BytesIO(png_at)).size == TARGET.spec(tier).size


def test_a_size_where_the_thumbnail_would_be_noise_shows_the_label(
    renderer: PageRenderer,
) -> None:
    image = TurnImage(640, 480, half_and_half((640, 480)))
    turns = [RenderTurn("user", T0, "a photo [image 640×480 png]", images=(image,))]
    large = renderer.plan(turns, LAYOUT, LAYOUT)
    (thumb,) = large.layout.thumbs
    seen_with = seen_without = False
    for side in range(200, 1281, 40):
        plan = renderer.plan(turns, LAYOUT, (side, side))
        scale = side / LAYOUT[0]
        if plan.abridged:
            assert plan.layout.thumbs == ()
            continue
        drawn = bool(plan.layout.thumbs)
        assert drawn == pays((thumb.width, thumb.height), scale), side
        if drawn:
            seen_with = True
            assert all(pays((t.width, t.height), scale) for t in plan.layout.thumbs)
        else:
            seen_without = True
        assert "[image 640×480 png]" in " ".join(plan.text_lines)
    assert seen_with and seen_without


def test_images_too_small_to_pay_stay_labels(renderer: PageRenderer) -> None:
    icon = TurnImage(20, 20, half_and_half((20, 20)))
    panorama = TurnImage(8000, 200, None)  # at a third of a line wide: a few px tall
    turns = [RenderTurn("user", T0, "icons", images=(icon, panorama))]
    assert renderer.plan(turns, LAYOUT, LAYOUT).layout.thumbs == ()
    plain = RenderTurn("user", T0, "icons")
    assert renderer.footprint(turns[0], LAYOUT) == renderer.footprint(plain, LAYOUT)
    assert renderer.render(turns, LAYOUT, [LAYOUT]) == renderer.render([plain], LAYOUT, [LAYOUT])


_SIZES = [(640, 480), (1920, 1080), (300, 2000), (4000, 400), (48, 48), (20, 20), (1000, 1000)]


def page_with_images(
    renderer: PageRenderer, canvas: tuple[int, int], seed: int, every: int
) -> list[RenderTurn]:
    """Synthetic chat with images on every ``every``-th turn, packed to capacity as the
    packer packs (by footprint)."""
    rnd = random.Random(seed)
    cap, used, out = renderer.capacity(canvas), 0, []
    for i, turn in enumerate(synthetic_chat(seed)):
        if i % every == 0:
            images = tuple(TurnImage(*rnd.choice(_SIZES)) for _ in range(rnd.choice([1, 1, 2])))
            labels = " ".join(image_label("image/png", a.width, a.height) for a in images)
            turn = replace(turn, text=f"{turn.text} {labels}", images=images)
        fp = renderer.footprint(turn, canvas)
        if used + fp > cap:
            break
        out.append(turn)
        used += fp
    return out


@pytest.mark.parametrize("canvas", [LAYOUT, (1024, 1024), (1536, 1536), (1280, 720), (640, 640)])
def test_a_page_with_thumbnails_filled_to_capacity_never_overflows(
    renderer: PageRenderer, canvas: tuple[int, int]
) -> None:
    for seed, every in [(0, 1), (1, 2), (2, 5), (3, 1)]:
        turns = page_with_images(renderer, canvas, seed, every)
        lay = renderer.fit(turns, canvas)
        # never cut, never set below min_font_px (the packer counts thumbnails generously)
        assert lay.font_px >= renderer.min_font_px and not lay.truncated
        m = renderer.metrics(lay.font_px)
        line_w = canvas[0] - 2 * lay.margin
        paying = [
            a for t in turns for a in t.images if pays(box_size(a, m.line_height, line_w), 1.0)
        ]
        assert lay.thumbs and len(lay.thumbs) <= len(paying)
        if every > 1:  # one turn's images never crowd each other out
            assert len(lay.thumbs) == len(paying)
        for th in lay.thumbs:
            rows = -(-(th.height + 1) // lay.line_height)
            assert th.line + rows <= max_lines(m, canvas)
            assert th.x + th.width <= canvas[0] - lay.margin
            for line in lay.lines[th.line : th.line + rows]:  # text flows beside, never over
                assert all(run.x >= th.x + th.width for run in line.runs)


def test_rendering_with_thumbnails_is_deterministic(renderer: PageRenderer) -> None:
    rgba = Image.new("RGBA", (300, 200), (255, 0, 0, 128))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    jpeg = io.BytesIO()
    Image.new("RGB", (500, 500), (0, 90, 200)).save(jpeg, "JPEG")
    images = (TurnImage(300, 200, buf.getvalue()), TurnImage(500, 500, jpeg.getvalue()))
    turns = [
        RenderTurn("user", T0, "two pictures " + "and words " * 40, images=images),
        RenderTurn("assistant", T0 + timedelta(minutes=1), "thanks " * 200),
    ]
    sizes = [TARGET.spec(t).size for t in ("large", "base", "small", "tiny")]
    first = renderer.render(turns, LAYOUT, sizes)
    again = PageRenderer().render(turns, LAYOUT, sizes)
    assert [i.png for i in first] == [i.png for i in again]
    assert len(renderer.plan(turns, LAYOUT, LAYOUT).layout.thumbs) == 2
    # greyscale, like the page: the translucent red is laid on white first
    thumb = draw_thumbnail(images[0], (60, 40))
    assert thumb.mode == "L" and 100 < thumb.getpixel((30, 20)) < 200


def test_forget_removes_an_image_drawn_on_pages(sqlite_url: str) -> None:
    png = half_and_half((360, 240))
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    policy = AgingPolicy(keep_last_turns=4, min_fill=0)
    with MemoryManager(sqlite_url, policy=policy) as mm:
        mm.add_turn("secret", "user", "the map", T0, attachments=[png])
        mm.add_turns("secret", make_history(40, lambda i: f"turn {i} " + "words " * 30, T0))
        assert not mm.age(now=T0 + timedelta(hours=2)).errors
        page = mm.pages("secret")[0]
        large = mm.page_image("secret", page.page_id)
        assert mm.renderer.plan(
            as_render_turns(mm.read("secret", page.first_seq, page.last_seq)), LAYOUT, LAYOUT
        ).layout.thumbs
        mm.forget("secret")
        raw = raw_sqlite_bytes(path)
        assert png not in raw and large[-4096:] not in raw
        assert mm.sessions() == []
