"""Retention: how much of a long conversation's evidence still reaches the model, and legibly.

    python -m benchmarks.retention                  # LoCoMo dev + LongMemEval-S dev, all budgets
    python -m benchmarks.retention --quick          # one conversation, 4k, a few questions
    python -m benchmarks.retention --data ../shared/data --out benchmarks/results/retention.csv

Each conversation is replayed with its own timestamps (LoCoMo ``session_N_date_time``,
LongMemEval ``haystack_dates``, via :mod:`optical_memory.importers`) into a fresh SQLite memory
and aged up to the moment the question is asked (LoCoMo: one day after the last session;
LongMemEval: ``question_date``, or the last turn where the file dates a session after its
question). The prompt is then assembled at each budget (1k, 2k, 4k, 8k tokens) for each target
(``deepseek-ocr``, ``openai``) under two aging policies:

* ``time``: the default :class:`TimeLadder` (an hour: large, a day: base, a week: small, a month:
  tiny), one memory per target, assembled at every budget;
* ``pressure``: ``AgingPolicy(by_time=None, budget=B)``, one memory per target and budget B,
  assembled at B.

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
* OCR of the evidence lines, not the whole page. By default the reader gets the page image at
  the tier shown with every row painted white except the lines that hold evidence turns (their
  ink and a pixel more), located with the renderer's own layout. The image keeps the page's size
  and the text its place, so the reader scales and reads those lines exactly as on the page;
  only the lines nobody asks about are skipped (recognition, per line, is most of the cost). ``--ocr-scope page`` reads whole pages (slower, same
  criterion). OCR results are cached per image, shared by every policy and budget that shows it.

Numbers are printed as markdown and written as CSV, one row per dataset, target, policy and
budget (``--details`` adds one row per evidence turn). They are measurements, not assertions;
the summary states the targets of issue 7 and whether this run meets them.
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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ocr import search_distance  # noqa: E402
from optical_memory import AgingPolicy, MemoryManager, PageRenderer, PageSegment, get_target
from optical_memory.aging import _render_turn
from optical_memory.ladder import IMAGE_TIERS
from optical_memory.render import RenderedImage, RenderTurn

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "retention.csv"
BUDGETS = (1024, 2048, 4096, 8192)
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
QUICK_BUDGET = 4096
QUICK_QUESTIONS = 12

CSV_COLUMNS = (
    "dataset",
    "target",
    "policy",
    "budget",
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
)

DETAIL_COLUMNS = (
    "dataset",
    "conversation",
    "question",
    "seq",
    "target",
    "policy",
    "budget",
    "shown",
    "stored_tier",
    "accuracy_rapidocr",
    "accuracy_tesseract",
)


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Question:
    qid: str
    evidence: tuple[int, ...]  # turn seqs (1-based, as the importers number them)


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


def locomo_conversations(
    path: Path, *, conversations: int | None = None, questions: int | None = None
) -> list[Conversation]:
    from optical_memory.importers import load_locomo, locomo_qa

    convs = load_locomo(path)
    qas = locomo_qa(path)
    out = []
    for cid, turns in list(convs.items())[:conversations]:
        qs = [
            Question(f"{cid}/q{i}", tuple(dict.fromkeys(qa.evidence_seqs)))
            for i, qa in enumerate(qas.get(cid, []))
            if qa.evidence_seqs
        ][:questions]
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
        out.append(
            Conversation("LongMemEval-S", qid, turns, asked, [Question(qid, qa.evidence_seqs)])
        )
    return out[:conversations]


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
        self._blank_png: dict[tuple[int, int], bytes] = {}

    def render(
        self,
        turns: Sequence[RenderTurn],
        layout: tuple[int, int],
        sizes: Sequence[tuple[int, int]],
    ) -> list[RenderedImage]:
        sizes = [(int(w), int(h)) for w, h in sizes]
        if self.wanted is not None and not any(self.wanted(t.text) for t in turns):
            self.blank += 1
            return [RenderedImage(self._blank(s), s[0], s[1], 0) for s in sizes]
        key = (tuple(layout), tuple((t.speaker, t.at, t.text) for t in turns))
        got = self.cache.get(key)
        if got is None or any(s not in got for s in sizes):
            every = list(dict.fromkeys([*self.sizes, *sizes]))
            got = dict(zip(every, super().render(turns, layout, every), strict=True))
            self.cache[key] = got
            self.drawn += 1
        return [got[s] for s in sizes]

    def _blank(self, size: tuple[int, int]) -> bytes:
        png = self._blank_png.get(size)
        if png is None:
            buf = io.BytesIO()
            Image.new("L", size, 255).save(buf, "PNG")
            png = self._blank_png[size] = buf.getvalue()
        return png


def render_turn(turn: Any) -> RenderTurn:
    """A stored turn as the aging pass renders it (same speaker label, same clock)."""
    return _render_turn(
        SimpleNamespace(meta=turn.metadata, role=turn.role, at=turn.at, content=turn.content)
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
    plan = renderer.plan([render_turn(t) for t in turns], layout, size)
    full, rts, canvas = plan.layout, plan.turns, plan.canvas
    spans = {}
    for seq in seqs:
        k = next(i for i, t in enumerate(turns) if t.seq == seq)
        before = renderer._layout(rts[:k], canvas, full.font_px, truncate=True) if k else None
        upto = renderer._layout(rts[: k + 1], canvas, full.font_px, truncate=True)
        assert upto is not None
        first = max(0, len(before.lines) - 1) if before is not None else 0
        spans[seq] = (first, max(first, len(upto.lines) - 1))
    ink = renderer._m(full.font_px).glyph_height
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


@dataclass
class Config:
    locomo: Path | None
    longmemeval: Path | None
    budgets: tuple[int, ...] = BUDGETS
    targets: tuple[str, ...] = TARGETS
    readers: tuple[str, ...] = READERS
    conversations: int | None = None
    questions: int | None = None
    lme_questions: int | None = None
    keep_last_turns: int = 8
    ocr_scope: str = "turn"
    render_all: bool = False
    out: Path = DEFAULT_OUT
    details: Path | None = None
    quiet: bool = False


@dataclass
class Placement:
    """Where one evidence turn is in one assembled prompt."""

    shown: str  # a tier label, or "absent"
    stored: str = ""
    ocr_key: str | None = None  # the crop read for it (images only)


@dataclass
class ConvResult:
    conv: Conversation
    # (target, policy, budget) -> seq -> placement; policy "window" uses target WINDOW_TARGET
    placements: dict[tuple[str, str, int], dict[int, Placement]] = field(default_factory=dict)
    tokens: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # (OCR image key, seq, reader) -> share of the turn's characters recovered
    accuracy: dict[tuple[str, int, str], float] = field(default_factory=dict)


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
    with tempfile.TemporaryDirectory(prefix="om-retention-") as tmp:
        for n, conv in enumerate(convs, 1):
            t0 = time.perf_counter()
            log(
                f"[{n}/{len(convs)}] {conv.dataset} {conv.conv_id}: {len(conv.turns)} turns, "
                f"{len(conv.questions)} questions, {len(conv.evidence)} evidence turns"
            )
            results.append(measure(conv, cfg, Path(tmp) / f"c{n}", ocr, log))
            log(f"    done in {time.perf_counter() - t0:.0f} s")
    elapsed = time.perf_counter() - started
    rows = summarise(results, cfg)
    text = report(rows, results, cfg, skipped, ocr, elapsed)
    write_csv(cfg.out, rows, CSV_COLUMNS)
    (cfg.out.with_suffix(".md")).write_text(text + "\n", encoding="utf-8")
    if cfg.details is not None:
        write_csv(cfg.details, detail_rows(results, cfg), DETAIL_COLUMNS)
    return rows, text


def measure(
    conv: Conversation, cfg: Config, workdir: Path, ocr: OcrPool, log: Callable[[str], None]
) -> ConvResult:
    workdir.mkdir(parents=True)
    res = ConvResult(conv)
    evidence = conv.evidence
    texts = {conv.turns[s - 1]["content"] for s in evidence}
    crops: dict[str, Image.Image] = {}
    read_as: dict[str, str] = {}  # page image hash -> the image registered for OCR
    for target in cfg.targets:
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
        variants: list[tuple[str, AgingPolicy, tuple[int, ...]]] = [
            ("time", AgingPolicy(keep_last_turns=cfg.keep_last_turns), cfg.budgets)
        ]
        variants += [
            (
                "pressure",
                AgingPolicy(keep_last_turns=cfg.keep_last_turns, by_time=None, budget=b),
                (b,),
            )
            for b in cfg.budgets
        ]
        geometry: dict[tuple[int, ...], PageGeometry] = {}
        for v, (policy_name, policy, budgets) in enumerate(variants):
            path = workdir / f"{target}-{v}.db"
            copy_sqlite(base, path)
            with MemoryManager(
                f"sqlite:///{path}", target=target, policy=policy, renderer=renderer
            ) as mm:
                report_ = mm.age(now=conv.asked_at)
                if report_.errors:
                    raise RuntimeError(f"aging failed: {report_.errors}")
                for b in budgets:
                    ctx = mm.assemble(SESSION, budget=b, target=target, now=conv.asked_at)
                    key = (target, policy_name, b)
                    res.tokens[key] = ctx.tokens
                    res.placements[key] = place(
                        ctx.segments,
                        evidence,
                        stored,
                        tgt.layout,
                        renderer,
                        cfg,
                        geometry,
                        crops,
                        read_as,
                    )
            path.unlink()
        log(f"    {target}: pages drawn {renderer.drawn}, blank {renderer.blank}")
    # the sliding-window baseline
    for b in cfg.budgets:
        kept, tokens = sliding_window(conv.turns, b)
        key = (WINDOW_TARGET, WINDOW, b)
        res.tokens[key] = tokens
        res.placements[key] = {s: Placement("text" if s in kept else ABSENT) for s in evidence}
    log(f"    OCR: {len(crops)} page images")
    ocr.run(crops, log)
    wanted = {(p.ocr_key, s) for pl in res.placements.values() for s, p in pl.items() if p.ocr_key}
    for k, seq in wanted:
        for r in cfg.readers:
            res.accuracy[k, seq, r] = window_accuracy(
                conv.turns[seq - 1]["content"], ocr.texts[k, r]
            )
    return res


def place(
    segments: Sequence[Any],
    evidence: set[int],
    stored: dict[int, Any],
    layout: tuple[int, int],
    renderer: PageRenderer,
    cfg: Config,
    geometry: dict[tuple[int, ...], PageGeometry],
    crops: dict[str, Image.Image],
    read_as: dict[str, str],
) -> dict[int, Placement]:
    """Classify each evidence turn in one prompt, registering the image to read for it.

    ``read_as`` maps a page image (its hash) to the OCR image registered in ``crops``: the page
    with every row blanked out except the bands holding evidence turns (or the whole page with
    ``--ocr-scope page``). The reader sees those rows exactly where and how large they are on the
    page, so it scales and reads them as it would the page.
    """
    out = {s: Placement(ABSENT) for s in evidence}
    for seg in segments:
        if not isinstance(seg, PageSegment):
            if seg.turn.seq in out:
                out[seg.turn.seq] = Placement("text", "text")
            continue
        inside = sorted(s for s in evidence if seg.first_seq <= s <= seg.last_seq)
        if not inside:
            continue
        sha = hashlib.sha1(seg.png).hexdigest()
        key = read_as.get(sha)
        if key is None:
            img = Image.open(io.BytesIO(seg.png))
            img.load()
            if cfg.ocr_scope == "page":
                key = sha
                crops.setdefault(key, img)
            else:
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
            out[s] = Placement(seg.tier, seg.stored_tier, key)
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


def legible(res: ConvResult, seq: int, p: Placement, reader: str) -> bool:
    if p.shown == "text":
        return True
    if p.ocr_key is None:
        return False
    return res.accuracy.get((p.ocr_key, seq, reader), 0.0) >= LEGIBLE


def arms(cfg: Config) -> list[tuple[str, str, int]]:
    out = [(t, p, b) for b in cfg.budgets for t in cfg.targets for p in POLICIES]
    out += [(WINDOW_TARGET, WINDOW, b) for b in cfg.budgets]
    return out


def summarise(results: Sequence[ConvResult], cfg: Config) -> list[dict[str, Any]]:
    primary = cfg.readers[0]
    rows = []
    for dataset in dict.fromkeys(r.conv.dataset for r in results):
        mine = [r for r in results if r.conv.dataset == dataset]
        for key in sorted(arms(cfg), key=lambda k: (k[2], k[1] == WINDOW, k[0], k[1])):
            target, policy, budget = key
            n = present = 0
            leg = dict.fromkeys(READERS, 0)
            qa_ok = qa_n = 0
            shown: dict[str, int] = defaultdict(int)
            leg_tier = {r: defaultdict(int) for r in READERS}
            tokens = [r.tokens[key] for r in mine]
            for r in mine:
                placements = r.placements[key]
                for q in r.conv.questions:
                    qa_n += 1
                    qa_ok += all(legible(r, s, placements[s], primary) for s in q.evidence)
                    for s in q.evidence:
                        p = placements[s]
                        n += 1
                        shown[p.shown] += 1
                        present += p.shown != ABSENT
                        for reader in cfg.readers:
                            ok = legible(r, s, p, reader)
                            leg[reader] += ok
                            if ok and p.shown in IMAGE_TIER_LABELS:
                                leg_tier[reader][p.shown] += 1
            row: dict[str, Any] = {
                "dataset": dataset,
                "target": target,
                "policy": policy,
                "budget": budget,
                "conversations": len(mine),
                "qa_items": qa_n,
                "evidence": n,
                "tokens_mean": round(sum(tokens) / len(tokens), 1) if tokens else 0,
                "tokens_max": max(tokens, default=0),
                "present_pct": pct(present, n),
                "legible_pct": pct(leg[primary], n),
                "qa_all_legible_pct": pct(qa_ok, qa_n),
                "as_text": shown["text"],
                "absent": shown[ABSENT],
            }
            for reader in READERS:
                row[f"legible_pct_{reader}"] = pct(leg[reader], n) if reader in cfg.readers else ""
                for t in IMAGE_TIER_LABELS:
                    row[f"legible_{reader}_{t}"] = (
                        leg_tier[reader][t] if reader in cfg.readers else ""
                    )
            for t in IMAGE_TIER_LABELS:
                row[f"in_{t}"] = shown[t]
            rows.append(row)
    return rows


def pct(a: int, n: int) -> float:
    return round(100.0 * a / n, 1) if n else 0.0


def detail_rows(results: Sequence[ConvResult], cfg: Config) -> list[dict[str, Any]]:
    out = []
    for r in results:
        for key in arms(cfg):
            placements = r.placements[key]
            for q in r.conv.questions:
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
                        "shown": p.shown,
                        "stored_tier": p.stored,
                    }
                    for reader in READERS:
                        acc = r.accuracy.get((p.ocr_key, s, reader)) if p.ocr_key else None
                        row[f"accuracy_{reader}"] = "" if acc is None else round(acc, 3)
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


def report(
    rows: Sequence[dict[str, Any]],
    results: Sequence[ConvResult],
    cfg: Config,
    skipped: Sequence[str],
    ocr: OcrPool,
    elapsed: float,
) -> str:
    primary = cfg.readers[0]
    out = ["# Retention: evidence in the assembled prompt", ""]
    out.append(
        f"Legible: text, or OCR of the page at the tier shown recovers ≥ {LEGIBLE:.0%} of the "
        f"turn's characters (best-matching substring, whitespace removed); reader {primary}"
        + (", Tesseract beside it" if "tesseract" in cfg.readers and primary != "tesseract" else "")
        + f'. OCR scope: {cfg.ocr_scope}. Window: trim_messages(strategy="last", '
        "count_tokens_approximately). Tier columns: % of the evidence shown at that tier "
        f"(in brackets: % of those legible to {primary})."
    )
    out.append("")
    for msg in skipped:
        out += [f"> {msg}", ""]
    by = {(r["dataset"], r["target"], r["policy"], r["budget"]): r for r in rows}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        first = mine[0]
        out.append(
            f"## {dataset}: {first['conversations']} conversations, {first['qa_items']} questions, "
            f"{first['evidence']} evidence turns"
        )
        out.append("")
        head = [
            "budget",
            "target",
            "policy",
            "tokens",
            "present %",
            f"legible % ({primary})",
        ]
        others = [r for r in cfg.readers if r != primary]
        head += [f"legible % ({r})" for r in others]
        head += ["QA all legible %", *TIERS, ABSENT]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" for _ in head) + "|")
        for r in mine:
            n = r["evidence"] or 1
            cells = [
                str(r["budget"]),
                r["target"],
                r["policy"],
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
        out.append(f"Against the window ({dataset}), × = policy / window:")
        out.append("")
        out.append("| budget | target | policy | present | legible |")
        out.append("|---|---|---|---|---|")
        for b in cfg.budgets:
            w = by.get((dataset, WINDOW_TARGET, WINDOW, b))
            if w is None:
                continue
            for t in cfg.targets:
                for p in POLICIES:
                    r = by.get((dataset, t, p, b))
                    if r is None:
                        continue
                    out.append(
                        f"| {b} | {t} | {p} | {r['present_pct']:.1f} vs {w['present_pct']:.1f} = "
                        f"{_ratio(r['present_pct'], w['present_pct'])} | {r['legible_pct']:.1f} vs "
                        f"{w['legible_pct']:.1f} = {_ratio(r['legible_pct'], w['legible_pct'])} |"
                    )
        out.append("")
    out += checks(by, cfg)
    ocr_secs = ", ".join(f"{r} {ocr.seconds[r]:.0f} s" for r in cfg.readers)
    out.append(
        f"Run: {len(results)} conversations, {ocr.images} page images read ({ocr_secs}), "
        f"{elapsed:.0f} s in all."
    )
    return "\n".join(out)


def checks(by: dict[tuple[str, str, str, int], dict[str, Any]], cfg: Config) -> list[str]:
    """The targets of issue 7, stated, and whether this run meets them."""
    out = ["## Targets", ""]
    lines = []
    for t in cfg.targets:
        r = by.get(("LoCoMo", t, "pressure", 4096))
        w = by.get(("LoCoMo", WINDOW_TARGET, WINDOW, 4096))
        if r is None or w is None:
            continue
        ok_p = r["present_pct"] >= 3 * w["present_pct"]
        ok_l = r["legible_pct"] >= 1.5 * w["legible_pct"]
        lines.append(
            f"- LoCoMo, 4k, pressure, {t}: present {r['present_pct']:.1f}% vs window "
            f"{w['present_pct']:.1f}% = {_ratio(r['present_pct'], w['present_pct'])} (target ≥ 3×): "
            f"**{'met' if ok_p else 'NOT met'}**; legible {r['legible_pct']:.1f}% vs "
            f"{w['legible_pct']:.1f}% = {_ratio(r['legible_pct'], w['legible_pct'])} "
            f"(target ≥ 1.5×): **{'met' if ok_l else 'NOT met'}**"
        )
    for t in cfg.targets:
        for p in POLICIES:
            cells = []
            worse = []
            for b in cfg.budgets:
                r = by.get(("LongMemEval-S", t, p, b))
                w = by.get(("LongMemEval-S", WINDOW_TARGET, WINDOW, b))
                if r is None or w is None:
                    continue
                cells.append(f"{b}: {r['legible_pct']:.1f} vs {w['legible_pct']:.1f}")
                if r["legible_pct"] < w["legible_pct"]:
                    worse.append(str(b))
            if cells:
                verdict = "met" if not worse else f"NOT met at {', '.join(worse)}"
                lines.append(
                    f"- LongMemEval-S, {p}, {t}: legible % vs window ({'; '.join(cells)}) "
                    f"(target: no worse): **{verdict}**"
                )
    if not lines:
        lines.append("- (no target applies to the data of this run)")
    return out + lines + [""]


# --------------------------------------------------------------------------------------------------
# Command line


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


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
        help=f"one LoCoMo conversation, {QUICK_BUDGET} tokens, {QUICK_QUESTIONS} questions",
    )
    ap.add_argument("--budgets", type=_ints, help="token budgets (default 1024,2048,4096,8192)")
    ap.add_argument("--targets", type=_names(TARGETS), help="default deepseek-ocr,openai")
    ap.add_argument(
        "--readers",
        type=_names(READERS),
        help="OCR readers, the first decides legibility (default rapidocr,tesseract)",
    )
    ap.add_argument("--conversations", type=int, help="LoCoMo conversations to use (default all)")
    ap.add_argument("--questions", type=int, help="LoCoMo questions per conversation (default all)")
    ap.add_argument("--lme-questions", type=int, help="LongMemEval questions (default all)")
    ap.add_argument("--keep-last-turns", type=int, default=8)
    ap.add_argument(
        "--ocr-scope",
        choices=("turn", "page"),
        default="turn",
        help="read only the page's evidence lines (default) or the whole page",
    )
    ap.add_argument(
        "--render-all", action="store_true", help="draw every page, not only those holding evidence"
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
        out=a.out,
        details=a.details,
        quiet=a.quiet,
    )
    if a.quick:
        cfg.longmemeval = None
        cfg.conversations = 1
        cfg.questions = QUICK_QUESTIONS
        cfg.budgets = (QUICK_BUDGET,)
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
