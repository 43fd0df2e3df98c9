"""Turns -> page images.

A page is a run of chat turns laid out ONCE on a *layout* canvas (e.g. 1280x1280) as running text:
every turn opens with a bold speaker label (``Caroline 13:56:``; the date is added on the first turn
of a page and whenever the day changes, ``Caroline 8 May 2023 13:56:``), and turns flow on in the
same paragraph, separated by a ``|``. Hard line breaks in a turn are kept; lines that start with
whitespace and lines inside ``` / ~~~ fences are set in the mono font and keep their indentation.
Long words and URLs are broken at the line width; tabs expand to 4 columns; runs of blank prose
lines collapse (a paragraph break becomes a plain line break).

The font size is the largest one (at most ``max_font_px``) at which the page fits the layout canvas;
the packer fills pages up to :meth:`PageRenderer.capacity`, so a full page is set at
``min_font_px``. Lower tiers are made by downsampling that one bitmap with a Lanczos filter
(measured to read as well as or better than redrawing the text small; see DESIGN.md and
``benchmarks/legibility_tiers.py``), as long as the text stays at least ``min_effective_px``
tall on the smaller image. Below that, neural readers see nothing at all (RapidOCR reads 0% of a
full page at 4.4 px, 94% at 6 px), so such a tier is *abridged* instead: the page is laid out
again on a canvas from which downsampling lands at ``min_effective_px``, with the longest turns
cut short (``…``) until it fits. Short turns stay whole, long ones keep their opening: the gist
survives and the faint tier stays readable; the full text is always in the store.

Glyphs: the bundled DejaVu Sans / DejaVu Sans Mono are the primary fonts. For a character the
primary font lacks (CJK, most emoji, ...), the renderer uses the first *fallback font* that has it:
the ``fallback_fonts`` constructor argument, then the paths in the environment variable
``OPTICAL_MEMORY_FALLBACK_FONTS`` (``os.pathsep``-separated). A character no font has is drawn as a
box (``□``). Control characters other than newline and tab are dropped (vertical tab, form feed,
``\\r``, U+2028/9 and friends become line breaks), as are format characters (zero-width joiners,
direction marks, BOM, soft hyphen) and variation selectors; text is NFC-normalised.

Right-to-left scripts are drawn with Pillow's basic layout engine, in logical order and without
Arabic shaping (raqm is not used, so output does not depend on which libraqm is installed and
width measurement stays exact). Hebrew therefore reads reversed and Arabic letters appear in their
isolated forms; nothing crashes.

Output is deterministic: the same turns, canvas and sizes give byte-identical greyscale PNGs
(no metadata chunks, fixed compression level).
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import threading
import unicodedata
import warnings
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from importlib import resources
from itertools import accumulate
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["FALLBACK_FONTS_ENV", "PagePlan", "PageRenderer", "RenderTurn", "RenderedImage"]

FALLBACK_FONTS_ENV = "OPTICAL_MEMORY_FALLBACK_FONTS"

# The smallest text a faint tier shows, in px of the image: RapidOCR (a neural reader, closer to
# what a VLM sees) reads 94% of a full page at 6 px, 73% at 5 px and nothing at 4.4 px.
DEFAULT_MIN_EFFECTIVE_PX = 6.0
# Below min_font_px, a page that does not fit shrinks down to this size, then it is truncated.
_HARD_FLOOR_PX = 8
_LINE_SPACING = 1.2  # line pitch / font size
_TAB = 4
_SEPARATOR = "|"
_ELLIPSIS = "…"
_BOX = "□"  # drawn for characters no font has
_MAX_SPEAKER = 64  # characters of a speaker label shown
_PNG_COMPRESS = 6
# Downsampled tiers keep 32 grey levels (light greys snap to white): Lanczos output has ~256 levels
# and compresses badly (a full 1024² page: 596 KiB with all levels, 348 KiB with 32). Tesseract reads
# 32 levels as well as 256 (16 levels lost 6 points on the tiny tier).
_GREY_LEVELS = 32
_FILL = 0.95  # share of the raw page area the packer may fill (word-wrap waste, labels, dates)
_DATE_RESERVE = 16  # characters reserved per page for the date shown on the first turn
_EPS = 0.01
_RENDER_LOCK = threading.RLock()


def _grey_lut(levels: int) -> list[int]:
    step = 255 / (levels - 1)
    return [255 if v >= 255 - step / 2 else round(round(v / step) * step) for v in range(256)]


_GREY_LUT = _grey_lut(_GREY_LEVELS) if _GREY_LEVELS else list(range(256))

# Layout styles: prose, mono (code), the bold speaker label, the turn separator.
_SANS, _MONO, _LABEL, _SEP = 0, 1, 2, 3

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# An English chat sample used to turn pixel widths into "average characters".
_CALIBRATION = (
    "Hey, did you get a chance to look at the budget numbers I sent over yesterday? "
    "Yes! I think the marketing line is too high; we could move 15% of it to hiring. "
    "Sounds good. Let's talk on Monday at 10:30 and I'll bring the draft for Q3."
)


@dataclass(frozen=True)
class RenderTurn:
    speaker: str  # label to show, e.g. "user", "assistant", "Caroline"
    at: datetime  # timezone-aware
    text: str


@dataclass(frozen=True)
class RenderedImage:
    png: bytes  # greyscale ("L") PNG
    width: int
    height: int
    font_px: int  # font size used on the canvas drawn on (the layout canvas unless abridged)
    abridged: bool = False  # drawn from an abridged layout: long turns were cut short


# --------------------------------------------------------------------------------------------------
# Fonts


def _cmap_codepoints(data: bytes, index: int = 0) -> frozenset[int]:
    """Code points with a glyph in a TrueType/OpenType font (or collection member ``index``)."""
    u16 = struct.Struct(">H").unpack_from
    u32 = struct.Struct(">I").unpack_from
    base = 0
    if data[:4] == b"ttcf":
        base = u32(data, 12 + 4 * index)[0]
    (num_tables,) = u16(data, base + 4)
    cmap = None
    for i in range(num_tables):
        rec = base + 12 + 16 * i
        if data[rec : rec + 4] == b"cmap":
            cmap = u32(data, rec + 8)[0]
            break
    if cmap is None:
        return frozenset()
    (n_sub,) = u16(data, cmap + 2)
    points: set[int] = set()
    seen: set[int] = set()
    for i in range(n_sub):
        pid, eid, off = struct.unpack_from(">HHI", data, cmap + 4 + 8 * i)
        if not (pid == 0 or (pid == 3 and eid in (1, 10))) or off in seen:
            continue
        seen.add(off)
        sub = cmap + off
        (fmt,) = u16(data, sub)
        if fmt == 4:
            seg2 = u16(data, sub + 6)[0]
            ends = sub + 14
            starts = ends + seg2 + 2
            deltas = starts + seg2
            ranges = deltas + seg2
            for s in range(seg2 // 2):
                end = u16(data, ends + 2 * s)[0]
                start = u16(data, starts + 2 * s)[0]
                delta = u16(data, deltas + 2 * s)[0]
                roff = u16(data, ranges + 2 * s)[0]
                if start == 0xFFFF:
                    continue
                for c in range(start, end + 1):
                    if roff == 0:
                        gid = (c + delta) & 0xFFFF
                    else:
                        addr = ranges + 2 * s + roff + 2 * (c - start)
                        gid = u16(data, addr)[0] if addr + 2 <= len(data) else 0
                        if gid:
                            gid = (gid + delta) & 0xFFFF
                    if gid:
                        points.add(c)
        elif fmt == 12:
            (n_groups,) = u32(data, sub + 12)
            for g in range(n_groups):
                start, end, gid0 = struct.unpack_from(">III", data, sub + 16 + 12 * g)
                if gid0 == 0:
                    start += 1
                points.update(range(start, min(end, 0x10FFFF) + 1))
        elif fmt == 6:
            first, count = struct.unpack_from(">HH", data, sub + 6)
            for k in range(count):
                if u16(data, sub + 10 + 2 * k)[0]:
                    points.add(first + k)
        elif fmt == 0:
            for k in range(256):
                if data[sub + 6 + k]:
                    points.add(k)
    return frozenset(points)


class _Face:
    """One font file: its coverage and its Pillow font objects per pixel size."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self._data = data
        self._cover: frozenset[int] | None = None
        self._sizes: dict[int, ImageFont.FreeTypeFont | None] = {}
        self._lock = threading.Lock()

    def covers(self, ch: str) -> bool:
        if self._cover is None:
            try:
                self._cover = _cmap_codepoints(self._data)
            except (struct.error, IndexError, ValueError):
                warnings.warn(f"cannot read the character map of font {self.name}", stacklevel=2)
                self._cover = frozenset()
        return ord(ch) in self._cover

    def at(self, px: int) -> ImageFont.FreeTypeFont | None:
        """The font at ``px`` pixels, or None where it cannot be used at that size (bitmap fonts)."""
        try:
            return self._sizes[px]
        except KeyError:
            pass
        with self._lock:
            if px not in self._sizes:
                try:
                    font = ImageFont.truetype(
                        io.BytesIO(self._data), px, layout_engine=ImageFont.Layout.BASIC
                    )
                    font.getlength("a")
                except OSError:
                    font = None
                self._sizes[px] = font
        return self._sizes[px]


