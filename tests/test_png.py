"""The page encoder: standard greyscale PNGs, unfiltered rows, the same pixels back."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image

from optical_memory import InvalidInput
from optical_memory.png import encode_grey


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, each CRC checked (a decoder of our own, apart from Pillow)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data), kind
        out.append((kind, data))
        pos += 12 + length
    return out


def _noise(size: tuple[int, int], levels: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    step = 255 // (levels - 1)
    data = bytes(rng.randrange(levels) * step for _ in range(size[0] * size[1]))
    return Image.frombytes("L", size, data)


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (3, 7), (64, 48)])
@pytest.mark.parametrize("rle", [False, True])
def test_any_greyscale_image_decodes_to_its_own_pixels(size: tuple[int, int], rle: bool) -> None:
    img = _noise(size, 256 if not rle else 32, seed=size[0] * 100 + size[1])
    png = encode_grey(img, level=4, rle=rle)
    back = Image.open(io.BytesIO(png))
    assert back.mode == "L" and back.size == size
    assert back.tobytes() == img.tobytes()


def test_rows_are_unfiltered_and_there_is_no_metadata() -> None:
    img = _noise((40, 20), 32, seed=3)
    chunks = _chunks(encode_grey(img, level=6, rle=True))
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, colour, interlace) == (40, 20, 8, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    rows = [raw[y * 41 : (y + 1) * 41] for y in range(20)]
    assert all(row[0] == 0 for row in rows)  # filter type 0 on every row
    assert b"".join(row[1:] for row in rows) == img.tobytes()


def test_the_same_image_gives_the_same_bytes() -> None:
    img = _noise((50, 30), 256, seed=5)
    assert encode_grey(img, level=4, rle=False) == encode_grey(img.copy(), level=4, rle=False)


def test_only_greyscale_images_are_encoded() -> None:
    with pytest.raises(InvalidInput, match="greyscale"):
        encode_grey(Image.new("RGB", (4, 4), "white"), level=4, rle=False)


def test_libpng_reads_the_same_pixels() -> None:
    """A second, independent reader (OpenCV's libpng, installed with the OCR extra)."""
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    for rle, levels in ((False, 256), (True, 32)):
        img = _noise((33, 17), levels, seed=levels)
        png = encode_grey(img, level=4, rle=rle)
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape == (17, 33) and decoded.tobytes() == img.tobytes()
