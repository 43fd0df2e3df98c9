"""Reusing KV caches across turns: the memory prefix, and each session's last conversation.

Between two aging passes the prompt's prefix (system prompt plus memory pages) is token for
token the same, so its keys and values are computed once and copied for each request
(:class:`PrefixCache`). A prefix is keyed by what it holds (page ids, tiers, encoder key and
its tokens); a new page, a tier change or another encoder gives a new key, so a stale cache is
never served.

A chat goes further: the next prompt repeats the last one (prefix, recent turns, the user's
message) and the reply just generated, then adds the new message. :class:`ConversationCache`
keeps, per session, the KV cache of the last prompt and reply with the token ids it covers;
the next request with the same pages takes it, cuts it back to the longest common run of
tokens, and prefills only what follows.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from optical_memory.errors import InvalidConfiguration, MissingExtra

try:
    import torch
except ImportError as exc:
    raise MissingExtra("optical_memory.adapters.transformers_prefix", "hf", exc.name) from exc


class PrefixCache:
    """A small LRU of prefix KV caches. :meth:`get` returns a copy, safe to extend."""

    def __init__(self, max_entries: int = 2) -> None:
        if max_entries < 1:
            raise InvalidConfiguration("max_entries must be at least 1")
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


@dataclass
class ConversationState:
    """The KV cache of a session's last prompt (and reply), and the tokens it covers.

    ``memory_key`` names the pages the prompt showed (ids, tiers, images, encoder): image
    placeholder tokens look alike, so equal ids mean equal inputs only over the same pages.
    """

    memory_key: str
    ids: torch.Tensor  # (n,) token ids, placeholders expanded
    past: Any  # a transformers Cache holding exactly n positions

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two 1-D id tensors share."""
    n = min(int(a.shape[0]), int(b.shape[0]))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if differ.numel() else n


class ConversationCache:
    """Per session, the KV cache of the last request, handed to the next one (an LRU).

    :meth:`take` removes the entry it returns: the caller extends that cache in place and
    :meth:`put` s the result back, so two requests never share one cache object.
    """

    def __init__(self, max_sessions: int = 2) -> None:
        if max_sessions < 1:
            raise InvalidConfiguration("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0  # over all hits
        self._entries: OrderedDict[str, ConversationState] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    def get(self, session_id: str) -> ConversationState | None:
        """The session's entry, left in place (for inspection; do not extend its cache)."""
        with self._lock:
            return self._entries.get(session_id)

    def take(
        self, session_id: str, memory_key: str, ids: torch.Tensor, *, min_length: int = 1
    ) -> tuple[Any, int] | None:
        """The session's cache cut back to the tokens it shares with ``ids`` (1-D), and how
        many that is; None (and the entry dropped) if the pages changed or fewer than
        ``min_length`` tokens are shared. At least one token of ``ids`` is left to compute."""
        with self._lock:
            state = self._entries.pop(session_id, None)
        if state is None or state.memory_key != memory_key:
            self.misses += 1
            return None
        n = min(common_prefix_length(state.ids, ids), int(ids.shape[0]) - 1)
        if n < max(1, min_length):
            self.misses += 1
            return None
        state.past.crop(n - state.past.get_seq_length())
        if state.past.get_seq_length() != n:  # a cache kind that cannot be cut back
            self.misses += 1
            return None
        self.hits += 1
        self.reused_tokens += n
        return state.past, n

    def put(self, session_id: str, state: ConversationState) -> None:
        """Keep ``state`` for the session's next request (its cache is not copied)."""
        if state.past.get_seq_length() != state.length:
            raise InvalidConfiguration(
                f"the cache holds {state.past.get_seq_length()} positions, the ids {state.length}"
            )
        with self._lock:
            self._entries[session_id] = state
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.max_sessions:
                self._entries.popitem(last=False)

    def discard(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
