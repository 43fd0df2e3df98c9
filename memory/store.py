"""SQLAlchemy models (sessions, turns, pages, renditions, the visual-token cache) and the
queries that more than one module needs, so each is written once.

Timestamps are stored in UTC and always come back timezone-aware. Child rows reference their
session or page with ``ON DELETE CASCADE``; ``forget`` still deletes each table explicitly, so
it is complete even on a connection where foreign keys are off.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
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
    and_,
    bindparam,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import false as sa_false
from sqlalchemy import true as sa_true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .encoder import EncodedPage
from .records import Attachment, Turn

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

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """On SQLite, one C call per value instead of SQLAlchemy's regex parse and a second
        step: the hot reads (assembly, the turn log) parse a timestamp on every row."""
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        slow = super().result_processor(dialect, coltype)

        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            try:
                parsed = datetime.fromisoformat(value)
            except (TypeError, ValueError):  # not the stored form: the general path
                return slow(value) if slow else value
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

        return process


class FastJSON(TypeDecorator[Any]):
    """JSON whose SQLite reads skip the generic path for the commonest value, an empty
    object (most turns' metadata): the hot reads decode it on every row."""

    impl = JSON
    cache_ok = True

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        general = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or general is None:
            return general

        def process(value: Any) -> Any:
            return {} if value == "{}" else general(value)

        return process


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


NO_OWNER = ""
"""How the no-owner namespace is stored in ``om_sessions.owner``: the empty string, a name no
owner may take (``check_owner`` refuses it). NOT NULL, so the unique index on (owner, key)
treats it as one namespace on every backend (NULLs would all be distinct)."""


def namespace(owner: str | None) -> str:
    """The stored form of an owner (None: the no-owner namespace)."""
    return NO_OWNER if owner is None else owner


def owner_of(stored: str | None) -> str | None:
    """The public form of a stored owner (the no-owner namespace reads back as None)."""
    return stored or None


class SessionRow(Base):
    """A session is (owner, key): the same key under two owners is two sessions."""

    __tablename__ = "om_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(LosslessText(), nullable=False)
    owner: Mapped[str] = mapped_column(
        String(256), nullable=False, default=NO_OWNER, server_default=NO_OWNER
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, nullable=False, default=dict)
    next_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    paged_until: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    aged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        # Also serves every owner-only lookup (its leading column).
        Index("ix_om_sessions_owner_key", "owner", "key", unique=True),
        {"sqlite_autoincrement": True},  # ids are never reused after forget
    )


class TurnRow(Base):
    __tablename__ = "om_turns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The session's integer row id (``SessionRow.id``), not the public session id string.
    session_row_id: Mapped[int] = mapped_column(
        "session_id", ForeignKey("om_sessions.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(LosslessText(), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column(
        "metadata", FastJSON(), nullable=False, default=dict
    )
    # What the full-text index reads when it differs from content (CJK set apart, no NULs);
    # NULL for most turns. Written once with the turn (see recall.search_text); not loaded.
    search_text: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)
    # A superseded turn (an earlier version: a regenerated reply, an edited message and what
    # followed it) leaves the live sequence: its seq becomes -id (see supersede_turns), so every
    # query over a seq range skips it; it keeps its place here and when it was replaced.
    superseded_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The turn's images, in order, as descriptors (sha256, media_type, width, height, size;
    # see attachments.py); their bytes are in om_attachments. NULL for a turn without any.
    attachments: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )

    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_om_turns_session_seq"),
        {"sqlite_autoincrement": True},
    )


