"""Errors as HTTP answers: a JSON body naming the library error and its message, and the
status that says whose fault it is (the caller's 4xx, the server's 5xx)."""

from __future__ import annotations

from typing import Any

from optical_memory import (
    ContentTooLarge,
    DatabaseUnavailable,
    ForgetIncomplete,
    InvalidInput,
    MemoryClosed,
    OpticalMemoryError,
    StoreBusy,
    StoreFull,
    StoreReadOnly,
    UnknownPage,
    UnknownSession,
    UnknownTarget,
)

from .keys import NotSignedIn, UnknownApiKey

__all__ = ["BodyTooLarge", "describe", "error_body", "status_of"]


class BodyTooLarge(InvalidInput):
    """The request body is over the service's limit (``max_body_bytes``); send less, e.g.
    fewer turns a request."""


_STATUS: list[tuple[type[BaseException], int]] = [
    (NotSignedIn, 401),
    (BodyTooLarge, 413),
    (ContentTooLarge, 413),
    (UnknownSession, 404),
    (UnknownPage, 404),
    (UnknownApiKey, 404),
    (UnknownTarget, 422),
    (InvalidInput, 422),
    (StoreBusy, 503),
    (MemoryClosed, 503),
    (DatabaseUnavailable, 503),
    (StoreReadOnly, 503),
    (StoreFull, 507),
    (ForgetIncomplete, 500),
]


def status_of(exc: BaseException) -> int:
    """The HTTP status of a library error (500 for one not listed)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(name: str, message: str) -> dict[str, Any]:
    """``{"error": {"type": "UnknownSession", "message": "…"}}``."""
    return {"error": {"type": name, "message": message}}


def describe(exc: OpticalMemoryError) -> dict[str, Any]:
    message = str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc)
    return error_body(type(exc).__name__, message)
