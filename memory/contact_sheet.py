"""A contact sheet: page images side by side in labelled rows, as one PNG (Pillow only).

Every image is scaled by the same factor, so a page stored at a faint tier also looks smaller:
the sheet shows at a glance how much of each page the model still gets to see.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from PIL import Image, ImageDraw, ImageFont

from .errors import InvalidInput

__all__ = ["Tile", "contact_sheet"]

_BG = (246, 246, 243)
_INK = (30, 30, 30)
_MUTED = (110, 110, 110)
_FRAME = (170, 170, 170)
_PAD = 10
_LABEL_PX = 12
_HEAD_PX = 14
_TITLE_PX = 18
_MIN_CELL = 110  # wide enough for a label


@dataclass(frozen=True)
class Tile:
    """One image on the sheet and the caption shown under it."""

    png: bytes
    label: str


@cache
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        data = resources.files("optical_memory.fonts").joinpath("DejaVuSans.ttf").read_bytes()
        return ImageFont.truetype(io.BytesIO(data), px)
    except (OSError, ModuleNotFoundError, FileNotFoundError):  # pragma: no cover - broken install
        return ImageFont.load_default()


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[Tile]]],
    *,
    scale: float = 0.15,
    max_width: int = 1600,
    title: str | None = None,
) -> bytes:
    """Lay out ``rows`` of tiles (a heading each) as one PNG, wrapping rows at ``max_width``.

    Tiles are drawn at ``scale`` times their own size, bottom-aligned in cells as large as the
    row's largest tile, with their label underneath. Empty rows are left out. The PNG bytes are
    deterministic. Raises :class:`~optical_memory.errors.InvalidInput` for a scale outside (0, 1].
    """
    if not 0 < scale <= 1:
        raise InvalidInput("scale must be in (0, 1]")
    rows = [(heading, list(tiles)) for heading, tiles in rows if tiles]
    label_h = _LABEL_PX + 6
    head_h = _HEAD_PX + 10
    title_h = _TITLE_PX + 16 if title else 0
    laid: list[tuple[str, list[tuple[Tile, Image.Image]], int, int, int]] = []
    width, height = 2 * _PAD + 240, _PAD + title_h + (0 if rows else head_h)
    for heading, tiles in rows:
        thumbs = [(t, _thumbnail(t.png, scale)) for t in tiles]
        cell_w = max([im.width for _, im in thumbs] + [_MIN_CELL])
        cell_h = max(im.height for _, im in thumbs)
        per_line = max(1, (max_width - _PAD) // (cell_w + _PAD))
        lines = -(-len(thumbs) // per_line)
        laid.append((heading, thumbs, cell_w, cell_h, per_line))
        width = max(width, _PAD + min(per_line, len(thumbs)) * (cell_w + _PAD))
        height += head_h + lines * (cell_h + label_h + _PAD)
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    y = _PAD
    if title:
        draw.text((_PAD, y), title, fill=_INK, font=_font(_TITLE_PX))
        y += title_h
    if not rows:
        draw.text((_PAD, y), "(no page images yet)", fill=_MUTED, font=_font(_HEAD_PX))
    for heading, thumbs, cell_w, cell_h, per_line in laid:
        draw.text((_PAD, y), heading, fill=_INK, font=_font(_HEAD_PX))
        y += head_h
        for i, (tile, im) in enumerate(thumbs):
            x0 = _PAD + (i % per_line) * (cell_w + _PAD)
            y0 = y + (i // per_line) * (cell_h + label_h + _PAD)
            ix, iy = x0 + (cell_w - im.width) // 2, y0 + cell_h - im.height
            sheet.paste(im, (ix, iy))
            draw.rectangle((ix - 1, iy - 1, ix + im.width, iy + im.height), outline=_FRAME)
            draw.text(
                (x0 + cell_w // 2, y0 + cell_h + 3),
                _fit(draw, tile.label, cell_w),
                fill=_MUTED,
                font=_font(_LABEL_PX),
                anchor="ma",
            )
        y += -(-len(thumbs) // per_line) * (cell_h + label_h + _PAD)
    out = io.BytesIO()
    sheet.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _thumbnail(png: bytes, scale: float) -> Image.Image:
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        rgb = im.convert("RGB")
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    font = _font(_LABEL_PX)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
