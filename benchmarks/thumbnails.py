"""Where thumbnails pay, by measurement: what a thumbnail costs a page, what it keeps per tier.

For each target and a few image shapes, on a page filled to capacity (the library's renderer,
synthetic chat, the packer's footprint):

- *cost*: characters of page capacity the packer charges a turn for its thumbnail, against the
  same turn with the label alone (the placeholder), and the share of a page that is; beside it
  the area the thumbnail really covers, in characters of text;
- *kept*: the thumbnail's short side in px at each image tier of the target (``label``: the tier
  shows the placeholder: abridged, or under ``MIN_THUMB_PX``), on a full page (set at the
  smallest font) and on a short one (one turn, set large);
- the time to draw one thumbnail from a 4000×3000 JPEG (decode, greyscale, Lanczos).

    python -m benchmarks.thumbnails          # a few seconds
"""

from __future__ import annotations

import io
import time
from dataclasses import replace

from PIL import Image

from benchmarks.ocr import full_page
from optical_memory.ladder import IMAGE_TIERS, get_target
from optical_memory.layout import margin
from optical_memory.render import PageRenderer, RenderTurn, TurnImage
from optical_memory.thumbnails import MIN_THUMB_PX, box_size, draw_thumbnail, gap_px, pays
from optical_memory.turn_text import image_label

TARGETS = ("deepseek-ocr", "qwen2.5-vl", "openai", "anthropic", "gemini")
SHAPES = ((640, 480), (1920, 1080), (1080, 1920), (400, 400), (3000, 300))


def _with_image(turn: RenderTurn, size: tuple[int, int]) -> RenderTurn:
    image = TurnImage(*size)
    label = image_label("image/png", *size)
    return replace(turn, text=f"{turn.text} {label}", images=(image,))


def _kept(renderer: PageRenderer, turns: list[RenderTurn], canvas, target) -> str:
    cells = []
    for tier in IMAGE_TIERS:
        size = target.spec(tier).size
        plan = renderer.plan(turns, canvas, size)
        scale = min(size[0] / canvas[0], size[1] / canvas[1])
        shown = [min(t.width, t.height) * scale for t in plan.layout.thumbs]
        cells.append(f"{tier.label} {shown[0]:.0f}" if shown else f"{tier.label} label")
    return ", ".join(cells)


def main() -> None:
    renderer = PageRenderer()
    print(
        f"rule: a thumbnail is drawn where its short side is >= {MIN_THUMB_PX} px in the image sent"
    )
    for name in TARGETS:
        target = get_target(name)
        canvas = target.layout
        cap = renderer.capacity(canvas)
        m = renderer.metrics(renderer.min_font_px)
        line_w = canvas[0] - 2 * margin(canvas)
        page = full_page(renderer, canvas, seed=1)
        print(f"\n{name}: layout {canvas[0]}x{canvas[1]}, page capacity {cap:,} chars")
        for shape in SHAPES:
            plain = _with_image(page[0], shape)
            plain = replace(plain, images=())
            with_thumb = _with_image(page[0], shape)
            charged = renderer.footprint(with_thumb, canvas) - renderer.footprint(plain, canvas)
            w, h = box_size(TurnImage(*shape), m.line_height, line_w)
            lines = -(-(h + gap_px(m.line_height)) // m.line_height)
            covered = (w + gap_px(m.line_height)) * lines / m.avg_char
            drawn = pays((w, h), 1.0)
            # on a full page: the image turn replaces the first turn (the packer would
            # start a new page for what no longer fits)
            full = [with_thumb, *page[1:]]
            while sum(renderer.footprint(t, canvas) for t in full) > cap:
                full.pop()
            short = [replace(with_thumb, text=image_label("image/png", *shape))]
            print(
                f"  {shape[0]}x{shape[1]}: box {w}x{h} px"
                + (
                    f", costs {charged} chars ({100 * charged / cap:.1f}% of a page; "
                    f"covers {covered:.0f}) vs the label alone"
                    if drawn
                    else " (under the rule: label only, costs nothing)"
                )
            )
            print(f"    kept, full page:  {_kept(renderer, full, canvas, target)}")
            print(f"    kept, short page: {_kept(renderer, short, canvas, target)}")
    buf = io.BytesIO()
    Image.effect_noise((4000, 3000), 64).convert("RGB").save(buf, "JPEG")
    big = TurnImage(4000, 3000, buf.getvalue())
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        draw_thumbnail(big, (64, 48))
        best = min(best, time.perf_counter() - t)
    print(f"\ndrawing one thumbnail from a 4000x3000 JPEG: {best * 1000:.0f} ms")


if __name__ == "__main__":
    main()
