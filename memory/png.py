"""Greyscale PNG encoding for page images: unfiltered rows, one zlib stream, no metadata.

Why not Pillow's encoder: it picks a row filter per line by trying all five (libpng's
heuristic), which suits photographs. A page is text on white: measured on full DeepSeek-OCR
pages, rows left unfiltered deflate smaller (small and tiny tiers: 0.83x of Pillow's bytes at
level 6, 0.81x of its bytes with zlib's RLE strategy) and 2.5-8x faster, since the filter
search is skipped and the RLE strategy finds the long white runs unfiltered rows keep. The
image decodes to the same pixels with any PNG reader (``tests/test_png.py``). Output is
deterministic for a given zlib.
"""

from __future__ import annotations

import struct
import zlib

from PIL import Image

from .errors import InvalidInput

__all__ = ["encode_grey"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_grey(img: Image.Image, *, level: int, rle: bool) -> bytes:
    """PNG bytes of an 8-bit greyscale (``"L"``) image: every row unfiltered (filter type 0),
    deflated at ``level``, with zlib's RLE strategy when ``rle`` (fast; best for images with
    few grey levels, such as downsampled pages).

    Raises:
        InvalidInput: the image is not mode ``"L"`` or has no pixels.
    """
    if img.mode != "L":
        raise InvalidInput(f"encode_grey needs a greyscale 'L' image, not mode {img.mode!r}")
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidInput(f"cannot encode an empty image ({width}x{height})")
    pixels = img.tobytes()
    rows = bytearray((width + 1) * height)  # a zero filter byte before each row
    for y in range(height):
        start = y * (width + 1) + 1
        rows[start : start + width] = pixels[y * width : (y + 1) * width]
    strategy = zlib.Z_RLE if rle else zlib.Z_DEFAULT_STRATEGY
    packer = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    data = packer.compress(rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _IEND
