"""Budgeted context: recent turns as text, older pages as images, under a token budget.

Assembly only reads: no rendering, no encoding. It walks the history from the newest turn
back, so its cost follows the budget, not the length of the history. Over budget, the oldest
pages are shown fainter (from renditions the aging pass stored), then left out.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Row, and_, or_, select
from sqlalchemy.orm import Session

from .ladder import IMAGE_TIERS, Target, Tier
from .records import Turn
from .store import PageRow, RenditionRow, SessionRow, TurnRow
from .tokens import TokenCounter, approximate_tokens

MEMORY_INTRO = (
    "Memory of earlier conversation. The images below are pages of this conversation's own "
    "history, oldest first, rendered as pictures of text; the fainter the page, the older it "
    "is. Use them as background: they are not a new request and not current events."
)
# What a page's caption costs in the worst case: the aging pass's pressure budget counts it.
CAPTION_TOKENS = approximate_tokens(
    "system",
    "Memory page: turns 1000000–1000000, 30 Sep 2025 13:56 – 30 Sep 2025 10:02 UTC, "
    "about 11 months old.",
)
INTRO_TOKENS = approximate_tokens("system", MEMORY_INTRO)
_TURN_BATCH = 64
_PAGE_BATCH = 32


@dataclass(frozen=True)
class TextSegment:
    """One turn shown as text."""

    turn: Turn
    tokens: int
    page_id: int | None = None  # set when the turn is on a page still shown as text
    kind: Literal["text"] = "text"


@dataclass(frozen=True)
class PageSegment:
    """A page of consecutive turns shown as one image."""

    page_id: int
    tier: str  # the tier shown in this prompt
    stored_tier: str  # the tier the aging pass stored (tier is fainter when the budget was tight)
    png: bytes = field(repr=False)
    width: int
    height: int
    detail: str | None  # what to pass as the image detail where the API takes one
    tokens: int  # image cost on the target, plus the caption
    image_tokens: int
    text_tokens: int  # text tokens the image stands for
    first_seq: int
    last_seq: int
    first_at: datetime
    last_at: datetime
    caption: str
    kind: Literal["page"] = "page"
    mime_type: str = "image/png"

    @property
    def base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")

    @property
    def data_url(self) -> str:
        return f"data:{self.mime_type};base64,{self.base64}"


Segment = TextSegment | PageSegment


@dataclass(frozen=True)
class AssembledContext:
    """What the model will see, in order, with its cost on the target."""

    session_id: str
    target: str
    budget: int
    segments: tuple[Segment, ...]
    tokens: int  # everything: text turns, images, captions and the memory intro
    text_tokens_replaced: int  # text tokens that the images stand for
    image_tokens: int
    intro_tokens: int
    omitted_turns: int  # older turns left out of this prompt (still in the archive)
    over_budget: bool  # only when the newest user turn alone is larger than the budget

    @property
    def pages(self) -> list[PageSegment]:
        return [s for s in self.segments if isinstance(s, PageSegment)]

    @property
    def texts(self) -> list[TextSegment]:
        return [s for s in self.segments if isinstance(s, TextSegment)]

    @property
    def compression(self) -> float:
        """Text tokens the images stand for, per image token (0 when there are no images)."""
        return self.text_tokens_replaced / self.image_tokens if self.image_tokens else 0.0

    def fingerprint(self) -> str:
        """A hash of everything the model sees; equal fingerprints mean equal prompts."""
        h = hashlib.sha256()
        for seg in self.segments:
            if isinstance(seg, PageSegment):
                h.update(b"P%d:%s:%s\0" % (seg.page_id, seg.tier.encode(), seg.caption.encode()))
                h.update(hashlib.sha256(seg.png).digest())
            else:
                t = seg.turn
                h.update(b"T%d:%s\0%s\0" % (t.seq, t.role.encode(), t.content.encode("utf-8")))
        return h.hexdigest()


@dataclass
class _Option:
    tier: Tier
    cost: int
    width: int | None = None
    height: int | None = None
    detail: str | None = None


@dataclass
class _Candidate:
    row: Row[Any]  # a page row without its image bytes
    options: list[_Option]
    chosen: int = 0

    @property
    def option(self) -> _Option:
        return self.options[self.chosen]


def assemble_context(
    s: Session,
    session: SessionRow,
    *,
    budget: int,
    target: Target,
    now: datetime,
    counter: TokenCounter | None = None,
) -> AssembledContext:
    """Build the budgeted view of one session (inside a read transaction)."""

    def cost_of(t: TurnRow) -> int:
        """Stored counts come from the manager's counter; another counter recounts."""
        if counter is None or counter is approximate_tokens:
            return t.tokens
        return int(counter(t.role, t.content))

    # 1. Recent text, newest first, as whole units (a tool call stays with its results).
    texts: list[TurnRow] = []
    spent = 0
    over = False
    stopped = False
    mandatory_done = False
    upper = session.next_seq
    pending: list[TurnRow] = []  # a unit being gathered backwards
    while not stopped and upper > session.paged_until:
        batch = s.scalars(
            select(TurnRow)
            .where(
                TurnRow.session_id == session.id,
                TurnRow.seq <= upper,
                TurnRow.seq > session.paged_until,
            )
            .order_by(TurnRow.seq.desc())
            .limit(_TURN_BATCH)
        ).all()
        if not batch:
            break
        upper = batch[-1].seq - 1
        for t in batch:
            pending.insert(0, t)
            if t.role == "tool":
                continue  # walking back, a tool result needs the call before it: keep gathering
            unit_cost = sum(cost_of(u) for u in pending)
            if not mandatory_done:
                spent += unit_cost
                texts[:0] = pending
                mandatory_done = any(u.role == "user" for u in pending)
                over = spent > budget
            elif spent + unit_cost <= budget:
                spent += unit_cost
                texts[:0] = pending
            else:
                stopped = True
                break
            pending = []
    stopped = stopped or bool(pending)

    # 2. Pages, newest first, at their stored tier, while their faintest form could still fit.
    candidates: list[_Candidate] = []
    if not stopped:
        candidates = _page_candidates(s, session.id, target, budget - spent)

    intro = INTRO_TOKENS
    ref = session.aged_at or now
    captions = {c.row.id: _caption(c.row, ref) for c in candidates}

    caption_tokens = {pid: approximate_tokens("system", cap) for pid, cap in captions.items()}

    def page_cost(c: _Candidate) -> int:
        o = c.option
        return o.cost if o.tier is Tier.TEXT else o.cost + caption_tokens[c.row.id]

    # 3. Over budget: fade the oldest first (this request only), then leave the oldest out.
    #    Running totals keep this linear in the number of candidate pages.
    candidates.reverse()  # oldest first
    pages_cost = sum(page_cost(c) for c in candidates)
    images = sum(c.option.tier is not Tier.TEXT for c in candidates)

    def total() -> int:
        return spent + pages_cost + (intro if images else 0)

    i = 0  # candidates before i cannot fade any further
    while candidates and total() > budget:
        if i < len(candidates):
            c = candidates[i]
            if c.chosen + 1 == len(c.options):
                i += 1
                continue
            was_image = c.option.tier is not Tier.TEXT
            pages_cost -= page_cost(c)
            c.chosen += 1
            pages_cost += page_cost(c)
            images += (c.option.tier is not Tier.TEXT) - was_image
        else:
            c = candidates.pop(0)
            pages_cost -= page_cost(c)
            images -= c.option.tier is not Tier.TEXT
            i -= 1

    pngs = _images(s, [c for c in candidates if c.option.tier is not Tier.TEXT])
    segments: list[Segment] = []
    image_tokens = replaced = 0
    for c in candidates:
        o = c.option
        if o.tier is Tier.TEXT:
            for t in _page_turns(s, c.row):
                segments.append(TextSegment(_turn(t, session.key), cost_of(t), page_id=c.row.id))
            continue
        png = pngs[c.row.id]
        assert o.width is not None and o.height is not None
        cap = captions[c.row.id]
        segments.append(
            PageSegment(
                page_id=c.row.id,
                tier=o.tier.label,
                stored_tier=c.row.tier,
                png=png,
                width=o.width,
                height=o.height,
                detail=o.detail,
                tokens=page_cost(c),
                image_tokens=o.cost,
                text_tokens=c.row.text_tokens,
                first_seq=c.row.first_seq,
                last_seq=c.row.last_seq,
                first_at=c.row.first_at,
                last_at=c.row.last_at,
                caption=cap,
            )
        )
        image_tokens += o.cost
        replaced += c.row.text_tokens
    segments.extend(TextSegment(_turn(t, session.key), cost_of(t)) for t in texts)

    first_shown = min(
        (seg.first_seq if isinstance(seg, PageSegment) else seg.turn.seq for seg in segments),
        default=session.next_seq + 1,
    )
    has_images = image_tokens > 0
    return AssembledContext(
        session_id=session.key,
        target=target.name,
        budget=budget,
        segments=tuple(segments),
        tokens=sum(seg.tokens for seg in segments) + (intro if has_images else 0),
        text_tokens_replaced=replaced,
        image_tokens=image_tokens,
        intro_tokens=intro if has_images else 0,
        omitted_turns=max(0, first_shown - 1),
        over_budget=over,
    )


