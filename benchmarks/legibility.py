"""Legible characters per image token: the project's renderer against a naive one, every target.

For every built-in target (``optical_memory.ladder``) and every image tier (large, base, small,
tiny), three pages of the same deterministic synthetic English chat (``benchmarks.ocr``) are made
at the tier's canvas and read back:

* ``optical-memory``: what the library does. Turns are packed up to the renderer's capacity on the
  target's layout canvas (its large tier), laid out as running text with inline speaker labels,
  drawn once (DejaVu Sans at ``min_font_px`` 11 for a full page) and downsampled (Lanczos, 32
  grey levels) to the tier's canvas (``PageRenderer.render``). Where that would put the text
  below ``min_effective_px`` (6 px), the tier is abridged: laid out again on the canvas that
  downsamples to 6 px, long turns cut short, so it shows fewer characters, all readable.
* ``naive (downsampled)``: Pillow's default font, ``ImageFont.load_default(size=11)`` (Aileron
  Regular, a FreeType font, in Pillow >= 10.1; the same nominal size as the project's minimum, so
  the comparison is about the renderer, not a size choice), one turn per line as ``speaker: text``,
  greedy word wrap at the canvas width, Pillow's multiline line pitch (height of "A" + 4 px), no
  fitting, the same margins, filled with the same turns until no further line fits (the last turn
  may be cut). Drawn on the target's large canvas and shrunk to the tier exactly as the project
  shrinks its pages (same filter, same grey levels): the same pipeline, only the page differs.
* ``naive (direct)``: the same naive page drawn directly on the tier's canvas at the same fixed
  size (fewer characters, but never blurred). Shrinking is the fair choice at sharp tiers, drawing
  directly can be the better naive choice at faint ones; both are measured and the summary
  compares the project against the better of the two for each (target, tier, reader). At the
  large tier both naive variants are the same image.

Readers (``--readers``):

* ``tesseract``: the whole page (``tesseract_read``: 2x Lanczos upscale, psm 6).
* ``rapidocr``: RapidOCR is too slow for whole pages on a small machine (over a minute each), so it
  reads a fixed *sample block* of every page: the words lying entirely inside a rectangle of
  ``--rapid-block`` pixels of the page as drawn (default 440x208, about 16 lines by a third of a
  1280 px line; at the left edge, vertically centred; clipped to the page), so every page, at
  whatever canvas, is sampled on about the same number of characters at the same drawn size.
  Only those words are drawn (same positions, same pipeline: drawn on the layout canvas, shrunk
  to the tier), the block is cropped out and read; accuracy is scored against those words with
  spaces ignored (RapidOCR drops them). The page's RapidOCR accuracy is that block's accuracy (an
  estimate from roughly 1,000 characters; the CSV gives the sample size).

Definitions, per (target, tier, renderer, reader):

* characters: the characters drawn on the page (spaces included, line breaks not).
* accuracy: ``char_accuracy`` = 1 - edit distance / length, on whitespace-normalised text.
* legible characters = characters x accuracy (the reader's accuracy-weighted characters);
  **legible characters per image token** = legible characters / ``target.tier_cost(tier)``.
* also, stricter: characters per image token counted only on pages read at >= 90% ("@90").

A tier a target does not offer uses the canvas of the nearest sharper tier it does (e.g. Gemini's
small and tiny are its 768² base), so those rows repeat a measurement, at the cost the target
charges for that tier.

    python -m benchmarks.legibility                      # all targets, both readers (~15 min)
    python -m benchmarks.legibility --quick              # deepseek-ocr only, smaller RapidOCR block
    python -m benchmarks.legibility --targets openai,gemini --readers tesseract
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import PIL
from PIL import Image, ImageDraw, ImageFont, features

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ocr import (  # noqa: E402
    char_accuracy,
    full_page,
    rapidocr_read,
    synthetic_chat,
    tesseract_available,
    tesseract_read,
)
from optical_memory.ladder import IMAGE_TIERS, Target, Tier, get_target  # noqa: E402
from optical_memory.layout import Layout, Line, Run, Style, margin  # noqa: E402
from optical_memory.render import PageRenderer  # noqa: E402

__all__ = ["CSV_COLUMNS", "NaiveRenderer", "RENDERERS", "main", "run"]

OM = "optical-memory"
NAIVE_DOWN = "naive (downsampled)"
NAIVE_DIRECT = "naive (direct)"
RENDERERS = (OM, NAIVE_DOWN, NAIVE_DIRECT)
NAIVE = (NAIVE_DOWN, NAIVE_DIRECT)
READERS = ("tesseract", "rapidocr")
THRESHOLD = 0.90
DEFAULT_TARGETS = ("deepseek-ocr", "deepseek-ocr-2", "qwen2.5-vl", "openai", "anthropic", "gemini")
DEFAULT_BLOCK = (440, 208)  # RapidOCR sample: width, height in px of the page as drawn
QUICK_BLOCK = (320, 130)

CSV_COLUMNS = (
    "target",
    "tier",
    "canvas_tier",
    "canvas",
    "detail",
    "image_tokens",
    "renderer",
    "layout",
    "font_px",
    "effective_px",
    "lines",
    "chars",
    "chars_per_token",
    "tesseract",
    "rapidocr",
    "rapidocr_sample_chars",
    "legible_per_token_tesseract",
    "legible_per_token_rapidocr",
    "chars90_per_token_tesseract",
    "chars90_per_token_rapidocr",
)

Size = tuple[int, int]
Word = tuple[str, float, float, int]  # text, x0, x1 (layout px), style (project renderer only)


# --------------------------------------------------------------------------------------------------
# Pages


@dataclass
class Page:
    """One page image at a tier canvas, with what it shows and how to draw a part of it."""

    layout: Size  # canvas the page is laid out and drawn on
    canvas: Size  # canvas of the image (== layout, or a downsample of it)
    font_px: float  # font size on the layout canvas
    lines: list[str]  # the text as drawn, line by line
    image: Image.Image  # greyscale, at ``canvas``
    words: list[list[Word]]  # per line, in layout px
    spans: list[tuple[float, float]]  # per line: top and bottom of its glyph box, layout px
    pitch: float  # line pitch, layout px
    draw_words: Callable[[list[list[Word]]], Image.Image]  # chosen words -> bitmap at layout

    @property
    def chars(self) -> int:
        return sum(map(len, self.lines))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def effective_px(self) -> float:
        return self.font_px * self.canvas[0] / self.layout[0]

    def block(self, size: Sequence[int]) -> tuple[Image.Image, str]:
        """The words entirely inside a ``size`` block of the layout (left edge, vertically
        centred), drawn alone, shrunk like the page, cropped out; and the text they show."""
        W, H = self.layout
        bw, bh = min(size[0], W), min(size[1], H)
        x0, y0 = 0.0, (H - bh) / 2
        x1, y1 = x0 + bw, y0 + bh
        chosen: list[list[Word]] = []
        expected: list[str] = []
        for words, (top, bottom) in zip(self.words, self.spans, strict=True):
            keep = (
                [w for w in words if w[1] >= x0 and w[2] <= x1]
                if top >= y0 and bottom <= y1
                else []
            )
            chosen.append(keep)
            if keep:
                expected.append(" ".join(w[0] for w in keep))
        img = PageRenderer.downsample(self.draw_words(chosen), self.canvas)
        s = self.canvas[0] / W
        pad = max(4, math.ceil(self.pitch * s))
        box = (
            max(0, math.floor(x0 * s) - pad),
            max(0, math.floor(y0 * s) - pad),
            min(self.canvas[0], math.ceil(x1 * s) + pad),
            min(self.canvas[1], math.ceil(y1 * s) + pad),
        )
        return img.crop(box), "\n".join(expected)


def _split_words(text: str, x: float, width_of: Callable[[str], float], style: int) -> list[Word]:
    """Words of ``text`` drawn from ``x``, with their extents (``width_of`` a prefix's advance)."""
    out: list[Word] = []
    start = None
    for k, ch in enumerate(text + " "):
        if ch != " " and start is None:
            start = k
        elif ch == " " and start is not None:
            out.append((text[start:k], x + width_of(text[:start]), x + width_of(text[:k]), style))
            start = None
    return out


def project_pages(
    renderer: PageRenderer, layout: Size, canvases: Sequence[Size], seed: int
) -> dict[Size, Page]:
    """The project's page for ``layout`` (packed to capacity), at each canvas, via ``render()``;
    what each image shows, and where, from the renderer's own plan for that size (a faint tier
    whose text would fall below ``min_effective_px`` is drawn abridged on a smaller canvas)."""
    turns = full_page(renderer, layout, seed=seed)
    rendered = renderer.render(turns, layout, list(canvases))
    out = {}
    for size, img in zip(canvases, rendered, strict=True):
        plan = renderer.plan(turns, layout, size)
        lay, drawn_on = plan.layout, plan.canvas
        m = renderer.metrics(lay.font_px)
        words: list[list[Word]] = []
        spans = []
        for i, line in enumerate(lay.lines):
            top = lay.margin + i * lay.line_height
            spans.append((float(top), float(top + m.glyph_height)))
            row: list[Word] = []
            for run in line.runs:
                widths = m.widths[run.style]

                def width_of(s: str, widths=widths) -> float:
                    return sum(map(widths.__getitem__, s))

                bold = 1 if run.style == Style.LABEL else 0  # the label is drawn twice, 1 px apart
                row += [
                    (t, a, b + bold, st)
                    for t, a, b, st in _split_words(run.text, run.x, width_of, run.style)
                ]
            words.append(row)

        def draw_words(chosen: list[list[Word]], lay=lay, drawn_on=drawn_on) -> Image.Image:
            lines = tuple(
                Line(tuple(Run(w[1], Style(w[3]), w[0]) for w in row), " ".join(w[0] for w in row))
                for row in chosen
            )
            sub = Layout(lay.font_px, lay.line_height, lay.margin, lines, False)
            return renderer.draw(sub, drawn_on)

        out[size] = Page(
            layout=drawn_on,
            canvas=size,
            font_px=lay.font_px,
            lines=lay.text_lines,
            image=Image.open(io.BytesIO(img.png)).convert("L"),
            words=words,
            spans=spans,
            pitch=lay.line_height,
            draw_words=draw_words,
        )
    return out


class NaiveRenderer:
    """Pillow's default font at a fixed size; one turn per line (``speaker: text``), greedy word
    wrap at the canvas width, no fitting, filled with turns until no further line fits."""

    def __init__(self, font_px: int = 11) -> None:
        self.font_px = font_px
        if features.check("freetype2"):
            self.font = ImageFont.load_default(size=font_px)
            self.font_name = " ".join(self.font.getname()) + f" {font_px} px (load_default)"
        else:  # pragma: no cover - Pillow without FreeType: the old bitmap font, fixed size
            self.font = ImageFont.load_default_imagefont()
            self.font_name = "Pillow bitmap default font (load_default_imagefont)"
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        self.pitch = probe.textbbox((0, 0), "A", font=self.font)[3] + 4  # multiline_text's pitch
        self.glyph_h = probe.textbbox((0, 0), "Ay", font=self.font)[3]

    def _wrap(self, text: str, width: float) -> list[str]:
        length = self.font.getlength
        lines: list[str] = []
        cur = ""
        for word in text.split():
            cand = f"{cur} {word}" if cur else word
            if length(cand) <= width:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            cur = word
            while length(cur) > width:  # a word wider than the line: break it
                k = next((i for i in range(len(cur) - 1, 1, -1) if length(cur[:i]) <= width), 1)
                lines.append(cur[:k])
                cur = cur[k:]
        if cur:
            lines.append(cur)
        return lines

    def layout(self, canvas: Size, seed: int) -> list[str]:
        left = margin(canvas)
        max_lines = max(1, 1 + (canvas[1] - 2 * left - self.glyph_h) // self.pitch)
        lines: list[str] = []
        for turn in synthetic_chat(seed):
            for line in self._wrap(f"{turn.speaker}: {turn.text}", canvas[0] - 2 * left):
                if len(lines) >= max_lines:
                    return lines
                lines.append(line)
        raise AssertionError("unreachable: the chat is endless")

    def _draw(self, canvas: Size, rows: list[list[tuple[float, str]]]) -> Image.Image:
        img = Image.new("L", canvas, 255)
        draw = ImageDraw.Draw(img)
        top = margin(canvas)
        for i, row in enumerate(rows):
            for x, text in row:
                draw.text((x, top + i * self.pitch), text, fill=0, font=self.font)
        return img

    def pages(self, layout: Size, canvases: Sequence[Size], seed: int) -> dict[Size, Page]:
        """The naive page drawn on ``layout`` and shrunk to each canvas like the project's."""
        lines = self.layout(layout, seed)
        left = margin(layout)
        big = self._draw(layout, [[(left, line)] for line in lines])
        words = [_split_words(line, left, self.font.getlength, 0) for line in lines]
        spans = [
            (float(left + i * self.pitch), float(left + i * self.pitch + self.glyph_h))
            for i in range(len(lines))
        ]

        def draw_words(chosen: list[list[Word]]) -> Image.Image:
            return self._draw(layout, [[(w[1], w[0]) for w in row] for row in chosen])

        return {
            size: Page(
                layout=layout,
                canvas=size,
                font_px=self.font_px,
                lines=lines,
                image=PageRenderer.downsample(big, size),
                words=words,
                spans=spans,
                pitch=self.pitch,
                draw_words=draw_words,
            )
            for size in canvases
        }


# --------------------------------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True)
class Cell:
    """One (target, tier, renderer): which page it reads."""

    target: Target
    tier: Tier
    canvas_tier: Tier
    renderer: str
    key: tuple[str, Size, Size]  # (kind, layout, canvas): pages are shared between cells


def _canvas_tier(target: Target, tier: Tier) -> Tier:
    return next(Tier(t) for t in range(tier, Tier.TEXT, -1) if Tier(t) in target.tiers)


def _cells(targets: Sequence[Target]) -> list[Cell]:
    cells = []
    for target in targets:
        layout = target.layout
        for tier in IMAGE_TIERS:
            canvas = target.spec(tier).size
            src = _canvas_tier(target, tier)
            cells += [
                Cell(target, tier, src, OM, ("om", layout, canvas)),
                Cell(target, tier, src, NAIVE_DOWN, ("naive", layout, canvas)),
                Cell(target, tier, src, NAIVE_DIRECT, ("naive", canvas, canvas)),
            ]
    return cells


def _fmt_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated target names (default: {','.join(DEFAULT_TARGETS)}; "
        "--quick: deepseek-ocr)",
    )
    ap.add_argument("--readers", default="tesseract,rapidocr", help="tesseract,rapidocr")
    ap.add_argument("--quick", action="store_true", help="one target, smaller RapidOCR block")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic chat")
    ap.add_argument(
        "--naive-font-px", type=int, default=11, help="size of the naive renderer's font (px)"
    )
    ap.add_argument(
        "--rapid-block",
        default=None,
        help="RapidOCR sample block, WxH px of the page as drawn "
        f"(default {'x'.join(map(str, DEFAULT_BLOCK))}; --quick {'x'.join(map(str, QUICK_BLOCK))})",
    )
    ap.add_argument("--jobs", type=int, default=2, help="Tesseract processes at once")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "legibility.csv",
        help="CSV output path",
    )
    args = ap.parse_args(argv)
    names = args.targets or ("deepseek-ocr" if args.quick else ",".join(DEFAULT_TARGETS))
    args.target_list = [get_target(n.strip()) for n in names.split(",") if n.strip()]
    args.reader_list = [r.strip().lower() for r in args.readers.split(",") if r.strip()]
    bad = [r for r in args.reader_list if r not in READERS]
    if bad or not args.reader_list:
        ap.error(f"--readers: use tesseract and/or rapidocr, not {bad or args.readers!r}")
    block = args.rapid_block
    try:
        args.block = (
            tuple(int(v) for v in block.lower().split("x"))
            if block
            else (QUICK_BLOCK if args.quick else DEFAULT_BLOCK)
        )
    except ValueError:
        args.block = ()
    if len(args.block) != 2 or min(args.block) < 1:
        ap.error("--rapid-block takes WxH in pixels, e.g. 440x208")
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Measure, print the tables, write the CSV; returns the rows (as written)."""
    if "tesseract" in args.reader_list and not tesseract_available():
        raise SystemExit("tesseract is not installed (or drop it from --readers)")
    if "rapidocr" in args.reader_list:
        try:
            import rapidocr_onnxruntime  # noqa: F401
        except ImportError:
            raise SystemExit(
                "rapidocr-onnxruntime is not installed (or drop it from --readers)"
            ) from None
    t_start = time.perf_counter()
    renderer = PageRenderer()
    naive = NaiveRenderer(args.naive_font_px)
    cells = _cells(args.target_list)

    # pages: one layout per (kind, layout), shrunk to every canvas asked for
    wanted: dict[tuple[str, Size], set[Size]] = {}
    for c in cells:
        wanted.setdefault(c.key[:2], set()).add(c.key[2])
    pages: dict[tuple[str, Size, Size], Page] = {}
    for (kind, layout), canvases in wanted.items():
        sizes = sorted(canvases, reverse=True)
        made = (
            project_pages(renderer, layout, sizes, args.seed)
            if kind == "om"
            else naive.pages(layout, sizes, args.seed)
        )
        for size, page in made.items():
            pages[(kind, layout, size)] = page

    # read every page once per reader; Tesseract in parallel processes, RapidOCR one at a time
    results: dict[tuple, tuple[float, int]] = {}
    lock = threading.Lock()
    done = [0]
    n_jobs = len(pages) * len(args.reader_list)

    def label(key) -> str:
        kind, layout, canvas = key
        name = OM if kind == "om" else "naive"
        return f"{name} {layout[0]}->{canvas[0]}"

    def job(key, reader: str) -> None:
        page = pages[key]
        t0 = time.perf_counter()
        if reader == "tesseract":
            acc = char_accuracy(page.text, tesseract_read(page.image))
            n = page.chars
        else:
            img, expected = page.block(args.block)
            acc = char_accuracy(expected, rapidocr_read(img), ignore_spaces=True)
            n = len("".join(expected.split()))
        with lock:
            results[(key, reader)] = (acc, n)
            done[0] += 1
            print(
                f"[{done[0]}/{n_jobs}] {reader} {label(key)}: {100 * acc:.1f}% of {n} chars "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    # largest first, so the pool does not end on one long page
    order = sorted(pages, key=lambda k: -pages[k].canvas[0] * pages[k].canvas[1] * pages[k].chars)
    futures: list[Future] = []
    with (
        ThreadPoolExecutor(max(1, args.jobs)) as tess_pool,
        ThreadPoolExecutor(1) as rapid_pool,
    ):
        for key in order:
            if "tesseract" in args.reader_list:
                futures.append(tess_pool.submit(job, key, "tesseract"))
            if "rapidocr" in args.reader_list:
                futures.append(rapid_pool.submit(job, key, "rapidocr"))
        for f in futures:
            f.result()

    # rows
    rows: list[dict] = []
    for c in cells:
        page = pages[c.key]
        tokens = c.target.tier_cost(c.tier)
        spec = c.target.spec(c.tier)
        row: dict = dict(
            target=c.target.name,
            tier=c.tier.label,
            canvas_tier=c.canvas_tier.label,
            canvas=_fmt_size(spec.size),
            detail=spec.detail or "",
            image_tokens=tokens,
            renderer=c.renderer,
            layout=_fmt_size(page.layout),
            font_px=page.font_px,
            effective_px=round(page.effective_px, 2),
            lines=len(page.lines),
            chars=page.chars,
            chars_per_token=round(page.chars / tokens, 2),
        )
        for reader in READERS:
            acc, n = results.get((c.key, reader), (None, None))
            row[reader] = None if acc is None else round(acc, 4)
            if reader == "rapidocr":
                row["rapidocr_sample_chars"] = n
            row[f"legible_per_token_{reader}"] = (
                None if acc is None else round(page.chars * acc / tokens, 2)
            )
            row[f"chars90_per_token_{reader}"] = (
                None if acc is None else round(page.chars / tokens if acc >= THRESHOLD else 0.0, 2)
            )
        rows.append(row)

    _print_report(args, naive, renderer, rows, time.perf_counter() - t_start)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS})
    print(f"\nwrote {args.out}")
    return rows


def _print_report(
    args: argparse.Namespace,
    naive: NaiveRenderer,
    renderer: PageRenderer,
    rows: list[dict],
    seconds: float,
) -> None:
    readers = [r for r in READERS if r in args.reader_list]
    short = {"tesseract": "Tess.", "rapidocr": "Rapid"}
    print(
        f"Legible characters per image token (Pillow {PIL.__version__}). Project: DejaVu Sans, "
        f"min_font_px {renderer.min_font_px}, running text, downsampled. Naive: {naive.font_name}, "
        f"line pitch {naive.pitch} px, one turn per line. Synthetic chat seed {args.seed}."
    )
    print(
        "legible/token = characters x reader accuracy / image tokens; @90 = characters / image "
        "tokens on pages read at >= 90%, else 0."
    )
    if "tesseract" in readers:
        print("Tesseract reads the whole page (2x upscale).")
    if "rapidocr" in readers:
        b = args.block
        print(
            f"RapidOCR reads a sample block of each page ({b[0]}x{b[1]} px of the page as drawn, "
            "left edge, vertically centred, whole words only, spaces ignored); its accuracy "
            "stands for the page's."
        )
    print(f"Measured in {seconds:.0f} s.\n")

    for target in args.target_list:
        trows = [r for r in rows if r["target"] == target.name]
        print(f"### {target.name}: {target.description}\n")
        cols = ["tier", "canvas", "tokens", "renderer", "px (eff.)", "chars", "chars/token"]
        cols += [short[r] for r in readers]
        cols += [f"legible/token {short[r]}" for r in readers]
        cols += [f"@90 {short[r]}" for r in readers]
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in trows:
            tier = (
                r["tier"]
                if r["canvas_tier"] == r["tier"]
                else f"{r['tier']} (= {r['canvas_tier']})"
            )
            canvas = r["canvas"] + (f" {r['detail']}" if r["detail"] else "")
            cells = [
                tier,
                canvas,
                str(r["image_tokens"]),
                r["renderer"],
                f"{r['font_px']:g} ({r['effective_px']:g})",
                str(r["chars"]),
                f"{r['chars_per_token']:.1f}",
            ]
            cells += [_pct(r[x]) for x in readers]
            cells += [_num(r[f"legible_per_token_{x}"]) for x in readers]
            cells += [_num(r[f"chars90_per_token_{x}"]) for x in readers]
            print("| " + " | ".join(cells) + " |")
        print()

    # the claim: more legible characters per image token than the naive renderer, at every tier
    print(
        "### Summary: does the project's renderer hold more legible characters per image token?\n"
    )
    print(
        "Against the better naive variant (downsampled or direct) for each (target, tier, reader); "
        "x = project / naive.\n"
    )
    cols = ["target", "tier", "tokens"]
    for x in readers:
        cols += [f"project {short[x]}", f"naive {short[x]}", "x"]
    cols.append("holds")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    verdicts: dict[str, list[tuple[str, str, bool]]] = {x: [] for x in readers}
    verdicts90: dict[str, list[bool]] = {x: [] for x in readers}
    pairs: list[tuple[str, str, bool]] = []
    for target in args.target_list:
        for tier in IMAGE_TIERS:
            group = {
                r["renderer"]: r
                for r in rows
                if r["target"] == target.name and r["tier"] == tier.label
            }
            om = group[OM]
            shown = tier.label
            if om["canvas_tier"] != tier.label:
                shown += f" (= {om['canvas_tier']})"
            cells = [target.name, shown, str(om["image_tokens"])]
            ok_all = True
            for x in readers:
                col = f"legible_per_token_{x}"
                best = max(group[n][col] for n in NAIVE)
                which = "d" if group[NAIVE_DIRECT][col] > group[NAIVE_DOWN][col] else "s"
                ok = om[col] > best
                ok_all &= ok
                verdicts[x].append((target.name, tier.label, ok))
                col90 = f"chars90_per_token_{x}"
                verdicts90[x].append(om[col90] > max(group[n][col90] for n in NAIVE))
                ratio = f"{om[col] / best:.2f}" if best else "inf"
                cells += [f"{om[col]:.1f}", f"{best:.1f} ({which})", ratio]
            cells.append("yes" if ok_all else "**no**")
            pairs.append((target.name, tier.label, ok_all))
            print("| " + " | ".join(cells) + " |")
    print("\n(naive: s = downsampled, d = drawn directly at the tier canvas)\n")
    n = len(pairs)
    held = [p for p in pairs if p[2]]
    print(
        f"Claim (more legible characters per image token at every tier, by every reader): holds at "
        f"{len(held)} of {n} (target, tier) pairs."
    )
    for x in readers:
        ok = [v for v in verdicts[x] if v[2]]
        bad = [f"{t}/{tier}" for t, tier, good in verdicts[x] if not good]
        print(
            f"- {x}: holds at {len(ok)} of {len(verdicts[x])}"
            + (f"; does not hold at {', '.join(bad)}" if bad else "")
        )
        print(
            f"  (@90 definition: holds at {sum(verdicts90[x])} of {len(verdicts90[x])}; "
            "a pair where neither page reaches 90% does not hold)"
        )
    failing = [f"{t}/{tier}" for t, tier, good in pairs if not good]
    print("Pairs where it does not hold: " + (", ".join(failing) if failing else "none"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
