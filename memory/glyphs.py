"""Glyphs: which font draws each character, how wide it is and what it looks like.

One job: turn a character, a text style and a font size into an advance width and a bitmap.
Layout (:mod:`.layout`) only adds widths up and drawing (:mod:`.render`) only blends bitmaps;
neither touches a font file. Kept apart because it is the one part that depends on FreeType and
on font files, and because its caches (per size, per character) are what makes layout cheap.

The bundled DejaVu Sans / DejaVu Sans Mono are the primary fonts. For a character the primary
font lacks (CJK, most emoji, ...), the first *fallback font* that has it is used: the
``fallback_fonts`` a :class:`FontSet` is made with, then the paths in the environment variable
``OPTICAL_MEMORY_FALLBACK_FONTS`` (``os.pathsep``-separated). A character no font has is drawn as
a box (``□``). Coverage is read from each font's ``cmap`` table (:func:`cmap_codepoints`), not
guessed from Pillow's output. Fonts use Pillow's basic layout engine (no raqm): output does not
depend on which libraqm is installed, and width sums are exact.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from collections.abc import Callable, Sequence
from enum import IntEnum
from functools import cache, lru_cache, partial
from importlib import resources
from pathlib import Path

from PIL import ImageFont

__all__ = [
    "BOX",
    "FALLBACK_FONTS_ENV",
    "FREETYPE_LOCK",
    "LINE_SPACING",
    "Face",
    "FontSet",
    "Metrics",
    "Style",
    "bundled_face",
    "cmap_codepoints",
    "file_face",
]

FALLBACK_FONTS_ENV = "OPTICAL_MEMORY_FALLBACK_FONTS"
BOX = "□"  # drawn for characters no font has
LINE_SPACING = 1.2  # line pitch / font size
# One lock for every user of these fonts: faces are shared (cached per file), and FreeType
# faces are not thread-safe.
FREETYPE_LOCK = threading.RLock()

# An English chat sample used to turn pixel widths into "average characters".
_CALIBRATION = (
    "Hey, did you get a chance to look at the budget numbers I sent over yesterday? "
    "Yes! I think the marketing line is too high; we could move 15% of it to hiring. "
    "Sounds good. Let's talk on Monday at 10:30 and I'll bring the draft for Q3."
)


class Style(IntEnum):
    """How a run of text is set: prose, mono (code), the bold speaker label, the turn separator.

    Label and separator are set in the prose font (the label drawn bold). An ``IntEnum``, so a
    style indexes the per-style tables of :class:`Metrics` directly.
    """

    SANS = 0
    MONO = 1
    LABEL = 2
    SEP = 3


def cmap_codepoints(data: bytes, index: int = 0) -> frozenset[int]:
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


class Face:
    """One font file: its coverage and its Pillow font objects per pixel size."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self._data = data
        self._cover: frozenset[int] | None = None
        self._sizes: dict[float, ImageFont.FreeTypeFont | None] = {}
        self._lock = threading.Lock()

    def covers(self, ch: str) -> bool:
        if self._cover is None:
            try:
                self._cover = cmap_codepoints(self._data)
            except (struct.error, IndexError, ValueError):
                warnings.warn(f"cannot read the character map of font {self.name}", stacklevel=2)
                self._cover = frozenset()
        return ord(ch) in self._cover

    def at(self, px: float) -> ImageFont.FreeTypeFont | None:
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
def bundled_face(filename: str) -> Face:
    """A font shipped in the package's ``fonts`` folder (one shared :class:`Face` per file)."""
    package = f"{__package__}.fonts" if __package__ else None
    if package:
        data = resources.files(package).joinpath(filename).read_bytes()
    else:  # pragma: no cover - running the file outside its package
        data = (Path(__file__).parent / "fonts" / filename).read_bytes()
    return Face(filename, data)


@lru_cache(maxsize=64)
def file_face(path: str) -> Face:
    """A font file on disk (shared per path); raises OSError where it cannot be read."""
    return Face(path, Path(path).read_bytes())


class FontSet:
    """The faces one renderer draws with, the fallback order per style, and metrics per size.

    Faces 0 and 1 are DejaVu Sans and DejaVu Sans Mono; the fallbacks follow, first those given,
    then those named in ``OPTICAL_MEMORY_FALLBACK_FONTS``. A fallback given here that cannot be
    read raises OSError; one from the environment is skipped with a warning, attributed
    ``stacklevel`` frames up (as :func:`warnings.warn` counts them from this constructor).
    Use a set, and the metrics it hands out, under :data:`FREETYPE_LOCK`.
    """

    def __init__(self, fallback_fonts: Sequence[str | Path] = (), *, stacklevel: int = 2) -> None:
        faces = [bundled_face("DejaVuSans.ttf"), bundled_face("DejaVuSansMono.ttf")]
        for path in fallback_fonts:
            faces.append(file_face(str(Path(path).resolve())))
        for path in os.environ.get(FALLBACK_FONTS_ENV, "").split(os.pathsep):
            if not path.strip():
                continue
            try:
                faces.append(file_face(str(Path(path).resolve())))
            except OSError as exc:
                warnings.warn(
                    f"{FALLBACK_FONTS_ENV}: cannot read {path!r}: {exc}", stacklevel=stacklevel
                )
        self.faces: list[Face] = faces
        fallbacks = list(range(2, len(faces)))
        sans_chain = [0, 1, *fallbacks]
        self.chains: dict[Style, list[int]] = {
            Style.SANS: sans_chain,
            Style.MONO: [1, 0, *fallbacks],
            Style.LABEL: sans_chain,
            Style.SEP: sans_chain,
        }
        self._metrics: dict[float, Metrics] = {}

    @property
    def fallback_fonts(self) -> tuple[str, ...]:
        return tuple(face.name for face in self.faces[2:])

    def metrics(self, px: float) -> Metrics:
        """The (cached) metrics at font size ``px``."""
        m = self._metrics.get(px)
        if m is None:
            m = self._metrics[px] = Metrics(self, px)
        return m