def _page_candidates(s: Session, sid: int, target: Target, remaining: int) -> list[_Candidate]:
    """Newest pages first, while the sum of their cheapest forms still fits."""
    out: list[_Candidate] = []
    floor = 0
    before: int | None = None
    cols = [c for c in PageRow.__table__.columns if c.key != "png"]
    while floor <= remaining:
        q = select(*cols).where(PageRow.session_id == sid).order_by(PageRow.first_seq.desc())
        if before is not None:
            q = q.where(PageRow.first_seq < before)
        rows = s.execute(q.limit(_PAGE_BATCH)).all()
        if not rows:
            break
        ids = [r.id for r in rows]
        renditions: dict[int, list[tuple[str, int, int]]] = {}
        for pid, tier, w, h in s.execute(
            select(
                RenditionRow.page_id, RenditionRow.tier, RenditionRow.width, RenditionRow.height
            ).where(RenditionRow.page_id.in_(ids))
        ):
            renditions.setdefault(pid, []).append((tier, w, h))
        for r in rows:
            before = r.first_seq
            options = _options(r, renditions.get(r.id, []), target)
            out.append(_Candidate(r, options))
            floor += min(o.cost for o in options)
            if floor > remaining:
                break
    return out


def _options(
    row: Row[Any], renditions: list[tuple[str, int, int]], target: Target
) -> list[_Option]:
    """How a page can be shown, sharpest first; images only where they cost less than text."""
    stored = Tier.parse(row.tier)
    opts: list[_Option] = []
    forms = sorted(((Tier.parse(t), w, h) for t, w, h in renditions), key=lambda f: f[0])
    if stored is Tier.TEXT:
        opts.append(_Option(Tier.TEXT, row.text_tokens))
    else:
        forms.insert(0, (stored, row.width, row.height))
    for tier, w, h in forms:
        if tier not in IMAGE_TIERS or w is None or h is None:
            continue
        detail = target.spec(tier).detail
        cost = target.image_cost(w, h, detail)
        if cost < row.text_tokens and (not opts or cost < opts[-1].cost):
            opts.append(_Option(tier, cost, w, h, detail))
    return opts or [_Option(Tier.TEXT, row.text_tokens)]


