"""The forgetting engine: pack old turns into pages, move pages down the ladder, merge faded ones.

One pass has three steps per session:

- *pack*: turns that left the text window are cut into pages, still shown as text. Full pages
  are sealed; what does not fill a page yet is the session's one *open* page (its newest),
  rendered and prepared like any text page so that assembly can show it as an image under a
  tight budget. Each pass re-cuts from the open page's first turn: when new turns joined it, it
  is replaced in one transaction; when nothing changed it is left alone (same bytes). It is
  sealed once full or when the sitting ends (the session quiet for ``sitting_gap``). Only the
  newest page ever changes in packing: the sealed prefix stays byte-stable.
- *plan*: each sealed page's tier under the time and pressure policies, and *consolidation*:
  adjacent sparse pages reaching the same faint tier (small, tiny) in this pass are re-packed
  into dense ones, as a person's separate days become "last month" (under a token budget, only
  while the session is over it).
- *apply*: re-render from the archived turns and commit each page's tier change, and each
  merge, on its own, with a version check.

No write waits for drawing. Every step reads what it needs in one snapshot, draws (and encodes
visual tokens) with no transaction or lock held, then commits in one short write transaction
that checks nothing changed meanwhile: the page's version for a tier move, a merge or a
rebuild; the session's ``paged_until`` and its open page's version for packing. A step whose
rows changed is skipped (``AgingReport.pages_skipped``) and planned again by the next pass. On
PostgreSQL the commit claims its rows with ``FOR UPDATE SKIP LOCKED``, so concurrent workers
commit each change exactly once. And a pass claims each session it ages (PostgreSQL: an
advisory lock; SQLite: a lease row; see :mod:`.claims`), so another pass skips that session
instead of drawing its pages again.

Drawing may leave the process: with ``draw_workers`` of 2 or more, the changes of a session
(tier moves, merges, text pages prepared) are read here, a few ahead, their drawings made by a
pool of worker processes (:mod:`.draw_pool`), and committed here in plan order, one
transaction each with its version check, as in-process drawing commits them: the same bytes,
the same report, and an error raised where in-process drawing would raise it.

Nothing here runs on the request path; ``assemble`` only reads what a pass stored.
"""

from __future__ import annotations

import logging
import numbers
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from .captions import INTRO_TOKENS, page_caption
from .claims import claimed, new_holder
from .database import Database
from .draw_pool import DrawPool, can_draw_elsewhere, check_draw_workers
from .encoder import EncodedPage, VisualEncoder
from .errors import InvalidConfiguration, OpticalMemoryError
from .ladder import IMAGE_TIERS, Target, Tier
from .records import Attachment
from .render import PageRenderer, RenderedImage, RenderTurn, TurnImage
from .salience import SalienceFn, check_salience, keeps_whole
from .store import (
    PageRow,
    RenditionRow,
    SessionRow,
    TurnMarkRow,
    TurnRow,
    VisualTokenRow,
    add_visual_tokens,
    load_attachments,
    page_turns,
)
from .tokens import approximate_tokens
from .turn_text import page_text, speaker_of
from .validation import MAX_INT32, shifted

log = logging.getLogger("optical_memory.aging")


@dataclass(frozen=True)
class TimeLadder:
    """Age at which a page reaches each tier (after DeepSeek-OCR's Figure 13)."""

    large: timedelta = timedelta(hours=1)
    base: timedelta = timedelta(days=1)
    small: timedelta = timedelta(days=7)
    tiny: timedelta = timedelta(days=30)

    def __post_init__(self) -> None:
        if not (timedelta(0) <= self.large <= self.base <= self.small <= self.tiny):
            raise InvalidConfiguration(
                "TimeLadder thresholds must be non-negative and non-decreasing"
            )

    def tier_for(self, age: timedelta) -> Tier:
        for tier, threshold in (
            (Tier.TINY, self.tiny),
            (Tier.SMALL, self.small),
            (Tier.BASE, self.base),
            (Tier.LARGE, self.large),
        ):
            if age >= threshold:
                return tier
        return Tier.TEXT


@dataclass(frozen=True)
class AgingPolicy:
    """What stays text, how pages are cut, and when they fade.

    keep_last_turns / keep_last_tokens: the text window (both apply when both are set).
    by_time: fade by age (None turns it off). budget: fade by pressure, oldest first, only
    while the session's total cost is over this many tokens (None turns it off).
    sitting_gap: the end of a sitting. Turns that left the text window but do not fill a page
        yet wait on the session's open page (shown as text, prepared as images); it is sealed
        once a quiet spell of ``sitting_gap`` follows its newest turn: the session has been
        quiet that long, or a later turn came that much later (default 1 hour, the ladder's
        first step: a sitting's page is sealed as it starts to fade).
    seal_after / min_fill: an open page is also sealed, mid-sitting, once its newest turn is
        ``seal_after`` old and it holds at least ``min_fill`` of a page (a slow chat without
        a quiet hour still gets sealed pages); a full page is sealed at once.
    seal_quiet_after: deprecated, the sitting gap's old name (it was a week's wait); when set
        it is used as ``sitting_gap``, with a DeprecationWarning.
    page_fill: fraction of a legible page's capacity to fill (1.0 = full).
    consolidate: merge adjacent sparse pages as they reach the same faint tier (small, tiny)
        in the same pass, while their turns fit one page; under a ``budget``, only while the
        session is over it (the least text first); False keeps one page per cut.
    """

    keep_last_turns: int = 8
    keep_last_tokens: int | None = None
    by_time: TimeLadder | None = field(default_factory=TimeLadder)
    budget: int | None = None
    seal_after: timedelta = timedelta(hours=1)
    min_fill: float = 0.25
    seal_quiet_after: timedelta | None = None
    page_fill: float = 1.0
    sitting_gap: timedelta = timedelta(hours=1)
    consolidate: bool = True

    def __post_init__(self) -> None:
        if self.keep_last_turns < 0:
            raise InvalidConfiguration("keep_last_turns must be >= 0")
        if self.keep_last_tokens is not None and self.keep_last_tokens < 0:
            raise InvalidConfiguration("keep_last_tokens must be >= 0 or None")
        if self.budget is not None and self.budget <= 0:
            raise InvalidConfiguration("budget must be a positive number of tokens or None")
        if not 0.0 <= self.min_fill <= 1.0:
            raise InvalidConfiguration("min_fill must be between 0.0 and 1.0")
        if self.seal_quiet_after is not None:
            warnings.warn(
                "AgingPolicy(seal_quiet_after=...) is deprecated: use sitting_gap (a page is "
                "sealed when the sitting ends); its value is used as the sitting gap",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "sitting_gap", self.seal_quiet_after)
        for name in ("seal_after", "sitting_gap"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise InvalidConfiguration(f"{name} must be a non-negative timedelta")
        if not 0.1 <= self.page_fill <= 1.0:
            raise InvalidConfiguration("page_fill must be between 0.1 and 1.0")
        if not isinstance(self.consolidate, bool):
            raise InvalidConfiguration("consolidate must be True or False")


@dataclass
class AgingReport:
    """What one pass did."""

    now: datetime
    sessions_visited: int = 0
    pages_created: int = 0  # pages sealed by packing (new, or the open page sealed)
    pages_opened: int = 0  # open pages written (a new tail, or the tail re-cut with new turns)
    merges: int = 0  # merged pages written by consolidation (each also counts as moved)
    pages_merged: int = 0  # pages those merges replaced
    pages_moved: dict[str, int] = field(default_factory=dict)  # new tier -> pages
    pages_prepared: int = 0  # still text, with images ready for a tight budget
    pages_skipped: int = 0  # claimed by another worker, or changed while drawn: next pass
    sessions_busy: int = 0  # being aged by another pass (its claim): left to that pass
    text_tokens_replaced: int = 0  # text tokens of the pages that moved
    tokens_before: int = 0  # cost of the moved pages before the pass
    tokens_after: int = 0  # and after
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.pages_created or self.pages_opened or self.pages_moved or self.merges)


