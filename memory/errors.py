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


class SessionAccessDenied(OpticalMemoryError, PermissionError):
    """The session belongs to another owner."""


class MemoryClosed(OpticalMemoryError, RuntimeError):
    """The manager was closed; open a new one."""


class StoreBusy(OpticalMemoryError, RuntimeError):
    """The database stayed locked through every retry."""
