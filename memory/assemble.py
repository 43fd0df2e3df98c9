"""Budgeted context: recent turns as text, older pages as images, under a token budget.

Assembly only reads: no rendering, no encoding. It walks the history from the newest turn
back, so its cost follows the budget, not the length of the history. Over budget, the oldest
pages are shown fainter (from renditions the aging pass stored), then left out.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Row, Select, bindparam, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .captions import INTRO_TOKENS, page_caption
from .errors import InvalidConfiguration
from .image_cache import CachedImage, ImageCache
from .ladder import IMAGE_TIERS, Target, Tier
from .recall import pinned_seqs, search
from .records import Turn
from .store import (
    TURN_COLUMNS,
    PageRow,
    RenditionRow,
    SessionRow,
    TurnData,
    TurnRow,
    load_attachments,
    to_turn,
    turn_data,
)
from .tokens import TokenCounter, approximate_tokens
from .turn_text import cost_text, display_text, speaker_of, turn_line

_TURN_BATCH = 64
_MAX_FIRST_READ = 4096  # turns: the most a session's read hint asks for at once
_PAGE_BATCH = 64  # a 4k-token budget's candidates in one read (and one of their renditions)

# The reads of assembly, built once with bound parameters and run on the read transaction's
# connection: no statement is rebuilt per call and no ORM object is loaded (rows instead,
# whose fields carry the models' attribute names).
# Only what assembly uses of a page (each datetime column read is parsed on every row).
_PAGE_COLUMNS = tuple(
    c.label(c.key)
    for c in (
        PageRow.id,
        PageRow.session_row_id,
        PageRow.tier,
        PageRow.width,
        PageRow.height,
        PageRow.text_tokens,
        PageRow.first_seq,
        PageRow.last_seq,
        PageRow.first_at,
        PageRow.last_at,
        PageRow.version,  # with id and tier, names the image bytes (see image_cache)
    )
)
_SID = bindparam("sid")
_RECENT = (
    select(*TURN_COLUMNS)
    .where(
        TurnRow.session_row_id == _SID,
        TurnRow.seq <= bindparam("upper"),
        TurnRow.seq > bindparam("after"),
    )
    .order_by(TurnRow.seq.desc())
    .limit(bindparam("n"))
)
_BY_SEQ = (
    select(*TURN_COLUMNS)
    .where(TurnRow.session_row_id == _SID, TurnRow.seq.in_(bindparam("seqs", expanding=True)))
    .order_by(TurnRow.seq.desc())
)
_SPAN = (
    select(*TURN_COLUMNS)
    .where(
        TurnRow.session_row_id == _SID,
        TurnRow.seq >= bindparam("first"),
        TurnRow.seq <= bindparam("last"),
    )
    .order_by(TurnRow.seq)
)
_NEWEST_PAGES = (
    select(*_PAGE_COLUMNS)
    .where(PageRow.session_row_id == _SID)
    .order_by(PageRow.first_seq.desc())
    .limit(_PAGE_BATCH)
)
_PAGES_BEFORE = _NEWEST_PAGES.where(PageRow.first_seq < bindparam("before"))


def _with_forms(pages: Select[Any]) -> Select[Any]:
    """``pages`` (a batch, newest first) each with the size of every fainter rendition it
    keeps, one row per page and rendition (a page with none: one row, its rendition columns
    null): the pages and their forms in one round trip."""
    p = pages.subquery("p")
    return (
        select(
            p,
            RenditionRow.tier.label("r_tier"),
            RenditionRow.width.label("r_width"),
            RenditionRow.height.label("r_height"),
        )
        .select_from(p.outerjoin(RenditionRow, RenditionRow.page_id == p.c.id))
        .order_by(p.c.first_seq.desc())
    )


_NEWEST_PAGE_FORMS = _with_forms(_NEWEST_PAGES)
_PAGE_FORMS_BEFORE = _with_forms(_PAGES_BEFORE)
_STORED_PNGS = select(PageRow.id, PageRow.png).where(
    PageRow.id.in_(bindparam("ids", expanding=True))
)
_FADED_PNGS = select(RenditionRow.page_id, RenditionRow.png).where(
    RenditionRow.tier == bindparam("tier"),
    RenditionRow.page_id.in_(bindparam("ids", expanding=True)),
)


@dataclass(frozen=True)
class TextSegment:
    """One turn shown as text. The newest user turn's images (``turn.attachments``) are sent
    as images (``shows_images``; their cost on the target in ``image_tokens``, part of
    ``tokens``); every other turn's images are shown as labels in its text."""

    turn: Turn
    tokens: int
    page_id: int | None = None  # set when the turn is on a page still shown as text
    kind: Literal["text"] = "text"
    image_tokens: int = 0

    @property
    def shows_images(self) -> bool:
        return self.image_tokens > 0


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
    # The cache entry the bytes came from: it keeps their base64 text between calls.
    _image: CachedImage | None = field(default=None, repr=False, compare=False)

    @property
    def base64(self) -> str:
        if self._image is not None and self._image.png is self.png:
            return self._image.base64
        return base64.b64encode(self.png).decode("ascii")

    @property
    def data_url(self) -> str:
        if self._image is not None and self._image.png is self.png:
            return self._image.data_url(self.mime_type)
        return f"data:{self.mime_type};base64,{self.base64}"


