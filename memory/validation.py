"""Checks on what callers pass in, before anything touches the database."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import (
    ContentTooLarge,
    InvalidContent,
    InvalidInput,
    InvalidRole,
    InvalidSessionId,
    InvalidTimestamp,
    MetadataTooLarge,
)
from .records import ROLES

MAX_SESSION_ID_CHARS = 1024


def check_session_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidSessionId(
            f"session_id must be a non-empty string, got {type(session_id).__name__} "
            f"{session_id!r:.60}"
        )
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise InvalidSessionId(f"session_id is over {MAX_SESSION_ID_CHARS} characters")
    _check_encodable(session_id, "session_id", InvalidSessionId)
    if "\x00" in session_id:
        raise InvalidSessionId("session_id must not contain NUL characters")
    return session_id


def check_role(role: object) -> str:
    if role not in ROLES:
        raise InvalidRole(f"role must be one of {', '.join(ROLES)}; got {role!r:.60}")
    return str(role)


def check_content(content: object, max_bytes: int) -> str:
    if not isinstance(content, str):
        raise InvalidContent(
            f"content must be a str, got {type(content).__name__}; serialise structured "
            "content (e.g. json.dumps) and put extras in metadata"
        )
    size = len(_check_encodable(content, "content", InvalidContent))
    if size > max_bytes:
        raise ContentTooLarge(
            f"content is {size:,} bytes, over the limit of {max_bytes:,}; split it into "
            "several turns or raise max_content_bytes"
        )
    return content


def check_timestamp(at: object, what: str = "at") -> datetime | None:
    if at is None:
        return None
    if not isinstance(at, datetime):
        raise InvalidTimestamp(f"{what} must be a datetime, got {type(at).__name__}")
    if at.tzinfo is None or at.tzinfo.utcoffset(at) is None:
        raise InvalidTimestamp(
            f"{what}={at.isoformat()} is naive; pass a timezone-aware datetime, e.g. "
            "datetime.now(timezone.utc) or dt.replace(tzinfo=timezone.utc)"
        )
    try:
        at.astimezone(UTC)  # stored in UTC: an offset at the edge of the calendar overflows
    except OverflowError:
        raise InvalidTimestamp(f"{what}={at.isoformat()} is out of range in UTC") from None
    return at


MAX_OWNER_CHARS = 256


def check_owner(owner: object) -> str | None:
    if owner is None:
        return None
    if not isinstance(owner, str) or not owner:
        raise InvalidInput(f"owner must be None or a non-empty string, got {owner!r:.60}")
    if len(owner) > MAX_OWNER_CHARS:
        raise InvalidInput(f"owner is over {MAX_OWNER_CHARS} characters")
    _check_encodable(owner, "owner", InvalidInput)
    if "\x00" in owner:
        raise InvalidInput("owner must not contain NUL characters")
    return owner


MAX_METADATA_BYTES = 64 * 1024
"""Largest metadata of one turn, serialised as JSON (UTF-8 bytes)."""
MAX_METADATA_DEPTH = 32
"""Deepest nesting of objects and lists in one turn's metadata."""


def check_metadata(metadata: object) -> dict[str, Any]:
    """The metadata as it will be stored and read back: a fresh dict made from its JSON form
    (keys become strings, tuples lists), within :data:`MAX_METADATA_BYTES` and
    :data:`MAX_METADATA_DEPTH`; never the caller's own object."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidContent(f"metadata must be a mapping, got {type(metadata).__name__}")
    _check_depth(metadata)
    try:
        encoded = json.dumps(metadata, allow_nan=False)  # ASCII: lone surrogates escaped
    except (TypeError, ValueError) as exc:
        raise InvalidContent(f"metadata must be JSON-serialisable: {exc}") from None
    except RecursionError:  # a cycle or a container json walks deeper than we counted
        raise MetadataTooLarge(
            f"metadata is nested too deeply (or refers to itself); keep it under "
            f"{MAX_METADATA_DEPTH} levels"
        ) from None
    size = len(encoded)
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge(
            f"metadata is {size:,} bytes as JSON, over the limit of {MAX_METADATA_BYTES:,}; "
            "store large data elsewhere and keep a reference (a URL or an id) in metadata"
        )
    return dict(json.loads(encoded))


def _check_depth(value: object) -> None:
    """Nesting of dicts, lists and tuples, walked without recursion (cycles end it too)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise MetadataTooLarge(
                f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep; flatten it"
            )
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        seen += len(children)
        if seen > MAX_METADATA_BYTES:  # every element costs at least a byte of JSON
            raise MetadataTooLarge(
                f"metadata holds over {MAX_METADATA_BYTES:,} values; store large data "
                "elsewhere and keep a reference in metadata"
            )
        stack.extend((child, depth + 1) for child in children)


def _check_encodable(text: str, what: str, error: type[Exception]) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(
            f"{what} holds unpaired surrogate code points and is not valid Unicode text"
        ) from None


MAX_INT = 2**63 - 1  # the largest integer either backend stores or compares
MAX_INT32 = 2**31 - 1  # a PostgreSQL INTEGER column's largest value (a page's token count)
MAX_TURN = MAX_INT32  # the largest turn number (turn numbers are INTEGER columns)


def check_int(
    value: object,
    what: str,
    *,
    minimum: int = 0,
    maximum: int = MAX_INT,
    error: type[Exception] = InvalidInput,
) -> int:
    """An int (not a bool) from ``minimum`` up to ``maximum`` (2**63 - 1): ids, counts; turn
    numbers up to :data:`MAX_TURN`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an int, got {type(value).__name__} {value!r:.40}")
    if not minimum <= value <= maximum:
        top = "2**63 - 1" if maximum == MAX_INT else str(maximum)
        raise error(f"{what} must be between {minimum} and {top}, got {value!r:.40}")
    return value


def shifted(at: datetime, delta: timedelta) -> datetime:
    """``at + delta``, held at the first or last moment there is where that falls past it:
    times near year 1 or 9999 (a ``now`` at the edge of time, a conversation dated there)
    age and replay at the edge instead of overflowing."""
    try:
        return at + delta
    except OverflowError:
        edge = datetime.max if delta > timedelta(0) else datetime.min
        return edge.replace(tzinfo=at.tzinfo or UTC)
