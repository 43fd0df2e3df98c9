"""A turn's images: what is accepted, and how a turn names the images it carries.

Images are stored losslessly (the bytes as given), once per session by their sha256, and come
back exactly with the turn (``Turn.attachments``). Each is checked before anything is written:
bytes Pillow can open and decode in full, at most ``max_attachment_bytes`` (default
:data:`DEFAULT_MAX_ATTACHMENT_BYTES`, 20 MiB: OpenAI's per-image limit) and
:data:`MAX_ATTACHMENT_PIXELS`, at most :data:`MAX_TURN_ATTACHMENTS` a turn. Decoding is a
check, not drawing: nothing is rendered on ``add_turn``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import AttachmentTooLarge, InvalidAttachment
from .records import Attachment

DEFAULT_MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
"""Largest image accepted by default, in bytes (OpenAI's limit per image)."""
MAX_ATTACHMENT_PIXELS = 64_000_000
"""Largest image accepted, in pixels (width × height): a guard against decompression bombs."""
MAX_TURN_ATTACHMENTS = 16
"""Most images one turn may carry."""

AttachmentInput = bytes | bytearray | memoryview | Attachment | Mapping[str, Any]
"""What ``add_turn(attachments=[...])`` takes per image: the bytes; or ``{"data": bytes,
"media_type": "image/png"}`` (the media type is checked against the bytes); or an
:class:`Attachment` read back from ``turns()``."""


def check_attachments(items: object, max_bytes: int) -> tuple[Attachment, ...]:
    """The images of one turn, validated and described; a typed error for anything else."""
    if items is None:
        return ()
    if isinstance(items, bytes | bytearray | memoryview | str | Mapping | Attachment):
        raise InvalidAttachment("attachments must be a list of images, e.g. [png_bytes]")
    if not isinstance(items, Iterable):
        raise InvalidAttachment(f"attachments must be a list, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if i >= MAX_TURN_ATTACHMENTS:
            raise AttachmentTooLarge(
                f"a turn carries at most {MAX_TURN_ATTACHMENTS} images; split them over turns"
            )
        out.append(check_attachment(item, max_bytes, f"attachment {i}"))
    return tuple(out)


def check_attachment(item: object, max_bytes: int, what: str = "attachment") -> Attachment:
    """One image as it will be stored: the bytes exactly, the media type Pillow finds in
    them, their size in pixels and their sha256."""
    declared: object = None
    if isinstance(item, Attachment):
        data, declared = item.data, item.media_type
    elif isinstance(item, Mapping):
        data, declared = item.get("data"), item.get("media_type")
    else:
        data = item
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidAttachment(
            f"{what}: pass the image's bytes (or {{'data': bytes, 'media_type': ...}}), "
            f"got {type(data).__name__}"
        )
    data = bytes(data)
    if len(data) > max_bytes:
        raise AttachmentTooLarge(
            f"{what} is {len(data):,} bytes, over the limit of {max_bytes:,}; send a smaller "
            "image or raise max_attachment_bytes"
        )
    media_type, width, height = _decode(data, what)
    if declared is not None and declared != media_type:
        raise InvalidAttachment(
            f"{what}: the bytes are {media_type}, but media_type says {declared!r:.40}; "
            "pass the right media type or leave it out"
        )
    return Attachment(media_type, data, width, height, hashlib.sha256(data).hexdigest())


def _decode(data: bytes, what: str) -> tuple[str, int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > MAX_ATTACHMENT_PIXELS:
                raise AttachmentTooLarge(
                    f"{what} is {width}×{height} pixels, over {MAX_ATTACHMENT_PIXELS:,}; "
                    "scale it down"
                )
            media_type = Image.MIME.get(im.format or "")
            im.load()  # a full decode: a truncated or corrupt image fails here
    except InvalidAttachment:
        raise
    except Exception as exc:  # Pillow raises many types for bad input
        raise InvalidAttachment(
            f"{what} is not an image Pillow can decode ({type(exc).__name__}: {exc!s:.80}); "
            "pass PNG, JPEG, GIF or WebP bytes"
        ) from None
    if not media_type or not media_type.startswith("image/"):
        raise InvalidAttachment(f"{what}: no image media type is known for these bytes")
    return media_type, width, height


def descriptor(a: Attachment) -> dict[str, Any]:
    """How a turn names one of its images (stored with the turn; the bytes are apart)."""
    return {
        "sha256": a.sha256,
        "media_type": a.media_type,
        "width": a.width,
        "height": a.height,
        "size": a.size,
    }
