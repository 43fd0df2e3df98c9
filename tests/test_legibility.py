"""Legibility of a full page at each tier, read back with Tesseract (slow: about a minute).

One page of synthetic English chat, filled to capacity on the 1280x1280 layout canvas (so set at
``min_font_px``), is downsampled to the DeepSeek-OCR v1 canvases and read back with Tesseract on a
2x upscale. Accuracy is 1 - edit distance / length against the text as laid out.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from benchmarks.ocr import char_accuracy, full_page, tesseract_available, tesseract_read
from optical_memory.render import PageRenderer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not tesseract_available(), reason="needs the tesseract binary"),
]

LAYOUT = (1280, 1280)
TIERS = {"large": 1280, "base": 1024, "small": 640, "tiny": 512}
NOISE = 0.005


@pytest.fixture(scope="module")
def accuracy() -> dict[str, float]:
    renderer = PageRenderer()
    turns = full_page(renderer, LAYOUT, seed=0)
    sizes = [(s, s) for s in TIERS.values()]
    images = renderer.render(turns, LAYOUT, sizes)
    assert images[0].font_px == renderer.min_font_px  # a full page is set at the minimum size
    assert len("\n".join(renderer.plan(turns, LAYOUT, LAYOUT).text_lines)) > 15_000
    out = {}
    for name, size, img in zip(TIERS, sizes, images, strict=True):
        expected = "\n".join(renderer.plan(turns, LAYOUT, size).text_lines)  # as drawn
        out[name] = char_accuracy(expected, tesseract_read(Image.open(io.BytesIO(img.png))))
    print("\nTesseract accuracy per tier:", {k: round(v, 4) for k, v in out.items()})
    return out


def test_large_tier_is_legible(accuracy):
    assert accuracy["large"] >= 0.97


def test_base_tier_is_mostly_legible(accuracy):
    assert accuracy["base"] >= 0.90


def test_faint_tiers_stay_readable(accuracy):
    """Below 6 px of text the faint tiers are abridged, not shrunk further: what they show
    reads back (a plain downsample to 512 px read 54% with Tesseract, 0% with RapidOCR)."""
    assert accuracy["small"] >= 0.85
    assert accuracy["tiny"] >= 0.85


def test_accuracy_never_rises_as_the_tier_falls(accuracy):
    values = list(accuracy.values())
    for sharper, fainter in zip(values, values[1:], strict=False):
        assert fainter <= sharper + NOISE, accuracy


def test_rapidocr_reads_the_tiny_tier() -> None:
    """The neural reader, which reads nothing of a full page downsampled to 4.4 px, reads the
    abridged tiny page: its first lines, cropped out of the 512 px image."""
    pytest.importorskip("rapidocr_onnxruntime")
    from benchmarks.ocr import rapidocr_read

    renderer = PageRenderer()
    turns = full_page(renderer, LAYOUT, seed=0)
    (tiny,) = renderer.render(turns, LAYOUT, [(512, 512)])
    plan = renderer.plan(turns, LAYOUT, (512, 512))
    assert tiny.abridged
    lines = 8
    scale = 512 / plan.canvas[1]
    bottom = round((plan.layout.margin + lines * plan.layout.line_height) * scale)
    band = Image.open(io.BytesIO(tiny.png)).crop((0, 0, 512, bottom))
    expected = "\n".join(plan.text_lines[:lines])
    assert char_accuracy(expected, rapidocr_read(band), ignore_spaces=True) >= 0.85
