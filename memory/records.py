"""Plain, immutable records that the public API returns (no database objects leak out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Role = Literal["user", "assistant", "system", "tool"]
ROLES: tuple[str, ...] = ("user", "assistant", "system", "tool")


@dataclass(frozen=True)
class Turn:
    """One message, exactly as it was added."""

    session_id: str
    seq: int
    role: str
    content: str
    at: datetime
    tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionInfo:
    """A session's key facts, for listings."""

    session_id: str
    owner: str | None
    created_at: datetime
    turns: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PageInfo:
    """A sealed page of consecutive turns and the tier it is shown at."""

    page_id: int
    session_id: str
    first_seq: int
    last_seq: int
    first_at: datetime
    last_at: datetime
    tier: str
    text_tokens: int
    token_cost: int
    width: int | None
    height: int | None
    version: int
