"""Plain, immutable records that the public API returns (no database objects leak out)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ROLES: tuple[str, ...] = ("user", "assistant", "system", "tool")


@dataclass(frozen=True)
class Attachment:
    """An image of a turn, exactly as it was added: its bytes, what they are, their pixels.

    Stored once per session by content (``sha256``), whatever turns carry it."""

    media_type: str
    data: bytes = field(repr=False)
    width: int
    height: int
    sha256: str

    @property
    def size(self) -> int:
        """Bytes of the image."""
        return len(self.data)

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_url(self) -> str:
        """The image as a ``data:`` URL, the form chat APIs take inline images in."""
        return f"data:{self.media_type};base64,{self.base64}"


@dataclass(frozen=True)
class Turn:
    """One message, exactly as it was added (its images in ``attachments``, in order)."""

    session_id: str
    seq: int
    role: str
    content: str
    at: datetime
    tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class SessionInfo:
    """A session's key facts, for listings."""

    session_id: str
    owner: str | None
    created_at: datetime
    turns: int  # live turns: a superseded version (see MemoryManager.superseded) is not counted
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PageInfo:
    """A page of consecutive turns and the tier it is shown at. ``open``: the session's newest
    page while it may still grow (re-cut by the aging pass as turns leave the text window,
    sealed once full or when the sitting ends); every other page is sealed."""

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
    open: bool = False


@dataclass(frozen=True)
class TierRow:
    """One row of a session's tier summary (``MemoryManager.tier_summary``)."""

    tier: str  # "recent" for turns not packed into pages yet, else a stored tier
    pages: int
    turns: int
    text_tokens: int
    image_tokens: int  # 0 for "recent" and "text": they reach the model as text

    @property
    def compression(self) -> float | None:
        """Text tokens per image token, None where nothing is shown as an image."""
        return self.text_tokens / self.image_tokens if self.image_tokens else None


@dataclass(frozen=True)
class Recollection:
    """A turn that a cue brought back, exactly as archived (``MemoryManager.recall``).

    ``score`` ranks the recollections of one recall, higher is better (BM25 on SQLite,
    ``ts_rank_cd`` on PostgreSQL: not comparable across backends). ``page_id`` and ``tier`` are
    the page holding the turn and the tier it is stored at; ``None`` and ``"text"`` for a turn
    not packed into a page yet.
    """

    turn: Turn
    score: float
    page_id: int | None
    tier: str
