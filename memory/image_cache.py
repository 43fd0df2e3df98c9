"""The page images assembly sends, kept in memory between calls (and their base64 text).

Why: a prompt over a long history shows the same few pages call after call, and each call
read every shown image from the database again (on PostgreSQL 2 MB of ``bytea`` for ten tiny
pages, most of that call's time) and base64-encoded it again for the API. An image's bytes
change only with its page's ``version`` (every drawing, tier move, merge or repair writes a
new version, and a new page a new id that is never reused), so ``(page id, version, tier)``
names the bytes for good: a hit can never be stale, only evicted. Another process's aging
shows up as a new version in the reader's own snapshot, and is read then.
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict

from .errors import InvalidConfiguration

__all__ = ["DEFAULT_IMAGE_CACHE_BYTES", "CachedImage", "ImageCache", "check_cache_bytes"]

DEFAULT_IMAGE_CACHE_BYTES = 64 << 20
"""64 MiB: the images of about 30 long sessions' prompts, with their base64 text."""

ImageKey = tuple[int, int, str]  # page id, page version, tier shown


class CachedImage:
    """One stored image's bytes and, once asked for, their text: the base64 or a data URL
    (``data:MIME;base64,`` and the base64), whichever is asked for first. Each call of a
    prompt that sends the image as a data URL (the OpenAI formats: ten tiny pages are 1.4 MB
    of text) would otherwise copy the base64 into a new string; the other form is cut from
    or added to the one kept, one copy, as before."""

    __slots__ = ("_text", "png")

    def __init__(self, png: bytes) -> None:
        self.png = png
        # (length of the data-URL prefix, 0 for none; the text). One attribute, so that a
        # thread never sees a text with another text's prefix length.
        self._text: tuple[int, str] | None = None

    def _encoded(self) -> str:
        return base64.b64encode(self.png).decode("ascii")

    @property
    def base64(self) -> str:
        held = self._text
        if held is None:  # two threads may both encode: the same text either way
            held = self._text = (0, self._encoded())
        skip, text = held
        return text[skip:] if skip else text

    def data_url(self, mime_type: str) -> str:
        """``data:{mime_type};base64,...`` of the bytes."""
        prefix = f"data:{mime_type};base64,"
        held = self._text
        if held is None:
            held = self._text = (len(prefix), prefix + self._encoded())
        skip, text = held
        if skip == len(prefix) and text.startswith(prefix):
            return text
        return prefix + self.base64

    @property
    def charge(self) -> int:
        """What the entry may hold: the bytes and their base64 text (4/3 of them)."""
        return len(self.png) * 7 // 3


def check_cache_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidConfiguration(
            f"image_cache_bytes must be an int >= 0 (0 turns the cache off), got {value!r:.40}"
        )
    return value


class ImageCache:
    """A thread-safe LRU of :class:`CachedImage` bounded by ``capacity`` bytes (0: off)."""

    def __init__(self, capacity: int = DEFAULT_IMAGE_CACHE_BYTES) -> None:
        self.capacity = check_cache_bytes(capacity)
        self._entries: OrderedDict[ImageKey, CachedImage] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def held(self) -> int:
        """Bytes charged for the entries held now."""
        return self._held

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: ImageKey) -> CachedImage | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: ImageKey, png: bytes) -> CachedImage:
        """Keep ``png`` under ``key`` (if it fits at all) and return its entry."""
        entry = CachedImage(png)
        if entry.charge > self.capacity:
            return entry
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= old.charge
            self._entries[key] = entry
            self._held += entry.charge
            while self._held > self.capacity:
                _, gone = self._entries.popitem(last=False)
                self._held -= gone.charge
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0
