"""Replies the proxy is still storing, per session, so that what comes next waits for them.

Why: the proxy answers as soon as the upstream has, and stores the reply beside the answer
on its way back instead of before it (a write off every call's latency, and a store that
fails no longer turns a paid-for answer into an error: the client's next request carries
the reply and records it). What reads or writes that session next through this process (the
proxy's next request, the ``/v1/sessions/{id}/...`` endpoints, the web view's pages of it,
the MCP tools) first waits for the reply to be stored, so it sees the session as if the
reply had been stored before the answer.
"""

from __future__ import annotations

import threading

__all__ = ["PendingReplies"]

SessionKey = tuple[str | None, str]  # owner, session id


class PendingReplies:
    """Per (owner, session): the reply being stored now, if any. Thread-safe; waited on
    from the event loop's worker threads and FastAPI's thread pool alike."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[SessionKey, threading.Event] = {}
        self._all_done = threading.Condition(self._lock)

    def start(self, key: SessionKey) -> threading.Event:
        """Note that a reply of ``key`` is being stored; :meth:`finish` the event returned."""
        with self._lock:
            done = threading.Event()
            self._pending[key] = done
            return done

    def finish(self, key: SessionKey, done: threading.Event) -> None:
        done.set()
        with self._lock:
            if self._pending.get(key) is done:
                del self._pending[key]
            self._all_done.notify_all()

    def wait(self, key: SessionKey, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) for the reply of ``key`` being stored now, if
        any; False if it was still being stored then."""
        with self._lock:
            done = self._pending.get(key)
        return done is None or done.wait(timeout)

    def wait_all(self, timeout: float) -> bool:
        """Wait for every reply being stored (shutting down); False on timeout."""
        with self._lock:
            return self._all_done.wait_for(lambda: not self._pending, timeout)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