class AttachmentRow(Base):
    """An image of a session's turns, stored once per session by content: turns name it by
    its sha256 (``TurnRow.attachments``). Per session, so ``forget`` deletes a session's
    images with it and no refcount is needed (migration 0011)."""

    __tablename__ = "om_attachments"

    session_row_id: Mapped[int] = mapped_column(
        "session_id", ForeignKey("om_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # last: see PageRow.png


class TurnMarkRow(Base):
    """Pins and rehearsal of a turn: a small mutable row beside the write-once turn."""

    __tablename__ = "om_turn_marks"

    turn_id: Mapped[int] = mapped_column(
        ForeignKey("om_turns.id", ondelete="CASCADE"), primary_key=True
    )
    session_row_id: Mapped[int] = mapped_column(
        "session_id", ForeignKey("om_sessions.id", ondelete="CASCADE"), nullable=False
    )
    pinned: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=sa_false()
    )
    recalls: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    recalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_om_turn_marks_session_id", "session_id"),)


class PageRow(Base):
    __tablename__ = "om_pages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The session's integer row id (``SessionRow.id``), not the public session id string.
    session_row_id: Mapped[int] = mapped_column(
        "session_id", ForeignKey("om_sessions.id", ondelete="CASCADE"), nullable=False
    )
    first_seq: Mapped[int] = mapped_column(Integer, nullable=False)
    last_seq: Mapped[int] = mapped_column(Integer, nullable=False)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    text_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    target: Mapped[str] = mapped_column(String(64), nullable=False)
    tier: Mapped[str] = mapped_column(String(8), nullable=False)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    token_cost: Mapped[int] = mapped_column(Integer, nullable=False)
    # Legacy, always True since migration 0012 and read by nothing: before it, a page of one
    # turn larger than a page was False and never drawn. Such a page now fades like any other
    # (its images show the turn's opening, cut).
    imageable: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=sa_true()
    )
    # The session's newest page while it may still grow: the aging pass re-cuts it from its
    # first turn when new turns leave the text window, and seals it (False) once it is full
    # or the sitting ends. Every other page is sealed and never changes but for tier moves
    # and merges.
    open: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=sa_false()
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # Last (migration 0009): on SQLite a read of any column after a blob walks its overflow
    # chain, so the image comes after everything that is read without it.
    png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

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
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    png: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # last: see PageRow.png


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


# -- shared queries ------------------------------------------------------------------------------

# Every page column but the image bytes: listings and assembly read these without the PNG.
PAGE_COLUMNS_WITHOUT_PNG: tuple[Any, ...] = tuple(
    getattr(PageRow, a.key) for a in PageRow.__mapper__.column_attrs if a.key != "png"
)


def session_scope(
    owner: str | None, keys: Sequence[str] | None = None, *, all_owners: bool = False
) -> ColumnElement[bool] | None:
    """Which sessions a maintenance run (aging, verify) may touch, as a filter on
    ``SessionRow``: the owner's namespace (``all_owners``: every namespace), and within it the
    given keys. None: no filter at all."""
    where: list[ColumnElement[bool]] = []
    if not all_owners:
        where.append(SessionRow.owner == namespace(owner))
    if keys is not None:
        where.append(SessionRow.key.in_(list(keys)))
    if not where:
        return None
    return and_(*where)


SESSION_COLUMNS: tuple[Any, ...] = tuple(
    getattr(SessionRow, a.key).label(a.key) for a in SessionRow.__mapper__.column_attrs
)
"""Every SessionRow column, labelled by attribute: a row of them reads like a SessionRow."""

FIND_SESSION = select(*SESSION_COLUMNS).where(
    SessionRow.owner == bindparam("owner"), SessionRow.key == bindparam("key")
)
"""One session by (stored owner, key), built once: every session-addressed call runs it."""

FIND_SESSION_TO_ASSEMBLE = FIND_SESSION.add_columns(
    exists()
    .where(TurnMarkRow.session_row_id == SessionRow.id, TurnMarkRow.pinned)
    .label("has_pins")
)
""":data:`FIND_SESSION` and whether the session has pinned turns: most have none, and
assembly then skips the pins' read."""


def _reserve(dialect_insert: Any, where: Any = None) -> Any:
    """Create the session if needed and reserve ``n`` numbers on it; with ``where``, the
    existing session's counter moves only where that holds (on its newest version)."""
    return (
        dialect_insert(SessionRow)
        .values(
            key=bindparam("key"),
            owner=bindparam("owner"),
            created_at=bindparam("now"),
            meta=bindparam("meta"),
            next_seq=bindparam("n"),
        )
        .on_conflict_do_update(
            index_elements=["owner", "key"],
            set_={"next_seq": SessionRow.next_seq + bindparam("n")},
            where=where,
        )
        .returning(SessionRow.id, SessionRow.next_seq)
    )


RESERVE_SEQS: dict[str, Any] = {
    "sqlite": _reserve(sqlite_insert),
    "postgresql": _reserve(pg_insert),
}
"""Per dialect, built once: create the session (owner, key) if needed and reserve ``n``
sequence numbers in one statement; returns its row id and the last number reserved."""

INSERT_TURN = insert(TurnRow.__table__)
"""Turns by column name (``session_id``, ``metadata``), one row or many, built once."""