@cache
def _bundled_face(filename: str) -> _Face:
    package = f"{__package__}.fonts" if __package__ else None
    if package:
        data = resources.files(package).joinpath(filename).read_bytes()
    else:  # pragma: no cover - running the file outside its package
        data = (Path(__file__).parent / "fonts" / filename).read_bytes()
    return _Face(filename, data)


@lru_cache(maxsize=64)
def _file_face(path: str) -> _Face:
    return _Face(path, Path(path).read_bytes())


# --------------------------------------------------------------------------------------------------
# Text cleaning and segmentation

_BREAKS = {"\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"}


@lru_cache(maxsize=4096)
def _clean_char(ch: str) -> str:
    if ch in "\n\t":
        return ch
    if ch in _BREAKS:
        return "\n"
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf"):
        return ""
    if cat == "Cs":
        return "\ufffd"
    if cat == "Zs":
        return " "
    cp = ord(ch)
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF:  # variation selectors
        return ""
    return ch


_PLAIN = re.compile(r"[ -~\n\t]*")  # printable ASCII, newline and tab need no cleaning


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n")
    if not _PLAIN.fullmatch(text):
        text = "".join(map(_clean_char, text))
        text = unicodedata.normalize("NFC", text)
    return text


@dataclass(frozen=True, slots=True)
class _Seg:
    text: str
    mono: bool


