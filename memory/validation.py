"""Checks on what callers pass in, before anything touches the database."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .errors import (
    ContentTooLarge,
    InvalidContent,
    InvalidInput,
    InvalidRole,
    InvalidSessionId,
    InvalidTimestamp,
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


def check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidContent(f"metadata must be a mapping, got {type(metadata).__name__}")
    import json

    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidContent(f"metadata must be JSON-serialisable: {exc}") from None
    return dict(metadata)


def _check_encodable(text: str, what: str, error: type[Exception]) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(
            f"{what} holds unpaired surrogate code points and is not valid Unicode text"
        ) from None
