"""Layout: what each line of a page shows, and where, before anything is drawn.

One job: turn chat turns and a canvas into a :class:`Layout` (lines of :class:`Run` objects,
each a piece of text in one :class:`~optical_memory.glyphs.Style` at an x position), and find
the font size at which they fit. It only adds up character widths from
:class:`~optical_memory.glyphs.Metrics` (no bitmaps), so it is cheap: the packer measures turns
with it (:func:`capacity`, :func:`footprint`) and the renderer fits a page by binary search over
font sizes (:func:`fit`). Kept apart from drawing so that tests and OCR checks can see exactly
what text a page shows, and where.

A page is running text: every turn opens with a bold speaker label (``Caroline 13:56:``; the
date is added on the first turn of a page and whenever the day changes, ``Caroline 8 May 2023
13:56:``; on an abridged page a turn kept whole is marked, ``★ Caroline 13:56:``), and turns
flow on in the same paragraph, separated by a ``|``. Hard line breaks in a
turn are kept; lines that start with whitespace and lines inside ``` / ~~~ fences are set in
the mono font and keep their indentation. Long words and URLs are broken at the line width;
tabs expand to 4 columns; runs of blank prose lines collapse (a paragraph break becomes a plain
line break).

Cleaning (:func:`clean`): control characters other than newline and tab are dropped (vertical
tab, form feed, ``\\r``, U+2028/9 and friends become line breaks), as are format characters
(zero-width joiners, direction marks, BOM, soft hyphen) and variation selectors; text is
NFC-normalised. Right-to-left text is laid out in logical order, without shaping.
"""

from __future__ import annotations

import math
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import accumulate

from .glyphs import Metrics, Style
from .thumbnails import (
    MAX_FLOAT_SHARE,
    TurnImage,
    box_size,
    float_lines,
    footprint_px,
    gap_px,
    pays,
)

__all__ = [
    "ELLIPSIS",
    "EPS",
    "KEPT_MARK",
    "HardLine",
    "LabelledTurn",
    "Layout",
    "Line",
    "Piece",
    "RenderTurn",
    "Run",
    "Style",
    "Thumb",
    "TurnImage",
    "capacity",
    "chars_per_line",
    "clean",
    "fit",
    "flow",
    "footprint",
    "hard_lines",
    "label",
    "margin",
    "max_lines",
    "prepare",
    "too_big",
]

ELLIPSIS = "…"
# Opens the label of a turn an abridged page kept whole (DejaVu Sans has the glyph).
KEPT_MARK = "★"
EPS = 0.01  # px of slack in width comparisons (float sums of advances)
_TAB = 4
_SEPARATOR = "|"
_MAX_SPEAKER = 64  # characters of a speaker label shown
_FILL = 0.95  # share of the raw page area the packer may fill (word-wrap waste, labels, dates)
_DATE_RESERVE = 16  # characters reserved per page for the date shown on the first turn
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class RenderTurn:
    """One chat turn as a page shows it.

    ``keep_whole`` asks an abridged page (see :class:`~optical_memory.render.PageRenderer`) to
    keep this turn's text whole while the others are cut; it changes nothing on a page that is
    not abridged. ``kept_whole`` is set by the renderer on the turns of an abridged page that
    were kept whole: their label opens with :data:`KEPT_MARK`. ``images``: the turn's
    images, drawn as thumbnails after its text where they pay (see :mod:`.thumbnails`); their
    labels are in ``text``.
    """

    speaker: str  # label to show, e.g. "user", "assistant", "Caroline"
    at: datetime  # timezone-aware
    text: str
    keep_whole: bool = False  # salient (or pinned, or recalled): cut last when abridging
    kept_whole: bool = False  # drawn whole on an abridged page, its label marked
    images: tuple[TurnImage, ...] = ()


# --------------------------------------------------------------------------------------------------
# What a layout is


@dataclass(frozen=True, slots=True)
class Run:
    """Text in one style, drawn from ``x`` (px from the canvas's left edge) along a line."""

    x: float
    style: Style
    text: str


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a page: its runs, and its text as read (blanks between runs included)."""

    runs: tuple[Run, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Thumb:
    """A thumbnail on a page: its top-left corner at ``x`` (px) on the top of line ``line``,
    ``width`` × ``height`` px, showing ``image``."""

    line: int
    x: float
    width: int
    height: int
    image: TurnImage


@dataclass(frozen=True)
class Layout:
    """A page laid out at ``font_px``: line ``i`` sits at ``margin + i * line_height`` (top of
    the line, px); ``truncated`` when the text did not fit and the last line ends in ``…``;
    ``thumbs``: the images drawn as thumbnails (text flows on beside them)."""

    font_px: float
    line_height: int
    margin: int
    lines: tuple[Line, ...]
    truncated: bool
    thumbs: tuple[Thumb, ...] = ()

    @property
    def text_lines(self) -> list[str]:
        """The lines as they are drawn (for tests and OCR checks)."""
        return [line.text for line in self.lines]


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece of text to place on a line as one unit: a word, a label, a separator."""

    style: Style
    text: str
    width: float