def _segments(text: str) -> list[_Seg]:
    """Split a turn's text into hard lines: prose lines flow, mono lines (code) keep their layout."""
    out: list[_Seg] = []
    fence = False
    prev_blank = False
    for raw in _clean(text).split("\n"):
        line = raw.expandtabs(_TAB).rstrip()
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            out.append(_Seg(line, True))
            fence = not fence
            prev_blank = False
        elif fence:
            if not line and prev_blank:
                continue
            out.append(_Seg(line, True))
            prev_blank = not line
        elif not line:
            continue  # blank prose lines collapse
        else:
            out.append(_Seg(line, line != stripped))
    return out


def _label(turn: RenderTurn, with_date: bool) -> str:
    speaker = " ".join(_clean(turn.speaker).split()) or "?"
    if len(speaker) > _MAX_SPEAKER:
        speaker = speaker[: _MAX_SPEAKER - 1] + _ELLIPSIS
    at = turn.at
    clock = f"{at.hour:02d}:{at.minute:02d}"
    if with_date:
        return f"{speaker} {at.day} {_MONTHS[at.month - 1]} {at.year} {clock}:"
    return f"{speaker} {clock}:"


_TOKENS = re.compile(r" +|[^ ]+")


# --------------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True, slots=True)
class _Run:
    x: float
    style: int
    text: str


@dataclass(frozen=True, slots=True)
class _Line:
    runs: tuple[_Run, ...]
    text: str


@dataclass(frozen=True)
class _Layout:
    font_px: int
    line_height: int
    margin: int
    lines: tuple[_Line, ...]
    truncated: bool

    @property
    def text_lines(self) -> list[str]:
        return [line.text for line in self.lines]


class _Overflow(Exception):
    pass


@dataclass(frozen=True)
class PagePlan:
    """How a page is drawn for one image size: on which canvas, which turns (abridged or
    not) and the layout; the image is this drawing downsampled to the size."""

    canvas: tuple[int, int]
    turns: tuple[RenderTurn, ...]
    layout: _Layout
    abridged: bool

    @property
    def text_lines(self) -> list[str]:
        return self.layout.text_lines


class _Metrics:
    """Per font size: character widths (with fallback resolution) for each style."""

    def __init__(self, renderer: PageRenderer, px: int) -> None:
        self.px = px
        self.renderer = renderer
        self.fonts = [face.at(px) for face in renderer._faces]
        self.widths: list[dict[str, float]] = []
        self.face_of: list[dict[str, int]] = []
        for style in (_SANS, _MONO):
            self.widths.append(_WidthTable(self, style))
            self.face_of.append({})
        # label and separator are set in the prose font
        self.widths += [self.widths[_SANS], self.widths[_SANS]]
        self.face_of += [self.face_of[_SANS], self.face_of[_SANS]]
        self.glyphs: list[dict[str, tuple | None]] = [
            _GlyphTable(self, _SANS),
            _GlyphTable(self, _MONO),
        ]
        self.glyphs += [self.glyphs[_SANS], self.glyphs[_SANS]]
        sans = self.fonts[0]
        assert sans is not None
        self.ascent = sans.getmetrics()[0]
        self.glyph_height = sum(sans.getmetrics())
        self.line_height = max(int(px) + 1, round(px * _LINE_SPACING))
        cal = self.widths[_SANS]
        self.avg_char = sum(map(cal.__getitem__, _CALIBRATION)) / len(_CALIBRATION)

    def resolve(self, style: int, ch: str) -> int:
        """Index into renderer._faces of the face drawing ``ch``; -1 for the box."""
        chain = self.renderer._chains[style]
        for i in chain:
            face = self.renderer._faces[i]
            if self.fonts[i] is not None and face.covers(ch):
                return i
        return -1

    def width(self, style: int, text: str) -> float:
        return sum(map(self.widths[style].__getitem__, text))


