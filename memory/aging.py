"""The forgetting engine: pack old turns into sealed pages, then move pages down the ladder.

One pass has three steps per session: *pack* (turns that left the text window become sealed
pages, still shown as text), *plan* (each page's tier under the time and pressure policies) and
*apply* (re-render from the archived turns and commit each page's tier change on its own).
Nothing here runs on the request path; ``assemble`` only reads what a pass stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from .assemble import CAPTION_TOKENS, INTRO_TOKENS
from .database import Database
from .encoder import VisualEncoder
from .ladder import IMAGE_TIERS, Target, Tier
from .render import PageRenderer, RenderTurn
from .store import PageRow, RenditionRow, SessionRow, TurnRow, VisualTokenRow

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
            raise ValueError("TimeLadder thresholds must be non-negative and non-decreasing")

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
    seal_after / min_fill: a page that is not full yet is sealed once its newest turn is
        ``seal_after`` old and it holds at least ``min_fill`` of a page; a smaller one waits
        for more turns (pages stay few and cheap rather than one small page per sitting)
        until the session has been quiet for ``seal_quiet_after``.
    page_fill: fraction of a legible page's capacity to fill (1.0 = full).
    """

    keep_last_turns: int = 8
    keep_last_tokens: int | None = None
    by_time: TimeLadder | None = field(default_factory=TimeLadder)
    budget: int | None = None
    seal_after: timedelta = timedelta(hours=1)
    min_fill: float = 0.25
    seal_quiet_after: timedelta = timedelta(days=7)
    page_fill: float = 1.0

    def __post_init__(self) -> None:
        if self.keep_last_turns < 0:
            raise ValueError("keep_last_turns must be >= 0")
        if self.keep_last_tokens is not None and self.keep_last_tokens < 0:
            raise ValueError("keep_last_tokens must be >= 0 or None")
        if self.budget is not None and self.budget <= 0:
            raise ValueError("budget must be a positive number of tokens or None")
        if not 0.0 <= self.min_fill <= 1.0:
            raise ValueError("min_fill must be between 0.0 and 1.0")
        if self.seal_after < timedelta(0) or self.seal_quiet_after < timedelta(0):
            raise ValueError("seal_after and seal_quiet_after must not be negative")
        if not 0.1 <= self.page_fill <= 1.0:
            raise ValueError("page_fill must be between 0.1 and 1.0")


@dataclass
class AgingReport:
    """What one pass did."""

    now: datetime
    sessions_visited: int = 0
    pages_created: int = 0
    pages_moved: dict[str, int] = field(default_factory=dict)  # new tier -> pages
    pages_prepared: int = 0  # still text, with images ready for a tight budget
    pages_skipped: int = 0  # claimed by another worker, or changed under us
    text_tokens_replaced: int = 0  # text tokens of the pages that moved
    tokens_before: int = 0  # cost of the moved pages before the pass
    tokens_after: int = 0  # and after
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.pages_created or self.pages_moved)


@dataclass(frozen=True)
class _PagePlan:
    page_id: int
    version: int
    old_tier: Tier
    new_tier: Tier