class Metrics:
    """Per font size: character widths (with fallback resolution) and glyph bitmaps per style.

    ``widths[style][ch]`` is the advance of ``ch``; ``face_of[style][ch]`` the index into
    ``FontSet.faces`` of the face drawing it (-1: the box); ``glyphs[style][ch]`` its bitmap
    ``(mask, dx, dy)`` anchored on the baseline, or None for blanks. All fill lazily.
    """

    def __init__(self, fonts: FontSet, px: float) -> None:
        self.px = px
        self.fontset = fonts
        self.fonts = [face.at(px) for face in fonts.faces]
        self.widths: list[dict[str, float]] = []
        self.face_of: list[dict[str, int]] = []
        for style in (Style.SANS, Style.MONO):
            self.widths.append(_WidthTable(self, style))
            self.face_of.append({})
        # label and separator are set in the prose font
        self.widths += [self.widths[Style.SANS], self.widths[Style.SANS]]
        self.face_of += [self.face_of[Style.SANS], self.face_of[Style.SANS]]
        self.glyphs: list[dict[str, tuple | None]] = [
            _GlyphTable(self, Style.SANS),
            _GlyphTable(self, Style.MONO),
        ]
        self.glyphs += [self.glyphs[Style.SANS], self.glyphs[Style.SANS]]
        # text -> advance, per style: each layout tried for a page (an abridged page's search
        # lays its turns out 6-8 times) sums the same words' and lines' widths again
        self.word_widths = self._remembered(limit=50_000)
        self.line_widths = self._remembered(limit=4_096)
        sans = self.fonts[0]
        assert sans is not None
        self.ascent = sans.getmetrics()[0]
        self.glyph_height = sum(sans.getmetrics())
        self.line_height = max(int(px) + 1, round(px * LINE_SPACING))
        cal = self.widths[Style.SANS]
        self.avg_char = sum(map(cal.__getitem__, _CALIBRATION)) / len(_CALIBRATION)

    def resolve(self, style: Style, ch: str) -> int:
        """Index into ``FontSet.faces`` of the face drawing ``ch``; -1 for the box."""
        faces = self.fontset.faces
        for i in self.fontset.chains[style]:
            if self.fonts[i] is not None and faces[i].covers(ch):
                return i
        return -1

    def width(self, style: Style, text: str) -> float:
        return sum(map(self.widths[style].__getitem__, text))

    def _remembered(self, limit: int) -> list[dict[str, float]]:
        sans = _RememberedWidths(partial(self.width, Style.SANS), limit)
        mono = _RememberedWidths(partial(self.width, Style.MONO), limit)
        return [sans, mono, sans, sans]  # label and separator: the prose font's


class _RememberedWidths(dict):
    """The advance of a word or a line, as :meth:`Metrics.width` measures it (so a layout is
    the same with or without the table). Emptied when it holds ``limit`` texts, and a text
    longer than ``_LONGEST_REMEMBERED`` characters is measured each time, so a long-running
    process keeps neither every text it drew nor a few huge ones."""

    def __init__(self, measure: Callable[[str], float], limit: int) -> None:
        super().__init__()
        self.measure = measure
        self.limit = limit

    def __missing__(self, text: str) -> float:
        w = self.measure(text)
        if len(text) <= _LONGEST_REMEMBERED:
            if len(self) >= self.limit:
                self.clear()
            self[text] = w
        return w


_LONGEST_REMEMBERED = 2_000


class _WidthTable(dict):
    def __init__(self, metrics: Metrics, style: Style) -> None:
        super().__init__()
        self.metrics = metrics
        self.style = style

    def __missing__(self, ch: str) -> float:
        m = self.metrics
        i = m.resolve(self.style, ch)
        m.face_of[self.style][ch] = i
        if i < 0:
            primary = m.fontset.chains[self.style][0]
            w = m.fonts[primary].getlength(BOX)
        else:
            try:
                w = m.fonts[i].getlength(ch)
            except Exception:  # noqa: BLE001 - never let one glyph break a page
                m.face_of[self.style][ch] = -1
                primary = m.fontset.chains[self.style][0]
                w = m.fonts[primary].getlength(BOX)
        self[ch] = w
        return w


class _GlyphTable(dict):
    """char -> (mask, dx, dy) for the baseline-anchored glyph bitmap, or None for blanks."""

    def __init__(self, metrics: Metrics, style: Style) -> None:
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
        primary = m.fontset.chains[self.style][0]
        g = None
        if ch.isspace():
            pass
        elif face >= 0:
            try:
                g = self._render(face, ch)
            except Exception:  # noqa: BLE001 - never let one glyph break a page
                g = self._render(primary, BOX)
        else:
            g = self._render(primary, BOX)
        self[ch] = g
        return g
