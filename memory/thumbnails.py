"""Thumbnails: where a turn's images are drawn small on a page, and how.

A turn's images (``Turn.attachments``) are always shown on a page as their label,
``[image 640×480 png]`` (see :func:`~optical_memory.turn_text.image_label`), in the turn's
text. On a page drawn at a legible size, each image is also drawn as a small greyscale
thumbnail, *where it pays*:

The rule (:func:`pays`): a thumbnail is drawn only when, in the image the model is sent, its
short side is at least :data:`MIN_THUMB_PX` pixels. Vision encoders read images in patches of
14-16 px (DeepSeek-OCR's SAM/CLIP 16 px, Qwen2.5-VL 14 px merged 2×2 into one 28 px token,
OpenAI's 32 px patches): a thumbnail under two 16 px patches across is one or two blobs of
grey, it tells the model nothing the label does not, and it costs page space that text could
use. So:

- on the large rendition (and on a fainter tier made by downsampling the large bitmap) a
  thumbnail is drawn if it keeps :data:`MIN_THUMB_PX` on its short side *at that tier's
  resolution*; a downsampled tier where it would not is laid out again on the same canvas
  with the label alone (so each tier is still drawn independently of the others);
- an abridged (faint) tier, re-laid out on a smaller canvas with long turns cut, shows the
  label only: its text is already at the smallest legible size, a thumbnail there would be
  below the threshold anyway, and its space goes to text;
- an image is never drawn larger than it is (a 20×20 icon stays a label).

A thumbnail is :data:`THUMB_LINES` text lines tall at most (it grows with the page's font: a
short page set large shows larger thumbnails), its aspect kept, set at the left of the lines
that follow the turn's text; text flows on beside it. The thumbnails of one turn (or of turns
close together) sit side by side, taking at most :data:`MAX_FLOAT_SHARE` of the line width;
the ones beyond that go below them, once they end. The packer counts a thumbnail's area, and
one line more, in its footprint (:func:`footprint_px`), so a page with thumbnails fits like any
other (it never overflows; it may be set a little larger than a full text page).

Drawing is deterministic: the stored bytes are decoded (first frame; a JPEG at a reduced DCT
scale still at least 4× the box), laid on white where transparent, converted to greyscale ("L", the pages' mode) and resampled with Lanczos to the
box, which gets a one-pixel grey frame.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_FLOAT_SHARE",
    "MIN_THUMB_PX",
    "THUMB_LINES",
    "TurnImage",
    "box_size",
    "draw_thumbnail",
    "footprint_px",
    "gap_px",
    "pays",
]

MIN_THUMB_PX = 32
"""Smallest short side (px, in the image the model is sent) at which a thumbnail is drawn:
two 16 px encoder patches. Below it a thumbnail is noise, and the label alone is shown."""
THUMB_LINES = 4
"""Tallest thumbnail, in text lines of the page, less a gap (48 px at the default 11 px font:
38 px on DeepSeek-OCR's base tier, still over :data:`MIN_THUMB_PX`; a page set in a larger
font shows larger thumbnails)."""
MAX_FLOAT_SHARE = 1 / 3
"""Most of a line's width the thumbnails beside it may take; text keeps the rest."""
_FRAME = 128  # grey of the one-pixel frame around a thumbnail
# Lines counted for where a thumbnail ends up (see footprint_px): with 0.5 or 0.75, pages
# dense with images (one on every turn) were set below min_font_px; with 1, none of 126.
_END_LINES = 1.0


@dataclass(frozen=True)
class TurnImage:
    """One image of a turn as a page may draw it: its size and stored bytes (``data`` None:
    only measured, e.g. by the packer; drawn as an empty frame)."""

    width: int
    height: int
    data: bytes | None = field(default=None, repr=False)


def gap_px(line_height: int) -> int:
    """Blank space between a thumbnail and what is beside or below it."""
    return max(2, line_height // 3)


def box_size(image: TurnImage, line_height: int, line_width: float) -> tuple[int, int]:
    """The thumbnail's size on a canvas whose lines are ``line_height`` apart: at most
    :data:`THUMB_LINES` lines tall (less the gap below it) and :data:`MAX_FLOAT_SHARE` of
    ``line_width`` wide, the image's aspect kept, never larger than the image."""
    w, h = max(1, image.width), max(1, image.height)
    max_h = THUMB_LINES * line_height - gap_px(line_height)
    max_w = line_width * MAX_FLOAT_SHARE
    scale = min(max_h / h, max_w / w, 1.0)
    return max(1, math.floor(w * scale)), max(1, math.floor(h * scale))


def pays(box: tuple[int, int], scale: float) -> bool:
    """Whether a thumbnail of ``box`` (px on the canvas it is drawn on) is worth drawing on
    an image ``scale`` times that canvas: its short side stays >= :data:`MIN_THUMB_PX`."""
    return min(box) * scale >= MIN_THUMB_PX - 1e-9


def float_lines(box_h: int, line_height: int) -> int:
    """How many lines a thumbnail ``box_h`` tall sits beside (the gap below included)."""
    return max(1, math.ceil((box_h + gap_px(line_height)) / line_height))


def footprint_px(image: TurnImage, line_height: int, line_width: float) -> float:
    """Line width (px, summed over lines) a thumbnail takes from text: its width and gap on
    each line it sits beside, and one line more for where it ends up (after a turn's last
    line, or at the foot of a page, the lines beside it may stay empty)."""
    w, h = box_size(image, line_height, line_width)
    return (w + gap_px(line_height)) * float_lines(h, line_height) + line_width * _END_LINES


def draw_thumbnail(image: TurnImage, box: tuple[int, int]) -> Image.Image:
    """The image as a greyscale ("L") thumbnail of exactly ``box``, framed; deterministic."""
    from PIL import Image as PILImage

    w, h = box
    out = PILImage.new("L", (w, h), _FRAME)
    if image.data is None or w < 3 or h < 3:
        if w >= 3 and h >= 3:
            out.paste(255, (1, 1, w - 1, h - 1))
        return out
    with PILImage.open(io.BytesIO(image.data)) as im:
        im.seek(0)
        if im.format == "JPEG":  # decode at a reduced scale (libjpeg's DCT), still >= 4x the box
            im.draft(None, (4 * w, 4 * h))
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
            grey = PILImage.alpha_composite(white, rgba).convert("L")
        else:
            grey = im.convert("L")
    small = grey.resize((w - 2, h - 2), PILImage.Resampling.LANCZOS, reducing_gap=3.0)
    out.paste(small, (1, 1))
    return out
