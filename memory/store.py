"""SQLAlchemy models: sessions, turns (lossless), pages, renditions and the visual-token cache.

Timestamps are stored in UTC and always come back timezone-aware. Every child row is deleted
with its session (``ON DELETE CASCADE``), so ``forget`` is one statement.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import true as sa_true
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A primary key that is INTEGER on SQLite (rowid alias, autoincrement) and BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware in Python, UTC in the database (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_NUL_MARK = "\ue000om-json:"


class LosslessText(TypeDecorator[str]):
    """Text that survives every backend: PostgreSQL rejects NUL characters in text, so a
    value holding one (or starting with the marker) is stored JSON-escaped behind a marker."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or dialect.name != "postgresql":
            return value
        if "\x00" in value or value.startswith(_NUL_MARK):
            return _NUL_MARK + json.dumps(value)
        return value

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and dialect.name == "postgresql" and value.startswith(_NUL_MARK):
            return json.loads(value[len(_NUL_MARK) :])
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SessionRow(Base):
    __tablename__ = "om_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(LosslessText(), nullable=False)
    owner: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, nullable=False, default=dict)
    next_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    paged_until: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    aged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("ix_om_sessions_key", "key", unique=True),
        Index("ix_om_sessions_owner", "owner"),
        {"sqlite_autoincrement": True},  # ids are never reused after forget
    )


class TurnRow(Base):
    __tablename__ = "om_turns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("om_sessions.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(LosslessText(), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, nullable=False, default=dict)

    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_om_turns_session_seq"),
        {"sqlite_autoincrement": True},
    )


class PageRow(Base):
    __tablename__ = "om_pages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("om_sessions.id", ondelete="CASCADE"), nullable=False
    )
    first_seq: Mapped[int] = mapped_column(Integer, nullable=False)
    last_seq: Mapped[int] = mapped_column(Integer, nullable=False)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    text_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    target: Mapped[str] = mapped_column(String(64), nullable=False)
    tier: Mapped[str] = mapped_column(String(8), nullable=False)
    png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    token_cost: Mapped[int] = mapped_column(Integer, nullable=False)
    sealed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    # False when a single turn overflows the page: such a page is only ever shown as text.
    imageable: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=sa_true()
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        UniqueConstraint("session_id", "first_seq", name="uq_om_pages_session_first_seq"),
        Index("ix_om_pages_tier_last_at", "tier", "last_at"),
        {"sqlite_autoincrement": True},  # caches keyed by page id never see a reused id
    )


class RenditionRow(Base):
    """Pre-rendered fainter tiers of a page, so assembly can fade a page for one request
    without rendering on the request path."""

    __tablename__ = "om_page_renditions"

    page_id: Mapped[int] = mapped_column(
        ForeignKey("om_pages.id", ondelete="CASCADE"), primary_key=True
    )
    tier: Mapped[str] = mapped_column(String(8), primary_key=True)
    png: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)


class VisualTokenRow(Base):
    """Encoder output for a page at a tier (safetensors bytes), keyed by the encoder."""

    __tablename__ = "om_visual_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    page_id: Mapped[int] = mapped_column(
        ForeignKey("om_pages.id", ondelete="CASCADE"), nullable=False
    )
    tier: Mapped[str] = mapped_column(String(8), nullable=False)
    encoder_key: Mapped[str] = mapped_column(String(512), nullable=False)
    dtype: Mapped[str] = mapped_column(String(32), nullable=False)
    shape: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        UniqueConstraint("page_id", "tier", "encoder_key", name="uq_om_visual_tokens_key"),
        {"sqlite_autoincrement": True},
    )