@dataclass(frozen=True)
class RecalledSegment:
    """Exact text of archived turns the prompt would otherwise show faded or not at all:
    pinned turns, and turns the cue recalled. Placed after the pages, before the recent text,
    so the pages' prefix stays byte-stable; adapters send ``text`` as one message."""

    turns: tuple[Turn, ...]
    pinned: tuple[int, ...]  # seqs of the turns that are there because they are pinned
    text: str
    tokens: int
    kind: Literal["recalled"] = "recalled"


Segment = TextSegment | PageSegment | RecalledSegment


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
    over_budget: bool  # only when the newest user turn and the turns after it exceed it

    @property
    def pages(self) -> list[PageSegment]:
        return [s for s in self.segments if isinstance(s, PageSegment)]

    @property
    def texts(self) -> list[TextSegment]:
        return [s for s in self.segments if isinstance(s, TextSegment)]

    @property
    def recalled(self) -> RecalledSegment | None:
        """The block of pinned and recalled turns, if any."""
        return next((s for s in self.segments if isinstance(s, RecalledSegment)), None)

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
            elif isinstance(seg, RecalledSegment):
                h.update(b"R%s\0" % seg.text.encode("utf-8"))
            else:
                t = seg.turn
                h.update(b"T%d:%s\0%s\0" % (t.seq, t.role.encode(), t.content.encode("utf-8")))
                for a in t.attachments:
                    h.update(b"I%d:%s\0" % (seg.shows_images, a.sha256.encode()))
        return h.hexdigest()


@dataclass(frozen=True)
class _Option:
    tier: Tier
    cost: int
    width: int | None = None
    height: int | None = None
    detail: str | None = None
    label: str = field(init=False)  # the tier's label, compared with stored rows' tiers

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.tier.label)


class _Candidate:
    """A page that may be shown, with how it is shown as now chosen. ``cost`` and
    ``is_image`` are kept up to date by :meth:`fade` (read in every step of fading)."""

    __slots__ = ("caption", "caption_tokens", "chosen", "cost", "is_image", "options", "row")

    def __init__(self, row: Row[Any], options: Sequence[_Option]) -> None:
        self.row = row  # a page row without its image bytes
        self.options = options  # sharpest first; shared by pages of the same shape
        self.chosen = 0
        self.caption = ""
        self.caption_tokens = 0
        self.is_image = options[0].tier is not Tier.TEXT
        self.cost = options[0].cost  # what the page costs as now chosen (set_caption adds it)

    @property
    def option(self) -> _Option:
        return self.options[self.chosen]

    def set_caption(self, caption: str) -> None:
        """An image comes with its caption: its tokens are part of the page's cost."""
        self.caption = caption
        self.caption_tokens = approximate_tokens("system", caption)
        self._update()

    def fade(self) -> None:
        """Show the page in its next fainter form."""
        self.chosen += 1
        self._update()

    def _update(self) -> None:
        o = self.options[self.chosen]
        self.is_image = o.tier is not Tier.TEXT
        self.cost = o.cost + self.caption_tokens if self.is_image else o.cost


