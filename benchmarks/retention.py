"""Retention: how much of a long conversation's evidence still reaches the model, and legibly.

    python -m benchmarks.retention                  # LoCoMo dev + LongMemEval-S dev, all budgets
    python -m benchmarks.retention --quick          # one conversation, 4k and 1/10, a few questions
    python -m benchmarks.retention --data ../shared/data --out benchmarks/results/retention.csv

Each conversation is replayed with its own timestamps (LoCoMo ``session_N_date_time``,
LongMemEval ``haystack_dates``, via :mod:`optical_memory.importers`) into a fresh SQLite memory
and aged up to the moment the question is asked (LoCoMo: one day after the last session;
LongMemEval: ``question_date``, or the last turn where the file dates a session after its
question). The prompt is then assembled at each budget (1k, 2k, 4k, 8k tokens, and ``tenth``: one
tenth of the conversation's text tokens, the sum of its stored turns' ``tokens``) for each target
(``deepseek-ocr``, ``openai``) under two aging policies, each without and with the cue:

* ``time``: the default :class:`TimeLadder` (an hour: large, a day: base, a week: small, a month:
  tiny), one memory per target, assembled at every budget;
* ``pressure``: ``AgingPolicy(by_time=None, budget=B)``, one memory per target and budget B,
  assembled at B.

The cue is the question's text and nothing else (never the answer or the evidence ids):
``assemble(..., cue=question)`` once per question. Turns in the prompt's recalled block
(``ctx.recalled``) count as text. The recall quality of ``recall()`` alone is measured too: the
share of evidence turns that ``recall(question, limit=20)`` ranks in its top 5, 10 and 20 (run on
the replayed memory after its assembly arms, since a recall counts a rehearsal, a write).
``--questions`` / ``--lme-questions`` / ``--conversations`` take items spread evenly over the
file (the middle one of each of N equal strides), not the first N.

By default the question is only the cue, not a turn: the prompt's protected text (the newest
user turn and what follows it) is then the conversation's last user turn and the reply after it.
``--question-turn`` assembles the way an application does (it records the new user message,
then assembles): for each question, the question is added as the newest user turn (at question
time), both arms (without and with the cue) are assembled, and the turn is taken out again with
``replace_turns(session, its seq, [])`` (superseded: out of prompts, pages, ``turns()`` and
search), so every question sees the same memory; the no-cue arm is then assembled per question.
No aging pass runs while the turn is in (they run before the assemblies), the session's live
turns are checked to be unchanged after it, and the question turn is never counted as evidence.

For every QA item, each evidence turn is classified as *text* (in the prompt as text), *image,
legible* (the OCR of its page, at the tier shown, recovers >= 90% of the turn's characters: the
turn's text, whitespace removed, is aligned against the best-matching substring of the OCR output
and scored by edit distance), *image, illegible*, or *absent*. The reader is RapidOCR; Tesseract,
the weaker reader, is reported beside it. Legible % = text + legible images. The baseline is the
sliding window most applications use: langchain-core's ``trim_messages(strategy="last",
token_counter=count_tokens_approximately, max_tokens=budget)`` over the same turns.

How the work is kept small (2 CPU cores; OCR is the expensive part):

* Replay. Turns are added session by session, with a packing-only aging pass before each new
  session starts (as a scheduler would run), so pages are cut where a real deployment cuts them.
  That state is the same for every policy of a target; it is copied (SQLite backup) for each
  policy and one aging pass with the policy runs at question time. For the time ladder this is
  exactly what passes along the way would have stored (a page's tier only depends on its age);
  for pressure it is the same oldest-first fading, done once.
* Pixels only where they are read. Pages that hold no evidence turn get blank canvases of the
  right size: tiers and token costs depend on canvas sizes only, never on pixels, so every number
  reported is unchanged (``--render-all`` draws every page). Renders are cached per page and
  shared between policies.
* OCR of the evidence lines, checked against whole pages. The cheap reading is the page image at
  the tier shown with every row painted white except the lines that hold evidence turns (their
  ink and a pixel more), located with the renderer's own layout of the turns it was handed
  (salient turns kept whole). The image keeps the page's size and the text its place; only the
  lines nobody asks about are skipped (recognition, per line, is most of the cost). A sample of
  ``--crop-check`` page images (spread over the run) is also read whole, and the share of
  (image, evidence turn) verdicts on which both readings agree is reported. With the default
  ``--ocr-scope auto``, if they agree on fewer than 98% (more than 2 points apart), every
  evidence page is read whole and the tables report that; ``turn`` forces the crops, ``page``
  reads only whole pages. OCR results are cached per image, shared by every arm that shows it.

Numbers are printed as markdown and written as CSV, one row per dataset, target, policy and
budget and cue (with recall@k per dataset), plus ``*-conversations.csv`` (each conversation's
text tokens and its tenth); ``--details`` adds one row per evidence turn and arm (with its rank
in ``recall()``). They are measurements, not assertions; the summary states the targets of
issues 13 and 14 (and 7) and whether this run meets them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ocr import search_distance  # noqa: E402
from optical_memory import (  # noqa: E402
    AgingPolicy,
    MemoryManager,
    PageRenderer,
    PageSegment,
    TextSegment,
    aging,
    get_target,
)
from optical_memory.ladder import IMAGE_TIERS
from optical_memory.render import RenderedImage, RenderTurn

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "retention.csv"
BUDGETS: tuple[int | str, ...] = (1024, 2048, 4096, 8192, "tenth")
TARGETS = ("deepseek-ocr", "openai")
POLICIES = ("time", "pressure")
READERS = ("rapidocr", "tesseract")
WINDOW = "window"
WINDOW_TARGET = "text"  # the window is text only: the same on every target
TIERS = ("text", "large", "base", "small", "tiny")
IMAGE_TIER_LABELS = TIERS[1:]
ABSENT = "absent"
LEGIBLE = 0.90
LOCOMO_AFTER = timedelta(days=1)  # LoCoMo questions are asked a day after the last session
SESSION = "conv"
QUICK_BUDGETS: tuple[int | str, ...] = (4096, "tenth")
QUICK_QUESTIONS = 12
QUICK_CROP_CHECK = 2

CSV_COLUMNS = (
    "dataset",
    "target",
    "policy",
    "budget",
    "cue",
    "budget_tokens_mean",
    "conversations",
    "qa_items",
    "evidence",
    "tokens_mean",
    "tokens_max",
    "present_pct",
    "legible_pct",
    "legible_pct_rapidocr",
    "legible_pct_tesseract",
    "qa_all_legible_pct",
    "as_text",
    *(f"in_{t}" for t in IMAGE_TIER_LABELS),
    *(f"legible_{r}_{t}" for r in READERS for t in IMAGE_TIER_LABELS),
    "absent",
    "ocr_scope",
    *(f"recall_at_{k}_pct" for k in (5, 10, 20)),
)

CONVERSATION_COLUMNS = (
    "dataset",
    "conversation",
    "turns",
    "text_tokens",
    "tenth",
    "questions",
    "evidence",
    *(f"recall_at_{k}" for k in (5, 10, 20)),
)

DETAIL_COLUMNS = (
    "dataset",
    "conversation",
    "question",
    "seq",
    "target",
    "policy",
    "budget",
    "budget_tokens",
    "cue",
    "shown",
    "stored_tier",
    "recall_rank",
    "accuracy_rapidocr",
    "accuracy_tesseract",
    "page_accuracy_rapidocr",
    "page_accuracy_tesseract",
)


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Question:
    qid: str
    evidence: tuple[int, ...]  # turn seqs (1-based, as the importers number them)
    text: str = ""  # the question as asked: the cue (never the answer or the evidence ids)


@dataclass(frozen=True)
class Conversation:
    dataset: str  # "LoCoMo" or "LongMemEval-S"
    conv_id: str
    turns: list[dict[str, Any]]
    asked_at: datetime
    questions: list[Question]

    @property
    def evidence(self) -> set[int]:
        return {s for q in self.questions for s in q.evidence}


def evenly(items: Sequence[Any], n: int | None) -> list[Any]:
    """``n`` items spread evenly over ``items`` (the middle one of each of ``n`` equal strides,
    deterministic), in their order; all of them when ``n`` is None or not smaller."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    if n <= 0:
        return []
    return [items[(2 * i + 1) * len(items) // (2 * n)] for i in range(n)]


def locomo_conversations(
    path: Path, *, conversations: int | None = None, questions: int | None = None
) -> list[Conversation]:
    from optical_memory.importers import load_locomo, locomo_qa

    convs = load_locomo(path)
    qas = locomo_qa(path)
    out = []
    for cid, turns in evenly(list(convs.items()), conversations):
        usable = [
            Question(f"{cid}/q{i}", tuple(dict.fromkeys(qa.evidence_seqs)), qa.question)
            for i, qa in enumerate(qas.get(cid, []))
            if qa.evidence_seqs
        ]
        qs = evenly(usable, questions)
        if turns and qs:
            out.append(Conversation("LoCoMo", cid, turns, turns[-1]["at"] + LOCOMO_AFTER, qs))
    return out


def longmemeval_conversations(
    path: Path, *, conversations: int | None = None
) -> list[Conversation]:
    from optical_memory.importers import load_longmemeval, longmemeval_qa

    convs = load_longmemeval(path)
    qas = longmemeval_qa(path)
    out = []
    for qid, turns in convs.items():
        qa = qas[qid]
        if not turns or not qa.evidence_seqs:  # abstention questions have no evidence
            continue
        last = turns[-1]["at"]
        asked = max(qa.question_date or last, last)
        q = Question(qid, tuple(dict.fromkeys(qa.evidence_seqs)), qa.question)
        out.append(Conversation("LongMemEval-S", qid, turns, asked, [q]))
    return evenly(out, conversations)


def sessions_of(turns: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split the imported turns back into the sessions they came from."""
    out: list[list[dict[str, Any]]] = []
    prev: object = object()
    for t in turns:
        meta = t.get("metadata") or {}
        key = meta.get("session", meta.get("haystack_index"))
        if not out or key != prev:
            out.append([])
        out[-1].append(t)
        prev = key
    return out


# --------------------------------------------------------------------------------------------------
# Rendering: cached, and pixels only where evidence is


class BenchRenderer(PageRenderer):
    """Caches renders per page (policies share them) and draws only pages ``wanted`` accepts;
    other pages get blank canvases of the right size (their pixels are never read)."""

    def __init__(self, sizes: Sequence[tuple[int, int]], wanted: Callable[[str], bool] | None):
        super().__init__()
        self.sizes = list(dict.fromkeys(sizes))
        self.wanted = wanted
        self.cache: dict[tuple, dict[tuple[int, int], RenderedImage]] = {}
        self.drawn = 0
        self.blank = 0
        self.blank_pngs: dict[tuple[int, int], bytes] = {}
        # the turns as the aging pass handed them over (keep_whole flags included), by content
        self.seen: dict[tuple, tuple[RenderTurn, ...]] = {}
        self.unmatched = 0  # pages laid out without the flags they were drawn with

    def render(
        self,
        turns: Sequence[RenderTurn],
        canvas: tuple[int, int],
        sizes: Sequence[tuple[int, int]],
    ) -> list[RenderedImage]:
        sizes = [(int(w), int(h)) for w, h in sizes]
        self.seen[content_key(turns)] = tuple(turns)
        if self.wanted is not None and not any(self.wanted(t.text) for t in turns):
            self.blank += 1
            return [RenderedImage(self.blank_png(s), s[0], s[1], 0) for s in sizes]
        key = (tuple(canvas), tuple((t.speaker, t.at, t.text, t.keep_whole) for t in turns))
        got = self.cache.get(key)
        if got is None or any(s not in got for s in sizes):
            every = list(dict.fromkeys([*self.sizes, *sizes]))
            got = dict(zip(every, super().render(turns, canvas, every), strict=True))
            self.cache[key] = got
            self.drawn += 1
        return [got[s] for s in sizes]

    def blank_png(self, size: tuple[int, int]) -> bytes:
        """A white PNG of ``size`` (cached per size)."""
        png = self.blank_pngs.get(size)
        if png is None:
            buf = io.BytesIO()
            Image.new("L", size, 255).save(buf, "PNG")
            png = self.blank_pngs[size] = buf.getvalue()
        return png


def content_key(turns: Sequence[RenderTurn]) -> tuple:
    return tuple((t.speaker, t.at, t.text) for t in turns)


def render_turn(turn: Any) -> RenderTurn:
    """A stored turn as the aging pass renders it (same speaker label, same clock)."""
    return aging.render_turn(
        SimpleNamespace(
            meta=turn.metadata,
            role=turn.role,
            at=turn.at,
            content=turn.content,
            attachments=turn.attachments,
        )
    )


@dataclass(frozen=True)
class PageGeometry:
    """Where each turn of a page sits on its layout canvas."""

    layout: tuple[int, int]
    margin: int
    line_height: int
    glyph_height: int  # ascent + descent: the ink of a line, a little less than its pitch
    lines: int
    spans: dict[int, tuple[int, int]]  # seq -> first and last line (inclusive)

    def band(self, seq: int, size: tuple[int, int]) -> tuple[int, int] | None:
        """Rows of an image of ``size`` that hold the ink of the turn's lines, and a pixel more
        each side (None: the turn was truncated away)."""
        first, last = self.spans[seq]
        if first >= self.lines:
            return None
        last = min(last, self.lines - 1)
        scale = size[1] / self.layout[1]
        top = self.margin + first * self.line_height
        bottom = self.margin + last * self.line_height + self.glyph_height
        return max(0, math.floor(top * scale) - 1), min(size[1], math.ceil(bottom * scale) + 1)


def page_geometry(
    renderer: PageRenderer,
    turns: Sequence[Any],
    layout: tuple[int, int],
    seqs: Iterable[int],
    size: tuple[int, int],
) -> PageGeometry:
    """Lay the page out the way the renderer did for an image of ``size`` and find the lines
    of the turns in ``seqs`` (a faint tier may be drawn abridged, on a smaller canvas).

    Text flows greedily, so the layout of the first k turns is the first lines of the page's
    layout: turn k starts on the last line of the first k-1 turns and ends on the last line of
    the first k.
    """
    drawn = [render_turn(t) for t in turns]
    if isinstance(renderer, BenchRenderer):  # lay out what was drawn: salient turns kept whole
        got = renderer.seen.get(content_key(drawn))
        if got is None:
            renderer.unmatched += 1
        drawn = list(got or drawn)
    plan = renderer.plan(drawn, layout, size)
    full, rts, canvas = plan.layout, plan.turns, plan.canvas
    spans = {}
    for seq in seqs:
        k = next(i for i, t in enumerate(turns) if t.seq == seq)
        before = renderer.layout(rts[:k], canvas, full.font_px, truncate=True) if k else None
        upto = renderer.layout(rts[: k + 1], canvas, full.font_px, truncate=True)
        assert upto is not None
        first = max(0, len(before.lines) - 1) if before is not None else 0
        spans[seq] = (first, max(first, len(upto.lines) - 1))
    ink = renderer.metrics(full.font_px).glyph_height
    return PageGeometry(canvas, full.margin, full.line_height, ink, len(full.lines), spans)


# --------------------------------------------------------------------------------------------------
# Legibility


def window_accuracy(expected: str, ocr: str) -> float:
    """Share of the turn's characters recovered: 1 - edits / length against the best-matching
    substring of the OCR output, whitespace removed on both sides (RapidOCR drops spaces)."""
    pat = "".join(expected.split())
    if not pat:
        return 1.0
    return max(0.0, 1.0 - search_distance(pat, "".join(ocr.split())) / len(pat))


def read_with(reader: str) -> Callable[[Image.Image], str]:
    from benchmarks.ocr import rapidocr_read, tesseract_read

    return {"rapidocr": rapidocr_read, "tesseract": tesseract_read}[reader]


class OcrPool:
    """Unique image crops -> OCR text per reader. Tesseract (a subprocess) runs beside RapidOCR."""

    def __init__(self, readers: Sequence[str]) -> None:
        self.readers = list(readers)
        self.texts: dict[tuple[str, str], str] = {}  # (crop key, reader) -> text
        self.seconds: dict[str, float] = defaultdict(float)
        self.images = 0

    def run(self, crops: dict[str, Image.Image], progress: Callable[[str], None]) -> None:
        todo = [k for k in crops if any((k, r) not in self.texts for r in self.readers)]
        if not todo:
            return
        self.images += len(todo)
        side = [r for r in self.readers if r == "tesseract"]
        main = [r for r in self.readers if r != "tesseract"]
        if not main:
            main, side = side, []
        futures: list[tuple[str, Future[str]]] = []
        pool = ThreadPoolExecutor(max_workers=1) if side else None
        try:
            if pool is not None:
                for k in todo:
                    futures.append((k, pool.submit(self._timed, side[0], crops[k])))
            started = time.perf_counter()
            for i, k in enumerate(todo, 1):
                for r in main:
                    self.texts[k, r] = self._timed(r, crops[k])
                if i % 10 == 0 or i == len(todo):
                    progress(
                        f"    OCR {i}/{len(todo)} images ({time.perf_counter() - started:.0f} s)"
                    )
            for k, fut in futures:
                self.texts[k, side[0]] = fut.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def _timed(self, reader: str, img: Image.Image) -> str:
        t = time.perf_counter()
        try:
            return read_with(reader)(img)
        finally:
            self.seconds[reader] += time.perf_counter() - t


# --------------------------------------------------------------------------------------------------
# The run


TENTH = "tenth"  # a budget of one tenth of the conversation's text tokens
Budget = int | str  # a budget label: tokens, or TENTH
RECALL_K = (5, 10, 20)
CROP_AGREEMENT = 98.0  # below this (more than 2 points apart), the tables read whole pages


@dataclass
class Config:
    locomo: Path | None
    longmemeval: Path | None
    budgets: tuple[Budget, ...] = BUDGETS
    targets: tuple[str, ...] = TARGETS
    readers: tuple[str, ...] = READERS
    conversations: int | None = None
    questions: int | None = None
    lme_questions: int | None = None
    keep_last_turns: int = 8
    ocr_scope: str = "auto"  # "turn" (evidence lines), "page", or "auto" (see settle_scope)
    crop_check: int = 24  # page images read whole as well, to check the cropped verdicts
    render_all: bool = False
    question_turn: bool = False  # add the question as the newest user turn while assembling
    out: Path = DEFAULT_OUT
    details: Path | None = None
    quiet: bool = False


@dataclass
class Placement:
    """Where one evidence turn is in one assembled prompt."""

    shown: str  # a tier label, or "absent"
    stored: str = ""
    ocr_key: str | None = None  # the cropped image read for it (images only)
    page_key: str | None = None  # the whole page image (images only)


Arm = tuple[str, str, Budget, bool]  # target, policy, budget label, cue


@dataclass
class ConvResult:
    conv: Conversation
    text_tokens: int = 0  # the sum of the stored turns' token counts
    budgets: dict[Budget, int] = field(default_factory=dict)  # label -> tokens
    # arm -> question id -> seq -> placement; policy "window" uses target WINDOW_TARGET
    placements: dict[Arm, dict[str, dict[int, Placement]]] = field(default_factory=dict)
    tokens: dict[Arm, float] = field(default_factory=dict)  # mean over the arm's prompts
    # (OCR image key, seq, reader) -> share of the turn's characters recovered
    accuracy: dict[tuple[str, int, str], float] = field(default_factory=dict)
    # question id -> seq -> rank in recall(question, limit=max(RECALL_K)) (absent: not found)
    recall_rank: dict[str, dict[int, int]] = field(default_factory=dict)
    pages: dict[str, bytes] = field(default_factory=dict)  # page sha -> PNG (evidence pages)
    checked: list[tuple[str, str, int]] = field(default_factory=list)  # (crop, page, seq)


@dataclass
class Run:
    """What a run measured, and how the reported tables read the images."""

    results: list[ConvResult]
    scope: str  # "turn" or "page": the images the tables' legibility comes from
    agreement: float | None  # % of checked (image, turn) pairs with the same verdict both ways
    checked: int  # pairs checked
    crop_legible: float | None  # % legible in the checked pairs, cropped and whole
    page_legible: float | None


def budget_tokens(label: Budget, text_tokens: int) -> int:
    return max(1, text_tokens // 10) if label == TENTH else int(label)


def run(cfg: Config) -> tuple[list[dict[str, Any]], str]:
    log = (lambda msg: None) if cfg.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    convs: list[Conversation] = []
    skipped: list[str] = []
    if cfg.locomo is not None:
        if cfg.locomo.exists():
            convs += locomo_conversations(
                cfg.locomo, conversations=cfg.conversations, questions=cfg.questions
            )
        else:
            skipped.append(f"LoCoMo skipped: {cfg.locomo} not found")
    if cfg.longmemeval is not None:
        if cfg.longmemeval.exists():
            convs += longmemeval_conversations(cfg.longmemeval, conversations=cfg.lme_questions)
        else:
            skipped.append(f"LongMemEval-S skipped: {cfg.longmemeval} not found")
    for msg in skipped:
        log(msg)
    ocr = OcrPool(cfg.readers)
    results = []
    started = time.perf_counter()
    check = crop_check_plan(len(convs), cfg.crop_check)
    with tempfile.TemporaryDirectory(prefix="om-retention-") as tmp:
        for n, conv in enumerate(convs, 1):
            t0 = time.perf_counter()
            log(
                f"[{n}/{len(convs)}] {conv.dataset} {conv.conv_id}: {len(conv.turns)} turns, "
                f"{len(conv.questions)} questions, {len(conv.evidence)} evidence turns"
            )
            results.append(measure(conv, cfg, Path(tmp) / f"c{n}", ocr, log, check[n - 1]))
            log(f"    done in {time.perf_counter() - t0:.0f} s")
    outcome = settle_scope(results, cfg, ocr, log)
    elapsed = time.perf_counter() - started
    rows = summarise(outcome, cfg)
    text = report(rows, outcome, cfg, skipped, ocr, elapsed)
    write_csv(cfg.out, rows, CSV_COLUMNS)
    (cfg.out.with_suffix(".md")).write_text(text + "\n", encoding="utf-8")
    write_csv(conversations_path(cfg.out), conversation_rows(outcome), CONVERSATION_COLUMNS)
    if cfg.details is not None:
        write_csv(cfg.details, detail_rows(outcome, cfg), DETAIL_COLUMNS)
    return rows, text


def crop_check_plan(conversations: int, images: int) -> list[int]:
    """Page images each conversation reads whole for the crop check: ``images`` in all, spread
    evenly (one each for conversations spread evenly when there are fewer than conversations)."""
    if conversations == 0 or images <= 0:
        return [0] * conversations
    if images >= conversations:
        return [math.ceil(images / conversations)] * conversations
    chosen = set(evenly(range(conversations), images))
    return [int(i in chosen) for i in range(conversations)]


def conversations_path(out: Path) -> Path:
    return out.with_name(out.stem + "-conversations.csv")


def measure(
    conv: Conversation,
    cfg: Config,
    workdir: Path,
    ocr: OcrPool,
    log: Callable[[str], None],
    check: int = 0,
) -> ConvResult:
    """Replay, age and assemble one conversation at every arm, with and without the cue; read
    the evidence; measure recall() alone; read ``check`` of its page images whole as well."""
    workdir.mkdir(parents=True)
    res = ConvResult(conv)
    evidence = conv.evidence
    texts = {conv.turns[s - 1]["content"] for s in evidence}
    crops: dict[str, Image.Image] = {}
    read_as: dict[str, str] = {}  # page image hash -> the image registered for OCR
    for ti, target in enumerate(cfg.targets):
        tgt = get_target(target)
        sizes = [tgt.spec(t).size for t in IMAGE_TIERS]
        renderer = BenchRenderer(sizes, None if cfg.render_all else texts.__contains__)
        base = workdir / f"{target}-base.db"
        with MemoryManager(
            f"sqlite:///{base}",
            target=target,
            policy=AgingPolicy(keep_last_turns=cfg.keep_last_turns, by_time=None, budget=None),
            renderer=renderer,
        ) as mm:
            for i, session in enumerate(sessions_of(conv.turns)):
                if i:
                    mm.age(now=session[0]["at"])  # the scheduler's pass before the next session
                mm.add_turns(SESSION, session)
            stored = {t.seq: t for t in mm.turns(SESSION)}
        if not res.budgets:
            res.text_tokens = sum(t.tokens for t in stored.values())
            res.budgets = {b: budget_tokens(b, res.text_tokens) for b in cfg.budgets}
        variants: list[tuple[str, AgingPolicy, tuple[Budget, ...]]] = [
            ("time", AgingPolicy(keep_last_turns=cfg.keep_last_turns), cfg.budgets)
        ]
        by_tokens: dict[int, list[Budget]] = defaultdict(list)  # pressure: one memory per size
        for b in cfg.budgets:
            by_tokens[res.budgets[b]].append(b)
        variants += [
            (
                "pressure",
                AgingPolicy(keep_last_turns=cfg.keep_last_turns, by_time=None, budget=tokens),
                tuple(labels),
            )
            for tokens, labels in by_tokens.items()
        ]
        geometry: dict[tuple[int, ...], PageGeometry] = {}

        placed = partial(
            place,
            evidence=evidence,
            stored=stored,
            layout=tgt.layout,
            renderer=renderer,
            cfg=cfg,
            geometry=geometry,
            crops=crops,
            read_as=read_as,
            res=res,
        )

        for v, (policy_name, policy, labels) in enumerate(variants):
            path = workdir / f"{target}-{v}.db"
            copy_sqlite(base, path)
            with MemoryManager(
                f"sqlite:///{path}", target=target, policy=policy, renderer=renderer
            ) as mm:
                report_ = mm.age(now=conv.asked_at)
                if report_.errors:
                    raise RuntimeError(f"aging failed: {report_.errors}")
                for b in labels:
                    tokens = res.budgets[b]
                    key: Arm = (target, policy_name, b, False)
                    assemble = partial(
                        mm.assemble, SESSION, budget=tokens, target=target, now=conv.asked_at
                    )
                    if cfg.question_turn:  # both arms per question, the question a turn
                        plains: dict[str, dict[int, Placement]] = {}
                        cued: dict[str, dict[int, Placement]] = {}
                        spent_plain, spent = [], []
                        for q in conv.questions:
                            with question_turn(mm, q.text, conv.asked_at):
                                ctx = assemble()
                                qctx = assemble(cue=q.text)
                            plains[q.qid], cued[q.qid] = placed(ctx), placed(qctx)
                            spent_plain.append(ctx.tokens)
                            spent.append(qctx.tokens)
                        res.placements[key] = plains
                        res.tokens[key] = sum(spent_plain) / len(spent_plain)
                    else:
                        ctx = assemble()
                        plain = placed(ctx)
                        res.tokens[key] = ctx.tokens
                        res.placements[key] = {q.qid: plain for q in conv.questions}
                        cued = {}
                        spent = []
                        for q in conv.questions:  # the cue: the question's text, nothing else
                            qctx = assemble(cue=q.text)
                            cued[q.qid] = placed(qctx)
                            spent.append(qctx.tokens)
                    res.placements[(target, policy_name, b, True)] = cued
                    res.tokens[(target, policy_name, b, True)] = sum(spent) / len(spent)
            path.unlink()
        if ti == 0:  # recall() alone, after the assembly arms: it rehearses (writes)
            with MemoryManager(f"sqlite:///{base}", target=target, renderer=renderer) as mm:
                for q in conv.questions:
                    found = mm.recall(SESSION, q.text, limit=max(RECALL_K)) if q.text else []
                    ranks: dict[int, int] = {}
                    for rank, hit in enumerate(found, 1):
                        ranks.setdefault(hit.turn.seq, rank)
                    res.recall_rank[q.qid] = {s: ranks[s] for s in q.evidence if s in ranks}
        log(
            f"    {target}: pages drawn {renderer.drawn}, blank {renderer.blank}, "
            f"laid out without their flags {renderer.unmatched}"
        )
    # the sliding-window baseline
    for b in cfg.budgets:
        kept, tokens = sliding_window(conv.turns, res.budgets[b])
        key = (WINDOW_TARGET, WINDOW, b, False)
        res.tokens[key] = tokens
        plain = {s: Placement("text" if s in kept else ABSENT) for s in evidence}
        res.placements[key] = {q.qid: plain for q in conv.questions}
    if cfg.ocr_scope == "page":
        crops = {sha: page_image(png) for sha, png in res.pages.items()}
    log(f"    OCR: {len(crops)} page images")
    ocr.run(crops, log)
    if cfg.ocr_scope != "page" and check:
        sample = evenly(sorted(res.pages), check)
        ocr.run({sha: page_image(res.pages[sha]) for sha in sample}, log)
        chosen = set(sample)
        pairs = {
            (p.ocr_key, p.page_key, s)
            for arm in res.placements.values()
            for pl in arm.values()
            for s, p in pl.items()
            if p.page_key in chosen and p.ocr_key
        }
        res.checked = sorted(pairs)
    score(res, cfg, ocr)
    return res


def live_turns(mm: MemoryManager) -> int:
    """The session's live turns (a superseded version is not counted)."""
    return next(s.turns for s in mm.sessions() if s.session_id == SESSION)


@contextmanager
def question_turn(mm: MemoryManager, text: str, at: datetime) -> Iterator[int]:
    """The question as the session's newest user turn while the block runs (its seq yielded),
    then superseded with ``replace_turns(SESSION, seq, [])``: out of prompts, pages, turns()
    and search, and the session's live turns are what they were. Nothing in the block may run
    an aging pass (it could page the turn; replace_turns would then refuse it)."""
    before = live_turns(mm)
    last = mm.turns(SESSION, since=0)[-1].seq if before else 0
    turn = mm.add_turn(SESSION, "user", text, at=at)
    try:
        yield turn.seq
    finally:
        mm.replace_turns(SESSION, turn.seq, [])
    left = mm.turns(SESSION, since=last)
    if live_turns(mm) != before or left:
        raise RuntimeError(
            f"the question turn {turn.seq} was not taken out: {live_turns(mm)} live turns "
            f"(were {before}), {len(left)} after turn {last}"
        )


def page_image(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def score(res: ConvResult, cfg: Config, ocr: OcrPool) -> None:
    """Accuracy of every (image, evidence turn) pair whose image has been read."""
    wanted = {
        (k, s)
        for arm in res.placements.values()
        for pl in arm.values()
        for s, p in pl.items()
        for k in (p.ocr_key, p.page_key)
        if k
    }
    for k, seq in wanted:
        for r in cfg.readers:
            if (k, seq, r) not in res.accuracy and (k, r) in ocr.texts:
                res.accuracy[k, seq, r] = window_accuracy(
                    res.conv.turns[seq - 1]["content"], ocr.texts[k, r]
                )


def settle_scope(
    results: list[ConvResult], cfg: Config, ocr: OcrPool, log: Callable[[str], None]
) -> Run:
    """Compare cropped and whole-page verdicts on the checked sample; with ``--ocr-scope auto``
    and more than 2 points apart, read every evidence page whole and report from those."""
    primary = cfg.readers[0]
    pairs = [(r, c, p, s) for r in results for c, p, s in r.checked]
    agreement = crop_leg = page_leg = None
    if pairs:
        crop_ok = [r.accuracy.get((c, s, primary), 0.0) >= LEGIBLE for r, c, _, s in pairs]
        page_ok = [r.accuracy.get((p, s, primary), 0.0) >= LEGIBLE for r, _, p, s in pairs]
        same = sum(a == b for a, b in zip(crop_ok, page_ok, strict=True))
        agreement = pct(same, len(pairs))
        crop_leg, page_leg = pct(sum(crop_ok), len(pairs)), pct(sum(page_ok), len(pairs))
        log(
            f"crop check: {len(pairs)} pairs, agreement {agreement:.1f}% "
            f"(legible cropped {crop_leg:.1f}%, whole {page_leg:.1f}%)"
        )
    scope = "page" if cfg.ocr_scope == "page" else "turn"
    if cfg.ocr_scope == "auto" and agreement is not None and agreement < CROP_AGREEMENT:
        scope = "page"
        log("crop check: more than 2 points apart, reading every evidence page whole")
        for r in results:
            ocr.run({sha: page_image(png) for sha, png in r.pages.items()}, log)
            score(r, cfg, ocr)
    return Run(results, scope, agreement, len(pairs), crop_leg, page_leg)


def place(
    ctx: Any,
    evidence: set[int],
    stored: dict[int, Any],
    layout: tuple[int, int],
    renderer: PageRenderer,
    cfg: Config,
    geometry: dict[tuple[int, ...], PageGeometry],
    crops: dict[str, Image.Image],
    read_as: dict[str, str],
    res: ConvResult,
) -> dict[int, Placement]:
    """Classify each evidence turn in one prompt, registering the image to read for it.

    A turn in the recalled block (``ctx.recalled``: pinned, or brought back by the cue) or in a
    text segment is *text*. For a page, ``read_as`` maps its image (hash) to the OCR image
    registered in ``crops``: the page with every row blanked out except the bands holding
    evidence turns. The reader sees those rows exactly where and how large they are on the
    page, so it scales and reads them as it would the page. The whole page is kept too (in
    ``res.pages``), for ``--ocr-scope page`` and the crop check.
    """
    out = {s: Placement(ABSENT) for s in evidence}
    recalled = ctx.recalled
    as_text = {t.seq for t in recalled.turns} if recalled is not None else set()
    for seg in ctx.segments:
        if isinstance(seg, PageSegment):
            inside = sorted(s for s in evidence if seg.first_seq <= s <= seg.last_seq)
            if not inside:
                continue
            sha = hashlib.sha1(seg.png).hexdigest()
            res.pages.setdefault(sha, seg.png)
            key = read_as.get(sha)
            if key is None and cfg.ocr_scope != "page":
                img = page_image(seg.png)
                span = (seg.first_seq, seg.last_seq)
                geo = geometry.get((*span, *img.size))
                if geo is None:
                    turns = [stored[q] for q in range(span[0], span[1] + 1)]
                    geo = geometry[(*span, *img.size)] = page_geometry(
                        renderer, turns, layout, inside, img.size
                    )
                bands = merge_bands(b for s in inside if (b := geo.band(s, img.size)))
                key = f"{sha}:" + ",".join(f"{a}-{b}" for a, b in bands)
                if key not in crops:
                    crops[key] = keep_rows(img, bands)
                read_as[sha] = key
            for s in inside:
                if out[s].shown != "text":
                    out[s] = Placement(seg.tier, seg.stored_tier, key or sha, sha)
        elif isinstance(seg, TextSegment) and seg.turn.seq in out:
            out[seg.turn.seq] = Placement("text", "text")
    for s in as_text & evidence:
        out[s] = Placement("text", out[s].stored or "recalled")
    return out


def merge_bands(bands: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(bands):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def keep_rows(img: Image.Image, bands: Sequence[tuple[int, int]]) -> Image.Image:
    """The image with every row outside ``bands`` painted white (same size, same place)."""
    out = Image.new(img.mode, img.size, 255 if img.mode == "L" else (255, 255, 255))
    for a, b in bands:
        out.paste(img.crop((0, a, img.width, b)), (0, a))
    return out


def sliding_window(turns: Sequence[dict[str, Any]], budget: int) -> tuple[set[int], int]:
    """Seqs kept by trim_messages(strategy="last") at this budget, and their token count."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.messages.utils import count_tokens_approximately, trim_messages

    kinds = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
    msgs = []
    for seq, t in enumerate(turns, 1):
        if t["role"] == "tool":
            call = (t.get("metadata") or {}).get("tool_call_id") or ""
            msgs.append(ToolMessage(t["content"], tool_call_id=call, id=str(seq)))
        else:
            msgs.append(kinds[t["role"]](t["content"], id=str(seq)))
    kept = trim_messages(
        msgs, strategy="last", token_counter=count_tokens_approximately, max_tokens=budget
    )
    return {int(m.id) for m in kept}, int(count_tokens_approximately(kept))


def copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (WAL included), with the backup API."""
    a = sqlite3.connect(src)
    b = sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        b.close()
        a.close()


# --------------------------------------------------------------------------------------------------
# Summary


def image_key(p: Placement, scope: str) -> str | None:
    return p.page_key if scope == "page" else p.ocr_key


def legible(res: ConvResult, seq: int, p: Placement, reader: str, scope: str = "turn") -> bool:
    if p.shown == "text":
        return True
    key = image_key(p, scope)
    if key is None:
        return False
    return res.accuracy.get((key, seq, reader), 0.0) >= LEGIBLE


def budget_order(label: Budget) -> tuple[int, int]:
    return (1, 0) if label == TENTH else (0, int(label))


def budget_name(label: Budget) -> str:
    if label == TENTH:
        return "1/10"
    n = int(label)
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def arms(cfg: Config) -> list[Arm]:
    out = [
        (t, p, b, c)
        for b in cfg.budgets
        for t in cfg.targets
        for p in POLICIES
        for c in (False, True)
    ]
    out += [(WINDOW_TARGET, WINDOW, b, False) for b in cfg.budgets]
    return out


def recall_at(results: Sequence[ConvResult], k: int) -> tuple[int, int]:
    """Evidence turns (per question) that recall(question) ranks in its top ``k``, of all."""
    found = n = 0
    for r in results:
        for q in r.conv.questions:
            ranks = r.recall_rank.get(q.qid, {})
            n += len(q.evidence)
            found += sum(1 for s in q.evidence if ranks.get(s, k + 1) <= k)
    return found, n


def summarise(outcome: Run, cfg: Config) -> list[dict[str, Any]]:
    primary = cfg.readers[0]
    scope = outcome.scope
    results = outcome.results
    rows = []
    for dataset in dict.fromkeys(r.conv.dataset for r in results):
        mine = [r for r in results if r.conv.dataset == dataset]
        at_k = {k: recall_at(mine, k) for k in RECALL_K}
        order = sorted(
            arms(cfg), key=lambda k: (budget_order(k[2]), k[1] == WINDOW, k[0], k[1], k[3])
        )
        for key in order:
            target, policy, budget, cue = key
            n = present = 0
            leg = dict.fromkeys(READERS, 0)
            qa_ok = qa_n = 0
            shown: dict[str, int] = defaultdict(int)
            leg_tier = {r: defaultdict(int) for r in READERS}
            tokens = [r.tokens[key] for r in mine]
            budgets = [r.budgets[budget] for r in mine]
            for r in mine:
                for q in r.conv.questions:
                    placements = r.placements[key][q.qid]
                    qa_n += 1
                    qa_ok += all(legible(r, s, placements[s], primary, scope) for s in q.evidence)
                    for s in q.evidence:
                        p = placements[s]
                        n += 1
                        shown[p.shown] += 1
                        present += p.shown != ABSENT
                        for reader in cfg.readers:
                            ok = legible(r, s, p, reader, scope)
                            leg[reader] += ok
                            if ok and p.shown in IMAGE_TIER_LABELS:
                                leg_tier[reader][p.shown] += 1
            row: dict[str, Any] = {
                "dataset": dataset,
                "target": target,
                "policy": policy,
                "budget": budget,
                "cue": "yes" if cue else "no",
                "budget_tokens_mean": round(sum(budgets) / len(budgets), 1) if budgets else 0,
                "conversations": len(mine),
                "qa_items": qa_n,
                "evidence": n,
                "tokens_mean": round(sum(tokens) / len(tokens), 1) if tokens else 0,
                "tokens_max": round(max(tokens, default=0)),
                "present_pct": pct(present, n),
                "legible_pct": pct(leg[primary], n),
                "qa_all_legible_pct": pct(qa_ok, qa_n),
                "as_text": shown["text"],
                "absent": shown[ABSENT],
                "ocr_scope": scope,
            }
            for reader in READERS:
                row[f"legible_pct_{reader}"] = pct(leg[reader], n) if reader in cfg.readers else ""
                for t in IMAGE_TIER_LABELS:
                    row[f"legible_{reader}_{t}"] = (
                        leg_tier[reader][t] if reader in cfg.readers else ""
                    )
            for t in IMAGE_TIER_LABELS:
                row[f"in_{t}"] = shown[t]
            for k in RECALL_K:
                row[f"recall_at_{k}_pct"] = pct(*at_k[k])
            rows.append(row)
    return rows


def pct(a: int, n: int) -> float:
    return round(100.0 * a / n, 1) if n else 0.0


def conversation_rows(outcome: Run) -> list[dict[str, Any]]:
    out = []
    for r in outcome.results:
        row: dict[str, Any] = {
            "dataset": r.conv.dataset,
            "conversation": r.conv.conv_id,
            "turns": len(r.conv.turns),
            "text_tokens": r.text_tokens,
            "tenth": budget_tokens(TENTH, r.text_tokens),
            "questions": len(r.conv.questions),
            "evidence": sum(len(q.evidence) for q in r.conv.questions),
        }
        for k in RECALL_K:
            row[f"recall_at_{k}"] = recall_at([r], k)[0]
        out.append(row)
    return out


def detail_rows(outcome: Run, cfg: Config) -> list[dict[str, Any]]:
    out = []
    for r in outcome.results:
        for key in arms(cfg):
            for q in r.conv.questions:
                placements = r.placements[key][q.qid]
                ranks = r.recall_rank.get(q.qid, {})
                for s in q.evidence:
                    p = placements[s]
                    row = {
                        "dataset": r.conv.dataset,
                        "conversation": r.conv.conv_id,
                        "question": q.qid,
                        "seq": s,
                        "target": key[0],
                        "policy": key[1],
                        "budget": key[2],
                        "budget_tokens": r.budgets[key[2]],
                        "cue": "yes" if key[3] else "no",
                        "shown": p.shown,
                        "stored_tier": p.stored,
                        "recall_rank": ranks.get(s, ""),
                    }
                    for reader in READERS:
                        for col, k in (("accuracy", p.ocr_key), ("page_accuracy", p.page_key)):
                            acc = r.accuracy.get((k, s, reader)) if k else None
                            row[f"{col}_{reader}"] = "" if acc is None else round(acc, 3)
                    out.append(row)
    return out


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def _fmt_pct(v: Any) -> str:
    return "" if v == "" else f"{v:.1f}"


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "∞" if a > 0 else "n/a"
    return f"{a / b:.2f}×"


RowKey = tuple[str, str, str, Budget, bool]  # dataset, target, policy, budget, cue


def report(
    rows: Sequence[dict[str, Any]],
    outcome: Run,
    cfg: Config,
    skipped: Sequence[str],
    ocr: OcrPool,
    elapsed: float,
) -> str:
    primary = cfg.readers[0]
    results = outcome.results
    out = ["# Retention: evidence in the assembled prompt", ""]
    out.append(
        f"Legible: text (a text turn, or in the block recalled on the cue), or OCR of the page at "
        f"the tier shown recovers ≥ {LEGIBLE:.0%} of the turn's characters (best-matching "
        f"substring, whitespace removed); reader {primary}"
        + (", Tesseract beside it" if "tesseract" in cfg.readers and primary != "tesseract" else "")
        + f". Images read: {'whole pages' if outcome.scope == 'page' else 'the evidence lines'}"
        f" (--ocr-scope {cfg.ocr_scope}). Cue: the question's text only"
        + (
            "; the question is added as the newest user turn while assembling (--question-turn)"
            if cfg.question_turn
            else ""
        )
        + ". Budget 1/10: one tenth "
        'of each conversation\'s text tokens. Window: trim_messages(strategy="last", '
        "count_tokens_approximately). Tier columns: % of the evidence shown at that tier "
        f"(in brackets: % of those legible to {primary})."
    )
    out.append("")
    for msg in skipped:
        out += [f"> {msg}", ""]
    out += crop_check_lines(outcome)
    by: dict[RowKey, dict[str, Any]] = {
        (r["dataset"], r["target"], r["policy"], r["budget"], r["cue"] == "yes"): r for r in rows
    }
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        first = mine[0]
        out.append(
            f"## {dataset}: {first['conversations']} conversations, {first['qa_items']} questions, "
            f"{first['evidence']} evidence turns"
        )
        out.append("")
        out += conversation_lines([r for r in results if r.conv.dataset == dataset])
        out.append(
            "Recall quality of `recall(question, limit=k)` alone (evidence turns in the top k): "
            + ", ".join(f"@{k} {first[f'recall_at_{k}_pct']:.1f}%" for k in RECALL_K)
        )
        out.append("")
        out.append("With and without the cue (present % / legible %):")
        out.append("")
        out.append(
            "| budget | budget tokens | target | policy | present | present, cue | legible | legible, cue |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for b in sorted(cfg.budgets, key=budget_order):
            for t in cfg.targets:
                for p in POLICIES:
                    a, c = by.get((dataset, t, p, b, False)), by.get((dataset, t, p, b, True))
                    if a is None or c is None:
                        continue
                    out.append(
                        f"| {budget_name(b)} | {a['budget_tokens_mean']:.0f} | {t} | {p} | "
                        f"{a['present_pct']:.1f} | {c['present_pct']:.1f} | "
                        f"{a['legible_pct']:.1f} | {c['legible_pct']:.1f} |"
                    )
            w = by.get((dataset, WINDOW_TARGET, WINDOW, b, False))
            if w is not None:
                out.append(
                    f"| {budget_name(b)} | {w['budget_tokens_mean']:.0f} | {WINDOW_TARGET} | "
                    f"{WINDOW} | {w['present_pct']:.1f} | | {w['legible_pct']:.1f} | |"
                )
        out.append("")
        head = [
            "budget",
            "target",
            "policy",
            "cue",
            "tokens",
            "present %",
            f"legible % ({primary})",
        ]
        others = [r for r in cfg.readers if r != primary]
        head += [f"legible % ({r})" for r in others]
        head += ["QA all legible %", *TIERS, ABSENT]
        out.append("Where the evidence is:")
        out.append("")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" for _ in head) + "|")
        for r in mine:
            n = r["evidence"] or 1
            cells = [
                budget_name(r["budget"]),
                r["target"],
                r["policy"],
                r["cue"],
                f"{r['tokens_mean']:.0f}",
                _fmt_pct(r["present_pct"]),
                _fmt_pct(r["legible_pct"]),
            ]
            cells += [_fmt_pct(r[f"legible_pct_{o}"]) for o in others]
            cells.append(_fmt_pct(r["qa_all_legible_pct"]))
            cells.append(f"{100 * r['as_text'] / n:.0f}")
            for t in IMAGE_TIER_LABELS:
                k = r[f"in_{t}"]
                if k:
                    lg = r[f"legible_{primary}_{t}"]
                    cells.append(f"{100 * k / n:.0f} ({100 * lg / k:.0f})")
                else:
                    cells.append("·")
            cells.append(f"{100 * r['absent'] / n:.0f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += checks(by, cfg)
    ocr_secs = ", ".join(f"{r} {ocr.seconds[r]:.0f} s" for r in cfg.readers)
    out.append(
        f"Run: {len(results)} conversations, {ocr.images} page images read ({ocr_secs}), "
        f"{elapsed:.0f} s in all."
    )
    return "\n".join(out)


def conversation_lines(results: Sequence[ConvResult]) -> list[str]:
    out = [
        "| conversation | turns | text tokens | 1/10 | questions | evidence |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        out.append(
            f"| {r.conv.conv_id} | {len(r.conv.turns)} | {r.text_tokens:,} | "
            f"{budget_tokens(TENTH, r.text_tokens):,} | {len(r.conv.questions)} | "
            f"{sum(len(q.evidence) for q in r.conv.questions)} |"
        )
    return out + [""]


def crop_check_lines(outcome: Run) -> list[str]:
    if outcome.agreement is None:
        return ["Crop check: not run (no sample, or --ocr-scope page).", ""]
    verdict = (
        "within 2 points: the tables read the evidence lines"
        if outcome.agreement >= CROP_AGREEMENT
        else "more than 2 points apart"
        + (": the tables read whole pages" if outcome.scope == "page" else " (forced crops)")
    )
    return [
        f"Crop check: on {outcome.checked} (page image, evidence turn) pairs, reading only the "
        f"evidence lines and reading the whole page agree on {outcome.agreement:.1f}% of the "
        f"verdicts (legible {outcome.crop_legible:.1f}% cropped, {outcome.page_legible:.1f}% "
        f"whole); {verdict}.",
        "",
    ]


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def checks(by: dict[RowKey, dict[str, Any]], cfg: Config) -> list[str]:
    """The targets of issues 13 and 14 (and 7), stated, and whether this run meets them.
    Measurements, never assertions."""
    out = ["## Targets", ""]
    lines = []
    t = "deepseek-ocr"

    def goal(dataset: str, budget: Budget, cue: bool, what: str, floor: float, why: str) -> None:
        r = by.get((dataset, t, "pressure", budget, cue))
        if r is None:
            return
        v = r[f"{what}_pct"]
        lines.append(
            f"- {dataset}, {budget_name(budget)}, pressure, {t}, {'cue' if cue else 'no cue'}: "
            f"{what} {v:.1f}% (target ≥ {floor:.0f}%, {why}): {_verdict(v >= floor)}"
        )

    goal("LoCoMo", TENTH, True, "legible", 80, "issue 13")
    goal("LoCoMo", TENTH, False, "present", 95, "issue 14")
    goal("LoCoMo", TENTH, False, "legible", 90, "issue 14")
    goal("LoCoMo", 1024, False, "present", 60, "issue 14")
    goal("LongMemEval-S", 8192, True, "legible", 80, "issue 13")
    goal("LongMemEval-S", 8192, False, "present", 95, "issue 14")
    for dataset in dict.fromkeys(k[0] for k in by):
        worse = []
        compared = 0
        for (d, tg, p, b, cue), r in by.items():
            if d != dataset or cue or p == WINDOW:
                continue
            c = by.get((d, tg, p, b, True))
            if c is None:
                continue
            compared += 1
            for what in ("present", "legible"):
                if c[f"{what}_pct"] < r[f"{what}_pct"]:
                    worse.append(
                        f"{budget_name(b)} {tg} {p} {what} {c[f'{what}_pct']:.1f} < "
                        f"{r[f'{what}_pct']:.1f}"
                    )
        if compared:
            lines.append(
                f"- {dataset}: with the cue never worse than without ({compared} arms, present "
                f"and legible; issue 13): "
                + ("**met**" if not worse else f"**NOT met** ({'; '.join(worse)})")
            )
    for tg in cfg.targets:  # issue 7
        r = by.get(("LoCoMo", tg, "pressure", 4096, False))
        w = by.get(("LoCoMo", WINDOW_TARGET, WINDOW, 4096, False))
        if r is None or w is None:
            continue
        ok_p = r["present_pct"] >= 3 * w["present_pct"]
        ok_l = r["legible_pct"] >= 1.5 * w["legible_pct"]
        lines.append(
            f"- LoCoMo, 4k, pressure, {tg}, no cue: present {r['present_pct']:.1f}% vs window "
            f"{w['present_pct']:.1f}% = {_ratio(r['present_pct'], w['present_pct'])} (target ≥ 3×, "
            f"issue 7): {_verdict(ok_p)}; legible {r['legible_pct']:.1f}% vs "
            f"{w['legible_pct']:.1f}% = {_ratio(r['legible_pct'], w['legible_pct'])} "
            f"(target ≥ 1.5×): {_verdict(ok_l)}"
        )
    if not lines:
        lines.append("- (no target applies to the data of this run)")
    return out + lines + [""]


# --------------------------------------------------------------------------------------------------
# Command line


def parse_budgets(text: str) -> tuple[Budget, ...]:
    out: list[Budget] = []
    for x in (x.strip() for x in text.split(",")):
        if not x:
            continue
        if x == TENTH:
            out.append(TENTH)
        elif x.isdigit() and int(x) > 0:
            out.append(int(x))
        else:
            raise argparse.ArgumentTypeError(f"a budget is a positive number of tokens or {TENTH}")
    if not out:
        raise argparse.ArgumentTypeError("give at least one budget")
    return tuple(dict.fromkeys(out))


def _names(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"use some of {', '.join(allowed)}")
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.retention", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder with locomo/ and longmemeval/ (default: ../shared/data)",
    )
    ap.add_argument(
        "--locomo", help="LoCoMo file, or 'none' (default: DATA/locomo/locomo_dev.json)"
    )
    ap.add_argument(
        "--longmemeval",
        help="LongMemEval file, or 'none' (default: DATA/longmemeval/longmemeval_s_dev.json)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"one LoCoMo conversation, budgets {','.join(map(str, QUICK_BUDGETS))}, "
        f"{QUICK_QUESTIONS} questions",
    )
    ap.add_argument(
        "--budgets",
        type=parse_budgets,
        help=f"token budgets; {TENTH}: a tenth of each conversation's text tokens "
        "(default 1024,2048,4096,8192,tenth)",
    )
    ap.add_argument("--targets", type=_names(TARGETS), help="default deepseek-ocr,openai")
    ap.add_argument(
        "--readers",
        type=_names(READERS),
        help="OCR readers, the first decides legibility (default rapidocr,tesseract)",
    )
    ap.add_argument(
        "--conversations", type=int, help="LoCoMo conversations, spread evenly (default all)"
    )
    ap.add_argument(
        "--questions",
        type=int,
        help="LoCoMo questions per conversation, spread evenly over its items (default all)",
    )
    ap.add_argument(
        "--lme-questions",
        type=int,
        help="LongMemEval questions, spread evenly over the items (default all)",
    )
    ap.add_argument("--keep-last-turns", type=int, default=8)
    ap.add_argument(
        "--ocr-scope",
        choices=("auto", "turn", "page"),
        default="auto",
        help="read only the page's evidence lines (turn), the whole page (page), or auto "
        "(default): the evidence lines unless the crop check disagrees by more than 2 points",
    )
    ap.add_argument(
        "--crop-check",
        type=int,
        help="page images (spread over the run) read whole as well, to check the cropped "
        "verdicts (default 24; 0: off)",
    )
    ap.add_argument(
        "--render-all", action="store_true", help="draw every page, not only those holding evidence"
    )
    ap.add_argument(
        "--question-turn",
        action="store_true",
        help="add each question as the newest user turn while assembling (as an application "
        "does), then take it out again; both arms per question",
    )
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="CSV (a .md is written beside it)"
    )
    ap.add_argument("--details", type=Path, help="also write one CSV row per evidence turn here")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = ap.parse_args(argv)

    def data_path(value: str | None, default: Path) -> Path | None:
        if value is not None and value.lower() == "none":
            return None
        return Path(value) if value is not None else default

    cfg = Config(
        locomo=data_path(a.locomo, a.data / "locomo" / "locomo_dev.json"),
        longmemeval=data_path(a.longmemeval, a.data / "longmemeval" / "longmemeval_s_dev.json"),
        keep_last_turns=a.keep_last_turns,
        ocr_scope=a.ocr_scope,
        render_all=a.render_all,
        question_turn=a.question_turn,
        out=a.out,
        details=a.details,
        quiet=a.quiet,
    )
    if a.quick:
        cfg.longmemeval = None
        cfg.conversations = 1
        cfg.questions = QUICK_QUESTIONS
        cfg.budgets = QUICK_BUDGETS
        cfg.crop_check = QUICK_CROP_CHECK
    if a.budgets:
        cfg.budgets = a.budgets
    if a.targets:
        cfg.targets = a.targets
    if a.readers:
        cfg.readers = a.readers
    if a.conversations is not None:
        cfg.conversations = a.conversations
    if a.questions is not None:
        cfg.questions = a.questions
    if a.lme_questions is not None:
        cfg.lme_questions = a.lme_questions
    if a.crop_check is not None:
        cfg.crop_check = max(0, a.crop_check)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.locomo is None and cfg.longmemeval is None:
        print("nothing to do: both data sets are turned off", file=sys.stderr)
        return 0
    missing = [p for p in (cfg.locomo, cfg.longmemeval) if p is not None and not p.exists()]
    if len(missing) == sum(p is not None for p in (cfg.locomo, cfg.longmemeval)):
        print(
            "retention benchmark skipped: no data at "
            + ", ".join(str(p) for p in missing)
            + " (pass --data DIR, or --locomo / --longmemeval FILE)",
            file=sys.stderr,
        )
        return 0
    _, text = run(cfg)
    print(text)
    print(f"\nCSV: {cfg.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
