"""The hook through which the aging pass asks a local vision model for visual tokens.

The core knows nothing of torch: an encoder returns opaque bytes (safetensors, by convention)
with their dtype and shape, and the store caches them next to the page they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class EncodedPage:
    """Visual tokens of one page image: serialised tensor bytes plus what they hold."""

    data: bytes
    dtype: str
    shape: tuple[int, ...]


@runtime_checkable
class VisualEncoder(Protocol):
    """Encodes page images for a tier. ``key`` names model, revision and dtype, so a cache
    entry made by one model is never served to another."""

    @property
    def key(self) -> str: ...

    def encode(self, png: bytes, tier: str) -> EncodedPage: ...
