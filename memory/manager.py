"""MemoryManager: the one public entry point.

mm = MemoryManager()                       # SQLite file in the user data dir
mm.add_turn("chat-1", "user", "hello")
mm.age()                                   # normally the scheduler does this
ctx = mm.assemble("chat-1", budget=4096, target="deepseek-ocr")
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import migrations
from .aging import Aging, AgingPolicy, AgingReport
from .assemble import AssembledContext, assemble_context
from .database import Database, default_url, normalise_url
from .encoder import EncodedPage, VisualEncoder
from .errors import (
    InvalidBudget,
    InvalidInput,
    MemoryClosed,
    SessionAccessDenied,
    UnknownPage,
    UnknownSession,
)
from .integrity import VerifyReport, verify_pages
from .ladder import Target, Tier, get_target
from .records import PageInfo, SessionInfo, Turn
from .render import PageRenderer
from .store import PageRow, RenditionRow, SessionRow, TurnRow, VisualTokenRow
from .tokens import TokenCounter, make_counter
from .validation import (
    check_content,
    check_metadata,
    check_owner,
    check_role,
    check_session_id,
    check_timestamp,
)

DEFAULT_MAX_CONTENT_BYTES = 1 << 20


class MemoryManager:
    """Stores every turn losslessly, ages old ones into page images, assembles prompts.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://…``) or a file path.
            Default: ``$OPTICAL_MEMORY_URL``, else a SQLite file in the user data directory.
        target: the model the aging pass renders pages for (canvases per tier).
        policy: the text window, page cutting, and when pages fade (time and/or pressure).
        token_counter: text token counter: ``f(role, content)``, ``f(text)`` or a tokenizer.
            Default: langchain-core's approximation (4 characters a token, 3 per message).
        max_content_bytes: largest turn accepted, in UTF-8 bytes (default 1 MiB).
        encoder: a :class:`VisualEncoder` whose visual tokens the aging pass caches.
        owner: scope every call to this owner (tenant or user); others' sessions are refused.
        migrate: apply database migrations on open (default True).
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        target: Target | str = "deepseek-ocr",
        policy: AgingPolicy | None = None,
        token_counter: TokenCounter | Any | None = None,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        encoder: VisualEncoder | None = None,
        renderer: PageRenderer | None = None,
        owner: str | None = None,
        migrate: bool = True,
    ) -> None:
        if max_content_bytes <= 0:
            raise ValueError("max_content_bytes must be positive")
        self.url = normalise_url(url if url is not None else default_url())
        self.target = get_target(target)
        self.policy = policy or AgingPolicy()
        self.max_content_bytes = max_content_bytes
        self.encoder = encoder
        self.renderer = renderer or PageRenderer()
        self.owner = check_owner(owner)
        self._count = make_counter(token_counter)
        self._db = Database(self.url)
        self._closed = False
        self._scheduler: Any = None
        if migrate:
            migrations.upgrade(self._db.engine)
        self._aging = Aging(self._db, self.target, self.renderer, self.policy, encoder)

    # -- lifecycle -------------------------------------------------------------------------------

    def scoped(self, owner: str | None) -> MemoryManager:
        """The same memory seen by another owner (shares the connection pool)."""
        self._check_open()
        other = copy.copy(self)
        other.owner = check_owner(owner)
        other._scheduler = None
        return other

    def close(self) -> None:
        """Stop the scheduler and release connections. Further calls raise MemoryClosed."""
        if self._closed:
            return
        self.stop_scheduler()
        self._closed = True
        self._db.dispose()

    def __enter__(self) -> MemoryManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryClosed("this MemoryManager is closed; open a new one")

    @property
    def database(self) -> Database:
        return self._db

    # -- writing ---------------------------------------------------------------------------------

    def add_turn(
        self,
        session_id: str,
        role: str,
        content: str,
        at: datetime | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> Turn:
        """Append one turn; the session is created on first use."""
        return self.add_turns(
            session_id, [{"role": role, "content": content, "at": at, "metadata": metadata}]
        )[0]

    def add_turns(
        self, session_id: str, turns: Iterable[Mapping[str, Any] | Sequence[Any]]
    ) -> list[Turn]:
        """Append many turns in one transaction: all are stored, or none.

        Each item is a mapping with ``role``, ``content`` and optional ``at`` and ``metadata``,
        or a ``(role, content)`` / ``(role, content, at)`` tuple.
        """
        self._check_open()
        key = check_session_id(session_id)
        return self.add_sessions({key: turns}).get(key, [])

    def add_sessions(
        self, sessions: Mapping[str, Iterable[Mapping[str, Any] | Sequence[Any]]]
    ) -> dict[str, list[Turn]]:
        """Append turns to several sessions in one transaction: all are stored, or none.

        ``sessions`` maps a session id to its turns, each as :meth:`add_turns` takes them.
        Every turn is validated before anything is written.
        """
        self._check_open()
        if not isinstance(sessions, Mapping):
            raise InvalidInput(
                f"sessions must map session ids to turns, got {type(sessions).__name__}"
            )
        prepared: list[tuple[str, list[dict[str, Any]]]] = []
        for session_id, turns in sessions.items():
            key = check_session_id(session_id)
            if isinstance(turns, str | bytes | Mapping) or not isinstance(turns, Iterable):
                raise InvalidInput(
                    f"session {key!r}: turns must be an iterable of turns, "
                    f"got {type(turns).__name__}"
                )
            rows = [self._validate(i, item) for i, item in enumerate(turns)]
            if rows:
                prepared.append((key, rows))
        if not prepared:
            return {}
        return self._db.write(
            lambda s: {key: self._insert_turns(s, key, rows) for key, rows in prepared}
        )

    def _validate(self, i: int, item: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
        if isinstance(item, Mapping):
            role, content = item.get("role"), item.get("content")
            at, meta = item.get("at"), item.get("metadata")
        elif isinstance(item, Sequence) and not isinstance(item, str) and 2 <= len(item) <= 3:
            role, content = item[0], item[1]
            at, meta = (item[2] if len(item) == 3 else None), None
        else:
            raise InvalidInput(f"turn {i}: pass a mapping with role and content, or a tuple")
        role = check_role(role)
        content = check_content(content, self.max_content_bytes)
        return {
            "role": role,
            "content": content,
            "at": check_timestamp(at),
            "meta": check_metadata(meta),
            "tokens": int(self._count(role, content)),
        }

    def _insert_turns(self, s: Session, key: str, rows: list[dict[str, Any]]) -> list[Turn]:
        now = datetime.now(UTC)
        n = len(rows)
        # One statement creates the session if needed and reserves n sequence numbers.
        dialect_insert = pg_insert if self._db.dialect == "postgresql" else sqlite_insert
        reserve = (
            dialect_insert(SessionRow)
            .values(key=key, owner=self.owner, created_at=now, meta={}, next_seq=n)
            .on_conflict_do_update(
                index_elements=["key"], set_={"next_seq": SessionRow.next_seq + n}
            )
            .returning(SessionRow.id, SessionRow.owner, SessionRow.next_seq)
        )
        sid, owner, last = s.execute(reserve).one()
        self._check_owner(key, owner)  # raising rolls the reservation back
        first = last - n + 1
        values = [
            {**r, "session_id": sid, "seq": first + i, "at": r["at"] or now}
            for i, r in enumerate(rows)
        ]
        s.execute(insert(TurnRow), values)
        return [
            Turn(
                key,
                v["seq"],
                v["role"],
                v["content"],
                v["at"].astimezone(UTC),
                v["tokens"],
                v["meta"],
            )
            for v in values
        ]

    def _scope(self, sessions: Sequence[str] | None) -> Sequence[str] | None:
        """The session ids a pass may touch: all (None), or those given, within the owner."""
        if self.owner is None:
            return sessions
        mine = [i.session_id for i in self.sessions()]
        if sessions is None:
            return mine
        own = set(mine)
        return [k for k in sessions if k in own]

    def _check_owner(self, key: str, owner: str | None) -> None:
        if self.owner is not None and owner != self.owner:
            raise SessionAccessDenied(
                f"session {key!r} belongs to another owner; this manager is scoped to "
                f"{self.owner!r}"
            )

    def _session(self, s: Session, session_id: str) -> SessionRow:
        key = check_session_id(session_id)
        row = s.scalars(select(SessionRow).where(SessionRow.key == key)).first()
        if row is None:
            raise UnknownSession(f"no session {key!r}; add a turn to create it")
        self._check_owner(key, row.owner)
        return row

    # -- reading ---------------------------------------------------------------------------------

    def turns(self, session_id: str, *, since: int = 0, limit: int | None = None) -> list[Turn]:
        """The session's turns in order, exactly as added (``since``: after this seq)."""
        self._check_open()
        for name, value in (("since", since), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidInput(f"{name} must be an int, got {type(value).__name__}")
        with self._db.read() as s:
            row = self._session(s, session_id)
            q = (
                select(TurnRow)
                .where(TurnRow.session_id == row.id, TurnRow.seq > since)
                .order_by(TurnRow.seq)
            )
            if limit is not None:
                q = q.limit(limit)
            return [
                Turn(row.key, t.seq, t.role, t.content, t.at, t.tokens, dict(t.meta or {}))
                for t in s.scalars(q)
            ]

    def sessions(self) -> list[SessionInfo]:
        """Sessions in this manager's scope, oldest first."""
        self._check_open()
        with self._db.read() as s:
            q = select(SessionRow).order_by(SessionRow.id)
            if self.owner is not None:
                q = q.where(SessionRow.owner == self.owner)
            return [
                SessionInfo(r.key, r.owner, r.created_at, r.next_seq, dict(r.meta or {}))
                for r in s.scalars(q)
            ]

    def pages(self, session_id: str) -> list[PageInfo]:
        """The session's sealed pages, oldest first, with their stored tier and cost."""
        self._check_open()
        with self._db.read() as s:
            row = self._session(s, session_id)
            cols = [c for c in PageRow.__table__.columns if c.key != "png"]
            rows = s.execute(
                select(*cols).where(PageRow.session_id == row.id).order_by(PageRow.first_seq)
            ).all()
            return [
                PageInfo(
                    r.id,
                    row.key,
                    r.first_seq,
                    r.last_seq,
                    r.first_at,
                    r.last_at,
                    r.tier,
                    r.text_tokens,
                    r.token_cost,
                    r.width,
                    r.height,
                    r.version,
                )
                for r in rows
            ]

    def page_image(self, session_id: str, page_id: int, tier: str | None = None) -> bytes:
        """PNG bytes of a page at its stored tier, or at a fainter tier's rendition."""
        self._check_open()
        if isinstance(page_id, bool) or not isinstance(page_id, int) or not 0 < page_id < 2**63:
            raise UnknownPage(f"page ids are positive ints, got {page_id!r:.40}")
        with self._db.read() as s:
            row = self._session(s, session_id)
            page = s.scalars(
                select(PageRow).where(PageRow.id == page_id, PageRow.session_id == row.id)
            ).first()
            if page is None:
                raise UnknownPage(f"session {session_id!r} has no page {page_id}")
            if tier is None or Tier.parse(tier).label == page.tier:
                if page.png is None:
                    raise UnknownPage(
                        f"page {page_id} is stored as text; ask for a tier (large, base, small, "
                        "tiny) to get a prepared rendition"
                    )
                return page.png
            png = s.scalar(
                select(RenditionRow.png).where(
                    RenditionRow.page_id == page_id, RenditionRow.tier == Tier.parse(tier).label
                )
            )
            if png is None:
                raise UnknownPage(f"page {page_id} has no {tier} rendition")
            return png

    def visual_tokens(self, page_id: int, tier: str, encoder_key: str) -> EncodedPage | None:
        """Visual tokens the aging pass cached for a page at a tier by an encoder, or None."""
        self._check_open()
        label = Tier.parse(tier).label
        with self._db.read() as s:
            q = (
                select(VisualTokenRow.data, VisualTokenRow.dtype, VisualTokenRow.shape)
                .join(PageRow, PageRow.id == VisualTokenRow.page_id)
                .where(
                    VisualTokenRow.page_id == page_id,
                    VisualTokenRow.tier == label,
                    VisualTokenRow.encoder_key == encoder_key,
                )
            )
            if self.owner is not None:
                q = q.join(SessionRow, SessionRow.id == PageRow.session_id).where(
                    SessionRow.owner == self.owner
                )
            row = s.execute(q).first()
        if row is None:
            return None
        return EncodedPage(bytes(row.data), row.dtype, tuple(int(d) for d in row.shape))

    # -- aging and assembly ----------------------------------------------------------------------

    def age(
        self, now: datetime | None = None, *, sessions: Sequence[str] | None = None
    ) -> AgingReport:
        """One synchronous aging pass (normally the scheduler runs it)."""
        self._check_open()
        now = check_timestamp(now, "now")
        return self._aging.run(now, self._scope(sessions))

    def verify(self, *, repair: bool = True, sessions: Sequence[str] | None = None) -> VerifyReport:
        """Check every stored page image, rendition and cached visual-token entry (PNG
        signature, checksums, full decode, canvas of its tier); with ``repair``, rebuild what
        is broken from the archived turns. Turns themselves are never changed."""
        self._check_open()
        return verify_pages(self._aging, self._scope(sessions), repair=repair)

    def assemble(
        self,
        session_id: str,
        budget: int = 4096,
        target: Target | str | None = None,
        now: datetime | None = None,
        *,
        token_counter: TokenCounter | Any | None = None,
    ) -> AssembledContext:
        """Recent turns as text and older pages as images, within ``budget`` tokens on ``target``.

        Reads only; never renders. Between two aging passes the result is identical.
        """
        self._check_open()
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidBudget(f"budget must be a positive int of tokens, got {budget!r}")
        tgt = get_target(target) if target is not None else self.target
        now = check_timestamp(now, "now") or datetime.now(UTC)
        counter = make_counter(token_counter) if token_counter is not None else None
        with self._db.read() as s:
            row = self._session(s, session_id)
            return assemble_context(s, row, budget=budget, target=tgt, now=now, counter=counter)

    def count_tokens(self, role: str, content: str) -> int:
        """Text tokens of one message with this manager's counter."""
        return int(self._count(role, content))

    # -- deletion --------------------------------------------------------------------------------

    def forget(self, session_id: str) -> int:
        """Delete the session and everything derived from it; returns the turns deleted."""
        self._check_open()
        key = check_session_id(session_id)

        def work(s: Session) -> int:
            row = self._session(s, key)
            n = s.scalar(select(func.count()).where(TurnRow.session_id == row.id)) or 0
            page_ids = select(PageRow.id).where(PageRow.session_id == row.id)
            # Explicit deletes as well as ON DELETE CASCADE: correct even where FKs are off.
            s.execute(delete(VisualTokenRow).where(VisualTokenRow.page_id.in_(page_ids)))
            s.execute(delete(RenditionRow).where(RenditionRow.page_id.in_(page_ids)))
            s.execute(delete(PageRow).where(PageRow.session_id == row.id))
            s.execute(delete(TurnRow).where(TurnRow.session_id == row.id))
            s.execute(delete(SessionRow).where(SessionRow.id == row.id))
            return int(n)

        n = self._db.write(work)
        if self._db.dialect == "sqlite":
            with self._db.engine.connect() as conn:  # push the zeroed pages out of the WAL
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    # -- scheduler -------------------------------------------------------------------------------

    def start_scheduler(
        self, every: timedelta | float = timedelta(minutes=5), *, run_now: bool = False
    ) -> None:
        """Run the aging pass in the background every ``every`` (seconds or timedelta)."""
        self._check_open()
        from .scheduler import AgingScheduler

        if self._scheduler is None:
            self._scheduler = AgingScheduler(self)
        self._scheduler.start(every, run_now=run_now)

    def stop_scheduler(self, wait: bool = True) -> None:
        if self._scheduler is not None:
            self._scheduler.stop(wait=wait)
            self._scheduler = None

    # -- async twins -----------------------------------------------------------------------------

    async def aadd_turn(
        self,
        session_id: str,
        role: str,
        content: str,
        at: datetime | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> Turn:
        return await asyncio.to_thread(
            self.add_turn, session_id, role, content, at, metadata=metadata
        )

    async def aadd_turns(
        self, session_id: str, turns: Iterable[Mapping[str, Any] | Sequence[Any]]
    ) -> list[Turn]:
        turns = list(turns)
        return await asyncio.to_thread(self.add_turns, session_id, turns)

    async def aturns(
        self, session_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[Turn]:
        return await asyncio.to_thread(self.turns, session_id, since=since, limit=limit)

    async def aassemble(
        self,
        session_id: str,
        budget: int = 4096,
        target: Target | str | None = None,
        now: datetime | None = None,
        *,
        token_counter: Any = None,
    ) -> AssembledContext:
        return await asyncio.to_thread(
            self.assemble, session_id, budget, target, now, token_counter=token_counter
        )

    async def aage(self, now: datetime | None = None) -> AgingReport:
        return await asyncio.to_thread(self.age, now)

    async def aforget(self, session_id: str) -> int:
        return await asyncio.to_thread(self.forget, session_id)
