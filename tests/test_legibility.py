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
    images = renderer.render(turns, LAYOUT, [(s, s) for s in TIERS.values()])
    assert images[0].font_px == renderer.min_font_px  # a full page is set at the minimum size
    lay = renderer._layout(turns, LAYOUT, images[0].font_px)
    assert lay is not None
    expected = "\n".join(lay.text_lines)
    assert len(expected) > 15_000
    out = {}
    for name, img in zip(TIERS, images, strict=True):
        out[name] = char_accuracy(expected, tesseract_read(Image.open(io.BytesIO(img.png))))
    print("\nTesseract accuracy per tier:", {k: round(v, 4) for k, v in out.items()})
    return out


def test_large_tier_is_legible(accuracy):
    assert accuracy["large"] >= 0.97


def test_base_tier_is_mostly_legible(accuracy):
    assert accuracy["base"] >= 0.90


def test_accuracy_never_rises_as_the_tier_falls(accuracy):
    values = list(accuracy.values())
    for sharper, fainter in zip(values, values[1:], strict=False):
        assert fainter <= sharper + NOISE, accuracy
