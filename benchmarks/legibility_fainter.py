"""Below the tiny tier: would a page on a fainter, cheaper canvas still read back?

Some built-in targets price an image by its size below their tiny tier's canvas (Qwen2.5-VL: one
token per 28x28 px; Anthropic: w*h/750); others do not (DeepSeek-OCR's smallest native mode is
512²; Gemini 2.x charges 258 for any image up to one 768² tile, 384² included; Gemini 3 charges by
media resolution, whatever the size). For each target this draws two pages the way the library
does (``PageRenderer.render`` from the target's layout canvas: downsampled while the text stays
at least 6 px tall, abridged below that) at its tiny canvas and at fainter candidate canvases, and
reads each back with RapidOCR:

* a *sitting*: about 1,000 text tokens of synthetic chat (a LoCoMo sitting's size);
* a *full* page: synthetic chat filled to the layout canvas's capacity (what the packer and
  consolidation produce).

Reported per image: its cost on the target, the characters it shows (abridged pages show fewer
than the page holds), the share of the page's characters it shows, the RapidOCR accuracy on what
it shows (whitespace removed, ``1 - edit distance / length``), and *read back*: shown x accuracy,
as a share of the page's characters. A canvas is worth a tier where read back stays >= 90% on
the sitting page.

    python -m benchmarks.legibility_fainter            # markdown on stdout, CSV beside it
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from PIL import Image

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ocr import char_accuracy, full_page, rapidocr_read, synthetic_chat  # noqa: E402
from optical_memory import get_target  # noqa: E402
from optical_memory.ladder import Tier  # noqa: E402
from optical_memory.render import PageRenderer  # noqa: E402

# target -> fainter square canvases to try below its tiny tier (each costs less on it)
CANDIDATES: dict[str, tuple[int, ...]] = {
    "deepseek-ocr": (),  # reference: 512² is its smallest native mode
    "qwen2.5-vl": (392, 336, 280, 224),
    "anthropic": (320, 256, 192),
}
SITTING_CHARS = 4000  # about 1,000 text tokens


def sitting_page(chars: int, seed: int = 0) -> list:
    turns, used = [], 0
    for t in synthetic_chat(seed):
        if used + len(t.text) > chars:
            break
        turns.append(t)
        used += len(t.text)
    return turns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--targets", default=",".join(CANDIDATES))
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "legibility_fainter.csv",
    )
    args = ap.parse_args(argv)
    renderer = PageRenderer()
    rows = []
    for name in args.targets.split(","):
        target = get_target(name)
        layout = target.layout
        tiny = target.spec(Tier.TINY).size
        sizes = [tiny, *((s, s) for s in CANDIDATES.get(name, ()))]
        pages = {"sitting": sitting_page(SITTING_CHARS), "full": full_page(renderer, layout)}
        for kind, turns in pages.items():
            laid = renderer.plan(turns, layout, layout)  # the page whole, labels included
            whole = len("".join("\n".join(laid.text_lines).split()))
            images = renderer.render(turns, layout, sizes)
            for size, img in zip(sizes, images, strict=True):
                plan = renderer.plan(turns, layout, size)
                shown_text = "\n".join(plan.text_lines)
                shown = len("".join(shown_text.split()))
                acc = char_accuracy(
                    shown_text, rapidocr_read(Image.open(io.BytesIO(img.png))), ignore_spaces=True
                )
                rows.append(
                    {
                        "target": name,
                        "page": kind,
                        "canvas": f"{size[0]}x{size[1]}",
                        "tier": "tiny" if size == tiny else "fainter",
                        "tokens": target.image_cost(*size, target.spec(Tier.TINY).detail),
                        "abridged": plan.abridged,
                        "chars_page": whole,
                        "chars_shown": shown,
                        "shown_pct": round(100 * shown / whole, 1),
                        "rapidocr_pct": round(100 * acc, 1),
                        "read_back_pct": round(100 * acc * shown / whole, 1),
                    }
                )
                print(rows[-1], file=sys.stderr)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