def _reserve_if_at(first_turn: bool) -> Any:
    """Reserve one number only if the session's counter is still ``expected`` (a compare and
    swap on the session's row; PostgreSQL re-checks the condition on the row's newest version
    after waiting for its lock). The first turn of a session may also create it. Binds:
    ``key``, ``owner``, ``now``, ``meta``, ``n``, ``expected``, ``session_key``,
    ``session_owner`` (the last two: ``key`` and ``owner`` again)."""
    if first_turn:
        return _reserve(pg_insert, where=SessionRow.next_seq == bindparam("expected"))
    return (
        update(SessionRow)
        .where(
            # not "owner" and "key": an UPDATE takes binds named as columns for its SET
            SessionRow.owner == bindparam("session_owner"),
            SessionRow.key == bindparam("session_key"),
            SessionRow.next_seq == bindparam("expected"),
        )
        .values(next_seq=SessionRow.next_seq + bindparam("n"))
        .returning(SessionRow.id, SessionRow.next_seq)
    )


def _add_one_turn_pg(reserve: Any = None) -> Any:
    turns = TurnRow.__table__
    reserved = (_reserve(pg_insert) if reserve is None else reserve).cte("reserved")
    names = ("role", "content", "at", "tokens", "metadata", "search_text")
    values = select(
        reserved.c.id,
        reserved.c.next_seq,
        *(bindparam(f"turn_{c}", type_=turns.c[c].type) for c in names),
    )
    return (
        insert(turns)
        .from_select(["session_id", "seq", *names], values)
        .returning(turns.c.session_id, turns.c.seq)
    )


ADD_ONE_TURN_PG = _add_one_turn_pg()
"""PostgreSQL, built once: :data:`RESERVE_SEQS` (with ``n`` = 1) and the turn's insert as one
statement (a data-modifying CTE): one round trip for ``add_turn`` instead of two. The turn's
values are ``turn_role``, ``turn_content``, ``turn_at``, ``turn_tokens``, ``turn_metadata``,
``turn_search_text`` (a turn without images: those go through the many-turn path); returns its session row id and seq."""

ADD_ONE_TURN_IF_AT_PG = {
    True: _add_one_turn_pg(_reserve_if_at(True)),
    False: _add_one_turn_pg(_reserve_if_at(False)),
}
"""PostgreSQL, built once: :data:`ADD_ONE_TURN_PG` on the condition that the session's
counter is ``expected`` (keyed by ``expected == 0``: a first turn may create the session).
One round trip for the usual conditional append; no row back means the condition failed (or
the session's newest turns were withdrawn), and the caller checks in a transaction."""


TURN_COLUMNS = (
    TurnRow.id,
    TurnRow.session_row_id.label("session_row_id"),
    TurnRow.seq,
    TurnRow.role,
    TurnRow.content,
    TurnRow.at,
    TurnRow.tokens,
    TurnRow.meta.label("meta"),
    TurnRow.attachments,
)
"""What the hot reads select of a turn (plain rows, no ORM objects: several times cheaper a
row), read back as :class:`TurnData` with :func:`turn_data`."""


class TurnData(NamedTuple):
    """A stored turn as the hot reads hold it: the :data:`TURN_COLUMNS`, in order. A plain
    tuple: reading a field of a SQLAlchemy ``Row`` by name costs about a microsecond, and
    assembly reads several fields of every turn it considers. :func:`to_turn` and
    :func:`load_attachments` take these as they take TurnRows."""

    id: int
    session_row_id: int
    seq: int
    role: str
    content: str
    at: datetime
    tokens: int
    meta: dict[str, Any]
    attachments: list[dict[str, Any]] | None


def turn_data(result: Iterable[Any]) -> list[TurnData]:
    """The rows of a :data:`TURN_COLUMNS` select as :class:`TurnData` (a result is fetched
    whole: a fifth cheaper than row by row)."""
    rows = result.all() if isinstance(result, Result) else result
    return list(map(TurnData._make, rows))


def to_turn(t: Any, session_key: str, images: Mapping[str, Attachment] | None = None) -> Turn:
    """The public record of a stored turn (a TurnRow or a row with its columns); ``images``:
    the session's attachments by sha256 (see :func:`load_attachments`), for a turn that has
    any."""
    found: tuple[Attachment, ...] = ()
    if t.attachments:
        found = tuple((images or {})[d["sha256"]] for d in t.attachments)
    return Turn(session_key, t.seq, t.role, t.content, t.at, t.tokens, dict(t.meta or {}), found)


def load_attachments(conn: Any, rows: Iterable[Any]) -> dict[str, Attachment]:
    """The attachments the given turns (TurnRows or rows with ``attachments`` and
    ``session_row_id``) name, by sha256: one query, none for turns without images."""
    wanted: dict[int, set[str]] = {}
    for t in rows:
        for d in t.attachments or ():
            wanted.setdefault(t.session_row_id, set()).add(d["sha256"])
    out: dict[str, Attachment] = {}
    for sid, shas in wanted.items():
        q = select(
            AttachmentRow.sha256,
            AttachmentRow.media_type,
            AttachmentRow.width,
            AttachmentRow.height,
            AttachmentRow.data,
        ).where(AttachmentRow.session_row_id == sid, AttachmentRow.sha256.in_(sorted(shas)))
        for sha, media, w, h, data in conn.execute(q):
            out[sha] = Attachment(media, bytes(data), w, h, sha)
    return out