@dataclass(frozen=True)
class PagePlan:
    """One page's change in a pass: from ``old_tier`` to ``new_tier``, if still at ``version``."""

    page_id: int
    version: int
    old_tier: Tier
    new_tier: Tier


@dataclass(frozen=True)
class MergePlan:
    """Adjacent pages of one session to re-pack into one at ``tier``, if all are unchanged:
    ``pages`` is ``(page id, version)`` each, oldest first, covering ``first_seq..last_seq``."""

    session_row_id: int
    pages: tuple[tuple[int, int], ...]
    first_seq: int
    last_seq: int
    tier: Tier


@dataclass
class _Packed:
    """What packing one session did."""

    sealed: int = 0
    opened: int = 0
    prepared: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.sealed or self.opened)


@dataclass(frozen=True)
class Drawing:
    """A page drawn and encoded with no transaction open, ready to commit: the image of its
    stored ``tier`` (None at the text tier), each fainter tier's rendition, and the visual
    tokens of every form it may be shown in (empty without an encoder)."""

    tier: Tier
    stored: RenderedImage | PageImage | None
    fainter: tuple[tuple[Tier, RenderedImage | PageImage], ...]
    tokens: tuple[tuple[Tier, EncodedPage], ...] = ()


@dataclass(frozen=True)
class _Block:
    """Adjacent pages that consolidation under pressure would show as one: page indices
    ``first..last``, their turns' footprint, text tokens, and cost in the pass's estimate."""

    first: int
    last: int
    fill: int
    text_tokens: int
    cost: int


@dataclass(frozen=True)
class PageImage:
    """An image already stored (a rendition), promoted on a tier move instead of drawn again."""

    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class _Work:
    """One planned change as its snapshot showed it, ready to draw and commit: the turns to
    draw at ``tier`` as the page shows them (plain data, see :func:`render_turn`), or None
    when ``ready`` holds its drawing already (a move promoting stored renditions)."""

    plan: PagePlan | MergePlan
    tier: Tier
    turns: list[RenderTurn] | None
    ready: Drawing | None = None


@dataclass
class _Cut:
    """A session's packing as one snapshot showed it, and what to write if it still holds:
    the snapshot's ``paged_until`` and open page (``tail``: id and version), whether that page
    is kept (its cut unchanged) and sealed, and the rows of the new pages, oldest first (the
    last one open, with its turns and their marks to draw it)."""

    session_row_id: int
    paged_until: int
    new_paged_until: int
    tail: tuple[int, int] | None
    keep_tail: bool
    seal_tail: bool
    pages: list[dict[str, Any]]
    open_page: dict[str, Any] | None
    open_turns: list[TurnRow] | None
    open_marks: dict[int, tuple[bool, int]]
    open_images: dict[str, Attachment] = field(default_factory=dict)
    turns: tuple[int, int, int] = (0, 0, 0)  # first and last seq of the cut's turns, how many


FAINT_TIERS = (Tier.SMALL, Tier.TINY)  # where sparse pages consolidate
_CAPTION_REF = datetime(
    2000, 1, 1, tzinfo=UTC
)  # a caption's age at its longest ("less than an hour")