class _WidthTable(dict):
    def __init__(self, metrics: _Metrics, style: int) -> None:
        super().__init__()
        self.metrics = metrics
        self.style = style

    def __missing__(self, ch: str) -> float:
        m = self.metrics
        i = m.resolve(self.style, ch)
        m.face_of[self.style][ch] = i
        if i < 0:
            primary = self.metrics.renderer._chains[self.style][0]
            w = m.fonts[primary].getlength(_BOX)
        else:
            try:
                w = m.fonts[i].getlength(ch)
            except Exception:  # noqa: BLE001 - never let one glyph break a page
                m.face_of[self.style][ch] = -1
                primary = self.metrics.renderer._chains[self.style][0]
                w = m.fonts[primary].getlength(_BOX)
        self[ch] = w
        return w


class _GlyphTable(dict):
    """char -> (mask, dx, dy) for the baseline-anchored glyph bitmap, or None for blanks."""

    def __init__(self, metrics: _Metrics, style: int) -> None:
        super().__init__()
        self.metrics = metrics
        self.style = style

    def _render(self, face: int, ch: str) -> tuple | None:
        mask, (dx, dy) = self.metrics.fonts[face].getmask2(ch, "L", anchor="ls")
        if mask.size[0] == 0 or mask.size[1] == 0:
            return None
        return (mask, dx, dy)

    def __missing__(self, ch: str) -> tuple | None:
        m = self.metrics
        m.widths[self.style][ch]  # resolves the face
        face = m.face_of[self.style][ch]
        primary = m.renderer._chains[self.style][0]
        g = None
        if ch.isspace():
            pass
        elif face >= 0:
            try:
                g = self._render(face, ch)
            except Exception:  # noqa: BLE001 - never let one glyph break a page
                g = self._render(primary, _BOX)
        else:
            g = self._render(primary, _BOX)
        self[ch] = g
        return g


