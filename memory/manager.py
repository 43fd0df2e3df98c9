"""MemoryManager: the one public entry point.

mm = MemoryManager()                       # SQLite file in the user data dir
mm.add_turn("chat-1", "user", "hello")
mm.age()                                   # normally the scheduler does this
ctx = mm.assemble("chat-1", budget=4096, target="deepseek-ocr")
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .aging import Aging, AgingPolicy, AgingReport
from .assemble import AssembledContext, AssemblyShares, ReadHints, assemble_context
from .attachments import (
    DEFAULT_MAX_ATTACHMENT_BYTES,
    AttachmentInput,
    check_attachments,
    descriptor,
)
from .database import (
    DEFAULT_BUSY_TIMEOUT,
    Database,
    DriverStatement,
    default_url,
    normalise_url,
)
from .draw_pool import check_draw_workers
from .encoder import EncodedPage, VisualEncoder
from .errors import (
    InvalidBudget,
    InvalidConfiguration,
    InvalidInput,
    MemoryClosed,
    SessionChanged,
    UnknownPage,
    UnknownSession,
)
from .image_cache import DEFAULT_IMAGE_CACHE_BYTES, ImageCache, check_cache_bytes
from .integrity import VerifyReport, verify_pages
from .ladder import Target, Tier, get_target
from .recall import (
    Recollection,
    check_recall_args,
    parse_cue,
    pinned_seqs,
    purge_session,
    read_span,
    rehearse,
    search,
    search_text,
    set_pinned,
)
from .records import PageInfo, SessionInfo, TierRow, Turn
from .render import PageRenderer
from .salience import SalienceFn, check_salience
from .scheduler import AgingScheduler
from .store import (
    ADD_ONE_TURN_IF_AT_PG,
    ADD_ONE_TURN_PG,
    FIND_SESSION,
    FIND_SESSION_TO_ASSEMBLE,
    FIRST_LIVE_SEQ,
    INSERT_TURN,
    LAST_LIVE_SEQ,
    LOCK_SESSION,
    PAGE_COLUMNS_WITHOUT_PNG,
    RESERVE_SEQS,
    TURN_COLUMNS,
    AttachmentRow,
    PageRow,
    RenditionRow,
    SessionRow,
    TurnData,
    TurnMarkRow,
    TurnRow,
    VisualTokenRow,
    insert_attachments,
    load_attachments,
    namespace,
    owner_of,
    session_scope,
    supersede_turns,
    to_turn,
    turn_data,
)
from .tokens import TokenCounter, make_counter
from .turn_text import cost_text
from .validation import (
    MAX_INT,
    MAX_TURN,
    check_content,
    check_int,
    check_metadata,
    check_owner,
    check_role,
    check_session_id,
    check_timestamp,
)

DEFAULT_MAX_CONTENT_BYTES = 1 << 20
ANALYZE_AFTER_TURNS = 10_000
"""An ``add_sessions`` call that adds this many turns (a bulk load, an import) refreshes
PostgreSQL's planner statistics before the first read (:meth:`Database.analyze`)."""
_TURNS_OF_SESSION = (
    select(*TURN_COLUMNS)
    .select_from(
        SessionRow.__table__.outerjoin(
            TurnRow.__table__,
            and_(TurnRow.session_row_id == SessionRow.id, TurnRow.seq > bindparam("since")),
        )
    )
    .where(SessionRow.owner == bindparam("owner"), SessionRow.key == bindparam("key"))
    .order_by(TurnRow.seq)
)
"""The session (by owner and key) and its turns after ``since`` in one statement: no row
means no such session; one row of NULLs, a session without such turns."""
_TURN_KEYS = ("session_id", "seq", "role", "content", "at", "tokens", "metadata", "search_text")
CLOSE_WAIT = 2.0  # seconds close() waits for a running background pass
SCOPE_CHUNK = 10_000  # session ids per aging or verify run (bound parameters per statement)


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
        max_attachment_bytes: largest image a turn may carry, in bytes (default 20 MiB:
            :data:`~optical_memory.attachments.DEFAULT_MAX_ATTACHMENT_BYTES`).
        encoder: a :class:`VisualEncoder` whose visual tokens the aging pass caches.
        owner: the namespace (tenant or user) every call works in. A session is (owner,
            session id): the same id under two owners is two sessions, and another owner's
            session is reported as UnknownSession, exactly like one that does not exist.
            None (default): the no-owner namespace for every call that names a session;
            ``age()`` and ``verify()`` without ``sessions`` then span every owner.
        migrate: apply database migrations on open (default True).
        shares: how ``assemble`` splits a tight budget between recent text, the pages and
            what a cue recalls (default :class:`AssemblyShares`: half for the past, and with a
            cue a fifth of the budget, taken from the recent text, for what it recalls).
        salience: ``f(role, content) -> float`` replacing the default salience score
            (:func:`optical_memory.salience.salience`); a turn scoring at least
            ``salience.SALIENT`` (0.45), pinned, or recalled, keeps its whole text when a
            faint tier abridges its page. Must be deterministic.
        busy_timeout: seconds a call may wait in all, across retries, for locks that other
            connections hold, before it raises :class:`StoreBusy` (default 10). ``close()``
            waits at most about this long for a running background pass.
        draw_workers: how many processes draw pages in an aging pass: 1 (default) draws in
            the process running the pass; n >= 2 draws each session's pages in a pool of n
            worker processes (started with ``spawn`` at the first pass that has pages to
            draw, reused by later passes, stopped by ``close()``), the same bytes either way;
            ``"auto"``: one per usable core but one (so no pool on one or two cores). Worth it
            for first passes over long histories on a machine with cores to spare.
        image_cache_bytes: memory for the page images ``assemble`` sends, kept between calls
            with their base64 text (default 64 MiB; 0: read every image on every call). A
            page's bytes change only with its version, so a kept image is never stale.
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
        shares: AssemblyShares | None = None,
        salience: SalienceFn | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
        draw_workers: int | str = 1,
        image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
    ) -> None:
        for name, limit in (
            ("max_content_bytes", max_content_bytes),
            ("max_attachment_bytes", max_attachment_bytes),
        ):
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise InvalidConfiguration(f"{name} must be a positive int, got {limit!r:.40}")
        self.salience = check_salience(salience)
        self.draw_workers = check_draw_workers(draw_workers)
        self.url = normalise_url(url if url is not None else default_url())
        self.target = get_target(target)
        self.policy = policy or AgingPolicy()
        if shares is not None and not isinstance(shares, AssemblyShares):
            raise InvalidConfiguration("shares must be an AssemblyShares")
        self.shares = shares or AssemblyShares()
        self.max_content_bytes = max_content_bytes
        self._sqlite_add: tuple[DriverStatement, DriverStatement] | None = None
        self._read_hints = ReadHints()  # shared by scoped views: row ids are global
        self._image_cache = ImageCache(check_cache_bytes(image_cache_bytes))  # and views
        self.max_attachment_bytes = max_attachment_bytes
        self.encoder = encoder
        self.renderer = renderer or PageRenderer()
        self.owner = check_owner(owner)
        self._count = make_counter(token_counter)
        self._db = Database(self.url, busy_timeout=busy_timeout)
        self._closed = False
        self._scheduler: AgingScheduler | None = None
        self._parent: MemoryManager | None = None  # set on views made by scoped()
        self._views: weakref.WeakSet[MemoryManager] = weakref.WeakSet()
        try:
            self._db.open(migrate=migrate)  # migrations, typed errors, unfinished forgets
        except BaseException:
            self._db.close()
            raise
        self._aging = Aging(
            self._db,
            self.target,
            self.renderer,
            self.policy,
            encoder,
            self.salience,
            draw_workers=self.draw_workers,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def scoped(self, owner: str | None) -> MemoryManager:
        """The same memory seen by another owner: a view that shares this manager's database.

        A view does not own the database: closing it (or leaving its ``with`` block) closes
        only the view and its scheduler; closing the manager it came from closes every view.
        """
        self._check_open()
        root = self._parent or self
        view = copy.copy(self)
        view.owner = check_owner(owner)
        view._scheduler = None
        view._closed = False
        view._parent = root
        view._views = weakref.WeakSet()
        root._views.add(view)
        return view

    def close(self) -> None:
        """Stop the scheduler, the drawing processes and release connections (a view: only its
        own scheduler).
        Further calls raise MemoryClosed.

        Returns promptly: a background pass still running is given at most
        ``CLOSE_WAIT`` seconds (2) to end; one blocked on a lock is not waited for. Closing the
        manager a view came from refuses the pass any further database call (it ends with
        MemoryClosed, recorded in its report), so a pass left running stops at its next step.
        """
        if self._closed:
            return
        self._closed = True
        if self._parent is None:
            self._db.closed = True  # passes in flight stop at their next database call
        self.stop_scheduler(timeout=min(CLOSE_WAIT, self._db.busy_timeout))
        if self._parent is None:
            for view in list(self._views):
                view.close()
            self._aging.close()  # the drawing processes, if a pass started them
            self._db.close()

    def __enter__(self) -> MemoryManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed or (self._parent is not None and self._parent._closed):
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
        attachments: Iterable[AttachmentInput] | None = None,
        expected_last_turn: int | None = None,
    ) -> Turn:
        """Append one turn; the session is created on first use.

        ``attachments``: the turn's images (bytes, or ``{"data", "media_type"}``), stored
        exactly and returned in ``Turn.attachments``; each must decode with Pillow and be at
        most ``max_attachment_bytes`` (else :class:`InvalidAttachment`, nothing written).
        ``expected_last_turn``: append only if the session's newest turn is still this one
        (see :meth:`add_turns`)."""
        item = {"role": role, "content": content, "at": at, "metadata": metadata}
        if attachments is not None:
            item["attachments"] = attachments
        return self.add_turns(session_id, [item], expected_last_turn=expected_last_turn)[0]

    def add_turns(
        self,
        session_id: str,
        turns: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        expected_last_turn: int | None = None,
    ) -> list[Turn]:
        """Append many turns in one transaction: all are stored, or none.

        Each item is a mapping with ``role``, ``content`` and optional ``at``, ``metadata`` and
        ``attachments`` (see :meth:`add_turn`), or a ``(role, content)`` /
        ``(role, content, at)`` tuple.

        ``expected_last_turn`` makes the append conditional, for writers in several processes
        that each decide what is new from what they read: the number of the session's newest
        live turn when the caller read it (``turns()[-1].seq``; 0 for a session with no turns
        or none yet). If another writer has added or replaced turns since, nothing is written
        and :class:`SessionChanged` is raised: read the turns again, decide again, retry. (Turns
        only withdrawn since, by ``replace_turns(..., [])``, are not a change: the append lands
        after them, as it would have an instant earlier.) On PostgreSQL one plain turn is still
        one statement, a compare-and-swap on the session's row.

        >>> mm.add_turns("chat", [("user", "hi")], expected_last_turn=0)  # doctest: +SKIP
        """
        self._check_open()
        key = check_session_id(session_id)
        if expected_last_turn is not None:
            check_int(expected_last_turn, "expected_last_turn", maximum=MAX_TURN)
        return self._add({key: turns}, expected_last_turn).get(key, [])

    def add_sessions(
        self, sessions: Mapping[str, Iterable[Mapping[str, Any] | Sequence[Any]]]
    ) -> dict[str, list[Turn]]:
        """Append turns to several sessions in one transaction: all are stored, or none.

        ``sessions`` maps a session id to its turns, each as :meth:`add_turns` takes them.
        Every turn is validated before anything is written.
        """
        self._check_open()
        return self._add(sessions, None)

    def _add(
        self,
        sessions: Mapping[str, Iterable[Mapping[str, Any] | Sequence[Any]]],
        expected_last_turn: int | None,
    ) -> dict[str, list[Turn]]:
        """:meth:`add_sessions`; ``expected_last_turn`` (one session only) as in
        :meth:`add_turns`."""
        if not isinstance(sessions, Mapping):
            raise InvalidInput(
                f"sessions must map session ids to turns, got {type(sessions).__name__}"
            )
        prepared: list[tuple[str, list[dict[str, Any]]]] = []
        for session_id, turns in sessions.items():
            key = check_session_id(session_id)
            if not _is_items(turns):
                raise InvalidInput(
                    f"session {key!r}: turns must be an iterable of turns, "
                    f"got {type(turns).__name__}"
                )
            rows = self._validated(turns, f"session {key!r}, ")
            if rows:
                prepared.append((key, rows))
        if not prepared:
            return {}
        # One plain turn is one statement on PostgreSQL (see _insert_one_pg): no BEGIN/COMMIT.
        single = len(prepared) == 1 and len(prepared[0][1]) == 1 and not prepared[0][1][0]["images"]
        if single and expected_last_turn is not None and self._db.dialect == "postgresql":
            key, rows = prepared[0]
            done = self._db.write_core(
                lambda conn: self._insert_one_if_at_pg(conn, key, rows[0], expected_last_turn),
                one_statement=True,
            )
            if done is not None:
                return {key: [done]}
            # Else the check, in a transaction: a change, or withdrawn turns (see _insert_turns).
        added = self._db.write_core(
            lambda conn: {
                key: self._insert_turns(conn, key, rows, expected_last_turn)
                for key, rows in prepared
            },
            one_statement=single and expected_last_turn is None,
        )
        if sum(len(rows) for _, rows in prepared) >= ANALYZE_AFTER_TURNS:
            self._db.analyze()  # a table just filled looks empty to PostgreSQL's planner
        return added

    def _validated(self, turns: Iterable[Any], where: str = "") -> list[dict[str, Any]]:
        """Every turn checked before anything is written; an error names the turn by its
        place in what was given (``turns[3]``), and the session (``where``) when given."""
        rows = []
        for i, item in enumerate(turns):
            try:
                rows.append(self._validate(item))
            except InvalidInput as exc:
                raise type(exc)(f"{where}turns[{i}]: {exc}") from None
        return rows

    def _validate(self, item: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
        if isinstance(item, Mapping):
            role, content = item.get("role"), item.get("content")
            at, meta, images = item.get("at"), item.get("metadata"), item.get("attachments")
        elif isinstance(item, Sequence) and not isinstance(item, str) and 2 <= len(item) <= 3:
            role, content = item[0], item[1]
            at, meta, images = (item[2] if len(item) == 3 else None), None, None
        else:
            raise InvalidInput("pass a mapping with role and content, or a tuple")
        role = check_role(role)
        content = check_content(content, self.max_content_bytes)
        meta = check_metadata(meta)
        at = check_timestamp(at)
        found = check_attachments(images, self.max_attachment_bytes)
        return {
            "role": role,
            "content": content,
            "at": at,
            "meta": meta,
            "images": found,
            "tokens": int(self._count(role, cost_text(role, content, meta, found))),
            "search_text": search_text(content),  # computed before the write transaction
        }

    def _insert_turns(
        self,
        conn: Connection,
        key: str,
        rows: list[dict[str, Any]],
        expected_last_turn: int | None = None,
    ) -> list[Turn]:
        now = datetime.now(UTC)
        n = len(rows)
        if n == 1 and not rows[0]["images"] and expected_last_turn is None:  # the hot path
            if self._db.dialect == "postgresql":
                return [self._insert_one_pg(conn, key, rows[0], now)]
            return [self._insert_one_sqlite(conn, key, rows[0], now)]
        # One statement creates the session in this owner's namespace if needed and reserves
        # n sequence numbers; another owner's session of the same id is never touched. It
        # holds the session's row to the end of the transaction, so a check after it holds.
        sid, last = conn.execute(
            RESERVE_SEQS[self._db.dialect],
            {"key": key, "owner": self._namespace, "now": now, "meta": {}, "n": n},
        ).one()
        first = last - n + 1
        if expected_last_turn is not None and first - 1 != expected_last_turn:
            # Not the newest number the session has had: still its newest live turn (when
            # its last turns were withdrawn by replace_turns(..., [])), or a change; raising
            # rolls the reservation back.
            _check_last_turn(conn, key, sid, expected_last_turn)
        insert_attachments(conn, self._db.dialect, sid, (a for r in rows for a in r["images"]))
        values = [
            {
                "session_id": sid,
                "seq": first + i,
                "role": r["role"],
                "content": r["content"],
                "at": r["at"] or now,
                "tokens": r["tokens"],
                "metadata": r["meta"],
                "search_text": r["search_text"],
                "attachments": [descriptor(a) for a in r["images"]] or None,
            }
            for i, r in enumerate(rows)
        ]
        conn.execute(INSERT_TURN, values[0] if n == 1 else values)
        return [
            Turn(
                key,
                v["seq"],
                v["role"],
                v["content"],
                v["at"].astimezone(UTC),
                v["tokens"],
                v["metadata"],
                r["images"],
            )
            for v, r in zip(values, rows, strict=True)
        ]

    def _insert_one_sqlite(
        self, conn: Connection, key: str, r: dict[str, Any], now: datetime
    ) -> Turn:
        """One turn on SQLite: the same two built statements on the driver's cursor."""
        if self._sqlite_add is None:
            engine = self._db.engine
            self._sqlite_add = (
                DriverStatement(RESERVE_SEQS["sqlite"], engine),
                DriverStatement(INSERT_TURN, engine, _TURN_KEYS),
            )
        reserve, insert_turn = self._sqlite_add
        sid, seq = reserve.run(
            conn,
            {
                "key": key,
                "owner": self._namespace,
                "now": now,
                "meta": {},
                "n": 1,
                "paged_until": 0,
            },
        )
        at = r["at"] or now
        insert_turn.run(
            conn,
            {
                "session_id": sid,
                "seq": seq,
                "role": r["role"],
                "content": r["content"],
                "at": at,
                "tokens": r["tokens"],
                "metadata": r["meta"],
                "search_text": r["search_text"],
            },
        )
        return Turn(key, seq, r["role"], r["content"], at.astimezone(UTC), r["tokens"], r["meta"])

    def _insert_one_pg(self, conn: Connection, key: str, r: dict[str, Any], now: datetime) -> Turn:
        """One turn on PostgreSQL: the session, its seq and the turn in one statement."""
        at = r["at"] or now
        params = {"key": key, "owner": self._namespace, "now": now, "meta": {}, "n": 1}
        _, seq = conn.execute(ADD_ONE_TURN_PG, params | _turn_binds(r, at)).one()
        return Turn(key, seq, r["role"], r["content"], at.astimezone(UTC), r["tokens"], r["meta"])

    def _insert_one_if_at_pg(
        self, conn: Connection, key: str, r: dict[str, Any], expected: int
    ) -> Turn | None:
        """:meth:`_insert_one_pg` if the session's counter is still ``expected``, as one
        statement (:data:`ADD_ONE_TURN_IF_AT_PG`); None, with nothing written, otherwise."""
        now = datetime.now(UTC)
        at = r["at"] or now
        params: dict[str, Any] = {"n": 1, "expected": expected, **_turn_binds(r, at)}
        if expected == 0:  # the upsert: it may create the session
            params.update(key=key, owner=self._namespace, now=now, meta={})
        else:  # an UPDATE, which would take "key" and "owner" as values to SET
            params.update(session_key=key, session_owner=self._namespace)
        row = conn.execute(ADD_ONE_TURN_IF_AT_PG[expected == 0], params).first()
        if row is None:
            return None
        return Turn(
            key, row.seq, r["role"], r["content"], at.astimezone(UTC), r["tokens"], r["meta"]
        )

    def replace_turns(
        self,
        session_id: str,
        from_turn: int,
        turns: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        expected_last_turn: int | None = None,
    ) -> list[Turn]:
        """Record a new version of the conversation from turn ``from_turn`` on (a regenerated
        reply, an edited message): the live turns from there on are superseded (kept in the
        archive, see :meth:`superseded`; out of prompts, pages, ``turns()`` and search) and
        ``turns`` are appended, in one transaction.

        ``expected_last_turn``: replace only if the session's newest live turn is still this
        one, as in :meth:`add_turns`.

        Raises:
            InvalidInput: ``from_turn`` is on a page already (pages are sealed; append instead).
            SessionChanged: the session's newest turn is not ``expected_last_turn``.
        """
        self._check_open()
        key = check_session_id(session_id)
        check_int(from_turn, "from_turn", minimum=1, maximum=MAX_TURN)
        if not _is_items(turns):
            raise InvalidInput(f"turns must be an iterable of turns, got {type(turns).__name__}")
        if expected_last_turn is not None:
            check_int(expected_last_turn, "expected_last_turn", maximum=MAX_TURN)
        rows = self._validated(turns)

        def work(s: Session) -> list[Turn]:
            row = self._session(s, key)
            paged_until = row.paged_until
            if self._db.dialect == "postgresql":
                # Held, and read again under it: an aging pass that pages these turns holds
                # the row to commit, so it either commits first (and this refuses) or sees
                # them superseded (and skips its cut).
                s.execute(LOCK_SESSION, {"sid": row.id})
                paged_until = s.scalar(
                    select(SessionRow.paged_until).where(SessionRow.id == row.id)
                )
            if expected_last_turn is not None:
                _check_last_turn(s, key, row.id, expected_last_turn)
            if from_turn <= paged_until:
                raise InvalidInput(
                    f"turn {from_turn} of session {key!r} is on a page already (turns up to "
                    f"{paged_until} are); only later turns can be replaced, append instead"
                )
            supersede_turns(s, row.id, from_turn, datetime.now(UTC))
            return self._insert_turns(s.connection(), key, rows) if rows else []

        return self._db.write(work)

    def superseded(self, session_id: str) -> list[Turn]:
        """Earlier versions of turns (see :meth:`replace_turns`), each with the number it had,
        oldest replacement first."""
        self._check_open()
        with self._db.read() as s:
            row = self._session(s, session_id)
            q = (
                select(TurnRow)
                .where(TurnRow.session_row_id == row.id, TurnRow.seq < FIRST_LIVE_SEQ)
                .order_by(TurnRow.superseded_at, TurnRow.id)
            )
            found = s.scalars(q).all()
            images = load_attachments(s.connection(), found)
            return [
                dataclasses.replace(to_turn(t, row.key, images), seq=t.superseded_seq or 0)
                for t in found
            ]

    @property
    def _namespace(self) -> str:
        """This manager's owner as stored (the no-owner namespace for None)."""
        return namespace(self.owner)

    def _maintenance(self, run: Any, sessions: Sequence[str] | None) -> Any:
        """``run(scope)`` for an aging or verify run: the sessions it may touch, as a filter.

        Owner-scoped: the owner's sessions (by query, no id list), or the named ones among
        them. Unscoped (owner None): every owner's sessions when none are named (maintenance
        spans the whole database); named ids are looked up in the no-owner namespace, as every
        session-addressed call of an unscoped manager is. A string is refused: it is one id,
        not a list of them. Long lists run in chunks (one bound parameter per id; a
        PostgreSQL statement takes at most 65,535), the reports added up."""
        if sessions is not None:
            if isinstance(sessions, str | bytes | Mapping) or not isinstance(sessions, Iterable):
                raise InvalidInput(
                    f"sessions must be a list of session ids, e.g. [{sessions!r:.40}], "
                    f"not {type(sessions).__name__}"
                )
            sessions = [check_session_id(k) for k in sessions]
        if sessions is None:
            return run(session_scope(self.owner, all_owners=self.owner is None))
        chunks = [sessions[i : i + SCOPE_CHUNK] for i in range(0, len(sessions), SCOPE_CHUNK)]
        return self._in_chunks(run, [session_scope(self.owner, c) for c in chunks or [[]]])

    @staticmethod
    def _in_chunks(run: Any, scopes: list[Any]) -> Any:
        """``run(scope)`` for each scope, the reports added up."""
        if len(scopes) == 1:
            return run(scopes[0])
        reports = [run(scope) for scope in scopes]
        total = reports[0]
        for r in reports[1:]:
            for f in dataclasses.fields(total):
                a, b = getattr(total, f.name), getattr(r, f.name)
                if isinstance(a, bool) or not isinstance(a, int | float | list | dict):
                    continue
                if isinstance(a, list):
                    a.extend(b)
                elif isinstance(a, dict):
                    for k, v in b.items():
                        a[k] = a.get(k, 0) + v
                else:
                    setattr(total, f.name, a + b)
        return total

    def _session(self, s: Session, session_id: str, statement: Any = FIND_SESSION) -> Any:
        """The session's row in this owner's namespace (its SessionRow columns), else
        UnknownSession."""
        key = check_session_id(session_id)
        found = s.connection().execute(statement, {"owner": self._namespace, "key": key})
        row = found.first()
        if row is None:  # missing, or only another owner's: the same answer
            raise UnknownSession(f"no session {key!r}; add a turn to create it")
        return row

    # -- reading ---------------------------------------------------------------------------------

    def turns(self, session_id: str, *, since: int = 0, limit: int | None = None) -> list[Turn]:
        """The session's turns in order, exactly as added (``since``: after this seq)."""
        self._check_open()
        check_int(since, "since")
        if limit is not None:
            check_int(limit, "limit")
        key = check_session_id(session_id)
        # No turn is numbered past MAX_TURN (and PostgreSQL compares turn numbers as INTEGER).
        params = {"owner": self._namespace, "key": key, "since": min(since, MAX_TURN)}
        # limit=0 still reads a row: no row at all means no such session.
        q = _TURNS_OF_SESSION if limit is None else _TURNS_OF_SESSION.limit(max(limit, 1))

        def read(conn: Connection) -> list[TurnData]:
            rows = conn.execute(q, params).all()
            if not rows:  # missing, or only another owner's: the same answer
                raise UnknownSession(f"no session {key!r}; add a turn to create it")
            return turn_data(r for r in rows if r.id is not None)[:limit]

        with self._db.read_once() as conn:  # one statement: the session and its turns
            found = read(conn)
        if not any(t.attachments for t in found):
            return [to_turn(t, key) for t in found]
        with self._db.read() as s:  # images too: the turns and their images in one snapshot
            found = read(s.connection())
            images = load_attachments(s.connection(), found)
            return [to_turn(t, key, images) for t in found]

    def sessions(self, *, all_owners: bool = False) -> list[SessionInfo]:
        """Sessions in this manager's namespace (its owner's; unscoped: those without an
        owner), oldest first. ``all_owners``: every namespace, for maintenance and admin
        listings; each entry names its owner, and ``scoped(owner)`` addresses it."""
        self._check_open()
        if not isinstance(all_owners, bool):
            raise InvalidInput(f"all_owners must be a bool, got {type(all_owners).__name__}")
        # Live turns: the numbers given out less the superseded versions (seq -id, below
        # FIRST_LIVE_SEQ), counted on the (session, seq) index.
        superseded = (
            select(func.count())
            .where(TurnRow.session_row_id == SessionRow.id, TurnRow.seq < FIRST_LIVE_SEQ)
            .scalar_subquery()
        )
        with self._db.read() as s:
            q = select(SessionRow, superseded).order_by(SessionRow.id)
            if not all_owners:
                q = q.where(SessionRow.owner == self._namespace)
            return [
                SessionInfo(
                    r.key, owner_of(r.owner), r.created_at, r.next_seq - old, dict(r.meta or {})
                )
                for r, old in s.execute(q)
            ]

    def pages(self, session_id: str) -> list[PageInfo]:
        """The session's pages, oldest first, with their stored tier and cost (the newest may
        be open: see :class:`PageInfo`)."""
        self._check_open()
        with self._db.read() as s:
            row = self._session(s, session_id)
            rows = s.execute(
                select(*PAGE_COLUMNS_WITHOUT_PNG)
                .where(PageRow.session_row_id == row.id)
                .order_by(PageRow.first_seq)
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
                    r.open,
                )
                for r in rows
            ]

    def tier_summary(self, session_id: str) -> list[TierRow]:
        """Pages, turns, text tokens and image tokens of a session per stored tier: first a
        ``"recent"`` row for the turns not packed into pages yet, then one row per tier, sharp
        to faint."""
        pages = self.pages(session_id)
        recent = self.turns(session_id, since=max((p.last_seq for p in pages), default=0))
        rows = [TierRow("recent", 0, len(recent), sum(t.tokens for t in recent), 0)]
        for tier in Tier:
            group = [p for p in pages if p.tier == tier.label]
            rows.append(
                TierRow(
                    tier.label,
                    len(group),
                    sum(p.last_seq - p.first_seq + 1 for p in group),
                    sum(p.text_tokens for p in group),
                    0 if tier is Tier.TEXT else sum(p.token_cost for p in group),
                )
            )
        return rows

    def page_image(self, session_id: str, page_id: int, tier: str | None = None) -> bytes:
        """PNG bytes of a page at its stored tier, or at a fainter tier's rendition."""
        self._check_open()
        if isinstance(page_id, bool) or not isinstance(page_id, int) or not 0 < page_id < 2**63:
            raise UnknownPage(f"page ids are positive ints, got {page_id!r:.40}")
        label = _tier_label(tier)
        with self._db.read() as s:
            row = self._session(s, session_id)
            page = s.scalars(
                select(PageRow).where(PageRow.id == page_id, PageRow.session_row_id == row.id)
            ).first()
            if page is None:
                raise UnknownPage(f"session {session_id!r} has no page {page_id}")
            if label is None or label == page.tier:
                if page.png is None:
                    raise UnknownPage(
                        f"page {page_id} is stored as text; ask for a tier (large, base, small, "
                        "tiny) to get a prepared rendition"
                    )
                return page.png
            png = s.scalar(
                select(RenditionRow.png).where(
                    RenditionRow.page_id == page_id, RenditionRow.tier == label
                )
            )
            if png is None:
                raise UnknownPage(f"page {page_id} has no {tier} rendition")
            return png

    def visual_tokens(self, page_id: int, tier: str, encoder_key: str) -> EncodedPage | None:
        """Visual tokens the aging pass cached for a page at a tier by an encoder, or None."""
        self._check_open()
        check_int(page_id, "page_id", minimum=1, error=UnknownPage)
        if not isinstance(encoder_key, str):
            raise InvalidInput(f"encoder_key must be a string, got {type(encoder_key).__name__}")
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
            q = q.join(SessionRow, SessionRow.id == PageRow.session_row_id).where(
                SessionRow.owner == self._namespace
            )
            row = s.execute(q).first()
        if row is None:
            return None
        return EncodedPage(bytes(row.data), row.dtype, tuple(int(d) for d in row.shape))

    # -- recall --------------------------------------------------------------------------------

    def recall(
        self,
        session_id: str,
        cue: str,
        *,
        limit: int = 8,
        scope: str = "session",
        before: int | None = None,
    ) -> list[Recollection]:
        """The archived turns that best match ``cue``, best first, exactly as stored.

        ``cue`` is plain text, never query syntax: its words (stop words dropped) are ORed, so
        turns sharing its rarer words rank first; a cue with no word left recalls nothing.
        ``scope="owner"`` searches every session of the session's owner (never another
        owner's); ``before`` leaves out this session's turns from that number on. Each
        recalled turn counts one more rehearsal (a short write after the read).
        """
        self._check_open()
        parsed = parse_cue(cue)
        check_recall_args(limit, scope, before)
        check_int(limit, "limit", minimum=1)
        if before is not None:
            check_int(before, "before", minimum=-MAX_INT)
            # Turn numbers run 1..MAX_TURN (PostgreSQL compares them as INTEGER).
            before = None if before > MAX_TURN else max(before, 0)
        with self._db.read() as s:
            row = self._session(s, session_id)
            hits = search(s, row, parsed, limit=limit, scope=scope, before=before)
        if hits:
            now = datetime.now(UTC)
            ids = [h.turn_id for h in hits]
            self._db.write_core(lambda c: rehearse(c, ids, now), one_statement=True)
        return [h.recollection for h in hits]

    def read(self, session_id: str, first_turn: int, last_turn: int) -> list[Turn]:
        """Turns ``first_turn``..``last_turn`` of the session (inclusive), exactly as added:
        the span a page's caption names."""
        self._check_open()
        with self._db.read() as s:
            row = self._session(s, session_id)
            found = read_span(s, row, first_turn, last_turn)
            images = load_attachments(s.connection(), found)
            return [to_turn(t, row.key, images) for t in found]

    def pin(self, session_id: str, turn: int) -> None:
        """Pin a turn (by number): it stays legible in assembled prompts while pinned."""
        self._set_pinned(session_id, turn, True)

    def unpin(self, session_id: str, turn: int) -> None:
        """Unpin a turn; it fades with its page again."""
        self._set_pinned(session_id, turn, False)

    def pins(self, session_id: str) -> list[int]:
        """The numbers of the session's pinned turns, in order."""
        self._check_open()
        with self._db.read() as s:
            return pinned_seqs(s, self._session(s, session_id))

    def _set_pinned(self, session_id: str, turn: int, pinned: bool) -> None:
        self._check_open()
        if isinstance(turn, int) and not -MAX_INT <= turn <= MAX_INT:
            raise InvalidInput(f"there is no turn {turn!r:.40}: turn numbers are below 2**63")
        self._db.write(lambda s: set_pinned(s, self._session(s, session_id), turn, pinned))

    async def arecall(
        self,
        session_id: str,
        cue: str,
        *,
        limit: int = 8,
        scope: str = "session",
        before: int | None = None,
    ) -> list[Recollection]:
        return await asyncio.to_thread(
            self.recall, session_id, cue, limit=limit, scope=scope, before=before
        )

    async def aread(self, session_id: str, first_turn: int, last_turn: int) -> list[Turn]:
        return await asyncio.to_thread(self.read, session_id, first_turn, last_turn)

    # -- aging and assembly ----------------------------------------------------------------------

    def age(
        self, now: datetime | None = None, *, sessions: Sequence[str] | None = None
    ) -> AgingReport:
        """One synchronous aging pass (normally the scheduler runs it): over this owner's
        sessions, or the named ones among them. An unscoped manager (owner None) ages every
        owner's sessions, or with ``sessions`` the named ones without an owner. A session
        another pass is aging at the same time (another process, or this one's scheduler) is
        left to that pass and counted in ``sessions_busy`` (see :mod:`.claims`)."""
        self._check_open()
        now = check_timestamp(now, "now")
        return self._maintenance(partial(self._aging.run, now), sessions)

    def verify(self, *, repair: bool = True, sessions: Sequence[str] | None = None) -> VerifyReport:
        """Check every stored page image, rendition and cached visual-token entry (PNG
        signature, checksums, full decode, canvas of its tier); with ``repair``, rebuild what
        is broken from the archived turns. Turns themselves are never changed. Scoped as
        :meth:`age`: an unscoped manager checks every owner's pages."""
        self._check_open()
        return self._maintenance(partial(verify_pages, self._aging, repair=repair), sessions)

    def assemble(
        self,
        session_id: str,
        budget: int = 4096,
        target: Target | str | None = None,
        now: datetime | None = None,
        *,
        token_counter: TokenCounter | Any | None = None,
        cue: str | None = None,
        shares: AssemblyShares | None = None,
        newest_images: bool = True,
    ) -> AssembledContext:
        """Recent turns as text and older pages as images, within ``budget`` tokens on ``target``.

        Reads only; never renders. Between two aging passes the result is identical.

        ``cue`` (typically the newest user message): turns it recalls from the archive that the
        prompt would show faded or not at all come back as exact text, in one block after the
        pages, within ``shares.recall`` of the budget. Pinned turns are always in that block.
        ``shares`` (default: the manager's) splits a tight budget between recent text and the
        past; see :class:`AssemblyShares`. ``newest_images`` (default True): the newest user
        turn's images are sent as images (``TextSegment.shows_images``), counted at the
        target's image cost; False (e.g. a history read before the next question is added):
        shown as labels like every other turn's.
        """
        self._check_open()
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidBudget(f"budget must be a positive int of tokens, got {budget!r}")
        if cue is not None and not isinstance(cue, str):
            raise InvalidInput(f"cue must be a string or None, got {type(cue).__name__}")
        if shares is not None and not isinstance(shares, AssemblyShares):
            raise InvalidConfiguration("shares must be an AssemblyShares")
        tgt = get_target(target) if target is not None else self.target
        now = check_timestamp(now, "now") or datetime.now(UTC)
        counter = make_counter(token_counter) if token_counter is not None else None
        with self._db.read() as s:
            row = self._session(s, session_id, FIND_SESSION_TO_ASSEMBLE)
            return assemble_context(
                s,
                row,
                budget=budget,
                target=tgt,
                now=now,
                counter=counter,
                cue=cue,
                shares=shares or self.shares,
                newest_images=bool(newest_images),
                hints=self._read_hints,
                image_cache=self._image_cache,
            )

    def count_tokens(self, role: str, content: str) -> int:
        """Text tokens of one message with this manager's counter."""
        return int(self._count(check_role(role), check_content(content, MAX_INT)))

    # -- deletion --------------------------------------------------------------------------------

    def forget(self, session_id: str) -> int:
        """Delete the session and everything derived from it; returns the turns deleted.

        On SQLite it returns only once the deleted bytes are gone from every file (the main
        file and its write-ahead log): ``secure_delete`` zeroes the rows, and the file is
        rebuilt (``VACUUM``, a pass over the whole file: copies of a row that SQLite left
        while rebalancing its pages survive the zeroing), waiting up to
        ``busy_timeout`` for readers that hold an older snapshot. If one still does, it raises
        :class:`ForgetIncomplete`: the session is deleted, and a note kept in the same
        transaction makes the next open or write (or :meth:`finish_forget`) finish the purge.

        On PostgreSQL the rows are deleted when this returns, but their bytes stay in the
        tables' files as dead tuples until a ``VACUUM FULL`` rewrites them (plain ``VACUUM``,
        autovacuum's, only marks the space free): call :meth:`vacuum` to finish. The server's
        write-ahead log, replicas and backups keep their own copies until they are recycled.
        """
        self._check_open()
        key = check_session_id(session_id)

        def work(s: Session) -> int:
            row = self._session(s, key)
            n = s.scalar(select(func.count()).where(TurnRow.session_row_id == row.id)) or 0
            page_ids = select(PageRow.id).where(PageRow.session_row_id == row.id)
            # Explicit deletes as well as ON DELETE CASCADE: correct even where FKs are off.
            s.execute(delete(VisualTokenRow).where(VisualTokenRow.page_id.in_(page_ids)))
            s.execute(delete(RenditionRow).where(RenditionRow.page_id.in_(page_ids)))
            s.execute(delete(PageRow).where(PageRow.session_row_id == row.id))
            s.execute(delete(TurnRow).where(TurnRow.session_row_id == row.id))
            s.execute(delete(AttachmentRow).where(AttachmentRow.session_row_id == row.id))
            purge_session(s, row.id)  # marks, and the index's old segments
            s.execute(delete(SessionRow).where(SessionRow.id == row.id))
            self._db.note_purge(s)  # durable: a crash or a long reader leaves it to finish
            return int(n)

        n = self._db.write(work)
        self._db.finish_purges()  # push the zeroed pages out of the WAL, or ForgetIncomplete
        return n

    def finish_forget(self) -> None:
        """Finish what an earlier :meth:`forget` left undone (SQLite: checkpoint and empty the
        write-ahead log once no reader holds an old snapshot). Waits up to ``busy_timeout``;
        raises :class:`ForgetIncomplete` if a reader still keeps the old pages. A no-op when
        nothing is pending, and on PostgreSQL (see :meth:`vacuum`)."""
        self._check_open()
        self._db.finish_purges()

    def vacuum(self) -> None:
        """Remove what deleted rows leave in the database files.

        PostgreSQL: ``VACUUM (FULL, ANALYZE)`` of the store's tables, outside a transaction.
        Each table is rewritten into a new file (its indexes and TOAST data too) and the old
        one is truncated, so the bytes of forgotten sessions leave the table files. It holds
        an exclusive lock on each table while that table is rewritten (readers and writers
        wait, up to their ``busy_timeout``): run it after forgetting, at a quiet time.
        SQLite: ``VACUUM`` (the file is rebuilt without free pages) and the write-ahead log
        checkpointed and emptied.
        """
        self._check_open()
        if self._db.dialect == "postgresql":
            self._db.vacuum_postgres(
                [
                    t.name
                    for t in (
                        TurnRow.__table__,
                        AttachmentRow.__table__,
                        TurnMarkRow.__table__,
                        VisualTokenRow.__table__,
                        RenditionRow.__table__,
                        PageRow.__table__,
                        SessionRow.__table__,
                    )
                ]
            )
        else:
            self._db.vacuum_sqlite()

    # -- scheduler -------------------------------------------------------------------------------

    def start_scheduler(
        self, every: timedelta | float = timedelta(minutes=5), *, run_now: bool = False
    ) -> None:
        """Run the aging pass in the background every ``every`` (seconds or timedelta)."""
        self._check_open()
        if self._scheduler is None:
            self._scheduler = AgingScheduler(self.age)
        self._scheduler.start(every, run_now=run_now)

    @property
    def scheduler(self) -> AgingScheduler | None:
        """The running background scheduler (its pass and failure counts), or None."""
        return self._scheduler

    def stop_scheduler(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop background aging. With ``wait``, wait for a running pass to end, for at most
        ``timeout`` seconds (None: until it ends)."""
        if self._scheduler is not None:
            self._scheduler.stop(wait=wait, timeout=timeout)
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
        attachments: Iterable[AttachmentInput] | None = None,
        expected_last_turn: int | None = None,
    ) -> Turn:
        return await asyncio.to_thread(
            partial(
                self.add_turn,
                session_id,
                role,
                content,
                at,
                metadata=metadata,
                attachments=_drained(attachments),
                expected_last_turn=expected_last_turn,
            )
        )

    async def aadd_turns(
        self,
        session_id: str,
        turns: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        expected_last_turn: int | None = None,
    ) -> list[Turn]:
        return await asyncio.to_thread(
            partial(
                self.add_turns,
                session_id,
                _drained(turns),
                expected_last_turn=expected_last_turn,
            )
        )

    async def aadd_sessions(
        self, sessions: Mapping[str, Iterable[Mapping[str, Any] | Sequence[Any]]]
    ) -> dict[str, list[Turn]]:
        if isinstance(sessions, Mapping):
            sessions = {k: _drained(v) for k, v in sessions.items()}
        return await asyncio.to_thread(self.add_sessions, sessions)

    async def areplace_turns(
        self,
        session_id: str,
        from_turn: int,
        turns: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        expected_last_turn: int | None = None,
    ) -> list[Turn]:
        return await asyncio.to_thread(
            partial(
                self.replace_turns,
                session_id,
                from_turn,
                _drained(turns),
                expected_last_turn=expected_last_turn,
            )
        )

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
        cue: str | None = None,
        shares: AssemblyShares | None = None,
        newest_images: bool = True,
    ) -> AssembledContext:
        return await asyncio.to_thread(
            partial(
                self.assemble,
                session_id,
                budget,
                target,
                now,
                token_counter=token_counter,
                cue=cue,
                shares=shares,
                newest_images=newest_images,
            )
        )

    async def aage(
        self, now: datetime | None = None, *, sessions: Sequence[str] | None = None
    ) -> AgingReport:
        return await asyncio.to_thread(partial(self.age, now, sessions=sessions))

    async def aforget(self, session_id: str) -> int:
        return await asyncio.to_thread(self.forget, session_id)

    async def asuperseded(self, session_id: str) -> list[Turn]:
        return await asyncio.to_thread(self.superseded, session_id)

    async def asessions(self, *, all_owners: bool = False) -> list[SessionInfo]:
        return await asyncio.to_thread(partial(self.sessions, all_owners=all_owners))

    async def apages(self, session_id: str) -> list[PageInfo]:
        return await asyncio.to_thread(self.pages, session_id)

    async def apage_image(self, session_id: str, page_id: int, tier: str | None = None) -> bytes:
        return await asyncio.to_thread(self.page_image, session_id, page_id, tier)

    async def apin(self, session_id: str, turn: int) -> None:
        await asyncio.to_thread(self.pin, session_id, turn)

    async def aunpin(self, session_id: str, turn: int) -> None:
        await asyncio.to_thread(self.unpin, session_id, turn)

    async def apins(self, session_id: str) -> list[int]:
        return await asyncio.to_thread(self.pins, session_id)

    async def atier_summary(self, session_id: str) -> list[TierRow]:
        return await asyncio.to_thread(self.tier_summary, session_id)

    async def avisual_tokens(self, page_id: int, tier: str, encoder_key: str) -> EncodedPage | None:
        return await asyncio.to_thread(self.visual_tokens, page_id, tier, encoder_key)

    async def afinish_forget(self) -> None:
        await asyncio.to_thread(self.finish_forget)

    async def avacuum(self) -> None:
        await asyncio.to_thread(self.vacuum)

    async def averify(
        self, *, repair: bool = True, sessions: Sequence[str] | None = None
    ) -> VerifyReport:
        return await asyncio.to_thread(partial(self.verify, repair=repair, sessions=sessions))


def _is_items(items: object) -> bool:
    """An iterable of turns or attachments (a string, bytes or one mapping is not)."""
    return isinstance(items, Iterable) and not isinstance(items, str | bytes | Mapping)


def _drained(items: Any) -> Any:
    """An iterable of turns or attachments as a list, read in the caller's thread (a generator
    is not read from another); anything else is passed on as it is, for the method it goes to
    to refuse with its typed error."""
    return list(items) if _is_items(items) else items


def _tier_label(tier: object) -> str | None:
    """A tier's label for ``page_image``; a typed error for anything that is not a tier."""
    if tier is None:
        return None
    if not isinstance(tier, str | Tier):
        raise UnknownPage(f"tier must be a tier name (large, base, small, tiny), got {tier!r:.40}")
    try:
        return Tier.parse(tier).label
    except InvalidConfiguration as exc:
        raise UnknownPage(str(exc)) from None


def _turn_binds(r: dict[str, Any], at: datetime) -> dict[str, Any]:
    """A validated turn as the one-statement inserts bind it (``turn_*``)."""
    return {
        "turn_role": r["role"],
        "turn_content": r["content"],
        "turn_at": at,
        "turn_tokens": r["tokens"],
        "turn_metadata": r["meta"],
        "turn_search_text": r["search_text"],
    }


def _check_last_turn(conn: Connection | Session, key: str, sid: int, expected: int) -> None:
    """Raise :class:`SessionChanged` unless the session's newest live turn is ``expected``
    (run where the session's row is held: a write transaction)."""
    have = int(conn.execute(LAST_LIVE_SEQ, {"sid": sid}).scalar_one())
    if have != expected:
        raise SessionChanged(key, expected, have)
