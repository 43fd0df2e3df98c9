"""API keys of the service: each bound to one owner, only a hash stored.

A key is ``om_`` and 32 random bytes (URL-safe base64); the table keeps its SHA-256 and its
first characters (to name it in ``keys list``), never the key. 256 random bits cannot be
guessed, so a fast hash is enough: there is no password to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from optical_memory import InvalidInput, MemoryManager, OpticalMemoryError
from optical_memory.database import ApiKeyRow
from optical_memory.validation import check_owner

__all__ = [
    "KEY_PREFIX",
    "NotSignedIn",
    "ApiKeyInfo",
    "KeyCache",
    "UnknownApiKey",
    "create_key",
    "has_active_keys",
    "list_keys",
    "owner_of_key",
    "revoke_key",
]

KEY_PREFIX = "om_"
_SHOWN = 10  # characters of a key kept to name it: "om_" and 7 of the random part


class UnknownApiKey(OpticalMemoryError, LookupError):
    """No API key with that id or prefix; ``optical-memory keys list`` shows them."""


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as listed: never the key itself, only its first characters."""

    id: int
    owner: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(row.id, row.owner, row.prefix, row.created_at, row.revoked_at)


def create_key(memory: MemoryManager, owner: str) -> tuple[str, ApiKeyInfo]:
    """A new key for ``owner``: the key (shown once, store it) and how it is listed."""
    name = check_owner(owner)
    if name is None:
        raise InvalidInput("a key needs an owner: pass --owner NAME")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)

    def work(s):  # type: ignore[no-untyped-def]
        row = ApiKeyRow(owner=name, key_hash=_hash(key), prefix=key[:_SHOWN], created_at=now)
        s.add(row)
        s.flush()
        return _info(row)

    return key, memory.database.write(work)


def list_keys(memory: MemoryManager, owner: str | None = None) -> list[ApiKeyInfo]:
    """Every key (or ``owner``'s), oldest first, revoked ones too."""
    with memory.database.read() as s:
        q = select(ApiKeyRow).order_by(ApiKeyRow.id)
        if owner is not None:
            q = q.where(ApiKeyRow.owner == owner)
        return [_info(r) for r in s.scalars(q)]


def revoke_key(memory: MemoryManager, key: str) -> ApiKeyInfo:
    """Revoke a key named by its id (as listed), its listed prefix or the whole key. Requests
    with it are refused from the next one on; revoking twice keeps the first time."""
    text = key.strip()
    now = datetime.now(UTC)

    def work(s):  # type: ignore[no-untyped-def]
        q = select(ApiKeyRow)
        if text.isascii() and text.isdigit():  # an id (ASCII digits: int() reads others too)
            # Past 18 digits, past what either store holds: no key has that id.
            q = q.where(ApiKeyRow.id == (int(text) if len(text) <= 18 else -1))
        elif len(text) > _SHOWN:
            q = q.where(ApiKeyRow.key_hash == _hash(text))
        else:
            q = q.where(ApiKeyRow.prefix == text)
        rows = list(s.scalars(q))
        if len(rows) != 1:
            found = "several keys" if rows else "no key"
            raise UnknownApiKey(
                f"{found} named {text[:_SHOWN]!r}; use an id from `optical-memory keys list`"
            )
        if rows[0].revoked_at is None:
            rows[0].revoked_at = now
        return _info(rows[0])

    return memory.database.write(work)


def owner_of_key(memory: MemoryManager, key: str) -> str | None:
    """The owner an active key is bound to, or None (unknown or revoked)."""
    if not key.startswith(KEY_PREFIX):
        return None
    with memory.database.read() as s:
        row = s.scalars(
            select(ApiKeyRow).where(
                ApiKeyRow.key_hash == _hash(key), ApiKeyRow.revoked_at.is_(None)
            )
        ).first()
        return row.owner if row is not None else None


class KeyCache:
    """Which owner an API key acts for, remembered for ``ttl`` seconds per key, so a request
    with a key seen lately costs no database query. A revoked key is refused at the latest
    ``ttl`` seconds after ``keys revoke`` (from another process too); unknown and revoked
    keys are never remembered, so a key just created works at once. ``ttl`` 0: ask the
    database on every request. Keys are held by their hash, as in the table."""

    def __init__(
        self,
        memory: MemoryManager,
        ttl: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.memory = memory
        self.ttl = ttl
        self.max_keys = max_keys
        self._clock = clock
        self._known: OrderedDict[str, tuple[str, float]] = OrderedDict()  # hash -> owner, until
        self._guard = threading.Lock()

    def cached(self, key: str) -> str | None:
        """The owner remembered for ``key``, or None (never seen, expired, or ttl 0): then
        :meth:`owner` asks the database. Never blocks on the database."""
        digest = _hash(key)
        with self._guard:
            hit = self._known.get(digest)
            if hit is None:
                return None
            if self._clock() >= hit[1]:
                del self._known[digest]
                return None
            return hit[0]

    def owner(self, key: str) -> str | None:
        """The owner an active key is bound to (remembered, or read and then remembered), or
        None for an unknown or revoked key."""
        owner = self.cached(key)
        if owner is not None:
            return owner
        owner = owner_of_key(self.memory, key)
        if owner is not None and self.ttl > 0:
            with self._guard:
                self._known[_hash(key)] = (owner, self._clock() + self.ttl)
                while len(self._known) > self.max_keys:
                    self._known.popitem(last=False)  # the oldest entry
        return owner


def has_active_keys(memory: MemoryManager) -> bool:
    """Whether any key can sign in (the service refuses to start open without one)."""
    with memory.database.read() as s:
        return (
            s.scalars(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None))).first()
            is not None
        )


class NotSignedIn(OpticalMemoryError, PermissionError):
    """No API key, or one that is unknown or revoked: send ``Authorization: Bearer KEY`` with
    a key from ``optical-memory keys create --owner NAME``."""