class Aging:
    """One configured aging engine: a database, a target, a renderer, a policy."""

    def __init__(
        self,
        db: Database,
        target: Target,
        renderer: PageRenderer,
        policy: AgingPolicy,
        encoder: VisualEncoder | None = None,
    ) -> None:
        self.db = db
        self.target = target
        self.renderer = renderer
        self.policy = policy
        self.encoder = encoder
        self.capacity = int(renderer.capacity(target.layout) * policy.page_fill)

    # -- the pass ------------------------------------------------------------------------------

    def run(
        self, now: datetime | None = None, session_keys: Sequence[str] | None = None
    ) -> AgingReport:
        now = now or datetime.now(UTC)
        report = AgingReport(now=now)
        started = time.perf_counter()
        for sid in self._sessions(session_keys):
            try:
                created = self._pack(sid, now)
                report.pages_created += created
                moved = 0
                for plan in self._plan(sid, now):
                    moved += self._apply(plan, now, report)
                if created or moved:
                    self.db.write(
                        lambda s, sid=sid: s.execute(
                            update(SessionRow).where(SessionRow.id == sid).values(aged_at=now)
                        )
                    )
                report.sessions_visited += 1
            except Exception as exc:  # one bad session must not stop the pass
                log.exception("aging session %s failed", sid)
                report.errors.append(f"session {sid}: {type(exc).__name__}: {exc}")
        report.seconds = time.perf_counter() - started
        return report

    def _sessions(self, keys: Sequence[str] | None) -> list[int]:
        """Sessions with work: turns beyond the text window, or pages that can still fade."""
        fading = (
            select(PageRow.id)
            .where(
                PageRow.session_id == SessionRow.id,
                PageRow.tier != Tier.TINY.label,
                PageRow.imageable,
            )
            .exists()
        )
        unpaged = SessionRow.next_seq - self.policy.keep_last_turns > SessionRow.paged_until
        with self.db.read() as s:
            q = select(SessionRow.id).where(unpaged | fading).order_by(SessionRow.id)
            if keys is not None:
                q = q.where(SessionRow.key.in_(list(keys)))
            return list(s.scalars(q))

    # -- pack ----------------------------------------------------------------------------------

    def _pack(self, sid: int, now: datetime) -> int:
        return self.db.write(lambda s: self._pack_in(s, sid, now))

    def _pack_in(self, s: Session, sid: int, now: datetime) -> int:
        q = select(SessionRow).where(SessionRow.id == sid)
        if self.db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)  # another worker is packing it
        row = s.scalars(q).first()
        if row is None:
            return 0
        window_end = self._window_end(s, row)
        if window_end <= row.paged_until:
            return 0
        turns = list(
            s.scalars(
                select(TurnRow)
                .where(
                    TurnRow.session_id == sid,
                    TurnRow.seq > row.paged_until,
                    TurnRow.seq <= window_end + 1,  # one more, to see a tool group's end
                )
                .order_by(TurnRow.seq)
            )
        )
        following = turns[-1] if turns and turns[-1].seq > window_end else None
        turns = [t for t in turns if t.seq <= window_end]
        turns = _trim_open_tool_group(turns, following)
        pages = self._cut(turns)
        if pages and not self._is_sealable(pages[-1], now):
            pages.pop()  # the newest page is neither full nor old: it waits
        for group, _full in pages:
            s.add(self._new_page(sid, group, now))
        if pages:
            row.paged_until = pages[-1][0][-1].seq
        return len(pages)

    def _window_end(self, s: Session, row: SessionRow) -> int:
        """Highest seq that may leave the text window."""
        end = row.next_seq - self.policy.keep_last_turns
        limit = self.policy.keep_last_tokens
        if limit is not None and end > row.paged_until:
            recent = s.execute(
                select(TurnRow.seq, TurnRow.tokens)
                .where(TurnRow.session_id == row.id, TurnRow.seq > row.paged_until)
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
            fp = self.renderer.footprint(_render_turn(t), self.target.layout)
            if current and fill + fp > self.capacity:
                keep, carry = (
                    _split_before_tool_group(current) if t.role == "tool" else (current, [])
                )
                pages.append((keep, True))
                current = carry
                fill = sum(
                    self.renderer.footprint(_render_turn(c), self.target.layout) for c in carry
                )
            current.append(t)
            fill += fp
        if current:
            pages.append((current, False))
        return pages

    def _is_sealable(self, page: tuple[list[TurnRow], bool], now: datetime) -> bool:
        group, full = page
        if full:
            return True
        quiet = now - max(t.at for t in group)
        if quiet >= self.policy.seal_quiet_after:
            return True
        fill = sum(self.renderer.footprint(_render_turn(t), self.target.layout) for t in group)
        return quiet >= self.policy.seal_after and fill >= self.policy.min_fill * self.capacity

    def _new_page(self, sid: int, group: list[TurnRow], now: datetime) -> PageRow:
        text_tokens = sum(t.tokens for t in group)
        footprint = sum(self.renderer.footprint(_render_turn(t), self.target.layout) for t in group)
        return PageRow(
            session_id=sid,
            first_seq=group[0].seq,
            last_seq=group[-1].seq,
            first_at=min(t.at for t in group),
            last_at=max(t.at for t in group),
            text_tokens=text_tokens,
            target=self.target.name,
            tier=Tier.TEXT.label,
            png=None,
            width=None,
            height=None,
            token_cost=text_tokens,
            sealed=True,
            imageable=footprint <= self.capacity,
            version=1,
            created_at=now,
            updated_at=now,
        )

    # -- plan ----------------------------------------------------------------------------------

    def _plan(self, sid: int, now: datetime) -> list[_PagePlan]:
        with self.db.read() as s:
            pages = s.execute(
                select(
                    PageRow.id,
                    PageRow.version,
                    PageRow.tier,
                    PageRow.last_at,
                    PageRow.text_tokens,
                    PageRow.imageable,
                    PageRow.target,
                    select(RenditionRow.page_id)
                    .where(RenditionRow.page_id == PageRow.id)
                    .exists()
                    .label("prepared"),
                )
                .where(PageRow.session_id == sid)
                .order_by(PageRow.first_seq)
            ).all()
            unpaged = 0
            if self.policy.budget is not None:
                paged_until = s.scalar(select(SessionRow.paged_until).where(SessionRow.id == sid))
                unpaged = s.scalar(
                    select(func.coalesce(func.sum(TurnRow.tokens), 0)).where(
                        TurnRow.session_id == sid, TurnRow.seq > paged_until
                    )
                )
        current = [Tier.parse(p.tier) for p in pages]
        wanted = list(current)
        if self.policy.by_time is not None:
            for i, p in enumerate(pages):
                t = self.policy.by_time.tier_for(now - p.last_at)
                if t > wanted[i] and p.imageable:
                    wanted[i] = self._paying(t, p.text_tokens, wanted[i])
        if self.policy.budget is not None:
            self._apply_pressure(pages, wanted, int(unpaged or 0))
        plans = []
        for p, old, new in zip(pages, current, wanted, strict=True):
            retarget = p.target != self.target.name and old is not Tier.TEXT
            unprepared = new is Tier.TEXT and p.imageable and not p.prepared
            if new > old or retarget or unprepared:
                plans.append(_PagePlan(p.id, p.version, old, new))
        return plans

    def _cost(self, tier: Tier, text_tokens: int) -> int:
        return text_tokens if tier is Tier.TEXT else self.target.tier_cost(tier)

    def _shown_cost(self, tier: Tier, text_tokens: int) -> int:
        """A page's cost in an assembled prompt: an image comes with its caption."""
        return text_tokens if tier is Tier.TEXT else self.target.tier_cost(tier) + CAPTION_TOKENS

    def _paying(self, tier: Tier, text_tokens: int, fallback: Tier) -> Tier:
        """``tier`` if its image costs less than the page's text; else stay at ``fallback``."""
        if fallback is not Tier.TEXT or self._cost(tier, text_tokens) < text_tokens:
            return tier
        return fallback

    def _apply_pressure(self, pages: Sequence, wanted: list[Tier], unpaged: int) -> None:
        """Fade the oldest pages first, one step at a time, until the session fits."""
        budget = self.policy.budget
        assert budget is not None
        # Budget what assembly will show: images come with a caption each and one intro.
        total = unpaged + sum(
            self._shown_cost(w, p.text_tokens) for p, w in zip(pages, wanted, strict=True)
        )
        if any(w is not Tier.TEXT for w in wanted):
            total += INTRO_TOKENS
        for i, p in enumerate(pages):  # oldest first
            if total <= budget:
                return
            if not p.imageable:
                continue
            while total > budget and wanted[i] < Tier.TINY:
                cost_now = self._shown_cost(wanted[i], p.text_tokens)
                fainter = [
                    t
                    for t in IMAGE_TIERS
                    if t > wanted[i] and self._shown_cost(t, p.text_tokens) < cost_now
                ]
                if not fainter:
                    break
                step = fainter[0]
                if not any(w is not Tier.TEXT for w in wanted):
                    total += INTRO_TOKENS  # the first image brings the memory intro
                total -= cost_now - self._shown_cost(step, p.text_tokens)
                wanted[i] = step

    # -- apply ---------------------------------------------------------------------------------

    def _apply(self, plan: _PagePlan, now: datetime, report: AgingReport) -> int:
        result = self.db.write(lambda s: self._apply_in(s, plan, now))
        if result is None:
            report.pages_skipped += 1
            return 0
        old_cost, new_cost, text_tokens = result
        if plan.new_tier is Tier.TEXT:
            report.pages_prepared += 1
            return 0
        label = plan.new_tier.label
        report.pages_moved[label] = report.pages_moved.get(label, 0) + 1
        report.tokens_before += old_cost
        report.tokens_after += new_cost
        report.text_tokens_replaced += text_tokens
        return 1

    def _apply_in(self, s: Session, plan: _PagePlan, now: datetime) -> tuple[int, int, int] | None:
        q = select(PageRow).where(PageRow.id == plan.page_id, PageRow.version == plan.version)
        if self.db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)  # claimed by another worker: skip it
        page = s.scalars(q).first()
        if page is None:
            return None
        turns = s.scalars(
            select(TurnRow)
            .where(
                TurnRow.session_id == page.session_id,
                TurnRow.seq >= page.first_seq,
                TurnRow.seq <= page.last_seq,
            )
            .order_by(TurnRow.seq)
        ).all()
        # A page still shown as text gets every image tier ready as renditions, so that
        # assembly can show it as an image when a budget is tight (never rendering itself).
        tiers = [t for t in IMAGE_TIERS if t >= plan.new_tier]
        images = self.renderer.render(
            [_render_turn(t) for t in turns],
            self.target.layout,
            [self.target.spec(t).size for t in tiers],
        )
        old_cost = page.token_cost
        if plan.new_tier is Tier.TEXT:
            stored, fainter = None, list(zip(tiers, images, strict=True))
        else:
            stored, fainter = images[0], list(zip(tiers[1:], images[1:], strict=True))
        page.tier = plan.new_tier.label
        page.png = stored.png if stored else None
        page.width, page.height = (stored.width, stored.height) if stored else (None, None)
        page.token_cost = self._cost(plan.new_tier, page.text_tokens)
        page.target = self.target.name
        page.version = plan.version + 1
        page.updated_at = now
        s.execute(delete(RenditionRow).where(RenditionRow.page_id == page.id))
        if fainter:
            s.execute(
                insert(RenditionRow),
                [
                    {
                        "page_id": page.id,
                        "tier": t.label,
                        "png": im.png,
                        "width": im.width,
                        "height": im.height,
                    }
                    for t, im in fainter
                ],
            )
        s.execute(delete(VisualTokenRow).where(VisualTokenRow.page_id == page.id))
        if self.encoder is not None:
            # Every form the page may be shown in gets its visual tokens now, so a local
            # model never runs its vision encoder on the request path, even under a tight
            # budget that shows the page fainter than stored.
            forms = ([(plan.new_tier, stored)] if stored is not None else []) + fainter
            for tier, image in forms:
                enc = self.encoder.encode(image.png, tier.label)
                s.add(
                    VisualTokenRow(
                        page_id=page.id,
                        tier=tier.label,
                        encoder_key=self.encoder.key,
                        dtype=enc.dtype,
                        shape=list(enc.shape),
                        data=enc.data,
                        created_at=now,
                    )
                )
        return old_cost, page.token_cost, page.text_tokens


def _render_turn(t: TurnRow) -> RenderTurn:
    speaker = t.meta.get("name") if isinstance(t.meta, dict) else None
    return RenderTurn(speaker=str(speaker or t.role), at=t.at, text=t.content)


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
