"""Reusing the KV cache of the prompt prefix (system prompt plus memory pages) across turns.

Between two aging passes the prefix is token for token the same, so its keys and values are
computed once and copied for each request. A prefix is keyed by what it holds (page ids,
tiers, encoder key and its tokens); a new page, a tier change or another encoder gives a new
key, so a stale cache is never served.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any


class PrefixCache:
    """A small LRU of prefix KV caches. :meth:`get` returns a copy, safe to extend."""

    def __init__(self, max_entries: int = 2) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str, length: int) -> Any | None:
        """A copy of the cache stored under ``key`` for a prefix of ``length`` tokens."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != length:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            cache = entry[1]
        return copy.deepcopy(cache)

    def put(self, key: str, length: int, cache: Any) -> None:
        """Keep ``cache`` (not copied: do not extend it afterwards) for ``key``."""
        with self._lock:
            self._entries[key] = (length, cache)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
