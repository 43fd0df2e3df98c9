"""Legibility and cost of each tier: downsampling the large page, abridging it, redrawing it small.

One page of synthetic English chat is filled to capacity on the layout canvas (default 1280x1280)
and turned into each tier's canvas in up to three ways:

* what the library does (``PageRenderer.render``): ``downsample`` where the text stays at least
  ``min_effective_px`` (6 px) tall, the page being drawn once at the layout canvas and the bitmap
  shrunk with Lanczos; ``abridged`` below that, the page laid out again on the canvas that
  shrinks to 6 px text, with the longest turns cut short until it fits.
* ``downsample only`` (at abridged tiers): the plain shrink the library no longer does there
  (``PageRenderer(min_effective_px=0)``).
* ``direct``: the same turns laid out and drawn directly on the smaller canvas with a
  proportionally smaller font (``min_font_px * canvas / layout``, fractional; lowered in 0.1 px
  steps only if the text would not fit).

*Legible characters per visual token* = characters shown x accuracy / DeepSeek-OCR tokens.

Each image is read back with Tesseract (2x Lanczos upscale; optionally RapidOCR too) and scored
with character accuracy (1 - edit distance / length) against the text as laid out. Timings are
median CPU milliseconds (``time.process_time``) over ``--repeat`` runs, single-threaded: for
``downsample`` the whole ``render()`` call for that one size (layout + draw + resize + PNG), for
``direct`` layout + draw + PNG at the small canvas.

    python -m benchmarks.legibility_tiers            # prints markdown, writes a CSV
    python -m benchmarks.legibility_tiers --rapidocr --out /tmp/tiers.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ocr import char_accuracy, full_page, rapidocr_read, tesseract_read  # noqa: E402
from optical_memory.render import PageRenderer  # noqa: E402

# DeepSeek-OCR v1 visual tokens per native canvas (reference only; see DESIGN.md)
DEEPSEEK_TOKENS = {512: 64, 640: 100, 1024: 256, 1280: 400}
TIER_NAMES = {1280: "large", 1024: "base", 640: "small", 512: "tiny"}


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()  # CPU time: rendering is single-threaded, and immune to a busy box
        fn()
        times.append((time.process_time() - t0) * 1000)
    return statistics.median(times)


def _direct(renderer: PageRenderer, turns, canvas: tuple[int, int], px: float):
    """Lay out and draw at ``canvas`` with font ``px`` (lowered by 0.1 until it fits)."""
    while True:
        lay = renderer.layout(turns, canvas, px)
        if lay is not None or px <= 1:
            break
        px = round(px - 0.1, 1)
    if lay is None:
        lay = renderer.layout(turns, canvas, px, truncate=True)
    return lay, px


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layout", type=int, default=1280, help="square layout canvas (px)")
    ap.add_argument(
        "--tiers", default="1280,1024,640,512", help="comma-separated square tier canvases (px)"
    )
    ap.add_argument(
        "--min-font-px",
        type=int,
        default=None,
        help="renderer min_font_px (default: library default)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic chat")
    ap.add_argument("--repeat", type=int, default=5, help="timing repeats (median)")
    ap.add_argument("--rapidocr", action="store_true", help="also read back with RapidOCR (slow)")
    ap.add_argument("--no-ocr", action="store_true", help="timings and sizes only")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "legibility_tiers.csv",
        help="CSV output path",
    )
    args = ap.parse_args(argv)

    kwargs = {} if args.min_font_px is None else {"min_font_px": args.min_font_px}
    renderer = PageRenderer(**kwargs)
    shrink_only = PageRenderer(**kwargs, min_effective_px=0)
    layout = (args.layout, args.layout)
    tiers = [int(t) for t in args.tiers.split(",") if t.strip()]
    turns = full_page(renderer, layout, seed=args.seed)
    lay = renderer.fit(turns, layout)
    expected = "\n".join(lay.text_lines)
    n_chars = len(expected)
    base_px = lay.font_px
    print(
        f"layout {layout[0]}x{layout[1]}, min_font_px {renderer.min_font_px}: {len(turns)} turns, "
        f"{n_chars} characters on the page ({len(lay.lines)} lines) at {base_px} px\n"
    )

    def read(img: Image.Image, text: str) -> tuple[float | None, float | None]:
        if args.no_ocr:
            return None, None
        tess = char_accuracy(text, tesseract_read(img))
        rapid = (
            char_accuracy(text, rapidocr_read(img), ignore_spaces=True) if args.rapidocr else None
        )
        return tess, rapid

    rows = []
    images = renderer.render(turns, layout, [(t, t) for t in tiers])
    for tier, rendered in zip(tiers, images, strict=True):
        size = (tier, tier)
        plan = renderer.plan(turns, layout, size)
        variants = [(renderer, rendered, plan, "abridged" if plan.abridged else "downsample")]
        if plan.abridged:
            (plain,) = shrink_only.render(turns, layout, [size])
            variants.append(
                (shrink_only, plain, shrink_only.plan(turns, layout, size), "downsample only")
            )
        for r, img, pl, method in variants:
            ms = _median_ms(lambda r=r, size=size: r.render(turns, layout, [size]), args.repeat)
            shown = "\n".join(pl.text_lines)
            tess, rapid = read(Image.open(io.BytesIO(img.png)), shown)
            rows.append(
                dict(
                    layout=args.layout,
                    tier=tier,
                    name=TIER_NAMES.get(tier, ""),
                    method=method,
                    font_px=pl.layout.font_px,
                    effective_px=round(pl.layout.font_px * tier / pl.canvas[0], 2),
                    chars=len(shown),
                    tesseract=tess,
                    rapidocr=rapid,
                    ms=round(ms, 1),
                    png_bytes=len(img.png),
                )
            )
        if tier == args.layout:
            continue
        canvas = (tier, tier)
        dlay, px = _direct(renderer, turns, canvas, round(base_px * tier / args.layout, 1))

        def direct_once(dlay=dlay, canvas=canvas, px=px):
            renderer.layout(turns, canvas, px, truncate=True)
            return renderer.to_png(renderer.draw(dlay, canvas))

        ms = _median_ms(direct_once, args.repeat)
        png = direct_once()
        dtext = "\n".join(dlay.text_lines)
        tess, rapid = read(Image.open(io.BytesIO(png)), dtext)
        rows.append(
            dict(
                layout=args.layout,
                tier=tier,
                name=TIER_NAMES.get(tier, ""),
                method="direct" + (" (truncated)" if dlay.truncated else ""),
                font_px=px,
                effective_px=px,
                chars=len(dtext),
                tesseract=tess,
                rapidocr=rapid,
                ms=round(ms, 1),
                png_bytes=len(png),
            )
        )

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def legible(r: dict, reader: str) -> str:
        vt = DEEPSEEK_TOKENS.get(r["tier"])
        return "-" if not vt or r[reader] is None else f"{r['chars'] * r[reader] / vt:.1f}"

    # table 1: every measurement
    cols = ["tier", "method", "font px", "eff. px", "chars", "chars/vt", "Tesseract"]
    cols.append("legible/vt (Tesseract)")
    if args.rapidocr:
        cols += ["RapidOCR", "legible/vt (RapidOCR)"]
    cols += ["ms", "PNG KiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        vt = DEEPSEEK_TOKENS.get(r["tier"])
        cells = [
            f"{r['tier']}² {r['name']}".strip(),
            r["method"],
            f"{r['font_px']:g}",
            f"{r['effective_px']:g}",
            str(r["chars"]),
            f"{r['chars'] / vt:.1f}" if vt else "-",
            pct(r["tesseract"]),
            legible(r, "tesseract"),
        ]
        if args.rapidocr:
            cells += [pct(r["rapidocr"]), legible(r, "rapidocr")]
        cells += [f"{r['ms']:.1f}", f"{r['png_bytes'] / 1024:.0f}"]
        print("| " + " | ".join(cells) + " |")

    # table 2: what the library does vs the alternatives, side by side
    by = {(r["tier"], r["method"]): r for r in rows}
    print(
        "\n| tier | library | Tesseract | downsample only | direct | legible/vt: library | "
        "downsample only | direct |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for tier in tiers:
        lib = by.get((tier, "abridged")) or by.get((tier, "downsample"))
        plain = by.get((tier, "downsample only")) or lib
        direct = next((r for (t, m), r in by.items() if t == tier and m.startswith("direct")), None)
        if not lib or not direct:
            continue
        print(
            f"| {tier}² | {lib['method']} | {pct(lib['tesseract'])} | {pct(plain['tesseract'])} | "
            f"{pct(direct['tesseract'])} | {legible(lib, 'tesseract')} | "
            f"{legible(plain, 'tesseract')} | {legible(direct, 'tesseract')} |"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
