"""Render: chat turns -> greyscale page images, one per requested size.

One job: decide how a page is drawn for each image size (:meth:`PageRenderer.plan`: downsampled
or abridged), draw it and encode it as PNG. What the text is and where it goes is
:mod:`.layout`'s job; which font draws which character, :mod:`.glyphs`'. This module is where
those two meet pixels, and the only one the rest of the library calls (:class:`PageRenderer`).

A page is laid out ONCE on a *layout canvas* (e.g. 1280x1280) as running text, at the largest
font size (at most ``max_font_px``) at which it fits; the packer fills pages up to
:meth:`PageRenderer.capacity`, so a full page is set at ``min_font_px``. Lower tiers are made
by downsampling that one bitmap with a Lanczos filter (measured to read as well as or better
than redrawing the text small; see DESIGN.md and ``benchmarks/legibility_tiers.py``), as long
as the text stays at least ``min_effective_px`` tall on the smaller image. Below that, neural
readers see nothing at all (RapidOCR reads 0% of a full page at 4.4 px, 94% at 6 px), so such a
tier is *abridged* instead: the page is laid out again on a canvas from which downsampling
lands at ``min_effective_px``, with the longest turns cut short (``…``) until it fits. Short
turns stay whole, long ones keep their opening: the gist survives and the faint tier stays
readable; the full text is always in the store.

What matters is cut last. Turns marked :attr:`RenderTurn.keep_whole` (the aging pass marks
salient, pinned and recalled turns, see :mod:`.salience`) keep their whole text while the
others, the chatter, are cut to the longest common length at which the page fits. Chatter is
cut down to :data:`GIST_CHARS` at most; if the page still does not fit, the chatter stays at
that length and the kept turns are cut too, to the longest length that fits (always longer
than the chatter's); only a page that does not fit even with every turn at ``GIST_CHARS`` is
cut uniformly, as if nothing were marked. A turn kept whole is marked on the page with a
:data:`~optical_memory.layout.KEPT_MARK` before its label (``★ Caroline 13:56:``), only on
abridged drawings; :attr:`PagePlan.kept_whole` names those turns. A page with no turn marked
``keep_whole`` is abridged exactly as before.

A turn's images (:attr:`RenderTurn.images`) are drawn as small greyscale thumbnails after its
text, text flowing on beside them, on every drawing where they pay (see :mod:`.thumbnails`):
the large one, and a downsampled one where each still keeps
:data:`~optical_memory.thumbnails.MIN_THUMB_PX` on its short side (else that size is laid
out again, on the same canvas, with the images' labels alone). Abridged drawings show the
labels only. A page without images is drawn exactly as it was before thumbnails existed.

Right-to-left scripts are drawn with Pillow's basic layout engine, in logical order and without
Arabic shaping (raqm is not used, so output does not depend on which libraqm is installed and
width measurement stays exact). Hebrew therefore reads reversed and Arabic letters appear in
their isolated forms; nothing crashes.

Output is deterministic: the same turns, canvas and sizes give byte-identical greyscale PNGs
(no metadata chunks, fixed compression settings; :mod:`.png`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from . import layout as _lay
from .errors import InvalidInput
from .glyphs import FALLBACK_FONTS_ENV, FREETYPE_LOCK, FontSet, Metrics, Style
from .layout import ELLIPSIS, EPS, KEPT_MARK, Layout, Line, RenderTurn, Run
from .png import encode_grey
from .thumbnails import TurnImage, draw_thumbnail, pays

__all__ = [
    "FALLBACK_FONTS_ENV",
    "GIST_CHARS",
    "KEPT_MARK",
    "Layout",
    "Line",
    "PagePlan",
    "PageRenderer",
    "RenderTurn",
    "RenderedImage",
    "Run",
    "Style",
    "TurnImage",
]

# The smallest text a faint tier shows, in px of the image: RapidOCR (a neural reader, closer to
# what a VLM sees) reads 94% of a full page at 6 px, 73% at 5 px and nothing at 4.4 px.
DEFAULT_MIN_EFFECTIVE_PX = 6.0
# Below min_font_px, a page that does not fit shrinks down to this size, then it is truncated.
_HARD_FLOOR_PX = 8
# On an abridged page, chatter is cut down to this many characters (about 7 words: the opening
# that says what a turn was about) before the turns marked keep_whole are cut at all.
GIST_CHARS = 40
# PNG settings (measured on full DeepSeek-OCR pages, see memory/png.py): rows are stored
# unfiltered. A drawn bitmap (256 anti-aliased grey levels) is deflated at level 4: 2.6x faster
# than Pillow's level 6 and 3% larger. A downsampled image (32 grey levels) uses zlib's RLE
# strategy: 7-8x faster than Pillow's level 6 and 0.83x its bytes on the small and tiny tiers
# (0.95x on base).
_DRAWN_LEVEL = 4
_DOWNSAMPLED_LEVEL = 6  # with RLE the level barely matters; 6 is zlib's default
_LEVELS_KEY = "optical_memory.grey_levels"  # in Image.info: downsampled, grey levels cut
# Downsampled tiers keep 32 grey levels (light greys snap to white): Lanczos output has ~256 levels
# and compresses badly (a full 1024² page: 596 KiB with all levels, 348 KiB with 32). Tesseract reads
# 32 levels as well as 256 (16 levels lost 6 points on the tiny tier).
_GREY_LEVELS = 32


def _grey_lut(levels: int) -> list[int]:
    step = 255 / (levels - 1)
    return [255 if v >= 255 - step / 2 else round(round(v / step) * step) for v in range(256)]


_GREY_LUT = _grey_lut(_GREY_LEVELS)


@dataclass(frozen=True)
class RenderedImage:
    png: bytes  # greyscale ("L") PNG
    width: int
    height: int
    font_px: int  # font size used on the canvas drawn on (the layout canvas unless abridged)
    abridged: bool = False  # drawn from an abridged layout: long turns were cut short


@dataclass(frozen=True)
class PagePlan:
    """How a page is drawn for one image size: on which canvas, which turns (abridged or
    not) and the layout; the image is this drawing downsampled to the size."""

    canvas: tuple[int, int]
    turns: tuple[RenderTurn, ...]
    layout: Layout
    abridged: bool

    @property
    def text_lines(self) -> list[str]:
        return self.layout.text_lines

    @property
    def kept_whole(self) -> tuple[int, ...]:
        """Positions (in ``turns``) of the turns an abridged page kept whole because they were
        marked ``keep_whole``; their labels carry the marker. Empty unless abridged."""
        return tuple(i for i, t in enumerate(self.turns) if t.kept_whole)


class PageRenderer:
    """Lays chat turns out as running text on a canvas and renders it at several sizes.

    Args:
        min_font_px: the font size of a full page (the packer fills pages to it).
        max_font_px: the largest font a short page is set in.
        min_effective_px: the smallest text an image may show after downsampling; a size
            below it gets an abridged drawing (default 6, or ``min_font_px`` if smaller;
            0 downsamples at every size).
        fallback_fonts: font files for characters DejaVu lacks (CJK, emoji, ...).

    Raises:
        InvalidInput: the sizes are out of order.
    """

    def __init__(
        self,
        *,
        min_font_px: int = 11,
        max_font_px: int = 28,
        min_effective_px: float | None = None,
        fallback_fonts: Sequence[str | Path] = (),
    ) -> None:
        if min_font_px < 1 or max_font_px < min_font_px:
            raise InvalidInput("need 1 <= min_font_px <= max_font_px")
        if min_effective_px is None:
            min_effective_px = min(DEFAULT_MIN_EFFECTIVE_PX, float(min_font_px))
        if not 0 <= min_effective_px <= min_font_px:
            raise InvalidInput("need 0 <= min_effective_px <= min_font_px (0: never abridge)")
        self.min_font_px = int(min_font_px)
        self.max_font_px = int(max_font_px)
        self.min_effective_px = float(min_effective_px)
        self.floor_font_px = min(_HARD_FLOOR_PX, self.min_font_px)
        self._fonts = FontSet(fallback_fonts, stacklevel=3)
        self._lock = FREETYPE_LOCK

    @property
    def fallback_fonts(self) -> tuple[str, ...]:
        return self._fonts.fallback_fonts

    # measuring ----------------------------------------------------------------------------------
    def metrics(self, font_px: float) -> Metrics:
        """Character widths, glyphs and line metrics at ``font_px`` (cached; shared FreeType
        faces: fill its tables from one thread at a time)."""
        with self._lock:
            return self._fonts.metrics(font_px)

    def capacity(self, canvas: tuple[int, int]) -> int:
        """Characters of footprint that fit on a layout canvas at min_font_px (the packer fills pages up to this)."""
        with self._lock:
            return _lay.capacity(self._fonts.metrics(self.min_font_px), canvas)

    def footprint(self, turn: RenderTurn, canvas: tuple[int, int]) -> int:
        """Characters this turn uses on the page: label + text + what hard line breaks waste. Cheap (no drawing).

        Measured in average characters of English prose at ``min_font_px`` (so wide glyphs count
        more than one); the separator and the label (without the date) are included, and a hard
        line break counts as half a line, a mono (code) line as whole lines.
        """
        with self._lock:
            return _lay.footprint(turn, self._fonts.metrics(self.min_font_px), canvas)

    # layout -------------------------------------------------------------------------------------
    def layout(
        self,
        turns: Sequence[RenderTurn],
        canvas: tuple[int, int],
        font_px: float,
        *,
        truncate: bool = False,
    ) -> Layout | None:
        """Lay ``turns`` out on ``canvas`` at ``font_px``; None if they do not fit (unless
        ``truncate``: then the page is cut, its last line ending in ``…``).

        The result's ``text_lines`` are the lines as they will be drawn (for tests and OCR checks).
        """
        with self._lock:
            m = self._fonts.metrics(font_px)
            items = _lay.prepare(turns, thumbnails=True)
            return _lay.flow(items, m, canvas, truncate=truncate)

    def fit(self, turns: Sequence[RenderTurn], canvas: tuple[int, int]) -> Layout:
        """The layout at the largest font size (<= max_font_px) at which ``turns`` fit
        ``canvas``; below min_font_px down to ``floor_font_px``, then cut."""
        with self._lock:
            return self._fit(_lay.prepare(turns, thumbnails=True), canvas)

    def _fit(
        self,
        items: Sequence[_lay.LabelledTurn],
        canvas: tuple[int, int],
        thumb_scale: float = 1.0,
    ) -> Layout:
        return _lay.fit(
            items,
            canvas,
            self._fonts.metrics,
            min_px=self.min_font_px,
            max_px=self.max_font_px,
            floor_px=self.floor_font_px,
            thumb_scale=thumb_scale,
        )

    # drawing ------------------------------------------------------------------------------------
    def draw(self, layout: Layout, canvas: tuple[int, int]) -> Image.Image:
        """Draw a layout on a white ``canvas``: glyph bitmaps are cached per size and blended in
        at integer positions."""
        with self._lock:
            return self._draw(layout, canvas)

    def _draw(self, lay: Layout, canvas: tuple[int, int]) -> Image.Image:
        m = self._fonts.metrics(lay.font_px)
        img = Image.new("L", canvas, 255)
        for thumb in lay.thumbs:
            top = lay.margin + thumb.line * lay.line_height
            img.paste(
                draw_thumbnail(thumb.image, (thumb.width, thumb.height)), (round(thumb.x), top)
            )
        core = ImageDraw.Draw(img).draw
        for i, line in enumerate(lay.lines):
            base = lay.margin + i * lay.line_height + m.ascent
            for run in line.runs:
                glyphs = m.glyphs[run.style]
                widths = m.widths[run.style]
                bold = run.style == Style.LABEL
                x = run.x
                for ch in run.text:
                    g = glyphs[ch]
                    if g is not None:
                        mask, dx, dy = g
                        gx = round(x) + dx
                        core.draw_bitmap((gx, base + dy), mask, 0)
                        if bold:
                            core.draw_bitmap((gx + 1, base + dy), mask, 0)
                    x += widths[ch]
        return img

    @staticmethod
    def to_png(img: Image.Image, *, downsampled: bool | None = None) -> bytes:
        """PNG bytes of an image, as :meth:`render` encodes them (deterministic, unfiltered
        rows): level 4 for a drawn bitmap, zlib's RLE strategy for an image from
        :meth:`downsample` (its grey levels cut). ``downsampled`` says which for an image
        decoded from bytes (default: what :meth:`downsample` marked on the image)."""
        if downsampled is None:
            downsampled = bool(img.info.get(_LEVELS_KEY))
        if downsampled:
            return encode_grey(img, level=_DOWNSAMPLED_LEVEL, rle=True)
        return encode_grey(img, level=_DRAWN_LEVEL, rle=False)

    @staticmethod
    def downsample(img: Image.Image, size: tuple[int, int]) -> Image.Image:
        """Lanczos to ``size``, keeping the aspect ratio (top-left, white padding); grey levels cut."""
        w, h = size
        W, H = img.size
        if (w, h) == (W, H):
            return img
        scale = min(w / W, h / H)
        sw, sh = max(1, round(W * scale)), max(1, round(H * scale))
        small = img.resize((sw, sh), Image.Resampling.LANCZOS).point(_GREY_LUT)
        if (sw, sh) != (w, h):
            out = Image.new("L", (w, h), 255)
            out.paste(small, (0, 0))
            small = out
        small.info[_LEVELS_KEY] = _GREY_LEVELS  # how to_png knows it (never written to the file)
        return small

    # planning -----------------------------------------------------------------------------------
    def _plan(
        self,
        turns: Sequence[RenderTurn],
        canvas: tuple[int, int],
        lay: Layout,
        size: tuple[int, int],
    ) -> PagePlan:
        """The page as laid out on ``canvas`` (``lay``) if downsampling it to ``size`` keeps the
        text at least ``min_effective_px`` tall, else as :meth:`_abridged` draws it. A
        thumbnail that would fall below ``MIN_THUMB_PX`` at ``size`` is left out: the page is
        laid out again on ``canvas`` with its label alone."""
        scale = min(size[0] / canvas[0], size[1] / canvas[1])
        if any(not pays((t.width, t.height), scale) for t in lay.thumbs):
            lay = self._fit(_lay.prepare(turns, thumbnails=True), canvas, scale)
        if not self.min_effective_px or lay.font_px * scale >= self.min_effective_px - EPS:
            return PagePlan(canvas, tuple(turns), lay, False)
        return self._abridged(turns, size)

    def _abridged(self, turns: Sequence[RenderTurn], size: tuple[int, int]) -> PagePlan:
        """The turns laid out on the canvas from which ``size`` shows ``min_font_px`` text at
        ``min_effective_px``: whole if they fit, else cut: chatter first (turns marked
        ``keep_whole`` stay whole while the others are cut, down to ``GIST_CHARS``), then the
        marked turns too (the chatter at ``GIST_CHARS``), then every turn to the longest length
        (in characters) at which they all fit."""
        k = self.min_font_px / self.min_effective_px
        canvas = (max(size[0], math.floor(size[0] * k)), max(size[1], math.floor(size[1] * k)))
        m = self._fonts.metrics(self.min_font_px)
        items = _lay.prepare(turns)
        # Whole at min_font_px: then the largest size that fits (what fit() returns). Not
        # whole: fit() would search the sizes below min_font_px for nothing (a page drawn
        # below it is abridged all the same), so that search is skipped.
        if _lay.fits(items, m, canvas) is not None:
            return PagePlan(canvas, tuple(turns), self._fit(items, canvas), False)
        tried: dict[tuple[str, ...], Layout | None] = {}  # each cut is laid out once

        def layout_of(shown: Sequence[RenderTurn], truncate: bool = False) -> Layout | None:
            key = tuple((t.text, t.kept_whole) for t in shown)
            if not truncate and key in tried:
                return tried[key]
            items = _lay.prepare(shown)
            if not truncate and _lay.too_big(items, m, canvas):
                found = None
            else:
                found = _lay.flow(items, m, canvas, truncate=truncate)
            if not truncate:
                tried[key] = found
            return found

        def cut(chatter: int, kept: int) -> list[RenderTurn]:
            return [_cut_turn(t, kept if t.keep_whole else chatter) for t in turns]

        def longest(lo: int, hi: int, at: Callable[[int], list[RenderTurn]]) -> int:
            while lo < hi:  # the longest cap in lo..hi that fits (lo if none does)
                mid = (lo + hi + 1) // 2
                if layout_of(at(mid)) is None:
                    hi = mid - 1
                else:
                    lo = mid
            return lo

        def abridged(shown: list[RenderTurn]) -> PagePlan:
            lay = layout_of(shown)  # found fitting by the search: laid out already
            assert lay is not None
            return PagePlan(canvas, tuple(shown), lay, True)

        kept_len = max((len(t.text) for t in turns if t.keep_whole), default=0)
        chatter_len = max((len(t.text) for t in turns if not t.keep_whole), default=0)
        if kept_len and chatter_len:
            floor = min(GIST_CHARS, chatter_len)
            whole = kept_len  # a cap no marked turn is longer than
            if layout_of(cut(floor, whole)) is not None:  # the marked turns stay whole
                cap = longest(floor, chatter_len, lambda c: cut(c, whole))
                return abridged(cut(cap, whole))
            kept_floor = min(GIST_CHARS, kept_len)
            if layout_of(cut(floor, kept_floor)) is not None:  # they are cut, less than chatter
                cap = longest(kept_floor, kept_len, lambda c: cut(floor, c))
                return abridged(cut(floor, cap))
        lo = longest(0, max(kept_len, chatter_len), lambda c: cut(c, c))
        shown = cut(lo, lo)
        best = layout_of(shown) or layout_of(cut(0, 0), truncate=True)  # not even the labels
        assert best is not None
        return PagePlan(canvas, tuple(shown), best, True)

    def plan(
        self, turns: Sequence[RenderTurn], canvas: tuple[int, int], size: tuple[int, int]
    ) -> PagePlan:
        """How :meth:`render` draws the turns for an image of ``size`` (for tests, OCR checks
        and benchmarks that need to know what text each image shows, and where)."""
        canvas, size = (int(canvas[0]), int(canvas[1])), (int(size[0]), int(size[1]))
        with self._lock:
            lay = self._fit(_lay.prepare(turns, thumbnails=True), canvas)
            return self._plan(turns, canvas, lay, size)

    # rendering ----------------------------------------------------------------------------------
    def render(
        self,
        turns: Sequence[RenderTurn],
        canvas: tuple[int, int],
        sizes: Sequence[tuple[int, int]],
    ) -> list[RenderedImage]:
        """Lay the turns out ONCE on the layout ``canvas`` with the largest font (<= max_font_px)
        at which they fit, then produce one image per requested size by downsampling that bitmap
        with a good filter (LANCZOS / reduce); sizes equal to the canvas are returned as drawn. A
        size at which the text would fall below ``min_effective_px`` gets an abridged drawing
        instead.

        Raises:
            InvalidInput: the canvas or a size has a side below 1 px.
        """
        canvas = (int(canvas[0]), int(canvas[1]))
        if canvas[0] < 1 or canvas[1] < 1:
            raise InvalidInput(f"bad layout canvas {canvas}")
        wanted = [(int(w), int(h)) for w, h in sizes]
        for size in wanted:
            if size[0] < 1 or size[1] < 1:
                raise InvalidInput(f"bad image size {size}")
        with self._lock:
            lay = self._fit(_lay.prepare(turns, thumbnails=True), canvas)
            img = self._draw(lay, canvas)
            plans = {size: self._plan(turns, canvas, lay, size) for size in wanted}
            drawn = {
                size: img if plan.layout is lay else self._draw(plan.layout, plan.canvas)
                for size, plan in plans.items()
            }
        return [
            RenderedImage(
                self.to_png(self.downsample(drawn[size], size)),
                size[0],
                size[1],
                plans[size].layout.font_px,
                plans[size].abridged,
            )
            for size in wanted
        ]


def _cut_turn(turn: RenderTurn, cap: int) -> RenderTurn:
    """The turn with its text cut to at most ``cap`` characters (at a space where one is near),
    and an ellipsis; unchanged if it is no longer, but then marked ``kept_whole`` if it was to
    be kept whole."""
    text = turn.text
    if len(text) <= cap:
        return replace(turn, kept_whole=True) if turn.keep_whole else turn
    cut = text[:cap]
    space = cut.rfind(" ")
    if space >= cap // 2:
        cut = cut[:space]
    return replace(turn, text=cut.rstrip() + ELLIPSIS, kept_whole=False)