def _images(s: Session, shown: list[_Candidate]) -> dict[int, bytes]:
    """The PNG of every page shown as an image, in two queries: stored tiers, renditions."""
    stored = [c.row.id for c in shown if c.option.tier.label == c.row.tier]
    faded = [(c.row.id, c.option.tier.label) for c in shown if c.option.tier.label != c.row.tier]
    out: dict[int, bytes] = {}
    if stored:
        out.update(s.execute(select(PageRow.id, PageRow.png).where(PageRow.id.in_(stored))).all())
    if faded:
        q = select(RenditionRow.page_id, RenditionRow.png).where(
            or_(*(and_(RenditionRow.page_id == pid, RenditionRow.tier == t) for pid, t in faded))
        )
        out.update(s.execute(q).all())
    return out


def _page_turns(s: Session, row: Row[Any]) -> Sequence[TurnRow]:
    return s.scalars(
        select(TurnRow)
        .where(
            TurnRow.session_id == row.session_id,
            TurnRow.seq >= row.first_seq,
            TurnRow.seq <= row.last_seq,
        )
        .order_by(TurnRow.seq)
    ).all()


def _turn(t: TurnRow, key: str) -> Turn:
    return Turn(key, t.seq, t.role, t.content, t.at, t.tokens, dict(t.meta or {}))


def _caption(row: Row[Any], ref: datetime) -> str:
    span = f"{_fmt(row.first_at)} – {_fmt(row.last_at)}"
    if row.first_at.date() == row.last_at.date():
        span = f"{_fmt(row.first_at)} – {row.last_at:%H:%M}"
    return (
        f"Memory page: turns {row.first_seq}–{row.last_seq}, {span} UTC, "
        f"{humanize_age(ref - row.last_at)}."
    )


def _fmt(dt: datetime) -> str:
    return f"{dt.day} {dt:%b %Y %H:%M}"


def humanize_age(age: timedelta) -> str:
    """Coarse on purpose: the caption must not change between two aging passes."""
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (
        ("year", 365 * 86400),
        ("month", 30 * 86400),
        ("week", 7 * 86400),
        ("day", 86400),
        ("hour", 3600),
    ):
        if seconds >= size:
            n = seconds // size
            return f"about {n} {unit}{'s' if n > 1 else ''} old"
    return "less than an hour old"
