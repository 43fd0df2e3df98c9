"""Typed errors. Every error says what went wrong and what to do about it.

All inherit from :class:`OpticalMemoryError`, and from the matching builtin
(``ValueError``, ``LookupError``, ``PermissionError``) so generic handlers keep working.
"""

from __future__ import annotations


class OpticalMemoryError(Exception):
    """Base class of every error raised by optical-memory."""


class InvalidInput(OpticalMemoryError, ValueError):
    """An argument is malformed; nothing was written."""


class InvalidSessionId(InvalidInput):
    """Session ids are non-empty strings."""


class InvalidRole(InvalidInput):
    """Roles are user, assistant, system or tool."""


class InvalidContent(InvalidInput):
    """Content must be a string."""


class ContentTooLarge(InvalidInput):
    """Content is over the manager's ``max_content_bytes``."""


class InvalidAttachment(InvalidInput):
    """An attachment is not an image Pillow can decode, or is not given as bytes."""


class AttachmentTooLarge(InvalidAttachment):
    """An attachment is over the manager's ``max_attachment_bytes`` (or a turn has too many)."""


class InvalidTimestamp(InvalidInput):
    """Timestamps must be timezone-aware datetimes."""


class InvalidBudget(InvalidInput):
    """Budgets are positive integers."""


class UnknownTarget(OpticalMemoryError, LookupError):
    """No target of that name is registered."""


class UnknownSession(OpticalMemoryError, LookupError):
    """No session of that id exists (in this owner's scope)."""


class UnknownPage(OpticalMemoryError, LookupError):
    """No page of that id in the session, or no image of it at that tier."""


class SessionAccessDenied(UnknownSession, PermissionError):
    """Kept for compatibility: nothing raises it any more. Another owner's session is reported
    as :class:`UnknownSession`, exactly like a session that does not exist, so no owner can
    learn which ids other owners use."""


class MemoryClosed(OpticalMemoryError, RuntimeError):
    """The manager was closed; open a new one."""


class StoreBusy(OpticalMemoryError, RuntimeError):
    """The database stayed locked through every retry."""


class SessionChanged(OpticalMemoryError, RuntimeError):
    """A conditional write found the session changed since the caller read it: its newest
    live turn is not the one the caller expected (``expected_last_turn``), so another writer
    got there first. Nothing was written; read the session's turns again and retry.

    ``expected`` and ``actual`` are turn numbers (0: no turns); pickles keep both."""

    def __init__(self, session_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"session {session_id!r} changed: its newest turn is {actual}, not {expected} as "
            "expected (another writer added or replaced turns). Nothing was written; read its "
            "turns again and retry"
        )
        self.session_id = session_id
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[type[SessionChanged], tuple[str, int, int]]:
        return (type(self), (self.session_id, self.expected, self.actual))


class DrawingFailed(OpticalMemoryError, RuntimeError):
    """A page-drawing worker process died before it finished (killed, out of memory). Nothing
    was written for that page; the next aging pass draws it again."""


class InvalidConfiguration(InvalidInput):
    """A policy, ladder, target, tier or scheduler setting is out of range; fix the argument."""


class InvalidTokenCounter(InvalidInput, TypeError):
    """A token counter must be ``f(role, content)``, ``f(text)`` or have ``.encode(text)``."""


class MissingExtra(OpticalMemoryError, ImportError):
    """An optional part needs a package that is not installed; the message names the extra.

    ``MissingExtra("the langchain format", "langchain")`` reads "the langchain format needs the
    langchain extra: pip install 'optical-memory[langchain]'". ``missing`` is the module that
    failed to import (``ImportError.name``), when known.
    """

    def __init__(self, what: str, extra: str, missing: str | None = None) -> None:
        super().__init__(
            f"{what} needs the {extra} extra: pip install 'optical-memory[{extra}]'", name=missing
        )
        self.what = what
        self.extra = extra

    def __reduce__(self) -> tuple[type[MissingExtra], tuple[str, str, str | None]]:
        return (type(self), (self.what, self.extra, self.name))


class DatabaseUnavailable(OpticalMemoryError, OSError):
    """The database cannot be opened or reached (a missing directory, a server that is down,
    a file that is not a database); the message names the URL and what to check."""


class DatabaseCorrupt(DatabaseUnavailable):
    """The file is not an optical-memory database (garbage, or damaged); restore a backup or
    point the URL at another file."""


class StoreReadOnly(OpticalMemoryError, PermissionError):
    """The database refused a write: the file, its directory or the URL (``mode=ro``) is
    read-only. Nothing was written; open it writable to change it."""


class StoreFull(OpticalMemoryError, OSError):
    """The disk (or the database's size limit) is full. Nothing was written; free space and
    try again."""


class DatabaseTooNew(OpticalMemoryError, RuntimeError):
    """The database's schema is newer than this optical-memory knows: upgrade the package
    (``pip install -U optical-memory``) rather than open it with an older version."""


class UnsupportedDatabase(InvalidConfiguration):
    """The URL names a backend optical-memory does not support (only SQLite and PostgreSQL)."""


class MetadataTooLarge(InvalidContent):
    """A turn's metadata is over the size or nesting limit; store large data elsewhere and keep
    a reference in metadata."""


class ForgetIncomplete(OpticalMemoryError, RuntimeError):
    """``forget`` deleted the session, but its bytes are still in a database file (a reader
    holds an old snapshot). A durable note is kept: the next open or write of this manager
    finishes the job, or call ``MemoryManager.finish_forget()`` once the reader is done."""