class Aging:
    """One configured aging engine: a database, a target, a renderer, a policy.

    ``salience`` (``f(role, content) -> float``, default :func:`.salience.salience`) decides,
    with pins and recalls, which turns an abridged faint page keeps whole.

    ``draw_workers``: how many processes draw a session's pages in a pass (see
    :func:`.draw_pool.check_draw_workers`): 1 (default) draws in this process; 2 or more
    draw in a :class:`~.draw_pool.DrawPool` of that many worker processes, started at the
    first pass with two or more pages of a session to draw, reused by later passes, stopped by
    :meth:`close`. The pages are the same bytes either way; the reads and commits stay here,
    one transaction per change with its version check. A renderer other than a plain
    :class:`~.render.PageRenderer` (a subclass) always draws in this process.
    """

    def __init__(
        self,
        db: Database,
        target: Target,
        renderer: PageRenderer,
        policy: AgingPolicy,
        encoder: VisualEncoder | None = None,
        salience: SalienceFn | None = None,
        draw_workers: int | str = 1,
    ) -> None:
        self.db = db
        self.target = target
        self.renderer = renderer
        self.policy = policy
        self.encoder = encoder
        self.salience = check_salience(salience)
        self.draw_workers = check_draw_workers(draw_workers)
        self.capacity = int(renderer.capacity(target.layout) * policy.page_fill)
        self._pool: DrawPool | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    def _draw_pool(self) -> DrawPool | None:
        """The pool drawings go to, started at its first use; None: draw in this process."""
        if self.draw_workers < 2 or not can_draw_elsewhere(self.renderer):
            return None
        with self._pool_lock:
            if self._closed:
                return None  # a pass after close: its database calls raise MemoryClosed
            if self._pool is None:
                self._pool = DrawPool(self.renderer, self.draw_workers)
            return self._pool

    def close(self) -> None:
        """Stop the drawing processes, if any were started; later passes draw in this
        process. Idempotent."""
        with self._pool_lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            pool.close()

    # -- the pass ------------------------------------------------------------------------------

    def run(
        self, now: datetime | None = None, scope: ColumnElement[bool] | None = None
    ) -> AgingReport:
        """One pass over the sessions with work that ``scope`` selects (a filter on SessionRow,
        e.g. one owner's sessions, chosen by the query itself; None: all)."""
        now = now or datetime.now(UTC)
        report = AgingReport(now=now)
        started = time.perf_counter()
        holder = new_holder()  # this pass's name on its claims (see .claims)
        for sid in self._sessions(scope, now):
            try:
                with claimed(self.db, sid, holder) as mine:
                    if mine:
                        self._age_session(sid, now, report)
                    else:  # another pass is aging it now: it does the work
                        report.sessions_busy += 1
            except Exception as exc:  # one bad session must not stop the pass
                name = self._name_of(sid)
                if isinstance(exc, OpticalMemoryError):  # said in full by its message
                    log.warning("aging session %s failed: %s: %s", name, type(exc).__name__, exc)
                else:
                    log.exception("aging session %s failed", name)
                report.errors.append(f"session {name}: {type(exc).__name__}: {exc}")
        report.seconds = time.perf_counter() - started
        return report

    def _name_of(self, sid: int) -> str:
        """How an error names a session: its id (and owner) as its user knows it, not the
        store's row number; the row number where even that cannot be read."""
        try:
            with self.db.read() as s:
                row = s.get(SessionRow, sid)
        except Exception:
            row = None
        if row is None:
            return f"(row {sid})"
        return f"{row.key!r} of owner {row.owner!r}" if row.owner else repr(row.key)

    def _age_session(self, sid: int, now: datetime, report: AgingReport) -> None:
        """Pack, plan and apply one session's changes (see :func:`.claims.claimed`)."""
        packed = self._pack(sid, now)
        if packed is None:  # packed by another worker meanwhile: next pass
            report.pages_skipped += 1
            packed = _Packed()
        report.pages_created += packed.sealed
        report.pages_opened += packed.opened
        report.pages_prepared += packed.prepared
        plans = self._plan(sid, now)
        pool = self._draw_pool() if len(plans) > 1 else None
        if pool is not None:
            moved = self._apply_pooled(plans, now, report, pool)
        else:
            moved = sum(self._apply(plan, now, report) for plan in plans)
        if packed.changed or moved:
            self.db.write(
                lambda s, sid=sid: s.execute(
                    update(SessionRow).where(SessionRow.id == sid).values(aged_at=now)
                )
            )
        report.sessions_visited += 1

    def _sessions(
        self, scope: ColumnElement[bool] | None, now: datetime | None = None
    ) -> list[int]:
        """Sessions with work at ``now``, in one query (the "due pages" query): turns beyond
        the text window, an open page that may be sealed, or a page due for a change (see
        :meth:`_due`); within ``scope`` when given (a filter on SessionRow: one owner's
        sessions cost one bound parameter, whatever their number). A pass with nothing due
        costs this one query and opens no write."""
        unpaged = SessionRow.next_seq - self.policy.keep_last_turns > SessionRow.paged_until
        with self.db.read() as s:
            q = (
                select(SessionRow.id)
                .where(unpaged | self._due(now or datetime.now(UTC)))
                .order_by(SessionRow.id)
            )
            if scope is not None:
                q = q.where(scope)
            return list(s.scalars(q))

    def _due(self, now: datetime) -> ColumnElement[bool]:
        """Whether a session (correlated on ``SessionRow``) has a page the pass may change at
        ``now``: a superset of what :meth:`_pack` and :meth:`_plan` find, never less.

        - its open page, once quiet for the shorter of ``sitting_gap`` and ``seal_after`` (or
          when a later turn is dated after ``now``: a gap among such turns may end a sitting);
        - a sealed page the time ladder moves to a fainter tier, if it is an image already or
          the image pays for its text (a text page that does not pay stays text; consolidation
          only merges around a page that moves, which is due itself);
        - a page of another target (re-drawn), or a text page without its renditions;
        - under a token budget (pressure), any page that can still fade.
        """
        page = PageRow
        mine = page.session_row_id == SessionRow.id
        quiet = shifted(now, -min(self.policy.sitting_gap, self.policy.seal_after))
        future_turn = (
            select(TurnRow.id)
            .where(TurnRow.session_row_id == SessionRow.id, TurnRow.seq > page.last_seq)
            .where(TurnRow.at > now)
            .exists()
        )
        open_due = select(page.id).where(mine, page.open, or_(page.last_at <= quiet, future_turn))
        prepared = select(RenditionRow.page_id).where(RenditionRow.page_id == page.id).exists()
        conds: list[ColumnElement[bool]] = [
            and_(page.target != self.target.name, page.tier != Tier.TEXT.label),
            and_(page.tier == Tier.TEXT.label, ~prepared),
        ]
        if self.policy.budget is not None:
            conds.append(page.tier != Tier.TINY.label)
        ladder = self.policy.by_time
        if ladder is not None:
            after = {
                Tier.LARGE: ladder.large,
                Tier.BASE: ladder.base,
                Tier.SMALL: ladder.small,
                Tier.TINY: ladder.tiny,
            }
            tiers = list(IMAGE_TIERS)
            for i, tier in enumerate(tiers):  # the band of ages the ladder puts at ``tier``
                band = page.last_at <= shifted(now, -after[tier])
                if i + 1 < len(tiers):
                    band = and_(band, page.last_at > shifted(now, -after[tiers[i + 1]]))
                conds.append(
                    and_(
                        band,
                        page.tier.in_([t.label for t in Tier if t < tier]),
                        or_(
                            page.tier != Tier.TEXT.label,
                            page.text_tokens > self.target.tier_cost(tier),
                        ),
                        ~page.open,
                    )
                )
        page_due = select(page.id).where(mine, or_(*conds))
        return or_(open_due.exists(), page_due.exists())

    # -- pack ----------------------------------------------------------------------------------

    def _pack(self, sid: int, now: datetime) -> _Packed | None:
        """Cut the turns that left the text window into pages, in three steps: the cut is read
        in one snapshot, the new open page drawn with no transaction open, and the pages
        written in one short transaction that commits only if the session's paging is as read
        (``paged_until``, the open page's version, the cut's turns all live). None: it changed
        meanwhile (another worker packed it, a turn was replaced), skipped; the next pass
        cuts again."""
        cut = self._read_cut(sid, now)
        if cut is None:
            return _Packed()
        drawing = None
        if cut.open_page is not None:
            assert cut.open_turns is not None
            drawing = self._draw(cut.open_turns, cut.open_marks, Tier.TEXT, cut.open_images)
        return self.db.write(lambda s: self._commit_cut(s, cut, drawing, now))

    def _read_cut(self, sid: int, now: datetime) -> _Cut | None:
        """How the turns that left the text window are cut, from the open page's first turn on,
        into sealed pages and at most one open page, as one snapshot shows them; None when
        nothing would change (then no write transaction is opened)."""
        with self.db.read() as s:
            row = s.execute(
                select(SessionRow.id, SessionRow.next_seq, SessionRow.paged_until).where(
                    SessionRow.id == sid
                )
            ).first()
            if row is None:
                return None
            tail = self._open_page(s, sid)
            window_end = self._window_end(s, row)
            start = tail.first_seq if tail is not None else row.paged_until + 1
            end = max(window_end, row.paged_until)
            if end < start:
                return None
            turns = list(
                s.scalars(
                    select(TurnRow)
                    .where(
                        TurnRow.session_row_id == sid,
                        TurnRow.seq >= start,
                        TurnRow.seq <= end + 1,  # one more, to see a tool group's end
                    )
                    .order_by(TurnRow.seq)
                )
            )
            following = turns[-1] if turns and turns[-1].seq > end else None
            turns = [t for t in turns if t.seq <= end]
            trimmed = _trim_open_tool_group(turns, following)
            if tail is not None and (not trimmed or trimmed[-1].seq < tail.last_seq):
                trimmed = [t for t in turns if t.seq <= tail.last_seq]  # never shrink it
            if not trimmed:
                return None
            groups = self._cut(trimmed)
            last_group, _ = groups[-1]
            later = list(
                s.scalars(
                    select(TurnRow.at)
                    .where(TurnRow.session_row_id == sid, TurnRow.seq > last_group[-1].seq)
                    .order_by(TurnRow.seq)
                )
            )
            seal_last = self._is_sealable(groups[-1], now, later)
            sealed = [True] * (len(groups) - 1) + [seal_last]
            keep_tail = seal_tail = False
            if tail is not None and (groups[0][0][0].seq, groups[0][0][-1].seq) == (
                tail.first_seq,
                tail.last_seq,
            ):
                # The open page's cut is unchanged: keep its row and bytes; seal it if due.
                keep_tail, seal_tail = True, sealed[0]
                groups, sealed = groups[1:], sealed[1:]
            paged_until = max(row.paged_until, trimmed[-1].seq)
            if keep_tail and not seal_tail and not groups and paged_until == row.paged_until:
                return None  # the open page as it is: nothing to write
            pages = []
            open_page = open_turns = None
            open_marks: dict[int, tuple[bool, int]] = {}
            open_images: dict[str, Attachment] = {}
            for (group, _full), seal in zip(groups, sealed, strict=True):
                values = self._new_page(sid, group, now)
                values["open"] = not seal
                pages.append(values)
                if not seal:
                    open_page, open_turns = values, group
                    open_marks = page_marks(s, sid, group[0].seq, group[-1].seq)
                    open_images = load_attachments(s.connection(), group)
        return _Cut(
            session_row_id=sid,
            paged_until=row.paged_until,
            new_paged_until=paged_until,
            tail=(tail.id, tail.version) if tail is not None else None,
            keep_tail=keep_tail,
            seal_tail=seal_tail,
            pages=pages,
            open_page=open_page,
            open_turns=open_turns,
            open_marks=open_marks,
            open_images=open_images,
            turns=(trimmed[0].seq, trimmed[-1].seq, len(trimmed)),
        )

    def _commit_cut(
        self, s: Session, cut: _Cut, drawing: Drawing | None, now: datetime
    ) -> _Packed | None:
        """Write a cut read by :meth:`_read_cut`, if the session's paging is unchanged: the
        same ``paged_until``, the same open page at the same version (or still none), and
        every turn of the cut still live (``replace_turns`` may supersede unpaged turns while
        the pass draws; on PostgreSQL it holds the session row, as this does). None when it
        changed: nothing is written."""
        sid = cut.session_row_id
        q = select(SessionRow.paged_until).where(SessionRow.id == sid)
        if self.db.dialect == "postgresql":
            # Packers queue here for a moment (every holder of this lock is short); add_turn's
            # own update of the row waits no longer than this transaction.
            q = q.with_for_update(key_share=True)  # FOR NO KEY UPDATE
        current = s.execute(q).first()
        if current is None or current.paged_until != cut.paged_until:
            return None
        if cut.tail is None:
            still_open = s.scalar(
                select(PageRow.id).where(PageRow.session_row_id == sid, PageRow.open).limit(1)
            )
            if still_open is not None:
                return None
        else:
            q = select(PageRow.version, PageRow.open).where(PageRow.id == cut.tail[0])
            if self.db.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)  # another worker holds it
            tail = s.execute(q).first()
            if tail is None or tail.version != cut.tail[1] or not tail.open:
                return None
        first, last, count = cut.turns
        live = s.scalar(
            select(func.count())
            .select_from(TurnRow)
            .where(TurnRow.session_row_id == sid, TurnRow.seq >= first, TurnRow.seq <= last)
        )
        if live != count:  # a turn was superseded since the read: the next pass cuts again
            return None
        packed = _Packed()
        if cut.tail is not None and cut.keep_tail:
            if cut.seal_tail:
                s.execute(update(PageRow).where(PageRow.id == cut.tail[0]).values(open=False))
                packed.sealed += 1
        elif cut.tail is not None:
            # New turns joined the open page: it is replaced, in this transaction.
            tail_id = cut.tail[0]
            s.execute(delete(VisualTokenRow).where(VisualTokenRow.page_id == tail_id))
            s.execute(delete(RenditionRow).where(RenditionRow.page_id == tail_id))
            s.execute(delete(PageRow).where(PageRow.id == tail_id))
        new_open: PageRow | None = None
        for values in cut.pages:
            page = PageRow(**values)
            s.add(page)
            if values["open"]:
                new_open = page
            else:
                packed.sealed += 1
        s.flush()
        if new_open is not None:
            packed.opened += 1
            if drawing is not None:
                # Every image tier ready as renditions, as for any text page (the same path).
                self._store(
                    s, new_open.id, new_open.version + 1, drawing, new_open.text_tokens, now
                )
                packed.prepared += 1
        if cut.new_paged_until != cut.paged_until:
            s.execute(
                update(SessionRow)
                .where(SessionRow.id == sid)
                .values(paged_until=cut.new_paged_until)
            )
        return packed

    def _open_page(self, s: Session, sid: int) -> Any | None:
        """The session's open page (always its newest page: id, version, first and last seq),
        None when there is none."""
        newest = s.execute(
            select(PageRow.id, PageRow.version, PageRow.open, PageRow.first_seq, PageRow.last_seq)
            .where(PageRow.session_row_id == sid)
            .order_by(PageRow.first_seq.desc())
            .limit(1)
        ).first()
        return newest if newest is not None and newest.open else None

    def _window_end(self, s: Session, row: Any) -> int:
        """Highest seq that may leave the text window: the window keeps the newest
        ``keep_last_turns`` live turns (a replacement's superseded versions, and the numbers
        it skipped, count for none)."""
        keep = self.policy.keep_last_turns
        end = row.next_seq
        if keep > 0:
            kth = s.scalar(  # the oldest turn the window keeps (live: seq > paged_until >= 0)
                select(TurnRow.seq)
                .where(TurnRow.session_row_id == row.id, TurnRow.seq > row.paged_until)
                .order_by(TurnRow.seq.desc())
                .offset(keep - 1)
                .limit(1)
            )
            end = kth - 1 if kth is not None else row.paged_until
        limit = self.policy.keep_last_tokens
        if limit is not None and end > row.paged_until:
            recent = s.execute(
                select(TurnRow.seq, TurnRow.tokens)
                .where(TurnRow.session_row_id == row.id, TurnRow.seq > row.paged_until)
                .order_by(TurnRow.seq.desc())
            )
            kept = 0
            for seq, tokens in recent:
                kept += tokens
                if kept > limit:
                    end = min(end, seq)
                    break
            else:
                end = row.paged_until
        return end

    def _cut(self, turns: list[TurnRow]) -> list[tuple[list[TurnRow], bool]]:
        """Greedy packing into pages of at most ``capacity`` footprint; (turns, full) each.
        A page never ends between an assistant tool call and its tool results."""
        pages: list[tuple[list[TurnRow], bool]] = []
        current: list[TurnRow] = []
        fill = 0
        for t in turns:
            fp = self._footprint(t)
            if current and fill + fp > self.capacity:
                keep, carry = (
                    _split_before_tool_group(current) if t.role == "tool" else (current, [])
                )
                pages.append((keep, True))
                current = carry
                fill = sum(self._footprint(c) for c in carry)
            current.append(t)
            fill += fp
        if current:
            pages.append((current, False))
        return pages

    def _footprint(self, t: TurnRow) -> int:
        return self.renderer.footprint(render_turn(t), self.target.layout)

    def _is_sealable(
        self, page: tuple[list[TurnRow], bool], now: datetime, later: Sequence[datetime] = ()
    ) -> bool:
        """Whether a cut page is sealed now: full; or its sitting ended (a quiet spell of
        ``sitting_gap`` after its newest turn: before a ``later`` turn, or until ``now``); or
        its newest turn is ``seal_after`` old and it holds ``min_fill`` of a page."""
        group, full = page
        if full:
            return True
        newest = max(t.at for t in group)
        if self._sitting_ended(newest, later, now):
            return True
        fill = sum(self._footprint(t) for t in group)
        quiet = now - newest
        return quiet >= self.policy.seal_after and fill >= self.policy.min_fill * self.capacity

    def _sitting_ended(self, newest: datetime, later: Sequence[datetime], now: datetime) -> bool:
        gap = self.policy.sitting_gap
        last = newest
        for at in later:
            if at - last >= gap:
                return True
            last = max(last, at)
        return now - last >= gap

    def _new_page(self, sid: int, group: list[TurnRow], now: datetime) -> dict[str, Any]:
        """The row of a new page of these turns, at the text tier (version 1)."""
        text_tokens = min(sum(t.tokens for t in group), MAX_INT32)  # (an INTEGER column)
        return {
            "session_row_id": sid,
            "first_seq": group[0].seq,
            "last_seq": group[-1].seq,
            "first_at": min(t.at for t in group),
            "last_at": max(t.at for t in group),
            "text_tokens": text_tokens,
            "target": self.target.name,
            "tier": Tier.TEXT.label,
            "png": None,
            "width": None,
            "height": None,
            "token_cost": text_tokens,
            "open": False,
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }

    # -- plan ----------------------------------------------------------------------------------

    def _plan(self, sid: int, now: datetime) -> list[PagePlan | MergePlan]:
        """Each sealed page's tier change, and the merges of consolidation, oldest first. The
        open page keeps the text tier (it is only prepared) until it is sealed."""
        with self.db.read() as s:
            pages = s.execute(
                select(
                    PageRow.id,
                    PageRow.version,
                    PageRow.tier,
                    PageRow.first_seq,
                    PageRow.last_seq,
                    PageRow.last_at,
                    PageRow.text_tokens,
                    PageRow.target,
                    PageRow.open,
                    select(RenditionRow.page_id)
                    .where(RenditionRow.page_id == PageRow.id)
                    .exists()
                    .label("prepared"),
                )
                .where(PageRow.session_row_id == sid)
                .order_by(PageRow.first_seq)
            ).all()
            unpaged = 0
            if self.policy.budget is not None:
                paged_until = s.scalar(select(SessionRow.paged_until).where(SessionRow.id == sid))
                unpaged = s.scalar(
                    select(func.coalesce(func.sum(TurnRow.tokens), 0)).where(
                        TurnRow.session_row_id == sid, TurnRow.seq > paged_until
                    )
                )
        current = [Tier.parse(p.tier) for p in pages]
        wanted = list(current)
        due = list(current)  # the time ladder's tier, whether or not an image pays
        if self.policy.by_time is not None:
            for i, p in enumerate(pages):
                t = self.policy.by_time.tier_for(now - p.last_at)
                if t > wanted[i] and not p.open:
                    due[i] = t
                    wanted[i] = self._paying(t, p.text_tokens, wanted[i])
        excess: int | None = None  # under pressure: the estimate's tokens over the budget
        if self.policy.budget is not None:
            excess = self._apply_pressure(pages, wanted, int(unpaged or 0)) - self.policy.budget
        merges = (
            self._consolidate(sid, pages, current, wanted, due, excess)
            if self.policy.consolidate
            else []
        )
        merged = {pid for m in merges for pid, _ in m.pages}
        plans: list[tuple[int, PagePlan | MergePlan]] = [(m.first_seq, m) for m in merges]
        for p, old, new in zip(pages, current, wanted, strict=True):
            if p.id in merged:
                continue
            retarget = p.target != self.target.name and old is not Tier.TEXT
            unprepared = new is Tier.TEXT and not p.prepared
            if new > old or retarget or unprepared:
                plans.append((p.first_seq, PagePlan(p.id, p.version, old, new)))
        plans.sort(key=lambda x: x[0])
        return [plan for _, plan in plans]

    def _consolidate(
        self,
        sid: int,
        pages: Sequence,
        current: list[Tier],
        wanted: list[Tier],
        due: list[Tier],
        excess: int | None = None,
    ) -> list[MergePlan]:
        """Merges of adjacent sparse pages at a faint tier, planned only at tier moves (under
        the time ladder), or only while the session is over its budget (under pressure,
        ``excess`` given: see :meth:`_merges_to_fit`).

        A page takes part at tier T (small or tiny) when it moves to T in this pass, or is at T
        next to one that does; a page still text because an image of it alone would not pay is
        due at T by the time ladder and may join a merge that pays. Consecutive pages at the same
        T are packed greedily, oldest first, while their turns' footprints fit one page; a group
        of two or more with a moving page becomes a merge. Whole pages are merged, so a tool call
        stays with its results, and between passes without a tier move nothing merges.
        """
        n = len(pages)
        at: list[Tier | None] = [None] * n
        for i, p in enumerate(pages):
            if p.open:
                continue
            if wanted[i] in FAINT_TIERS:
                at[i] = wanted[i]
            elif wanted[i] is Tier.TEXT and due[i] in FAINT_TIERS:
                at[i] = due[i]  # alone it does not pay; in a merge it may
        if excess is not None:
            return self._merges_to_fit(sid, pages, wanted, at, excess)
        moving = [
            at[i] is not None and (current[i] is not at[i] or pages[i].target != self.target.name)
            for i in range(n)
        ]

        def joins(i: int) -> bool:
            if at[i] is None:
                return False
            return (
                moving[i]
                or (i > 0 and moving[i - 1] and at[i - 1] is at[i])
                or (i + 1 < n and moving[i + 1] and at[i + 1] is at[i])
            )

        runs: list[list[int]] = []
        for i in range(n):
            if not joins(i):
                continue
            if runs and runs[-1][-1] == i - 1 and at[i - 1] is at[i]:
                runs[-1].append(i)
            else:
                runs.append([i])
        runs = [r for r in runs if len(r) > 1]
        if not runs:
            return []
        fills = self._page_fills(
            sid, [(pages[r[0]].first_seq, pages[r[-1]].last_seq) for r in runs]
        )
        merges: list[MergePlan] = []
        for run in runs:
            tier = at[run[0]]
            assert tier is not None
            groups: list[list[int]] = [[]]
            fill = 0
            for i in run:
                fp = sum(fills.get(q, 0) for q in range(pages[i].first_seq, pages[i].last_seq + 1))
                if groups[-1] and fill + fp > self.capacity:
                    groups.append([])
                    fill = 0
                groups[-1].append(i)
                fill += fp
            for g in groups:
                text_tokens = sum(pages[i].text_tokens for i in g)
                if (
                    len(g) > 1
                    and any(moving[i] for i in g)
                    and self._cost(tier, text_tokens) < text_tokens
                ):
                    merges.append(
                        MergePlan(
                            sid,
                            tuple((pages[i].id, pages[i].version) for i in g),
                            pages[g[0]].first_seq,
                            pages[g[-1]].last_seq,
                            tier,
                        )
                    )
        return merges

    def _merges_to_fit(
        self, sid: int, pages: Sequence, wanted: list[Tier], at: list[Tier | None], excess: int
    ) -> list[MergePlan]:
        """Under pressure, merges serve the budget: none while the session fits (``excess``,
        the pass's estimate over the budget, is not positive); while it does not, two adjacent
        blocks of pages at the same faint tier (``at``) whose turns fit one page merge, the
        pair with the least text first (ties: the oldest), so that merged pages stay as legible
        as the budget allows, each merge taking the estimate one image and one caption lower,
        until the session fits. Merging more would only leave the budget unspent (a merged
        page holds more text on the same canvas, so it is abridged sooner), and a pass that
        fits plans no merge: the next pass changes nothing."""
        if excess <= 0:
            return []
        spans: list[tuple[int, int]] = []  # index spans of adjacent pages at the same tier
        for i, tier in enumerate(at):
            if tier is None:
                continue
            if spans and spans[-1][1] == i - 1 and at[i - 1] is tier:
                spans[-1] = (spans[-1][0], i)
            else:
                spans.append((i, i))
        spans = [r for r in spans if r[1] > r[0]]
        if not spans:
            return []
        fills = self._page_fills(sid, [(pages[a].first_seq, pages[b].last_seq) for a, b in spans])
        blocks = [
            _Block(
                i,
                i,
                sum(fills.get(q, 0) for q in range(pages[i].first_seq, pages[i].last_seq + 1)),
                pages[i].text_tokens,
                self._shown_cost(
                    wanted[i], pages[i].text_tokens, pages[i].first_seq, pages[i].last_seq
                ),
            )
            for a, b in spans
            for i in range(a, b + 1)
        ]
        intro = 0 if any(w is not Tier.TEXT for w in wanted) else INTRO_TOKENS
        while excess > 0:
            best: tuple[tuple[int, int], int, _Block, int] | None = None
            for k, (x, y) in enumerate(pairwise(blocks)):
                tier = at[x.first]
                if y.first != x.last + 1 or at[y.first] is not tier or tier is None:
                    continue  # not neighbours at the same tier
                fill = x.fill + y.fill
                text_tokens = x.text_tokens + y.text_tokens
                if fill > self.capacity or self._cost(tier, text_tokens) >= text_tokens:
                    continue
                first_seq, last_seq = pages[x.first].first_seq, pages[y.last].last_seq
                cost = self._shown_cost(tier, text_tokens, first_seq, last_seq)
                saving = x.cost + y.cost - cost - intro
                if saving > 0 and (best is None or (fill, x.first) < best[0]):
                    best = (
                        (fill, x.first),
                        k,
                        _Block(x.first, y.last, fill, text_tokens, cost),
                        saving,
                    )
            if best is None:
                break
            _, k, block, saving = best
            blocks[k : k + 2] = [block]
            excess -= saving
            intro = 0
        return [
            MergePlan(
                sid,
                tuple((pages[i].id, pages[i].version) for i in range(b.first, b.last + 1)),
                pages[b.first].first_seq,
                pages[b.last].last_seq,
                tier,
            )
            for b in blocks
            if b.last > b.first and (tier := at[b.first]) is not None
        ]

    def _page_fills(self, sid: int, spans: Sequence[tuple[int, int]]) -> dict[int, int]:
        """Footprint of each turn in the given seq spans: seq -> footprint."""
        out: dict[int, int] = {}
        with self.db.read() as s:
            for first, last in spans:
                for t in page_turns(s, sid, first, last):
                    out[t.seq] = self._footprint(t)
        return out

    def _cost(self, tier: Tier, text_tokens: int) -> int:
        return text_tokens if tier is Tier.TEXT else self.target.tier_cost(tier)

    def _shown_cost(self, tier: Tier, text_tokens: int, first_seq: int, last_seq: int) -> int:
        """A page's cost in an assembled prompt: an image comes with its caption (counted as
        assembly counts it, at the longest age it can say: the estimate never grows with a
        page's age, so a pass that fits does not stop fitting by itself)."""
        if tier is Tier.TEXT:
            return text_tokens
        caption = page_caption(first_seq, last_seq, _CAPTION_REF, _CAPTION_REF)
        return self.target.tier_cost(tier) + approximate_tokens("system", caption)

    def _paying(self, tier: Tier, text_tokens: int, fallback: Tier) -> Tier:
        """``tier`` if its image costs less than the page's text; else stay at ``fallback``."""
        if fallback is not Tier.TEXT or self._cost(tier, text_tokens) < text_tokens:
            return tier
        return fallback

    def _apply_pressure(self, pages: Sequence, wanted: list[Tier], unpaged: int) -> int:
        """Fade the oldest pages first, one step at a time, until the session fits; returns
        the session's estimated cost afterwards (over the budget when fading alone cannot
        make it fit: then consolidation merges, see :meth:`_merges_to_fit`).

        The estimate is what assembly spends showing it all: the unpaged turns (the text
        window, protected) as text, each page at its wanted tier (an image with its caption),
        and the memory intro once there is an image."""
        budget = self.policy.budget
        assert budget is not None

        def shown(p: Any, tier: Tier) -> int:
            return self._shown_cost(tier, p.text_tokens, p.first_seq, p.last_seq)

        total = unpaged + sum(shown(p, w) for p, w in zip(pages, wanted, strict=True))
        if any(w is not Tier.TEXT for w in wanted):
            total += INTRO_TOKENS
        for i, p in enumerate(pages):  # oldest first
            if total <= budget:
                break
            if p.open:
                continue  # the open page stays text until sealed (assembly may fade it)
            while total > budget and wanted[i] < Tier.TINY:
                cost_now = shown(p, wanted[i])
                fainter = [t for t in IMAGE_TIERS if t > wanted[i] and shown(p, t) < cost_now]
                if not fainter:
                    break
                step = fainter[0]
                if not any(w is not Tier.TEXT for w in wanted):
                    total += INTRO_TOKENS  # the first image brings the memory intro
                total -= cost_now - shown(p, step)
                wanted[i] = step
        return total

    # -- apply ---------------------------------------------------------------------------------
    #
    # Each change is read in one snapshot, drawn (and encoded) with no transaction open, then
    # committed in one short write transaction with a version check: no write waits for the
    # drawing. A page changed meanwhile is skipped (counted in ``pages_skipped``) and planned
    # again by the next pass. On PostgreSQL the commit claims its rows with ``FOR UPDATE SKIP
    # LOCKED``: two workers never commit the same change (the loser finds the version moved on).

    def _apply(self, plan: PagePlan | MergePlan, now: datetime, report: AgingReport) -> int:
        """One change drawn in this process: read, draw, commit; 1 if a page moved."""
        return self._account(plan, self._redraw(plan, now), report)

    def _apply_pooled(
        self,
        plans: Sequence[PagePlan | MergePlan],
        now: datetime,
        report: AgingReport,
        pool: DrawPool,
    ) -> int:
        """The changes of one session with their drawings in ``pool``'s processes: up to two
        per worker are read and drawing while the oldest is committed, in plan order, each in
        its own transaction with its version check, exactly as :meth:`_apply` commits them.
        What a step raises (a read, a drawing, a commit) is raised when that change's turn to
        commit comes, as in-process drawing raises it: the changes before it are committed,
        those after it are not (their drawings are dropped; the next pass plans them again)."""
        ahead = 2 * pool.workers
        todo = iter(plans)
        pending: deque[tuple[PagePlan | MergePlan, _Work | BaseException | None, Any]] = deque()

        def read_ahead() -> None:
            while len(pending) < ahead and not (
                pending and isinstance(pending[-1][1], BaseException)
            ):
                plan = next(todo, None)
                if plan is None:
                    return
                try:
                    work = self._read_work(plan)
                    future = None
                    if work is not None and work.turns is not None:
                        future = pool.submit(work.turns, self.target.layout, self._sizes(work.tier))
                    pending.append((plan, work, future))
                except Exception as exc:  # raised in its turn, after the changes before it
                    pending.append((plan, exc, None))

        moved = 0
        try:
            read_ahead()
            while pending:
                plan, work, future = pending.popleft()
                if isinstance(work, BaseException):
                    raise work
                result = None
                if work is not None:
                    images = pool.result(future) if future is not None else []
                    drawing = self._drawing(work, images)
                    result = self._commit_work(work, drawing, now)
                moved += self._account(plan, result, report)
                read_ahead()
        finally:
            for _, _, future in pending:
                if future is not None:
                    future.cancel()
        return moved

    def _account(
        self, plan: PagePlan | MergePlan, result: tuple[int, int, int] | None, report: AgingReport
    ) -> int:
        """Count a committed change (``result``: old cost, new cost, text tokens) or a skipped
        one (None) in the report; 1 if a page moved."""
        if result is None:
            report.pages_skipped += 1
            return 0
        old_cost, new_cost, text_tokens = result
        if isinstance(plan, MergePlan):
            report.merges += 1
            report.pages_merged += len(plan.pages)
            tier = plan.tier
        else:
            tier = plan.new_tier
            if tier is Tier.TEXT:
                report.pages_prepared += 1
                return 0
        label = tier.label
        report.pages_moved[label] = report.pages_moved.get(label, 0) + 1
        report.tokens_before += old_cost
        report.tokens_after += new_cost
        report.text_tokens_replaced += text_tokens
        return 1

    def _redraw(self, plan: PagePlan | MergePlan, now: datetime) -> tuple[int, int, int] | None:
        """Draw a page at ``plan.new_tier`` (a merge: its pages as one) from the archived turns
        (or promote the renditions it already stores, see :meth:`_promotion`) and commit it if
        its rows are still as planned: (old cost, new cost, text tokens), or None (skipped)."""
        work = self._read_work(plan)
        if work is None:
            return None
        return self._commit_work(work, self._drawing(work, self._images(work)), now)

    def _read_work(self, plan: PagePlan | MergePlan) -> _Work | None:
        """What a change needs, read in one snapshot: the turns to draw as the page shows them
        (or the stored renditions a move promotes). None when the page changed or went
        meanwhile: nothing to draw."""
        if isinstance(plan, MergePlan):
            with self.db.read() as s:
                if self._merge_rows(s, plan, claim=False) is None:
                    return None
                turns = page_turns(s, plan.session_row_id, plan.first_seq, plan.last_seq)
                marks = page_marks(s, plan.session_row_id, plan.first_seq, plan.last_seq)
                images = load_attachments(s.connection(), turns)
            return _Work(plan, plan.tier, self._render_turns(turns, marks, images))
        with self.db.read() as s:
            head = s.execute(
                select(
                    PageRow.session_row_id, PageRow.first_seq, PageRow.last_seq, PageRow.target
                ).where(PageRow.id == plan.page_id, PageRow.version == plan.version)
            ).first()
            if head is None:
                return None  # changed or gone already: nothing to draw
            marks = page_marks(s, head.session_row_id, head.first_seq, head.last_seq)
            promoted = self._promotion(s, plan, head.target, marks)
            if promoted is None:
                turns = page_turns(s, head.session_row_id, head.first_seq, head.last_seq)
                images = load_attachments(s.connection(), turns)
        if promoted is not None:
            return _Work(plan, plan.new_tier, None, promoted)
        return _Work(plan, plan.new_tier, self._render_turns(turns, marks, images))

    def _images(self, work: _Work) -> list[RenderedImage]:
        """A change's images drawn in this process (none for a promotion)."""
        if work.turns is None:
            return []
        return self.renderer.render(work.turns, self.target.layout, self._sizes(work.tier))

    def _drawing(self, work: _Work, images: Sequence[RenderedImage]) -> Drawing:
        """A change's drawing from its images (or its promoted renditions), with visual tokens
        for every form it may be shown in, outside any transaction."""
        if work.ready is not None:
            return self._encode_missing(work.ready)
        return self._finish(work.tier, images)

    def _commit_work(
        self, work: _Work, drawing: Drawing, now: datetime
    ) -> tuple[int, int, int] | None:
        """Commit a change's drawing in one transaction, if its rows are as read."""
        plan = work.plan
        if isinstance(plan, MergePlan):
            return self.db.write(lambda s: self._commit_merge(s, plan, drawing, now))
        return self.db.write(lambda s: self._commit(s, plan, drawing, now))

    def _promotion(
        self, s: Session, plan: PagePlan, page_target: str, marks: dict[int, tuple[bool, int]]
    ) -> Drawing | None:
        """A tier move as the page's stored renditions: the new tier's rendition becomes the
        stored image, the fainter ones stay, and so do their cached visual tokens. They are
        the very bytes a new drawing would give (the same turns, canvas and sizes; each size
        is drawn independently), at a fraction of the cost. None when a drawing is needed:
        not a move down, another target, a rendition missing, or marked turns (pins and
        recalls may have changed since the renditions were drawn, and they change what an
        abridged page keeps)."""
        if (
            plan.new_tier is Tier.TEXT
            or plan.new_tier <= plan.old_tier
            or page_target != self.target.name
            or marks
        ):
            return None
        tiers = [t for t in IMAGE_TIERS if t >= plan.new_tier]
        rows = {
            r.tier: r
            for r in s.execute(
                select(
                    RenditionRow.tier, RenditionRow.png, RenditionRow.width, RenditionRow.height
                ).where(
                    RenditionRow.page_id == plan.page_id,
                    RenditionRow.tier.in_([t.label for t in tiers]),
                )
            )
        }
        images: list[PageImage] = []
        for t in tiers:
            r = rows.get(t.label)
            if r is None or (r.width, r.height) != self.target.spec(t).size:
                return None
            images.append(PageImage(bytes(r.png), r.width, r.height))
        tokens: tuple[tuple[Tier, EncodedPage], ...] = ()
        if self.encoder is not None:
            cached = {
                r.tier: EncodedPage(bytes(r.data), r.dtype, tuple(r.shape))
                for r in s.execute(
                    select(
                        VisualTokenRow.tier,
                        VisualTokenRow.dtype,
                        VisualTokenRow.shape,
                        VisualTokenRow.data,
                    ).where(
                        VisualTokenRow.page_id == plan.page_id,
                        VisualTokenRow.encoder_key == self.encoder.key,
                        VisualTokenRow.tier.in_([t.label for t in tiers]),
                    )
                )
            }
            tokens = tuple((t, cached[t.label]) for t in tiers if t.label in cached)
        fainter = tuple(zip(tiers[1:], images[1:], strict=True))
        return Drawing(plan.new_tier, images[0], fainter, tokens)

    def _encode_missing(self, drawing: Drawing) -> Drawing:
        """The drawing with visual tokens for every form it may be shown in (encoding only
        the forms without cached tokens), outside any transaction."""
        if self.encoder is None:
            return drawing
        forms = ([(drawing.tier, drawing.stored)] if drawing.stored is not None else []) + list(
            drawing.fainter
        )
        have = dict(drawing.tokens)
        tokens = tuple(
            (t, have[t] if t in have else self.encoder.encode(im.png, t.label)) for t, im in forms
        )
        return replace(drawing, tokens=tokens)

    def _commit(
        self, s: Session, plan: PagePlan, drawing: Drawing, now: datetime
    ) -> tuple[int, int, int] | None:
        """Store a drawing of ``plan.page_id`` if the page is still at ``plan.version`` (and,
        on PostgreSQL, no other worker holds it); None when not: nothing is written."""
        q = select(PageRow.token_cost, PageRow.text_tokens).where(
            PageRow.id == plan.page_id, PageRow.version == plan.version
        )
        if self.db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)  # claimed by another worker: skip it
        page = s.execute(q).first()
        if page is None:
            return None
        self._store(s, plan.page_id, plan.version + 1, drawing, page.text_tokens, now)
        return page.token_cost, self._cost(drawing.tier, page.text_tokens), page.text_tokens

    def _draw(
        self,
        turns: Sequence[TurnRow],
        marks: dict[int, tuple[bool, int]],
        tier: Tier,
        attachments: Mapping[str, Attachment],
    ) -> Drawing:
        """Render the turns at ``tier`` and every fainter image tier (a page still shown as
        text gets every image tier ready as renditions, so that assembly can show it as an
        image when a budget is tight, never rendering itself), and encode each form the page
        may be shown in; ``attachments``: the turns' images by sha256, read in the same
        snapshot as the turns, drawn as thumbnails. Touches no database."""
        shown = self._render_turns(turns, marks, attachments)
        return self._finish(
            tier, self.renderer.render(shown, self.target.layout, self._sizes(tier))
        )

    def _render_turns(
        self,
        turns: Sequence[TurnRow],
        marks: dict[int, tuple[bool, int]],
        attachments: Mapping[str, Attachment],
    ) -> list[RenderTurn]:
        """The turns as a page draws them, each marked whether an abridged page keeps it whole
        (plain data: what a drawing process receives)."""
        return [
            render_turn(t, keep_whole=self.keeps_whole(t, marks.get(t.seq)), images=attachments)
            for t in turns
        ]

    def _sizes(self, tier: Tier) -> list[tuple[int, int]]:
        """The image sizes a page at ``tier`` is drawn in: its tier's and every fainter one's."""
        return [self.target.spec(t).size for t in IMAGE_TIERS if t >= tier]

    def _finish(self, tier: Tier, images: Sequence[RenderedImage]) -> Drawing:
        """A drawing of a page at ``tier`` from its images (one per :meth:`_sizes`), with the
        visual tokens of each form the page may be shown in."""
        tiers = [t for t in IMAGE_TIERS if t >= tier]
        if tier is Tier.TEXT:
            stored, fainter = None, tuple(zip(tiers, images, strict=True))
        else:
            stored, fainter = images[0], tuple(zip(tiers[1:], images[1:], strict=True))
        tokens: tuple[tuple[Tier, EncodedPage], ...] = ()
        if self.encoder is not None:
            # Every form the page may be shown in gets its visual tokens now, so a local
            # model never runs its vision encoder on the request path, even under a tight
            # budget that shows the page fainter than stored.
            forms = ([(tier, stored)] if stored is not None else []) + list(fainter)
            tokens = tuple((t, self.encoder.encode(im.png, t.label)) for t, im in forms)
        return Drawing(tier, stored, fainter, tokens)

    def _store(
        self,
        s: Session,
        page_id: int,
        version: int,
        drawing: Drawing,
        text_tokens: int,
        now: datetime,
    ) -> None:
        """Write a drawing as the page's state at ``version``: tier, image, cost, renditions
        and visual tokens (the old ones go)."""
        stored = drawing.stored
        s.execute(
            update(PageRow)
            .where(PageRow.id == page_id)
            .values(
                tier=drawing.tier.label,
                png=stored.png if stored else None,
                width=stored.width if stored else None,
                height=stored.height if stored else None,
                token_cost=self._cost(drawing.tier, text_tokens),
                target=self.target.name,
                version=version,
                updated_at=now,
            )
        )
        s.execute(delete(RenditionRow).where(RenditionRow.page_id == page_id))
        if drawing.fainter:
            s.execute(
                insert(RenditionRow),
                [
                    {
                        "page_id": page_id,
                        "tier": t.label,
                        "png": im.png,
                        "width": im.width,
                        "height": im.height,
                    }
                    for t, im in drawing.fainter
                ],
            )
        s.execute(delete(VisualTokenRow).where(VisualTokenRow.page_id == page_id))
        if self.encoder is not None:
            for t, enc in drawing.tokens:
                add_visual_tokens(s, page_id, t.label, self.encoder.key, enc, now)

    def _merge_rows(self, s: Session, plan: MergePlan, *, claim: bool) -> list[Any] | None:
        """The pages of a merge, oldest first, if each is still at its planned version, sealed
        and adjacent (``claim``: locked, on PostgreSQL, skipping pages another worker holds);
        None when not."""
        versions = dict(plan.pages)
        q = (
            select(
                PageRow.id,
                PageRow.version,
                PageRow.open,
                PageRow.first_seq,
                PageRow.last_seq,
                PageRow.first_at,
                PageRow.last_at,
                PageRow.text_tokens,
                PageRow.token_cost,
            )
            .where(PageRow.id.in_(list(versions)), PageRow.session_row_id == plan.session_row_id)
            .order_by(PageRow.first_seq)
        )
        if claim and self.db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)  # claimed by another worker: skip it
        rows = list(s.execute(q))
        if (
            len(rows) != len(versions)
            or any(r.version != versions[r.id] or r.open for r in rows)
            or (rows[0].first_seq, rows[-1].last_seq) != (plan.first_seq, plan.last_seq)
            or any(b.first_seq != a.last_seq + 1 for a, b in pairwise(rows))
        ):
            return None
        return rows

    def _commit_merge(
        self, s: Session, plan: MergePlan, drawing: Drawing, now: datetime
    ) -> tuple[int, int, int] | None:
        """One merge's transaction: the pages claimed, each still at its planned version,
        replaced (with their renditions and visual tokens) by one page naming their whole turn
        span, drawn at the merge's tier. None when a page changed or is claimed by another
        worker: nothing is written, the next pass plans it again."""
        rows = self._merge_rows(s, plan, claim=True)
        if rows is None:
            return None
        text_tokens = min(sum(r.text_tokens for r in rows), MAX_INT32)  # (an INTEGER column)
        ids = [r.id for r in rows]
        s.execute(delete(VisualTokenRow).where(VisualTokenRow.page_id.in_(ids)))
        s.execute(delete(RenditionRow).where(RenditionRow.page_id.in_(ids)))
        s.execute(delete(PageRow).where(PageRow.id.in_(ids)))
        merged = PageRow(
            session_row_id=plan.session_row_id,
            first_seq=plan.first_seq,
            last_seq=plan.last_seq,
            first_at=min(r.first_at for r in rows),
            last_at=max(r.last_at for r in rows),
            text_tokens=text_tokens,
            target=self.target.name,
            tier=Tier.TEXT.label,
            png=None,
            width=None,
            height=None,
            token_cost=text_tokens,
            open=False,
            version=1,
            created_at=now,
            updated_at=now,
        )
        s.add(merged)
        s.flush()
        self._store(s, merged.id, 2, drawing, text_tokens, now)
        old_cost = sum(r.token_cost for r in rows)
        return old_cost, self._cost(plan.tier, text_tokens), text_tokens

    def rebuild(self, page_id: int, version: int, tier: Tier, now: datetime) -> bool:
        """Re-render a page at its stored ``tier`` from the archived turns (drawn outside any
        transaction), and store it in one transaction if it is still at ``version`` (images,
        renditions, visual tokens, version bump: the same path as a tier change). False when
        the page changed meanwhile (a concurrent pass made it fresh anyway). The broken blobs
        are never read: they are only overwritten."""
        return self._redraw(PagePlan(page_id, version, tier, tier), now) is not None

    def keeps_whole(self, t: TurnRow, mark: tuple[bool, int] | None = None) -> bool:
        """Whether an abridged page keeps this turn whole: pinned, or salient once its recalls
        are counted (``mark`` is its ``(pinned, recalls)``, None when it has no marks).

        Raises:
            InvalidConfiguration: the salience function returned something other than a number.
        """
        pinned, recalls = mark or (False, 0)
        if pinned:
            return True
        score = self.salience(t.role, t.content)
        if isinstance(score, bool):
            score = float(score)
        if not isinstance(score, numbers.Real):
            raise InvalidConfiguration(
                f"the salience function returned {type(score).__name__}, not a number"
            )
        return keeps_whole(float(score), recalls=recalls)


