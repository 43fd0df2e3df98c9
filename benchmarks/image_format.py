"""Which image format the page images should be stored in, by measurement.

Draws real pages (the library's renderer, synthetic two-person chat) at every image tier of
DeepSeek-OCR and encodes each the way it is stored today (greyscale PNG, ``PageRenderer.to_png``)
and as the candidates: lossless WebP (method 0 and the default 4) and an exact 8-bit palette PNG.
Reports bytes against PNG, encode and decode ms, whether the pixels come back equal, and what an
adapter would pay to turn the stored form back into PNG for a target that needs PNG (decode + the
library's PNG encode), against the 1 ms a page the issue allows.

    python -m benchmarks.image_format            # 4 pages
    python -m benchmarks.image_format --pages 8 --reach-turns 10000

``--reach-turns N`` also ages an N-turn session (the speed benchmark's session and policy) and
assembles it at every budget from 500 to 140,000 tokens in steps of ``--reach-step``, counting the
stored renditions some budget shows: a rendition no budget shows could go unstored.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from functools import partial

from PIL import Image

from benchmarks.ocr import full_page
from optical_memory.ladder import IMAGE_TIERS, get_target
from optical_memory.render import PageRenderer


def _ms(fn: Callable[[], object], reps: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000, out


def _to_png(data: bytes, downsampled: bool) -> bytes:
    """What an adapter would do for a target that takes PNG only: decode, encode as today."""
    with Image.open(io.BytesIO(data)) as im:
        return PageRenderer.to_png(im.convert("L"), downsampled=downsampled)


def _webp(img: Image.Image, method: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "WEBP", lossless=True, quality=100, method=method, exact=True)
    return buf.getvalue()


def _palette(img: Image.Image) -> bytes:
    values = sorted(v for v, n in enumerate(img.histogram()) if n)
    lut = [0] * 256
    for i, v in enumerate(values):
        lut[v] = i
    p = Image.frombytes("P", img.size, img.point(lut).tobytes())
    p.putpalette([c for v in values for c in (v, v, v)])
    buf = io.BytesIO()
    p.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("L").tobytes()


def reach(n: int, step: int) -> None:
    """How many stored renditions some budget shows (the rest could go unstored)."""
    import sqlite3
    import tempfile
    from pathlib import Path

    from benchmarks.speed import COME_BACK, SESSION, TARGET, OmStore, ReplayRenderer, make_turns

    turns = make_turns(n)
    now = turns[-1].at + COME_BACK
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "reach.db"
        store = OmStore(f"sqlite:///{path}", ReplayRenderer())
        try:
            store.bulk(turns)
            store.mm.age(now=now)
            with sqlite3.connect(path) as db:
                stored = set(db.execute("SELECT page_id, tier FROM om_page_renditions"))
            powers = [1024 * 2**k for k in range(8)]
            seen: set[tuple[int, str]] = set()
            grid: set[tuple[int, str]] = set()
            for budget in [*range(500, 140_001, step), *powers]:
                ctx = store.mm.assemble(SESSION, budget=budget, target=TARGET, now=now)
                shown = {(p.page_id, p.tier) for p in ctx.pages if p.tier != p.stored_tier}
                seen |= shown
                if budget in powers:
                    grid |= shown
        finally:
            store.close()
    print(
        f"\n{n:,} turns aged: {len(stored)} renditions stored; shown at some budget from 500 to "
        f"140,000 (step {step}): {len(seen & stored)}; at the powers of two 1k-128k only: "
        f"{len(grid & stored)}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.image_format", description=__doc__)
    ap.add_argument("--pages", type=int, default=4)
    ap.add_argument("--reach-turns", type=int, default=0)
    ap.add_argument("--reach-step", type=int, default=100)
    a = ap.parse_args(argv)
    target = get_target("deepseek-ocr")
    renderer = PageRenderer()
    sizes = [target.spec(t).size for t in IMAGE_TIERS]
    per: dict[tuple[str, str], list[tuple[int, float, float, bool]]] = {}
    convert: dict[tuple[str, str], list[float]] = {}
    for seed in range(a.pages):
        turns = full_page(renderer, sizes[0], seed=seed)
        images = renderer.render(turns, target.layout, sizes)
        for tier, im in zip(IMAGE_TIERS, images, strict=True):
            img = Image.open(io.BytesIO(im.png))
            img.load()
            pixels = img.tobytes()
            # Today's encoder settings (render.to_png): a tier smaller than the layout canvas
            # is a downsampled bitmap (zlib RLE), the canvas's own size a drawn one (level 4).
            down = (im.width, im.height) != tuple(target.layout)
            forms = {
                "png (stored today)": partial(PageRenderer.to_png, img, downsampled=down),
                "webp lossless m0": partial(_webp, img, 0),
                "webp lossless m4": partial(_webp, img, 4),
                "png 8-bit palette": partial(_palette, img),
            }
            for name, enc in forms.items():
                enc_ms, data = _ms(enc, 1 if name.startswith("webp lossless m4") else 2)
                assert isinstance(data, bytes)
                if name.startswith("png (stored"):
                    assert data == im.png, "the benchmark's PNG is not the stored one"
                dec_ms, back = _ms(partial(_pixels, data), 2)
                per.setdefault((tier.label, name), []).append(
                    (len(data), enc_ms, dec_ms, back == pixels)
                )
                if not name.startswith("png (stored"):
                    conv, _ = _ms(partial(_to_png, data, down), 2)
                    convert.setdefault((tier.label, name), []).append(conv)
    print(f"{a.pages} real pages per tier (DeepSeek-OCR canvases), best of 2 runs each\n")
    print("| tier | format | bytes | × PNG | encode ms | decode ms | pixels equal | to PNG ms |")
    print("|---|---|---|---|---|---|---|---|")
    for tier in IMAGE_TIERS:
        png_b = statistics.mean(r[0] for r in per[(tier.label, "png (stored today)")])
        for (lab, name), rs in per.items():
            if lab != tier.label:
                continue
            b = statistics.mean(r[0] for r in rs)
            conv = convert.get((lab, name))
            print(
                f"| {lab} | {name} | {b / 1024:,.1f} KiB | {b / png_b:.2f}× | "
                f"{statistics.median(r[1] for r in rs):.1f} | "
                f"{statistics.median(r[2] for r in rs):.1f} | {all(r[3] for r in rs)} | "
                f"{statistics.median(conv):.1f} |"
                if conv
                else f"| {lab} | {name} | {b / 1024:,.1f} KiB | 1.00× | "
                f"{statistics.median(r[1] for r in rs):.1f} | "
                f"{statistics.median(r[2] for r in rs):.1f} | {all(r[3] for r in rs)} | – |"
            )
    if a.reach_turns:
        reach(a.reach_turns, a.reach_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