class _Flow:
    """Greedy line filling with cheap width sums; raises _Overflow past ``max_lines``.

    A run is ``[x, style, parts, lead]``: it is drawn from ``x``; ``lead`` is the blank text
    before it on the line (kept for the line's text, not drawn).
    """

    def __init__(self, m: _Metrics, width: int, margin: int, max_lines: int) -> None:
        self.m = m
        self.w = m.widths
        self.left = float(margin)
        self.right = float(width - margin)
        self.line_w = self.right - self.left
        self.max_lines = max_lines
        self.lines: list[_Line] = []
        self._reset(soft=False)

    # line state -----------------------------------------------------------------------------
    def _reset(self, soft: bool) -> None:
        self.x = self.left
        self.runs: list[list] = []
        self.empty = True
        self.soft = soft

    def end_line(self, soft: bool = False) -> None:
        runs = tuple(_Run(r[0], r[1], "".join(r[2])) for r in self.runs)
        text = "".join(r[3] + run.text for r, run in zip(self.runs, runs, strict=True))
        self.lines.append(_Line(runs, text))
        self._reset(soft)

    def ensure_line_start(self) -> None:
        if not self.empty:
            self.end_line()

    # placing ----------------------------------------------------------------------------------
    def _emit(self, pieces: Sequence[tuple[int, str, float]], gap: float, gap_text: str) -> None:
        if self.empty and len(self.lines) >= self.max_lines:
            raise _Overflow
        x = self.x + gap
        runs = self.runs
        for style, text, w in pieces:
            if runs and runs[-1][1] == style:
                parts = runs[-1][2]
                if gap_text:
                    parts.append(gap_text)
                parts.append(text)
            else:
                runs.append([x, style, [text], gap_text])
            gap_text = ""
            x += w
        self.x = x
        self.empty = False

    def place(self, pieces: Sequence[tuple[int, str, float]], gap: float, gap_text: str) -> None:
        w = sum(p[2] for p in pieces)
        if self.empty and self.soft:
            gap, gap_text = 0.0, ""
        fits_line = w <= self.line_w + _EPS
        if self.x + gap + w <= self.right + _EPS:
            self._emit(pieces, gap, gap_text)
        elif fits_line and self.empty:
            self._emit(pieces, 0.0, "")  # an indent too deep for the word: drop the indent
        elif fits_line:
            self.end_line(soft=True)
            self._emit(pieces, 0.0, "")
        else:
            self._split(pieces, gap, gap_text)

    def _split(self, pieces: Sequence[tuple[int, str, float]], gap: float, gap_text: str) -> None:
        """A word wider than a line: break it at the line width."""
        chars = [(style, ch) for style, text, _ in pieces for ch in text]
        widths = [self.w[style][ch] for style, ch in chars]
        cum = [0.0, *accumulate(widths)]
        start = 0
        if not self.empty and self.right - (self.x + gap) < 4 * self.m.avg_char:
            self.end_line(soft=True)
        if self.empty and self.soft:
            gap, gap_text = 0.0, ""
        while start < len(chars):
            avail = self.right + _EPS - (self.x + gap)
            end = bisect_right(cum, cum[start] + avail) - 1
            if end <= start:
                if self.empty:
                    end = start + 1  # a glyph wider than the line: place it anyway
                else:
                    self.end_line(soft=True)
                    gap, gap_text = 0.0, ""
                    continue
            out: list[tuple[int, str, float]] = []
            k = start
            while k < end:
                style = chars[k][0]
                j = k
                while j < end and chars[j][0] == style:
                    j += 1
                out.append((style, "".join(c for _, c in chars[k:j]), cum[j] - cum[k]))
                k = j
            self._emit(out, gap, gap_text)
            start = end
            if start < len(chars):
                self.end_line(soft=True)
                gap, gap_text = 0.0, ""

    def words(self, style: int, text: str, gap: float, gap_text: str) -> None:
        """Flow the words of ``text`` on; blanks between words are kept as they are."""
        getw = self.w[style].__getitem__
        space = getw(" ")
        right = self.right + _EPS
        for tok in _TOKENS.findall(text):
            if tok[0] == " ":
                gap, gap_text = len(tok) * space, tok
                continue
            w = sum(map(getw, tok))
            if not self.empty and self.runs[-1][1] == style and self.x + gap + w <= right:
                parts = self.runs[-1][2]  # fast path: the word goes on the current run
                if gap_text:
                    parts.append(gap_text)
                parts.append(tok)
                self.x += gap + w
            else:
                self.place(((style, tok, w),), gap, gap_text)
            gap, gap_text = 0.0, ""

    def finish(self) -> tuple[_Line, ...]:
        if not self.empty:
            self.end_line()
        return tuple(self.lines[: self.max_lines])


# --------------------------------------------------------------------------------------------------
# The renderer


