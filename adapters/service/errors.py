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
    SessionChanged,
    StoreBusy,
    StoreFull,
    StoreReadOnly,
    UnknownPage,
    UnknownSession,
    UnknownTarget,
)

from .keys import NotSignedIn, UnknownApiKey

__all__ = ["BodyTooLarge", "describe", "error_body", "headers_of", "status_of"]


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
    (SessionChanged, 409),
    (UnknownTarget, 422),
    (InvalidInput, 422),
    (StoreBusy, 503),
    (MemoryClosed, 503),
    (DatabaseUnavailable, 503),
    (StoreReadOnly, 503),
    (StoreFull, 507),
    (ForgetIncomplete, 503),
]
_RETRY_AFTER: list[tuple[type[BaseException], int]] = [(StoreBusy, 1), (ForgetIncomplete, 10)]
"""Seconds to wait before trying again, sent as ``Retry-After`` with the 503."""
_HTTP_HINTS: dict[type[BaseException], str] = {
    ForgetIncomplete: (
        " Over HTTP: the session is deleted already (a DELETE again answers 404); the "
        "service's next write, or its next start, finishes the purge."
    ),
}


def status_of(exc: BaseException) -> int:
    """The HTTP status of a library error (500 for one not listed)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def headers_of(exc: BaseException) -> dict[str, str] | None:
    """The headers an error's answer carries: ``WWW-Authenticate`` with a 401,
    ``Retry-After`` where trying again later helps."""
    if isinstance(exc, NotSignedIn):
        return {"WWW-Authenticate": "Bearer"}
    for cls, seconds in _RETRY_AFTER:
        if isinstance(exc, cls):
            return {"Retry-After": str(seconds)}
    return None


def error_body(name: str, message: str) -> dict[str, Any]:
    """``{"error": {"type": "UnknownSession", "message": "…"}}``."""
    return {"error": {"type": name, "message": message}}


def describe(exc: OpticalMemoryError) -> dict[str, Any]:
    """The JSON body of a library error: its class name and message (and what it means over
    HTTP, where the library's advice names a Python call)."""
    message = str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc)
    for cls, hint in _HTTP_HINTS.items():
        if isinstance(exc, cls):
            message += hint
    return error_body(type(exc).__name__, message)