DEFAULT_MEMORY_SHARE = 0.5
"""When the history does not fit, the share of the budget kept for the past (pages, pins,
recall) even when recent text could fill it all."""
DEFAULT_RECALL_SHARE = 0.2
"""With a cue, the share of the budget reserved for the turns it recalls (from the recent text)."""
RECALL_CANDIDATES = 12  # hits a cue is searched for; the reserve decides how many are shown
FAINT_TIERS = frozenset({Tier.SMALL.label, Tier.TINY.label})  # abridged or barely legible
_TEXT_LABEL = Tier.TEXT.label


@dataclass(frozen=True)
class AssemblyShares:
    """How a tight budget is split: ``memory`` for the past when the history does not fit;
    with a cue, ``recall`` of the budget taken from the recent text (beyond the turns always
    shown) for what the cue recalls, what the block leaves going back to that text."""

    memory: float = DEFAULT_MEMORY_SHARE
    recall: float = DEFAULT_RECALL_SHARE

    def __post_init__(self) -> None:
        for name in ("memory", "recall"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidConfiguration(f"{name} share must be a number, got {value!r:.40}")
            if not 0.0 <= value <= 0.9:
                raise InvalidConfiguration(f"{name} share must be between 0 and 0.9, got {value}")


def assemble_context(
    s: Session,
    session: SessionRow,
    *,
    budget: int,
    target: Target,
    now: datetime,
    counter: TokenCounter | None = None,
    cue: str | None = None,
    shares: AssemblyShares = AssemblyShares(),
    newest_images: bool = True,
    hints: ReadHints | None = None,
    image_cache: ImageCache | None = None,
) -> AssembledContext:
    """Build the budgeted view of one session (inside one read transaction), in phases:
    recent text, pins, page candidates, the split between text and the past, fade to fit,
    recall, segments.

    Everything fits: all of it is shown, text first. Otherwise the past (pages, pins, recall)
    keeps up to ``shares.memory`` of the budget. The pages are chosen as without a cue, so the
    prompt's prefix never depends on one. With a cue, ``shares.recall`` of the budget is taken
    from the recent text beyond the protected turns for turns the cue recalls; what the recall
    block leaves unused goes back to more recent text, which comes after it.
    With ``newest_images``, the newest user turn's images are sent as images, at the
    target's cost (always shown, as the turn itself is). ``hints``: how much to read first
    (see :class:`ReadHints`). ``image_cache``: the shown images kept between calls (see
    :mod:`.image_cache`); only where the bytes come from depends on it, never the prompt.
    """
    count = counter or approximate_tokens
    conn = s.connection()  # the read transaction's: same snapshot, no ORM on the hot reads

    def cost_of(t: TurnData) -> int:
        """Stored counts come from the manager's counter; another counter recounts."""
        if counter is None or counter is approximate_tokens:
            return t.tokens
        return int(counter(t.role, cost_text(t.role, t.content, t.meta, t.attachments)))

    def images_of(t: TurnData) -> int:
        """What the newest user turn's images cost on the target, sent as images."""
        if not newest_images or not t.attachments:
            return 0
        return sum(target.image_cost(d["width"], d["height"], None) for d in t.attachments)

    first_read = hints.first_read(session.id) if hints is not None else _TURN_BATCH
    recent = _recent_units(conn, session, budget, cost_of, images_of, first_read)
    if hints is not None:
        hints.remember(session.id, recent)
    mandatory = recent.spent(recent.mandatory)

    def plan(
        forced: frozenset[int],
    ) -> tuple[list[TurnData], set[int], list[_Candidate], int, list[TurnData]]:
        """Pins, pages, the units of text shown and the recalled turns, with the pinned
        turns in ``forced`` in the block although gathered as recent text."""
        pins, pinned = _pinned(s, conn, session, recent, count, budget - mandatory, forced)
        pin_cost = _block_cost(count, pins, []) if pins else 0
        reserve = int(budget * shares.recall) if cue is not None else 0

        candidates = (  # no turn is paged yet: the session has no pages
            _page_candidates(conn, session.id, target, budget - mandatory - pin_cost)
            if session.paged_until > 0
            else []
        )
        candidates.reverse()  # oldest first
        ref = session.aged_at or now
        for c in candidates:
            c.set_caption(page_caption(c.row.first_seq, c.row.last_seq, c.row.last_at, ref))
        demand = sum(c.cost for c in candidates)
        demand += INTRO_TOKENS if any(c.is_image for c in candidates) else 0

        # The pages are placed as they would be without a cue, so a cue never changes (or
        # pushes out) the prompt's page prefix; the recall reserve comes out of the recent text
        # beyond the protected turns, and what the block leaves goes back to that text.
        everything = recent.complete and recent.spent() + pin_cost + demand <= budget
        if everything or not candidates:
            text_cap = budget - pin_cost
        else:
            past = min(int(budget * shares.memory), demand + pin_cost)
            text_cap = budget - max(past, pin_cost)
        plain_units = recent.fit(text_cap)
        candidates = _fade_to_fit(candidates, budget - recent.spent(plain_units) - pin_cost)
        if everything:
            # Everything is shown: the block can only help with turns on faint pages, and takes
            # text only beyond budget - reserve. With no faint page there is nothing to recall.
            if not any(c.option.label in FAINT_TIERS for c in candidates):
                reserve = 0
            shown_units = recent.fit(text_cap - reserve)
        else:
            # The reserve comes out of the text this prompt would show (not out of its cap: pages
            # fill whatever the text leaves, so a cap the text did not reach reserves nothing).
            shown_units = recent.fit(recent.spent(plain_units) - reserve)
        spent = recent.spent(shown_units)

        recalled: list[TurnData] = []
        if cue is not None and reserve > 0:
            pages_cost = sum(c.cost for c in candidates)
            pages_cost += INTRO_TOKENS if any(c.is_image for c in candidates) else 0
            room = min(reserve, budget - pages_cost - spent - pin_cost)
            shown = {t.seq for u in recent.units[:shown_units] for t in u[0]} | {
                t.seq for t in pins
            }
            shown |= _legible_seqs(candidates)
            # The search stops where the text would start without the reserve: what the block
            # leaves goes back to that text, which would show those turns again (recent text is
            # every live turn from its oldest on).
            before = min((t.seq for u in recent.units[:plain_units] for t in u[0]), default=None)
            recalled = _recall_block(s, conn, session, cue, shown, before, max(room, 0), count)
            # What the block leaves of the reserve goes to more recent text (after the pages).
            block_cost = _block_cost(count, pins, recalled) if pins or recalled else 0
            more = recent.fit(budget - pages_cost - block_cost, start=shown_units)
            if more > shown_units:
                shown_units = more
                spent = recent.spent(shown_units)
                in_text = {t.seq for u in recent.units[:shown_units] for t in u[0]}
                recalled = [t for t in recalled if t.seq not in in_text]
        return pins, pinned, candidates, shown_units, recalled

    # A pinned turn gathered as recent text but not shown (past what the text could take)
    # goes in the block instead, paid before the text: planned again with it there.
    gathered = {t.seq for u in recent.units for t in u[0]}
    forced: frozenset[int] = frozenset()
    while True:
        pins, pinned, candidates, shown_units, recalled = plan(forced)
        in_text = {t.seq for u in recent.units[:shown_units] for t in u[0]}
        cut = frozenset(pinned & (gathered - in_text)) | forced
        if cut == forced:
            break
        forced = cut
    pins = [t for t in pins if t.seq not in in_text]  # (the text may have grown past one)
    texts = [t for u in reversed(recent.units[:shown_units]) for t in u[0]]
    images = load_attachments(conn, [*pins, *recalled, *texts])
    block = (
        RecalledSegment(
            turns=tuple(to_turn(t, session.key, images) for t in pins + recalled),
            pinned=tuple(t.seq for t in pins),
            text=_block_text(pins, recalled),
            tokens=_block_cost(count, pins, recalled),
        )
        if pins or recalled
        else None
    )
    segments, image_tokens, replaced = _build_segments(
        conn,
        session,
        candidates,
        block,
        texts,
        cost_of,
        images,
        recent.newest_user,
        images_of,
        image_cache,
    )

    first_shown = min(
        (
            seg.first_seq if isinstance(seg, PageSegment) else seg.turn.seq
            for seg in segments
            if not isinstance(seg, RecalledSegment)
        ),
        default=session.next_seq + 1,
    )
    intro = INTRO_TOKENS if image_tokens > 0 else 0
    return AssembledContext(
        session_id=session.key,
        target=target.name,
        budget=budget,
        segments=tuple(segments),
        tokens=sum(seg.tokens for seg in segments) + intro,
        text_tokens_replaced=replaced,
        image_tokens=image_tokens,
        intro_tokens=intro,
        omitted_turns=max(0, first_shown - 1),
        over_budget=mandatory > budget,
    )


Unit = tuple[list[TurnData], int]  # turns shown together (a tool call and its results), cost


class ReadHints:
    """How many recent turns the last assembly of each session read, kept per process: the
    next one asks for about as many in its first read, instead of growing batches of
    :data:`_TURN_BATCH`. A session grows by a turn or two between calls, so this saves the
    extra round trips (one or two of five on PostgreSQL). Only read sizes depend on it, never
    a prompt. Thread-safe; the least recently used sessions are dropped past ``size``."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._turns: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def first_read(self, session_row_id: int) -> int:
        """How many recent turns to ask for first."""
        with self._lock:
            return self._turns.get(session_row_id, _TURN_BATCH)

    def remember(self, session_row_id: int, recent: _Recent) -> None:
        """What this assembly read, and a margin for the turns added before the next."""
        used = sum(len(u) for u, _ in recent.units)
        with self._lock:
            self._turns[session_row_id] = min(_MAX_FIRST_READ, used + max(4, used // 8))
            self._turns.move_to_end(session_row_id)
            while len(self._turns) > self.size:
                self._turns.popitem(last=False)


@dataclass
class _Recent:
    """Phase 1's result: the newest unpaged turns as whole units, newest first."""

    units: list[Unit]
    mandatory: int  # the first units up to the newest user turn: always shown
    complete: bool  # every unpaged turn was gathered (nothing older is left out)
    newest_user: int | None = None  # seq of the newest user turn, when it is unpaged

    def spent(self, n: int | None = None) -> int:
        return sum(cost for _, cost in self.units[: len(self.units) if n is None else n])

    def fit(self, cap: int, start: int = 0) -> int:
        """How many units (at least the mandatory ones, and at least ``start``) fit in ``cap``."""
        n = max(self.mandatory, start)
        total = self.spent(n)
        while n < len(self.units) and total + self.units[n][1] <= cap:
            total += self.units[n][1]
            n += 1
        return n


def _recent_units(
    conn: Connection,
    session: SessionRow,
    budget: int,
    cost_of: Callable[[TurnData], int],
    images_of: Callable[[TurnData], int],
    first_read: int = _TURN_BATCH,
) -> _Recent:
    """Unpaged turns, newest first, as whole units (a tool call stays with its results),
    gathered until they fill ``budget``; reading stops there, so the cost follows the budget.
    The newest user turn's unit also pays for its images (``images_of``). The first read
    asks for ``first_read`` turns, each later one for twice as many as the one before."""
    units: list[Unit] = []
    total = 0
    mandatory = 0
    newest_user: int | None = None
    upper = session.next_seq
    pending: list[TurnData] = []  # a unit being gathered backwards
    size = first_read
    while upper > session.paged_until:
        batch = turn_data(
            conn.execute(
                _RECENT,
                {"sid": session.id, "upper": upper, "after": session.paged_until, "n": size},
            )
        )
        size *= 2  # a long tail of short turns in a few reads
        if not batch:
            break
        upper = batch[-1].seq - 1
        for t in batch:
            if t.role == "tool":
                pending.insert(0, t)
                continue  # walking back, a tool result needs the call before it: keep gathering
            if pending:
                pending.insert(0, t)
                cost = sum(cost_of(u) for u in pending)
                user = next((u for u in reversed(pending) if u.role == "user"), None)
            else:  # most units are one turn
                pending = [t]
                cost = cost_of(t)
                user = t if t.role == "user" else None
            if not mandatory and user is not None:
                mandatory = len(units) + 1
                newest_user = user.seq
                cost += images_of(user)
            units.append((pending, cost))
            total += cost
            pending = []
            if total > budget and mandatory:
                return _Recent(units, mandatory, False, newest_user)
    if pending:  # tool results whose call is on a page: shown only with it
        return _Recent(units, mandatory or len(units), False, newest_user)
    return _Recent(units, mandatory or len(units), True, newest_user)


def _pinned(
    s: Session,
    conn: Connection,
    session: SessionRow,
    recent: _Recent,
    count: TokenCounter,
    room: int,
    forced: frozenset[int] = frozenset(),
) -> tuple[list[TurnData], set[int]]:
    """Pinned turns not in the recent text gathered (but those in ``forced``, gathered and
    not shown), newest first while their block fits ``room``, in order; and the numbers of
    every pinned turn. What fits is what the block costs as the model reads it (its header,
    each turn's dated line), not the turns' own counts. A session row read with
    ``has_pins`` (see ``FIND_SESSION_TO_ASSEMBLE``) that has none skips the read."""
    if not getattr(session, "has_pins", True):
        return [], set()
    pinned = set(pinned_seqs(s, session))
    if not pinned:
        return [], pinned
    seqs = pinned - ({t.seq for u in recent.units for t in u[0]} - forced)
    if not seqs:  # every pinned turn is in the recent text already
        return [], pinned
    rows = turn_data(conn.execute(_BY_SEQ, {"sid": session.id, "seqs": sorted(seqs)}))
    line = _remembered_lines()
    # Chosen by each line's own count (one count per turn, not one per trial block), then
    # checked as one block: a counter need not add up across the lines it joins.
    empty = int(count("user", ""))
    kept, spent = [], int(count("user", _PINNED_HEADER))
    for t in rows:
        cost = int(count("user", "\n" + line(t))) - empty
        if spent + cost <= room:
            kept.append(t)
            spent += cost
    kept.sort(key=lambda t: t.seq)
    while kept and _block_cost(count, kept, [], line) > room:
        kept.pop(0)  # the oldest goes first, as it came last
    return kept, pinned


def _legible_seqs(candidates: list[_Candidate]) -> set[int]:
    """Turns the chosen pages show legibly: as text, or on an image that is not faint."""
    out: set[int] = set()
    for c in candidates:
        if c.option.label not in FAINT_TIERS:
            out.update(range(c.row.first_seq, c.row.last_seq + 1))
    return out


def _recall_block(
    s: Session,
    conn: Connection,
    session: SessionRow,
    cue: str,
    shown: set[int],
    before: int | None,
    reserve: int,
    count: TokenCounter,
) -> list[TurnData]:
    """Turns the cue recalls that the prompt would not show legibly, best first while the block
    fits ``reserve``; in order. Each comes with the turn next to it for context where both fit,
    else alone (a long reply beside a short fact would otherwise crowd out the fact). The
    search looks only at turns before seq ``before``."""
    if all(seq in shown for seq in range(1, session.next_seq + 1)):
        return []  # every turn is in the prompt as text already: nothing to recall
    hits = [
        h.recollection.turn.seq
        for h in search(s, session, cue, limit=RECALL_CANDIDATES, before=before)
        if h.recollection.turn.seq not in shown
    ]
    if not hits:
        return []
    wanted = set(hits)
    wanted |= {_partner(seq, session.next_seq) for seq in hits}
    found = turn_data(conn.execute(_BY_SEQ, {"sid": session.id, "seqs": sorted(wanted)}))
    rows = {t.seq: t for t in found}
    line = _remembered_lines()
    chosen: dict[int, TurnData] = {}
    for seq in hits:
        unit = [rows[q] for q in sorted({seq, _partner(seq, session.next_seq)}) if q in rows]
        unit = [t for t in unit if t.seq not in chosen and (t.seq == seq or t.seq not in shown)]
        alone = [t for t in unit if t.seq == seq]
        for tried in (unit, alone) if len(alone) < len(unit) else (unit,):  # context, or alone
            if not tried:
                break
            trial = sorted([*chosen.values(), *tried], key=lambda t: t.seq)
            if _block_cost(count, [], trial, line) <= reserve:
                chosen.update((t.seq, t) for t in tried)
                break
    return sorted(chosen.values(), key=lambda t: t.seq)


def _partner(seq: int, last: int) -> int:
    """The adjacent turn that gives a recalled turn its context: the reply to it, or for the
    newest turn the one before it."""
    return seq + 1 if seq < last else seq - 1


_PINNED_HEADER = "Pinned turns (exact text):"
_RECALLED_HEADER = (
    "Recalled from memory for the current message (exact text of earlier turns; "
    "the page images may show them faded or not at all):"
)


def _block_text(
    pins: Sequence[TurnData],
    recalled: Sequence[TurnData],
    line: Callable[[TurnData], str] | None = None,
) -> str:
    """The recalled block as the model reads it: headers, then one line per turn (``line``:
    how a turn's line is made, :func:`_line` unless given)."""
    line = line or _line
    parts = []
    if pins:
        parts.append("\n".join([_PINNED_HEADER, *(line(t) for t in pins)]))
    if recalled:
        parts.append("\n".join([_RECALLED_HEADER, *(line(t) for t in recalled)]))
    return "\n\n".join(parts)


def _line(t: TurnData) -> str:
    text = display_text(t.role, t.content, t.meta, t.attachments)
    return turn_line(t.seq, speaker_of(t.role, t.meta), t.at, text)


def _block_cost(
    count: TokenCounter,
    pins: Sequence[TurnData],
    recalled: Sequence[TurnData],
    line: Callable[[TurnData], str] | None = None,
) -> int:
    return int(count("user", _block_text(pins, recalled, line)))


def _remembered_lines() -> Callable[[TurnData], str]:
    """:func:`_line`, each turn's line made once: choosing a block tries it many times."""
    made: dict[int, str] = {}

    def line(t: TurnData) -> str:
        out = made.get(t.id)
        if out is None:
            out = made[t.id] = _line(t)
        return out

    return line


def _fade_to_fit(candidates: list[_Candidate], room: int) -> list[_Candidate]:
    """Over budget, fade the oldest first (this request only), then leave the oldest out.
    Running totals keep this linear in the number of candidate pages."""
    candidates = list(candidates)
    pages_cost = sum(c.cost for c in candidates)
    images = sum(c.is_image for c in candidates)

    def total() -> int:
        return pages_cost + (INTRO_TOKENS if images else 0)

    i = 0  # candidates before i cannot fade any further
    while candidates and total() > room:
        if i < len(candidates):
            c = candidates[i]
            if c.chosen + 1 == len(c.options):
                i += 1
                continue
            was_image = c.is_image
            pages_cost -= c.cost
            c.fade()
            pages_cost += c.cost
            images += c.is_image - was_image
        else:
            c = candidates.pop(0)
            pages_cost -= c.cost
            images -= c.is_image
            i -= 1
    return candidates


def _build_segments(
    conn: Connection,
    session: SessionRow,
    candidates: list[_Candidate],
    block: RecalledSegment | None,
    texts: list[TurnData],
    cost_of: Callable[[TurnData], int],
    images: dict[str, Any],
    newest_user: int | None,
    images_of: Callable[[TurnData], int],
    cache: ImageCache | None,
) -> tuple[list[Segment], int, int]:
    """Pages oldest first (text pages as their turns), the recalled block, then the recent
    text; with the image tokens and the text tokens the images stand for."""
    pngs = _images(conn, [c for c in candidates if c.is_image], cache)
    segments: list[Segment] = []
    image_tokens = replaced = 0
    for c in candidates:
        o = c.option
        if not c.is_image:
            span = {"sid": c.row.session_row_id, "first": c.row.first_seq, "last": c.row.last_seq}
            rows = turn_data(conn.execute(_SPAN, span))
            more = load_attachments(conn, rows)
            for t in rows:
                turn = to_turn(t, session.key, more)
                segments.append(TextSegment(turn, cost_of(t), page_id=c.row.id))
            continue
        assert o.width is not None and o.height is not None
        segments.append(
            PageSegment(
                page_id=c.row.id,
                tier=o.label,
                stored_tier=c.row.tier,
                png=pngs[c.row.id].png,
                width=o.width,
                height=o.height,
                detail=o.detail,
                tokens=c.cost,
                image_tokens=o.cost,
                text_tokens=c.row.text_tokens,
                first_seq=c.row.first_seq,
                last_seq=c.row.last_seq,
                first_at=c.row.first_at,
                last_at=c.row.last_at,
                caption=c.caption,
                _image=pngs[c.row.id],
            )
        )
        image_tokens += o.cost
        replaced += c.row.text_tokens
    if block is not None:
        segments.append(block)
    for t in texts:
        extra = images_of(t) if t.seq == newest_user else 0
        turn = to_turn(t, session.key, images)
        segments.append(TextSegment(turn, cost_of(t) + extra, image_tokens=extra))
    return segments, image_tokens, replaced


def _page_candidates(
    conn: Connection, sid: int, target: Target, remaining: int
) -> list[_Candidate]:
    """Newest pages first, while the sum of their cheapest forms still fits."""
    out: list[_Candidate] = []
    costs: dict[tuple[Tier, int, int], tuple[str | None, int]] = {}  # pages share sizes
    shapes: dict[tuple[Any, ...], list[_Option]] = {}  # and most share all their forms
    floor = 0
    before: int | None = None
    while floor <= remaining:
        if before is None:
            found = conn.execute(_NEWEST_PAGE_FORMS, {"sid": sid}).all()
        else:
            found = conn.execute(_PAGE_FORMS_BEFORE, {"sid": sid, "before": before}).all()
        if not found:
            break
        rows: list[Row[Any]] = []  # the pages, each once (its rows come together)
        renditions: dict[int, list[tuple[str, int, int]]] = {}
        for r in found:
            if not rows or rows[-1].id != r.id:
                rows.append(r)
            if r.r_tier is not None:
                renditions.setdefault(r.id, []).append((r.r_tier, r.r_width, r.r_height))
        for r in rows:
            before = r.first_seq
            forms = renditions.get(r.id, [])
            shape = (r.tier, r.width, r.height, *sorted(forms))
            images = shapes.get(shape)
            if images is None:
                images = shapes[shape] = _image_forms(r, forms, target, costs)
            options = _options(r, images)
            out.append(_Candidate(r, options))
            floor += options[-1].cost  # the cheapest: options get cheaper as they fade
            if floor > remaining:
                break
        if len(rows) < _PAGE_BATCH:
            break  # a short batch was the oldest: no query is needed to find nothing more
    return out


def _options(
    row: Row[Any],
    forms: Sequence[_Option],
) -> list[_Option]:
    """How a page can be shown, sharpest first; images only where they cost less than text
    (and less than every sharper form)."""
    text = row.text_tokens
    opts = [_Option(Tier.TEXT, text)] if row.tier == _TEXT_LABEL else []
    opts.extend(o for o in forms if o.cost < text)
    return opts or [_Option(Tier.TEXT, text)]


def _image_forms(
    row: Row[Any],
    renditions: Sequence[tuple[str, int, int]],
    target: Target,
    costs: dict[tuple[Tier, int, int], tuple[str | None, int]],
) -> list[_Option]:
    """A page's image forms, sharpest first, each cheaper than every sharper one (whatever
    the page's text costs: :func:`_options` cuts those that do not pay)."""
    stored = Tier.parse(row.tier)
    forms = sorted(((Tier.parse(t), w, h) for t, w, h in renditions), key=lambda f: f[0])
    if stored is not Tier.TEXT:
        forms.insert(0, (stored, row.width, row.height))
    out: list[_Option] = []
    for tier, w, h in forms:
        if tier not in IMAGE_TIERS or w is None or h is None:
            continue
        known = costs.get((tier, w, h))
        if known is None:
            detail = target.spec(tier).detail
            known = costs[(tier, w, h)] = (detail, target.image_cost(w, h, detail))
        detail, cost = known
        if not out or cost < out[-1].cost:
            out.append(_Option(tier, cost, w, h, detail))
    return out


def _images(
    conn: Connection, shown: list[_Candidate], cache: ImageCache | None
) -> dict[int, CachedImage]:
    """The image of every page shown as an image: from ``cache`` where it holds them, else
    one query for the stored tiers and one per fainter tier shown (plain ``IN`` lists on the
    primary keys), kept in ``cache`` for the next call."""
    out: dict[int, CachedImage] = {}
    missing: list[_Candidate] = []
    for c in shown:
        hit = cache.get(_image_key(c)) if cache is not None else None
        if hit is None:
            missing.append(c)
        else:
            out[c.row.id] = hit
    read: dict[int, bytes] = {}
    stored = [c.row.id for c in missing if c.option.label == c.row.tier]
    if stored:
        read.update(conn.execute(_STORED_PNGS, {"ids": stored}).all())
    faded: dict[str, list[int]] = {}
    for c in missing:
        if c.option.label != c.row.tier:
            faded.setdefault(c.option.label, []).append(c.row.id)
    for tier, ids in faded.items():
        read.update(conn.execute(_FADED_PNGS, {"tier": tier, "ids": ids}).all())
    for c in missing:
        png = read[c.row.id]
        out[c.row.id] = cache.put(_image_key(c), png) if cache is not None else CachedImage(png)
    return out


def _image_key(c: _Candidate) -> tuple[int, int, str]:
    return (c.row.id, c.row.version, c.option.label)