class PageRenderer:
    """Lays chat turns out as running text on a canvas and renders it at several sizes.

    Args:
        min_font_px: the font size of a full page (the packer fills pages to it).
        max_font_px: the largest font a short page is set in.
        min_effective_px: the smallest text an image may show after downsampling; a size
            below it gets an abridged drawing (default 6, or ``min_font_px`` if smaller;
            0 downsamples at every size).
        fallback_fonts: font files for characters DejaVu lacks (CJK, emoji, ...).
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
            raise ValueError("need 1 <= min_font_px <= max_font_px")
        if min_effective_px is None:
            min_effective_px = min(DEFAULT_MIN_EFFECTIVE_PX, float(min_font_px))
        if not 0 <= min_effective_px <= min_font_px:
            raise ValueError("need 0 <= min_effective_px <= min_font_px (0: never abridge)")
        self.min_font_px = int(min_font_px)
        self.max_font_px = int(max_font_px)
        self.min_effective_px = float(min_effective_px)
        self.floor_font_px = min(_HARD_FLOOR_PX, self.min_font_px)
        faces = [_bundled_face("DejaVuSans.ttf"), _bundled_face("DejaVuSansMono.ttf")]
        for path in fallback_fonts:
            faces.append(_file_face(str(Path(path).resolve())))
        for path in os.environ.get(FALLBACK_FONTS_ENV, "").split(os.pathsep):
            if not path.strip():
                continue
            try:
                faces.append(_file_face(str(Path(path).resolve())))
            except OSError as exc:
                warnings.warn(f"{FALLBACK_FONTS_ENV}: cannot read {path!r}: {exc}", stacklevel=2)
        self._faces: list[_Face] = faces
        fallbacks = list(range(2, len(faces)))
        sans_chain = [0, 1, *fallbacks]
        self._chains = {
            _SANS: sans_chain,
            _MONO: [1, 0, *fallbacks],
            _LABEL: sans_chain,
            _SEP: sans_chain,
        }
        self._metrics: dict[int, _Metrics] = {}
        # one lock for all renderers: they share FreeType faces, which are not thread-safe
        self._lock = _RENDER_LOCK

    @property
    def fallback_fonts(self) -> tuple[str, ...]:
        return tuple(face.name for face in self._faces[2:])

    # geometry -----------------------------------------------------------------------------------
    def _m(self, px: int) -> _Metrics:
        m = self._metrics.get(px)
        if m is None:
            m = self._metrics[px] = _Metrics(self, px)
        return m

    @staticmethod
    def _margin(layout: tuple[int, int]) -> int:
        return max(2, round(min(layout) * 0.004))

    def _max_lines(self, m: _Metrics, layout: tuple[int, int]) -> int:
        usable = layout[1] - 2 * self._margin(layout) - m.glyph_height
        return max(1, 1 + usable // m.line_height) if usable >= 0 else 1

    def _chars_per_line(self, m: _Metrics, layout: tuple[int, int]) -> float:
        return max(1.0, (layout[0] - 2 * self._margin(layout)) / m.avg_char)

    def capacity(self, layout: tuple[int, int]) -> int:
        """Characters of footprint that fit on a layout canvas at min_font_px (the packer fills pages up to this)."""
        with self._lock:
            m = self._m(self.min_font_px)
            raw = self._max_lines(m, layout) * self._chars_per_line(m, layout)
            return max(1, int(raw * _FILL) - _DATE_RESERVE)

    def footprint(self, turn: RenderTurn, layout: tuple[int, int]) -> int:
        """Characters this turn uses on the page: label + text + what hard line breaks waste. Cheap (no drawing).

        Measured in average characters of English prose at ``min_font_px`` (so wide glyphs count
        more than one); the separator and the label (without the date) are included, and a hard
        line break counts as half a line, a mono (code) line as whole lines.
        """
        with self._lock:
            m = self._m(self.min_font_px)
            line_w = layout[0] - 2 * self._margin(layout)
            sans = m.widths[_SANS]
            unit = 3 * sans[" "] + sans[_SEPARATOR] + m.width(_LABEL, _label(turn, False)) + 1
            # the label is not broken: when it does not fit, the rest of the line is lost
            px = unit + unit * unit / (2 * line_w)
            half = line_w / 2
            segs = _segments(turn.text)
            for i, seg in enumerate(segs):
                w = m.width(_MONO if seg.mono else _SANS, seg.text)
                if seg.mono:
                    if i == 0:
                        px += half  # the rest of the label's line
                    px += max(1, math.ceil(w / line_w - 1e-9)) * line_w
                elif i == 0:
                    px += w + (half if len(segs) > 1 else 0.0)
                elif i == len(segs) - 1:
                    px += w
                else:
                    px += max(1, math.ceil(w / line_w - 1e-9)) * line_w
            return max(1, math.ceil(px / m.avg_char))

    # layout -------------------------------------------------------------------------------------
    @staticmethod
    def _prepare(turns: Sequence[RenderTurn]) -> list[tuple[str, list[_Seg]]]:
        """Labels (with the date where the day changes) and text segments of each turn."""
        out = []
        prev_day = None
        for turn in turns:
            day = (turn.at.year, turn.at.month, turn.at.day)
            out.append((_label(turn, day != prev_day), _segments(turn.text)))
            prev_day = day
        return out

    def _layout(
        self,
        turns: Sequence[RenderTurn],
        layout: tuple[int, int],
        font_px: int,
        *,
        truncate: bool = False,
    ) -> _Layout | None:
        """Lay ``turns`` out at ``font_px``; None if they do not fit (unless ``truncate``).

        The result's ``text_lines`` are the lines as they will be drawn (for tests and OCR checks).
        """
        with self._lock:
            return self._layout_items(self._prepare(turns), layout, font_px, truncate=truncate)

    def _layout_items(
        self,
        items: list[tuple[str, list[_Seg]]],
        layout: tuple[int, int],
        font_px: int,
        *,
        truncate: bool = False,
    ) -> _Layout | None:
        m = self._m(font_px)
        margin = self._margin(layout)
        max_lines = self._max_lines(m, layout)
        flow = _Flow(m, layout[0], margin, max_lines)
        sans = m.widths[_SANS]
        space = sans[" "]
        mono_space = m.widths[_MONO][" "]
        truncated = False
        try:
            for n, (label, segs) in enumerate(items):
                pieces = []
                if n:
                    pieces += [(_SEP, _SEPARATOR, sans[_SEPARATOR]), (_SANS, " ", space)]
                pieces.append((_LABEL, label, m.width(_LABEL, label) + 1))
                flow.place(pieces, space if n else 0.0, " " if n else "")
                for i, seg in enumerate(segs):
                    if seg.mono:
                        flow.ensure_line_start()
                        if seg.text:
                            indent = len(seg.text) - len(seg.text.lstrip(" "))
                            flow.words(_MONO, seg.text[indent:], indent * mono_space, " " * indent)
                        flow.end_line()
                    elif i:
                        flow.ensure_line_start()
                        flow.words(_SANS, seg.text, 0.0, "")
                    else:
                        flow.words(_SANS, seg.text, space, " ")
        except _Overflow:
            if not truncate:
                return None
            truncated = True
        lines = list(flow.finish())
        if truncated and lines:
            lines[-1] = self._ellipsize(m, lines[-1], margin, layout[0] - margin)
        return _Layout(font_px, m.line_height, margin, tuple(lines), truncated)

    def _too_big(
        self, items: list[tuple[str, list[_Seg]]], layout: tuple[int, int], px: int
    ) -> bool:
        """Cheap necessary condition: the text's total width cannot fit the page's lines."""
        m = self._m(px)
        line_w = layout[0] - 2 * self._margin(layout)
        sans = m.widths[_SANS]
        total = (3 * sans[" "] + sans[_SEPARATOR]) * len(items)
        for label, segs in items:
            total += m.width(_LABEL, label)
            for seg in segs:
                total += m.width(_MONO if seg.mono else _SANS, seg.text)
        return total > line_w * self._max_lines(m, layout)

    def _ellipsize(self, m: _Metrics, line: _Line, left: float, right: float) -> _Line:
        ell = m.widths[_SANS][_ELLIPSIS]
        runs = list(line.runs)
        text = line.text
        while runs:
            last = runs[-1]
            end = last.x + m.width(last.style, last.text)
            if end + ell <= right + _EPS:
                break
            if len(last.text) <= 1:
                runs.pop()
                text = text[: len(text) - len(last.text)].rstrip()
                continue
            runs[-1] = _Run(last.x, last.style, last.text[:-1])
            text = text[:-1]
        x = runs[-1].x + m.width(runs[-1].style, runs[-1].text) if runs else left
        runs.append(_Run(x, _SANS, _ELLIPSIS))
        return _Line(tuple(runs), text.rstrip() + _ELLIPSIS)

    def _fit(self, turns: Sequence[RenderTurn], layout: tuple[int, int]) -> _Layout:
        """The layout at the largest font size that fits (binary search on cheap width sums)."""
        items = self._prepare(turns)

        def attempt(px: int) -> _Layout | None:
            if self._too_big(items, layout, px):
                return None
            return self._layout_items(items, layout, px)

        best = attempt(self.min_font_px)
        lo, hi = self.min_font_px + 1, self.max_font_px
        if best is None:
            lo, hi = self.floor_font_px, self.min_font_px - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            found = attempt(mid)
            if found is None:
                hi = mid - 1
            else:
                best, lo = found, mid + 1
        if best is None:
            best = self._layout_items(items, layout, self.floor_font_px, truncate=True)
        assert best is not None
        return best

    # drawing ------------------------------------------------------------------------------------
    def _draw(self, lay: _Layout, layout: tuple[int, int]) -> Image.Image:
        """Draw a layout: glyph bitmaps are cached per size and blended in at integer positions."""
        m = self._m(lay.font_px)
        img = Image.new("L", layout, 255)
        core = ImageDraw.Draw(img).draw
        for i, line in enumerate(lay.lines):
            base = lay.margin + i * lay.line_height + m.ascent
            for run in line.runs:
                glyphs = m.glyphs[run.style]
                widths = m.widths[run.style]
                bold = run.style == _LABEL
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
    def _png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=_PNG_COMPRESS)
        return buf.getvalue()

    @staticmethod
    def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
        """Lanczos to ``size``, keeping the aspect ratio (top-left, white padding); grey levels cut."""
        w, h = size
        W, H = img.size
        if (w, h) == (W, H):
            return img
        scale = min(w / W, h / H)
        sw, sh = max(1, round(W * scale)), max(1, round(H * scale))
        small = img.resize((sw, sh), Image.Resampling.LANCZOS)
        if _GREY_LEVELS:
            small = small.point(_GREY_LUT)
        if (sw, sh) == (w, h):
            return small
        out = Image.new("L", (w, h), 255)
        out.paste(small, (0, 0))
        return out

    def _plan(
        self,
        turns: Sequence[RenderTurn],
        layout: tuple[int, int],
        lay: _Layout,
        size: tuple[int, int],
    ) -> PagePlan:
        """The page as laid out on ``layout`` (``lay``) if downsampling it to ``size`` keeps the
        text at least ``min_effective_px`` tall, else as :meth:`_abridged` draws it."""
        scale = min(size[0] / layout[0], size[1] / layout[1])
        if not self.min_effective_px or lay.font_px * scale >= self.min_effective_px - _EPS:
            return PagePlan(layout, tuple(turns), lay, False)
        return self._abridged(turns, size)

    def _abridged(self, turns: Sequence[RenderTurn], size: tuple[int, int]) -> PagePlan:
        """The turns laid out on the canvas from which ``size`` shows ``min_font_px`` text at
        ``min_effective_px``: whole if they fit, else every turn cut to the longest length
        (in characters) at which they all do."""
        k = self.min_font_px / self.min_effective_px
        canvas = (max(size[0], math.floor(size[0] * k)), max(size[1], math.floor(size[1] * k)))
        lay = self._fit(turns, canvas)
        if lay.font_px >= self.min_font_px and not lay.truncated:
            return PagePlan(canvas, tuple(turns), lay, False)

        def layout_at(cap: int, truncate: bool = False) -> _Layout | None:
            items = self._prepare([_cut_turn(t, cap) for t in turns])
            if not truncate and self._too_big(items, canvas, self.min_font_px):
                return None
            return self._layout_items(items, canvas, self.min_font_px, truncate=truncate)

        lo, hi = 0, max((len(t.text) for t in turns), default=0)
        while lo < hi:  # the longest cut that fits (0 if none does)
            mid = (lo + hi + 1) // 2
            if layout_at(mid) is None:
                hi = mid - 1
            else:
                lo = mid
        best = layout_at(lo) or layout_at(0, truncate=True)  # not even the labels: cut the page
        assert best is not None
        return PagePlan(canvas, tuple(_cut_turn(t, lo) for t in turns), best, True)

    def plan(
        self, turns: Sequence[RenderTurn], layout: tuple[int, int], size: tuple[int, int]
    ) -> PagePlan:
        """How :meth:`render` draws the turns for an image of ``size`` (for tests, OCR checks
        and benchmarks that need to know what text each image shows, and where)."""
        layout, size = (int(layout[0]), int(layout[1])), (int(size[0]), int(size[1]))
        with self._lock:
            return self._plan(turns, layout, self._fit(turns, layout), size)

    def render(
        self,
        turns: Sequence[RenderTurn],
        layout: tuple[int, int],
        sizes: Sequence[tuple[int, int]],
    ) -> list[RenderedImage]:
        """Lay the turns out ONCE on the `layout` canvas with the largest font (<= max_font_px) at
        which they fit, then produce one image per requested size by downsampling that bitmap with
        a good filter (LANCZOS / reduce); sizes equal to layout are returned as drawn. A size at
        which the text would fall below ``min_effective_px`` gets an abridged drawing instead."""
        layout = (int(layout[0]), int(layout[1]))
        if layout[0] < 1 or layout[1] < 1:
            raise ValueError(f"bad layout canvas {layout}")
        wanted = [(int(w), int(h)) for w, h in sizes]
        for size in wanted:
            if size[0] < 1 or size[1] < 1:
                raise ValueError(f"bad image size {size}")
        with self._lock:
            lay = self._fit(turns, layout)
            img = self._draw(lay, layout)
            plans = {size: self._plan(turns, layout, lay, size) for size in wanted}
            drawn = {
                size: img if plan.layout is lay else self._draw(plan.layout, plan.canvas)
                for size, plan in plans.items()
            }
        return [
            RenderedImage(
                self._png(self._resize(drawn[size], size)),
                size[0],
                size[1],
                plans[size].layout.font_px,
                plans[size].abridged,
            )
            for size in wanted
        ]


def _cut_turn(turn: RenderTurn, cap: int) -> RenderTurn:
    """The turn with its text cut to at most ``cap`` characters (at a space where one is near),
    and an ellipsis; unchanged if it is no longer."""
    text = turn.text
    if len(text) <= cap:
        return turn
    cut = text[:cap]
    space = cut.rfind(" ")
    if space >= cap // 2:
        cut = cut[:space]
    return RenderTurn(turn.speaker, turn.at, cut.rstrip() + _ELLIPSIS)