# --------------------------------------------------------------------------------------------------
# Text cleaning and hard lines

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


def clean(text: str) -> str:
    """The text as a page shows it: controls and format characters dropped, breaks unified, NFC."""
    text = text.replace("\r\n", "\n")
    if not _PLAIN.fullmatch(text):
        text = "".join(map(_clean_char, text))
        text = unicodedata.normalize("NFC", text)
    return text


@dataclass(frozen=True, slots=True)
class HardLine:
    """A line of a turn's text as typed: prose (flows on) or mono (code: kept as it is)."""

    text: str
    mono: bool


@lru_cache(maxsize=4096)
def hard_lines(text: str) -> tuple[HardLine, ...]:
    """Split a turn's text into hard lines: prose lines flow, mono lines (code) keep their layout.

    Cached: packing, fitting and each probe of an abridged page's search split the same texts."""
    out: list[HardLine] = []
    fence = False
    prev_blank = False
    for raw in clean(text).split("\n"):
        line = raw.expandtabs(_TAB).rstrip()
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            out.append(HardLine(line, True))
            fence = not fence
            prev_blank = False
        elif fence:
            if not line and prev_blank:
                continue
            out.append(HardLine(line, True))
            prev_blank = not line
        elif not line:
            continue  # blank prose lines collapse
        else:
            out.append(HardLine(line, line != stripped))
    return tuple(out)


def label(turn: RenderTurn, with_date: bool) -> str:
    """The speaker label opening a turn: ``Caroline 13:56:``, or with the date; a turn an
    abridged page kept whole is marked: ``★ Caroline 13:56:``."""
    speaker = " ".join(clean(turn.speaker).split()) or "?"
    if len(speaker) > _MAX_SPEAKER:
        speaker = speaker[: _MAX_SPEAKER - 1] + ELLIPSIS
    at = turn.at
    clock = f"{at.hour:02d}:{at.minute:02d}"
    if turn.kept_whole:
        speaker = f"{KEPT_MARK} {speaker}"
    if with_date:
        return f"{speaker} {at.day} {_MONTHS[at.month - 1]} {at.year} {clock}:"
    return f"{speaker} {clock}:"


@dataclass(frozen=True, slots=True)
class LabelledTurn:
    """A turn ready to flow: its label (with the date where the day changes), hard lines, and
    the images to draw as thumbnails after them (where they pay)."""

    label: str
    lines: tuple[HardLine, ...]
    images: tuple[TurnImage, ...] = ()


def prepare(turns: Sequence[RenderTurn], *, thumbnails: bool = False) -> list[LabelledTurn]:
    """Labels (with the date where the day changes) and hard lines of each turn; with
    ``thumbnails``, its images too (else they show as their labels in the text only)."""
    out = []
    prev_day = None
    for turn in turns:
        day = (turn.at.year, turn.at.month, turn.at.day)
        images = turn.images if thumbnails else ()
        out.append(LabelledTurn(label(turn, day != prev_day), hard_lines(turn.text), images))
        prev_day = day
    return out


_TOKENS = re.compile(r" +|[^ ]+")


# --------------------------------------------------------------------------------------------------
# Page geometry


def margin(canvas: tuple[int, int]) -> int:
    """The blank border of a page on ``canvas`` (px)."""
    return max(2, round(min(canvas) * 0.004))