def insert_attachments(conn: Any, dialect: str, sid: int, items: Iterable[Attachment]) -> None:
    """Store a session's images by content; one already stored is left as it is."""
    now = datetime.now(UTC)
    values = {
        a.sha256: {
            "session_id": sid,
            "sha256": a.sha256,
            "media_type": a.media_type,
            "width": a.width,
            "height": a.height,
            "size": a.size,
            "created_at": now,
            "data": a.data,
        }
        for a in items
    }
    if not values:
        return
    ins = sqlite_insert if dialect == "sqlite" else pg_insert
    conn.execute(
        ins(AttachmentRow.__table__).on_conflict_do_nothing(
            index_elements=["session_id", "sha256"]
        ),
        list(values.values()),
    )


FIRST_LIVE_SEQ = 1
"""Live turns are numbered from 1; a superseded turn's seq is negative (``-id``): the one
filter that keeps earlier versions out of prompts, pages, turns() and search."""


LAST_LIVE_SEQ = select(func.coalesce(func.max(TurnRow.seq), 0)).where(
    TurnRow.session_row_id == bindparam("sid"), TurnRow.seq >= FIRST_LIVE_SEQ
)
"""The number of a session's newest live turn (0: none), from the (session, seq) index:
what a conditional write (``expected_last_turn``) compares with."""

LOCK_SESSION = (
    select(SessionRow.id).where(SessionRow.id == bindparam("sid")).with_for_update(key_share=True)
)
"""PostgreSQL: hold the session's row until the transaction ends, as appending turns does
(their sequence numbers are reserved on it) and as an aging pass does to commit pages, so that
a check made after it stays true. FOR NO KEY UPDATE, the lock an update of the row takes: a
full FOR UPDATE would also wait for the key-share locks that writing a turn's marks (a pin, a
rehearsal) takes on it through their foreign key, while those wait for the turn rows a
replacement updates: a deadlock. SQLite's write transaction holds the whole database
already."""


def supersede_turns(s: Session, session_row_id: int, from_seq: int, at: datetime) -> int:
    """Take the live turns from ``from_seq`` on out of the live sequence (kept in the archive,
    marked superseded at ``at``); returns how many."""
    result = s.execute(
        update(TurnRow)
        .where(TurnRow.session_row_id == session_row_id, TurnRow.seq >= max(from_seq, 1))
        .values(superseded_seq=TurnRow.seq, seq=-TurnRow.id, superseded_at=at)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def page_turns(s: Session, session_row_id: int, first_seq: int, last_seq: int) -> Sequence[TurnRow]:
    """The archived turns a page covers, in order."""
    return s.scalars(
        select(TurnRow)
        .where(
            TurnRow.session_row_id == session_row_id,
            TurnRow.seq >= first_seq,
            TurnRow.seq <= last_seq,
        )
        .order_by(TurnRow.seq)
    ).all()


def add_visual_tokens(
    s: Session, page_id: int, tier: str, encoder_key: str, enc: EncodedPage, now: datetime
) -> None:
    """Cache an encoder's visual tokens for a page at a tier."""
    s.execute(
        insert(VisualTokenRow).values(
            page_id=page_id,
            tier=tier,
            encoder_key=encoder_key,
            dtype=enc.dtype,
            shape=list(enc.shape),
            data=enc.data,
            created_at=now,
        )
    )


class AgingClaimRow(Base):
    """Which aging pass is working on a session, until when (SQLite; see :mod:`.claims`).
    PostgreSQL keeps its claims in advisory locks and leaves this table empty."""

    __tablename__ = "om_aging_claims"

    session_row_id: Mapped[int] = mapped_column(
        "session_id", ForeignKey("om_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    holder: Mapped[str] = mapped_column(String(64), nullable=False)
    until: Mapped[int] = mapped_column(BigInteger, nullable=False)  # Unix seconds


class PendingPurgeRow(Base):
    """A forget whose bytes may still sit in a database file (SQLite: the write-ahead log,
    while a reader holds an old snapshot). Written in the forgetting transaction, deleted once
    the log is checkpointed and truncated; it names nothing of what was forgotten."""

    __tablename__ = "om_pending_purges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = {"sqlite_autoincrement": True}