def render_turn(
    t: TurnRow, *, keep_whole: bool = False, images: Mapping[str, Attachment] | None = None
) -> RenderTurn:
    """How an archived turn is drawn on a page: its speaker (a name, else the role), text
    (its images' labels included) and images; ``keep_whole``: an abridged page cuts it last
    (see :meth:`Aging.keeps_whole`). ``images``: the session's attachments by sha256 (see
    :func:`~optical_memory.store.load_attachments`), to draw thumbnails; without them the
    images are sized only (what the packer measures: the same layout)."""
    found = images or {}
    return RenderTurn(
        speaker=speaker_of(t.role, t.meta),
        at=t.at,
        text=page_text(t.role, t.content, t.meta, t.attachments),
        keep_whole=keep_whole,
        images=tuple(
            TurnImage(
                int(d["width"]),
                int(d["height"]),
                found[d["sha256"]].data if d["sha256"] in found else None,
            )
            for d in t.attachments or ()
        ),
    )


def page_marks(s: Session, sid: int, first_seq: int, last_seq: int) -> dict[int, tuple[bool, int]]:
    """Pins and recall counts of a page's marked turns: seq -> (pinned, recalls)."""
    rows = s.execute(
        select(TurnRow.seq, TurnMarkRow.pinned, TurnMarkRow.recalls)
        .join(TurnMarkRow, TurnMarkRow.turn_id == TurnRow.id)
        .where(
            TurnMarkRow.session_row_id == sid,
            TurnRow.session_row_id == sid,
            TurnRow.seq >= first_seq,
            TurnRow.seq <= last_seq,
        )
    )
    return {int(seq): (bool(pinned), int(recalls or 0)) for seq, pinned, recalls in rows}


def _has_tool_calls(t: TurnRow) -> bool:
    return t.role == "assistant" and bool(isinstance(t.meta, dict) and t.meta.get("tool_calls"))


def _split_before_tool_group(current: list[TurnRow]) -> tuple[list[TurnRow], list[TurnRow]]:
    """Move a trailing assistant tool call and its results to the next page."""
    i = len(current)
    while i > 0 and current[i - 1].role == "tool":
        i -= 1
    if i > 1 and _has_tool_calls(current[i - 1]):
        return current[: i - 1], current[i - 1 :]
    return current, []


def _trim_open_tool_group(turns: list[TurnRow], following: TurnRow | None) -> list[TurnRow]:
    """Leave a tool group that continues past the window in the window, whole."""
    if following is None or following.role != "tool":
        return turns
    i = len(turns)
    while i > 0 and turns[i - 1].role == "tool":
        i -= 1
    if i > 0 and _has_tool_calls(turns[i - 1]):
        return turns[: i - 1]
    return turns