def max_lines(m: Metrics, canvas: tuple[int, int]) -> int:
    """How many lines at ``m``'s size fit on ``canvas``."""
    usable = canvas[1] - 2 * margin(canvas) - m.glyph_height
    return max(1, 1 + usable // m.line_height) if usable >= 0 else 1


def chars_per_line(m: Metrics, canvas: tuple[int, int]) -> float:
    """Average characters (of English prose at ``m``'s size) in a line on ``canvas``."""
    return max(1.0, (canvas[0] - 2 * margin(canvas)) / m.avg_char)


def capacity(m: Metrics, canvas: tuple[int, int]) -> int:
    """Characters of footprint (:func:`footprint`) a page on ``canvas`` holds at ``m``'s size."""
    raw = max_lines(m, canvas) * chars_per_line(m, canvas)
    return max(1, int(raw * _FILL) - _DATE_RESERVE)


def footprint(turn: RenderTurn, m: Metrics, canvas: tuple[int, int]) -> int:
    """Characters this turn uses on a page: label + text + what hard line breaks waste.

    Measured in average characters of English prose at ``m``'s size (so wide glyphs count
    more than one); the separator and the label (without the date) are included, and a hard
    line break counts as half a line, a mono (code) line as whole lines. An image drawn as a
    thumbnail on the large rendition (see :mod:`.thumbnails`) adds the area it takes from the
    text (:func:`~optical_memory.thumbnails.footprint_px`).
    """
    line_w = canvas[0] - 2 * margin(canvas)
    sans = m.widths[Style.SANS]
    unit = 3 * sans[" "] + sans[_SEPARATOR] + m.width(Style.LABEL, label(turn, False)) + 1
    # the label is not broken: when it does not fit, the rest of the line is lost
    px = unit + unit * unit / (2 * line_w)
    half = line_w / 2
    segs = hard_lines(turn.text)
    for i, seg in enumerate(segs):
        w = m.width(Style.MONO if seg.mono else Style.SANS, seg.text)
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
    for image in turn.images:
        if pays(box_size(image, m.line_height, line_w), 1.0):
            px += footprint_px(image, m.line_height, line_w)
    return max(1, math.ceil(px / m.avg_char))


# --------------------------------------------------------------------------------------------------
# Flowing


class _Overflow(Exception):
    pass


@dataclass(slots=True)
class _OpenRun:
    """A run still being filled: drawn from ``x``; ``lead`` is the blank text before it on the
    line (kept for the line's text, not drawn)."""

    x: float
    style: Style
    parts: list[str]
    lead: str


class _Flow:
    """Greedy line filling with cheap width sums; raises _Overflow past ``max_lines``.

    Thumbnails float: :meth:`images` queues a turn's images, and the next line that starts
    (once an earlier float has ended) gets them at its left, side by side; that line and the
    ones beside them start further right (``line_left``)."""

    def __init__(
        self, m: Metrics, width: int, margin: int, max_lines: int, thumb_scale: float = 1.0
    ) -> None:
        self.m = m
        self.w = m.widths
        self.left = float(margin)
        self.right = float(width - margin)
        self.line_w = self.right - self.left
        self.max_lines = max_lines
        self.lines: list[Line] = []
        self.thumb_scale = thumb_scale
        self.thumbs: list[Thumb] = []
        self.pending: list[tuple[TurnImage, int, int]] = []
        self.float_until = 0  # lines before this one have a float at their left
        self.float_w = 0.0  # its width, with the gap after it
        self._reset(soft=False)

    # line state -----------------------------------------------------------------------------
    def _reset(self, soft: bool) -> None:
        self.runs: list[_OpenRun] = []
        self.empty = True
        self.soft = soft
        n = len(self.lines)
        if self.pending and n >= self.float_until:
            self._anchor(n)
        self.line_left = self.left + (self.float_w if n < self.float_until else 0.0)
        self.x = self.line_left

    # thumbnails -------------------------------------------------------------------------------
    def images(self, images: Sequence[TurnImage]) -> None:
        """Queue the images that pay as thumbnails; placed at the next line start."""
        lh = self.m.line_height
        for image in images:
            w, h = box_size(image, lh, self.line_w)
            if pays((w, h), self.thumb_scale):
                self.pending.append((image, w, h))
        if self.pending and self.empty and len(self.lines) >= self.float_until:
            self._reset(self.soft)  # the current line has not started: the float goes on it

    def _anchor(self, n: int) -> None:
        """Set the queued thumbnails that fit side by side at the left of line ``n``."""
        gap = gap_px(self.m.line_height)
        cap = self.line_w * MAX_FLOAT_SHARE + EPS
        x, lines = self.left, 0
        placed = []
        for image, w, h in self.pending:
            if placed and x + w - self.left > cap:
                break
            placed.append(Thumb(n, x, w, h, image))
            x += w + gap
            lines = max(lines, float_lines(h, self.m.line_height))
        if n + lines > self.max_lines:
            raise _Overflow
        del self.pending[: len(placed)]
        self.thumbs += placed
        self.float_until, self.float_w = n + lines, x - self.left

    def close(self) -> None:
        """Place the thumbnails still queued at the end (blank lines beside an earlier float
        until it ends); raises _Overflow when they do not fit."""
        if self.pending and not self.empty:
            self.end_line()
        while self.pending:
            self.end_line()  # a blank line beside the float that holds them back

    def end_line(self, soft: bool = False) -> None:
        runs = tuple(Run(r.x, r.style, "".join(r.parts)) for r in self.runs)
        text = "".join(r.lead + run.text for r, run in zip(self.runs, runs, strict=True))
        self.lines.append(Line(runs, text))
        self._reset(soft)

    def ensure_line_start(self) -> None:
        if not self.empty:
            self.end_line()

    # placing ----------------------------------------------------------------------------------
    def _emit(self, pieces: Sequence[Piece], gap: float, gap_text: str) -> None:
        if self.empty and len(self.lines) >= self.max_lines:
            raise _Overflow
        x = self.x + gap
        runs = self.runs
        for piece in pieces:
            style = piece.style
            if runs and runs[-1].style == style:
                parts = runs[-1].parts
                if gap_text:
                    parts.append(gap_text)
                parts.append(piece.text)
            else:
                runs.append(_OpenRun(x, style, [piece.text], gap_text))
            gap_text = ""
            x += piece.width
        self.x = x
        self.empty = False

    def place(self, pieces: Sequence[Piece], gap: float, gap_text: str) -> None:
        w = sum(p.width for p in pieces)
        if self.empty and self.soft:
            gap, gap_text = 0.0, ""
        fits_line = w <= self.right - self.line_left + EPS
        if self.x + gap + w <= self.right + EPS:
            self._emit(pieces, gap, gap_text)
        elif fits_line and self.empty:
            self._emit(pieces, 0.0, "")  # an indent too deep for the word: drop the indent
        elif fits_line:
            self.end_line(soft=True)
            self._emit(pieces, 0.0, "")
        else:
            self._split(pieces, gap, gap_text)

    def _split(self, pieces: Sequence[Piece], gap: float, gap_text: str) -> None:
        """A word wider than a line: break it at the line width."""
        chars = [(p.style, ch) for p in pieces for ch in p.text]
        widths = [self.w[style][ch] for style, ch in chars]
        cum = [0.0, *accumulate(widths)]
        start = 0
        if not self.empty and self.right - (self.x + gap) < 4 * self.m.avg_char:
            self.end_line(soft=True)
        if self.empty and self.soft:
            gap, gap_text = 0.0, ""
        while start < len(chars):
            avail = self.right + EPS - (self.x + gap)
            end = bisect_right(cum, cum[start] + avail) - 1
            if end <= start:
                if self.empty:
                    end = start + 1  # a glyph wider than the line: place it anyway
                else:
                    self.end_line(soft=True)
                    gap, gap_text = 0.0, ""
                    continue
            out: list[Piece] = []
            k = start
            while k < end:
                style = chars[k][0]
                j = k
                while j < end and chars[j][0] == style:
                    j += 1
                out.append(Piece(style, "".join(c for _, c in chars[k:j]), cum[j] - cum[k]))
                k = j
            self._emit(out, gap, gap_text)
            start = end
            if start < len(chars):
                self.end_line(soft=True)
                gap, gap_text = 0.0, ""

    def words(self, style: Style, text: str, gap: float, gap_text: str) -> None:
        """Flow the words of ``text`` on; blanks between words are kept as they are."""
        word_width = self.m.word_widths[style].__getitem__
        space = self.w[style][" "]
        right = self.right + EPS
        for tok in _TOKENS.findall(text):
            if tok[0] == " ":
                gap, gap_text = len(tok) * space, tok
                continue
            w = word_width(tok)
            if not self.empty and self.runs[-1].style == style and self.x + gap + w <= right:
                parts = self.runs[-1].parts  # fast path: the word goes on the current run
                if gap_text:
                    parts.append(gap_text)
                parts.append(tok)
                self.x += gap + w
            else:
                self.place((Piece(style, tok, w),), gap, gap_text)
            gap, gap_text = 0.0, ""

    def finish(self) -> tuple[Line, ...]:
        if not self.empty:
            self.end_line()
        return tuple(self.lines[: self.max_lines])


def flow(
    items: Sequence[LabelledTurn],
    m: Metrics,
    canvas: tuple[int, int],
    *,
    truncate: bool = False,
    thumb_scale: float = 1.0,
) -> Layout | None:
    """Lay prepared turns out on ``canvas`` at ``m``'s font size; None if they do not fit
    (unless ``truncate``: then the page is cut and its last line ends in ``…``).

    Images the items carry are drawn as thumbnails where they pay on an image
    ``thumb_scale`` times the canvas (see :func:`~optical_memory.thumbnails.pays`)."""
    left = margin(canvas)
    filler = _Flow(m, canvas[0], left, max_lines(m, canvas), thumb_scale)
    sans = m.widths[Style.SANS]
    space = sans[" "]
    mono_space = m.widths[Style.MONO][" "]
    truncated = False
    try:
        for n, item in enumerate(items):
            pieces = []
            if n:
                pieces += [
                    Piece(Style.SEP, _SEPARATOR, sans[_SEPARATOR]),
                    Piece(Style.SANS, " ", space),
                ]
            pieces.append(Piece(Style.LABEL, item.label, m.width(Style.LABEL, item.label) + 1))
            filler.place(pieces, space if n else 0.0, " " if n else "")
            for i, seg in enumerate(item.lines):
                if seg.mono:
                    filler.ensure_line_start()
                    if seg.text:
                        indent = len(seg.text) - len(seg.text.lstrip(" "))
                        filler.words(
                            Style.MONO, seg.text[indent:], indent * mono_space, " " * indent
                        )
                    filler.end_line()
                elif i:
                    filler.ensure_line_start()
                    filler.words(Style.SANS, seg.text, 0.0, "")
                else:
                    filler.words(Style.SANS, seg.text, space, " ")
            if item.images:
                filler.images(item.images)
        filler.close()
    except _Overflow:
        if not truncate:
            return None
        truncated = True
    lines = list(filler.finish())
    if truncated and lines:
        lines[-1] = _ellipsize(m, lines[-1], left, canvas[0] - left)
    return Layout(m.px, m.line_height, left, tuple(lines), truncated, tuple(filler.thumbs))


def too_big(items: Sequence[LabelledTurn], m: Metrics, canvas: tuple[int, int]) -> bool:
    """Cheap necessary condition: the text's total width cannot fit the page's lines."""
    line_w = canvas[0] - 2 * margin(canvas)
    sans = m.widths[Style.SANS]
    total = (3 * sans[" "] + sans[_SEPARATOR]) * len(items)
    widths = m.line_widths
    for item in items:
        total += widths[Style.LABEL][item.label]
        for seg in item.lines:
            total += widths[Style.MONO if seg.mono else Style.SANS][seg.text]
    return total > line_w * max_lines(m, canvas)


def _ellipsize(m: Metrics, line: Line, left: float, right: float) -> Line:
    ell = m.widths[Style.SANS][ELLIPSIS]
    runs = list(line.runs)
    text = line.text
    while runs:
        last = runs[-1]
        end = last.x + m.width(last.style, last.text)
        if end + ell <= right + EPS:
            break
        if len(last.text) <= 1:
            runs.pop()
            text = text[: len(text) - len(last.text)].rstrip()
            continue
        runs[-1] = Run(last.x, last.style, last.text[:-1])
        text = text[:-1]
    x = runs[-1].x + m.width(runs[-1].style, runs[-1].text) if runs else left
    runs.append(Run(x, Style.SANS, ELLIPSIS))
    return Line(tuple(runs), text.rstrip() + ELLIPSIS)


# --------------------------------------------------------------------------------------------------
# Fitting


def fits(
    items: Sequence[LabelledTurn],
    m: Metrics,
    canvas: tuple[int, int],
    *,
    thumb_scale: float = 1.0,
) -> Layout | None:
    """The layout at ``m``'s size if the items fit the canvas whole, else None (the cheap
    width test first, then the real flow)."""
    if too_big(items, m, canvas):
        return None
    return flow(items, m, canvas, thumb_scale=thumb_scale)


def fit(
    items: Sequence[LabelledTurn],
    canvas: tuple[int, int],
    metrics: Callable[[int], Metrics],
    *,
    min_px: int,
    max_px: int,
    floor_px: int,
    thumb_scale: float = 1.0,
) -> Layout:
    """The layout at the largest font size that fits (binary search on cheap width sums).

    Sizes from ``min_px`` up to ``max_px`` are tried first; a page that does not fit at
    ``min_px`` shrinks down to ``floor_px``, and one that does not fit even there is cut.
    ``metrics`` gives the metrics at a size; ``thumb_scale``: see :func:`flow`.
    """

    def attempt(px: int) -> Layout | None:
        return fits(items, metrics(px), canvas, thumb_scale=thumb_scale)

    best = attempt(min_px)
    lo, hi = min_px + 1, max_px
    if best is None:
        lo, hi = floor_px, min_px - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        found = attempt(mid)
        if found is None:
            hi = mid - 1
        else:
            best, lo = found, mid + 1
    if best is None:
        best = flow(items, metrics(floor_px), canvas, truncate=True, thumb_scale=thumb_scale)
    assert best is not None
    return best
