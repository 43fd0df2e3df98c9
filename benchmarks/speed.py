"""Speed, scale and storage of optical-memory against the store most users pick today.

    python -m benchmarks.speed                      # SQLite; sizes 100, 10,000, 100,000 turns
    python -m benchmarks.speed --pg-url postgresql://postgres@127.0.0.1:5432/test
    python -m benchmarks.speed --quick              # smoke size, a few seconds

Measures, on SQLite (a file, WAL) and on PostgreSQL when a URL is given (``--pg-url`` or
``$OPTICAL_MEMORY_TEST_PG_URL``; each size gets a scratch database, dropped afterwards):

* ``add_turn`` p50/p99 while one session grows to N turns: single calls are timed in groups at
  five points of the growth; the turns in between are added with ``add_turns`` batches.
* ``assemble(budget=4096, target="deepseek-ocr")`` p50/p99 on sessions of N turns that an aging
  pass has packed and aged (one turn every 104 s: 100,000 turns span 120 days, so pages sit at
  every tier; each session is the newest N turns of the largest), and the ratios between sizes:
  assembly walks back from the newest turn and stops at the budget, so it must not grow with
  the history.
* the aging pass: pages/s and ms/page for moves to each tier (render + PNG + one transaction per
  page), and drawing alone per tier.
* database bytes per 10,000 turns (SQLite: file + WAL after a checkpoint; PostgreSQL:
  ``pg_total_relation_size`` of the ``om_`` tables), before aging (text only) and after.
* the baseline: langchain-community's ``SQLChatMessageHistory`` at the same sizes, as it comes
  (``add_message``; ``.messages`` then ``trim_messages(strategy="last", max_tokens=4096,
  token_counter=count_tokens_approximately)``), and the ratios optical-memory / baseline.

How the big sessions are aged. Aging 100,000 turns for real draws about 1,100 pages at 0.1-0.3 s
each, which would dominate the run and measures the renderer, not assembly. So the sessions used
for the assemble and bytes measurements run the *real* aging pass (packing, the default time
ladder, tier flips, renditions, one transaction per page; seal_after 1 h, see ``POLICY``) with a renderer that draws the first
page of each tier set for real and stores those same PNG bytes for every later page: the database
ends up with the same rows, tiers and image sizes a real pass would write. The drawing itself is
measured in the aging table, on real pages. ``--real-render`` draws every page (slow).

Numbers are printed as markdown tables (also written next to the CSV, as .md) and written as
CSV (long format, one value a row). They
are measurements of one machine at one time, never assertions.
"""

from __future__ import annotations

import argparse
import csv
import gc
import itertools
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from optical_memory import AgingPolicy, MemoryManager, PageRenderer, get_target
from optical_memory.draw_pool import usable_cores
from optical_memory.ladder import IMAGE_TIERS, Tier
from optical_memory.render import RenderTurn

PG_ENV = "OPTICAL_MEMORY_TEST_PG_URL"
DEFAULT_SIZES = (100, 10_000, 100_000)
QUICK_SIZES = (40, 400)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "speed.csv"
BUDGET = 4096
TARGET = "deepseek-ocr"
SESSION = "bench"
CUE = "when did Maya book flights to Lisbon?"  # frequent words of the synthetic chat: a worst case
END = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # the newest turn of every aged session
TURN_EVERY = timedelta(seconds=104)  # one turn every 104 s: 100,000 turns span 120 days
COME_BACK = timedelta(hours=2)  # aging and assembly run this long after the newest turn
# The default policy but for min_fill (default 0.25): with it a newest page under a quarter full
# stays unpaged text until more turns come or the session is quiet for a week, so the context's
# shape would depend on where page boundaries fall. min_fill=0 seals it after the default hour,
# giving every size the same shape: 8 turns of text, then pages.
POLICY = AgingPolicy(min_fill=0)
GROWTH_POINTS = 5
BULK_BATCH = 2_000

OM = "optical-memory"
LC = "langchain-sql"
LC_WAL = "langchain-sql+wal"
RAW = "raw-driver"  # the same SQL on the driver alone (sqlite3, psycopg): the floor

CSV_COLUMNS = (
    "section",
    "backend",
    "system",
    "turns",
    "tier",
    "metric",
    "value",
    "unit",
    "samples",
)


@dataclass
class Row:
    """One measured value (the CSV is one row per value)."""

    section: str
    backend: str
    system: str
    turns: int | str
    tier: str
    metric: str
    value: float
    unit: str
    samples: int | str = ""


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    pg_url: str | None
    out: Path
    add_samples: int  # single add_turn calls timed per size (at most)
    assemble_samples: int  # assemble calls timed per size
    baseline_read_seconds: float  # rough time allowed to .messages+trim per size
    aging_turns: int  # session for the aging throughput measurement
    real_render: bool
    baseline: bool
    quick: bool
    contention_samples: int = 0  # add_turn calls timed beside two agers (0: not measured)
    aging_only: bool = False  # only the aging rows (no sizes, no baseline)
    idle_pass: bool = False  # time an aging pass with nothing to do over idle_sessions
    idle_sessions: int = 1_001
    draw_pool: int = 0  # workers of the first pass measured against in-process (0: not measured)
    draw_pool_repeats: int = 2  # runs of each, alternated


# --------------------------------------------------------------------------------------------------
# Small helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); q in [0, 100]."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def fmt_ms(v: float) -> str:
    if v is None or math.isnan(v):
        return "–"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_ratio(v: float) -> str:
    if v is None or math.isnan(v) or math.isinf(v):
        return "–"
    return f"{v:.3f}×" if v < 0.1 else f"{v:.2f}×" if v < 10 else f"{v:.0f}×"


def fmt_bytes(v: float) -> str:
    if v is None or math.isnan(v):
        return "–"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v:.0f} B"


def fmt_n(n: int | str) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def ratio(a: float, b: float) -> float:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def log(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Synthetic history


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str
    at: datetime


def make_turns(
    n: int, *, end: datetime = END, every: timedelta = TURN_EVERY, seed: int = 7
) -> list[ChatTurn]:
    """``n`` turns of synthetic two-person chat, one every ``every``, the newest at ``end``."""
    from benchmarks.ocr import synthetic_chat

    start = end - every * (n - 1)
    return [
        ChatTurn("user" if i % 2 == 0 else "assistant", t.text, start + every * i)
        for i, t in enumerate(itertools.islice(synthetic_chat(seed), n))
    ]


class ReplayRenderer(PageRenderer):
    """Draws the first page of each set of sizes for real, then returns those same images.

    Packing (capacity, footprints) is the real renderer's; only the drawing is replayed. Used
    to age 100,000-turn sessions in seconds: the rows, tiers and image sizes the aging pass
    writes are those of a real pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple, list] = {}
        self.drawn = 0
        self.replayed = 0

    def render(self, turns, layout, sizes):  # type: ignore[no-untyped-def, override]
        key = (tuple(layout), tuple(tuple(s) for s in sizes))
        if key not in self._cache:
            self._cache[key] = super().render(turns, layout, sizes)
            self.drawn += 1
        else:
            self.replayed += 1
        return list(self._cache[key])


# --------------------------------------------------------------------------------------------------
# Backends: where the databases live


class Backend:
    name: str

    @contextmanager
    def database(self, label: str) -> Iterator[str]:  # a SQLAlchemy URL, fresh
        raise NotImplementedError
        yield ""

    def om_bytes(self, mm: MemoryManager) -> int:
        raise NotImplementedError

    def lc_bytes(self, url: str, table: str) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    @contextmanager
    def database(self, label: str) -> Iterator[str]:
        path = self.workdir / f"{label}-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _files(url: str) -> int:
        path = url.removeprefix("sqlite:///")
        return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))

    def om_bytes(self, mm: MemoryManager) -> int:
        with mm.database.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return self._files(mm.url)

    def lc_bytes(self, url: str, table: str) -> int:
        return self._files(url)  # the stock history uses the default rollback journal

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (file in {self.workdir})"


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, text

        from optical_memory.database import normalise_url

        self.url = normalise_url(url)
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            self.version = conn.execute(text("SHOW server_version")).scalar_one()

    @contextmanager
    def database(self, label: str) -> Iterator[str]:
        from sqlalchemy import make_url, text

        name = f"om_bench_{uuid.uuid4().hex[:10]}_{label}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(self.url).set(database=name).render_as_string(hide_password=False)
        finally:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def om_bytes(self, mm: MemoryManager) -> int:
        from sqlalchemy import text

        query = text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND c.relname LIKE :pattern AND n.nspname = current_schema()"
        )
        with mm.database.engine.connect() as conn:
            return int(conn.execute(query, {"pattern": "om\\_%"}).scalar_one())

    def lc_bytes(self, url: str, table: str) -> int:
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text("SELECT pg_total_relation_size(:t)"), {"t": table}
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    def describe(self) -> str:
        return f"PostgreSQL {self.version}"

    def close(self) -> None:
        self.admin.dispose()


# --------------------------------------------------------------------------------------------------
# The two stores, behind one small interface


class OmStore:
    system = OM

    def __init__(self, url: str, renderer: PageRenderer) -> None:
        self.mm = MemoryManager(url, target=TARGET, renderer=renderer, policy=POLICY)

    @staticmethod
    def add_all(mm: MemoryManager, turns: Sequence[ChatTurn]) -> None:
        mm.add_turns(SESSION, [{"role": t.role, "content": t.content, "at": t.at} for t in turns])

    def bulk(self, turns: Sequence[ChatTurn]) -> None:
        self.add_all(self.mm, turns)

    def prepare(self, t: ChatTurn) -> ChatTurn:
        return t

    def single(self, t: ChatTurn) -> None:
        self.mm.add_turn(SESSION, t.role, t.content, at=t.at)

    def close(self) -> None:
        self.mm.close()


class LcStore:
    """langchain-community's SQLChatMessageHistory, as users set it up (a URL string)."""

    system = LC

    def __init__(self, connection: Any, table: str = "message_store") -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # langchain-community's sunset notice
                from langchain_community.chat_message_histories import SQLChatMessageHistory
        except ImportError as exc:  # it imports sqlalchemy.ext.asyncio, which needs greenlet
            raise SystemExit(
                f"the baseline needs langchain-community and greenlet ({exc}); "
                "pip install -e '.[dev]', or pass --no-baseline"
            ) from exc
        self.hist = SQLChatMessageHistory(SESSION, connection=connection, table_name=table)

    @staticmethod
    def message(t: ChatTurn):  # type: ignore[no-untyped-def]
        from langchain_core.messages import AIMessage, HumanMessage

        return HumanMessage(t.content) if t.role == "user" else AIMessage(t.content)

    def bulk(self, turns: Sequence[ChatTurn]) -> None:
        self.hist.add_messages([self.message(t) for t in turns])

    def prepare(self, t: ChatTurn):  # type: ignore[no-untyped-def]
        return self.message(t)  # built outside the timer, as optical-memory's arguments are

    def single(self, msg: Any) -> None:
        self.hist.add_message(msg)

    def read_trimmed(self) -> list:
        from langchain_core.messages import trim_messages
        from langchain_core.messages.utils import count_tokens_approximately

        return trim_messages(
            self.hist.messages,
            strategy="last",
            token_counter=count_tokens_approximately,
            max_tokens=BUDGET,
        )

    def close(self) -> None:
        self.hist.session_maker.remove()
        self.hist.engine.dispose()


def wal_engine(url: str):  # type: ignore[no-untyped-def]
    """An engine on the baseline's SQLite file with the pragmas optical-memory uses."""
    from sqlalchemy import create_engine, event

    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


# --------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Growth:
    """Single add calls timed in groups while the session grows."""

    samples_ms: list[float]
    groups: list[tuple[int, list[float]]]  # (session length before the group, timings)
    build_s: float


def grow(store: OmStore | LcStore, turns: Sequence[ChatTurn], samples: int) -> Growth:
    """Add all ``turns`` to the store: bulk batches, with ``samples`` single calls timed in
    ``GROWTH_POINTS`` groups from the empty session to the full one."""
    n = len(turns)
    samples = max(GROWTH_POINTS, min(samples, n // 2))
    per = samples // GROWTH_POINTS
    bulk_total = n - per * GROWTH_POINTS
    started = time.perf_counter()
    pos = 0
    groups: list[tuple[int, list[float]]] = []
    for g in range(GROWTH_POINTS):
        target = bulk_total * g // (GROWTH_POINTS - 1) + per * g
        while pos < target:
            chunk = turns[pos : min(target, pos + BULK_BATCH)]
            store.bulk(chunk)
            pos += len(chunk)
        prepared = [store.prepare(t) for t in turns[pos : pos + per]]
        times = []
        for item in prepared:
            ms, _ = timed(lambda item=item: store.single(item))
            times.append(ms)
        groups.append((pos, times))
        pos += per
    while pos < n:
        chunk = turns[pos : min(n, pos + BULK_BATCH)]
        store.bulk(chunk)
        pos += len(chunk)
    build = time.perf_counter() - started
    return Growth([t for _, ts in groups for t in ts], groups, build)


def sample_calls(fn: Callable[[], Any], n: int, warmup: int = 1) -> tuple[list[float], Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(n):
        ms, out = timed(fn)
        times.append(ms)
    return times, out


def sample_alternately(
    a: Callable[[], Any], b: Callable[[], Any], n: int, warmup: int = 1
) -> tuple[tuple[list[float], Any], tuple[list[float], Any]]:
    """Like :func:`sample_calls` for two calls, timed in turn (a, b, a, b, ...)."""
    out_a = out_b = None
    for _ in range(warmup):
        out_a, out_b = a(), b()
    times_a, times_b = [], []
    for _ in range(n):
        ms, out_a = timed(a)
        times_a.append(ms)
        ms, out_b = timed(b)
        times_b.append(ms)
    return (times_a, out_a), (times_b, out_b)


class Recorder:
    """Appends rows that share a section, backend, system and session length."""

    def __init__(self, rows: list[Row], section: str, backend: str, system: str, turns: Any):
        self.rows, self.key = rows, (section, backend, system, turns)

    def __call__(
        self, metric: str, value: float, unit: str, samples: int | str = "", tier: str = ""
    ) -> None:
        section, backend, system, turns = self.key
        self.rows.append(Row(section, backend, system, turns, tier, metric, value, unit, samples))

    def latency(self, prefix: str, times: Sequence[float]) -> None:
        self(f"{prefix}_p50", percentile(times, 50), "ms", len(times))
        self(f"{prefix}_p99", percentile(times, 99), "ms", len(times))


def add_growth_rows(rows: list[Row], backend: str, system: str, n: int, g: Growth) -> None:
    Recorder(rows, "add", backend, system, n).latency("add", g.samples_ms)
    Recorder(rows, "build", backend, system, n)("build_seconds", g.build_s, "s")
    growth = Recorder(rows, "add_growth", backend, system, n)
    for length, times in g.groups:
        growth(f"add_p50_at_{length}", percentile(times, 50), "ms", len(times))


def bench_optical(
    cfg: Config, backend: Backend, n: int, turns: Sequence[ChatTurn], rows: list[Row]
) -> None:
    renderer = PageRenderer() if cfg.real_render else ReplayRenderer()
    prep = Recorder(rows, "prep", backend.name, OM, n)
    size = Recorder(rows, "bytes", backend.name, OM, n)
    asm = Recorder(rows, "assemble", backend.name, OM, n)
    with backend.database(f"om{n}") as url:
        store = OmStore(url, renderer)
        try:
            log(f"{backend.name}: optical-memory, growing a session to {n:,} turns")
            g = grow(store, turns, cfg.add_samples)
            add_growth_rows(rows, backend.name, OM, n, g)
            mm = store.mm
            text_bytes = backend.om_bytes(mm)

            log(f"{backend.name}: optical-memory, aging {n:,} turns")
            now = turns[-1].at + COME_BACK
            report = mm.age(now=now)
            if report.errors:
                raise RuntimeError(f"aging failed: {report.errors}")
            pages = mm.pages(SESSION)
            aged_bytes = backend.om_bytes(mm)
            prep("aging_seconds", report.seconds, "s")
            prep("pages", len(pages), "pages")
            for tier in Tier:
                prep(
                    "pages_at_tier",
                    sum(p.tier == tier.label for p in pages),
                    "pages",
                    tier=tier.label,
                )
            size("bytes_text_only", text_bytes, "B")
            size("bytes_aged", aged_bytes, "B")
            size("bytes_per_10k_text_only", text_bytes * 10_000 / n, "B")
            size("bytes_per_10k_aged", aged_bytes * 10_000 / n, "B")

            log(f"{backend.name}: optical-memory, timing assemble on {n:,} turns")
            gc.collect()
            # Without and with a cue (a full-text search of the archive joins it), the calls
            # alternating so that both see the same load: their ratio is the figure.
            (times, ctx), (cue_times, _) = sample_alternately(
                lambda: mm.assemble(SESSION, budget=BUDGET, target=TARGET, now=now),
                lambda: mm.assemble(SESSION, budget=BUDGET, target=TARGET, now=now, cue=CUE),
                cfg.assemble_samples,
                warmup=2,
            )
            asm.latency("read", times)
            asm("context_tokens", ctx.tokens, "tokens")
            asm("turns_covered", n - ctx.omitted_turns, "turns")
            asm("pages_shown", len(ctx.pages), "pages")
            asm("text_turns_shown", len(ctx.texts), "turns")
            asm("png_bytes_read", sum(len(p.png) for p in ctx.pages), "B")
            asm.latency("read_cue", cue_times)
            bench_assemble_floor(cfg, backend, mm, now, rows, n)
            # recall() alone (after the floor: each call also writes its rehearsal).
            recall_times, _ = sample_calls(
                lambda: mm.recall(SESSION, CUE), cfg.assemble_samples, warmup=2
            )
            asm.latency("recall", recall_times)
        finally:
            store.close()


def bench_baseline(
    cfg: Config, backend: Backend, n: int, turns: Sequence[ChatTurn], rows: list[Row]
) -> None:
    from langchain_core.messages.utils import count_tokens_approximately

    size = Recorder(rows, "bytes", backend.name, LC, n)
    asm = Recorder(rows, "assemble", backend.name, LC, n)
    with backend.database(f"lc{n}") as url:
        store = LcStore(url)
        try:
            log(f"{backend.name}: SQLChatMessageHistory, growing a session to {n:,} messages")
            g = grow(store, turns, cfg.add_samples)
            add_growth_rows(rows, backend.name, LC, n, g)
            stored = backend.lc_bytes(url, "message_store")
            size("bytes", stored, "B")
            size("bytes_per_10k", stored * 10_000 / n, "B")

            # A few calls at most at 100k: .messages loads and parses the whole session.
            ms_one, _ = timed(store.read_trimmed)  # warm-up (imports, first query), untimed
            k = int(max(3, min(cfg.assemble_samples, cfg.baseline_read_seconds * 1000 / ms_one)))
            log(f"{backend.name}: SQLChatMessageHistory, {k} x .messages + trim ({ms_one:.0f} ms)")
            gc.collect()
            times, trimmed = sample_calls(store.read_trimmed, k, warmup=0)
            asm.latency("read", times)
            asm("context_tokens", count_tokens_approximately(trimmed), "tokens")
            asm("turns_covered", len(trimmed), "turns")
        finally:
            store.close()

        if backend.name == "sqlite":
            # The same history with optical-memory's pragmas: how much is the journal mode.
            wal = LcStore(wal_engine(url))
            try:
                k = max(GROWTH_POINTS, min(cfg.add_samples // GROWTH_POINTS, n // 2))
                later = turns[-1].at + timedelta(hours=1)
                msgs = [
                    wal.prepare(t) for t in make_turns(k, end=later, every=timedelta(seconds=1))
                ]
                times = [timed(lambda m=m: wal.single(m))[0] for m in msgs]
                Recorder(rows, "add", backend.name, LC_WAL, n).latency("add", times)
            finally:
                wal.close()


def bench_aging(cfg: Config, backend: Backend, rows: list[Row]) -> None:
    """Real rendering: one session of fresh turns, moved down the ladder one tier a pass."""
    n = cfg.aging_turns
    every = min(timedelta(seconds=1), timedelta(minutes=50) / n)  # all within the hour
    turns = make_turns(n, end=END, every=every, seed=11)
    last = turns[-1].at
    rec = Recorder(rows, "aging", backend.name, OM, n)
    with backend.database("aging") as url:
        mm = MemoryManager(url, target=TARGET)
        try:
            OmStore.add_all(mm, turns)
            log(f"{backend.name}: aging {n:,} turns down the ladder (real rendering)")
            packed = mm.age(now=last + timedelta(minutes=1))
            rec("pages", packed.pages_created, "pages", tier="pack")
            rec("seconds", packed.seconds, "s", tier="pack")
            steps = (
                (Tier.LARGE, timedelta(hours=2)),
                (Tier.BASE, timedelta(days=2)),
                (Tier.SMALL, timedelta(days=8)),
                (Tier.TINY, timedelta(days=31)),
            )
            for tier, age in steps:
                rep = mm.age(now=last + age)
                if rep.errors:
                    raise RuntimeError(f"aging failed: {rep.errors}")
                moved = rep.pages_moved.get(tier.label, 0)
                secs = rep.seconds
                lab = tier.label
                rec("pages", moved, "pages", tier=lab)
                rec("images_per_page", sum(t >= tier for t in IMAGE_TIERS), "images", tier=lab)
                rec("seconds", secs, "s", tier=lab)
                rec("pages_per_s", moved / secs if secs else math.nan, "pages/s", tier=lab)
                rec("ms_per_page", secs * 1000 / moved if moved else math.nan, "ms", moved, lab)
            if backend.name == "sqlite":
                bench_render(mm, rows)
                bench_png(mm, rows)
        finally:
            mm.close()


def bench_render(mm: MemoryManager, rows: list[Row], max_pages: int = 8) -> None:
    """Drawing + PNG alone (no database), one image per call, on the aging session's pages."""
    renderer = PageRenderer()
    target = get_target(TARGET)
    layout = target.layout
    all_turns = mm.turns(SESSION)
    groups = [
        [RenderTurn(t.role, t.at, t.content) for t in all_turns[p.first_seq - 1 : p.last_seq]]
        for p in mm.pages(SESSION)[:max_pages]
    ]
    if not groups:
        return
    renderer.render(groups[0], layout, [target.spec(Tier.TINY).size])  # warm the glyph caches
    rec = Recorder(rows, "render", "-", OM, "")
    for tier in IMAGE_TIERS:
        size = target.spec(tier).size
        times, png_bytes = [], []
        for g in groups:
            ms, images = timed(lambda g=g, size=size: renderer.render(g, layout, [size]))
            times.append(ms)
            png_bytes.append(len(images[0].png))
        rec("render_ms", statistics.mean(times), "ms", len(times), tier.label)
        rec("png_bytes", statistics.mean(png_bytes), "B", len(times), tier.label)
        rec("canvas", size[0], "px", "", tier.label)


def bench_draw_pool(cfg: Config, backend: Backend, rows: list[Row]) -> None:
    """The first pass over one session of ``cfg.aging_turns`` fresh turns (packing, and every
    page drawn at the four image tiers as renditions: the pack row of the aging table), drawn
    in-process (``draw_workers=1``) and by a pool of ``cfg.draw_pool`` worker processes,
    alternated ``cfg.draw_pool_repeats`` times on fresh databases. Each manager first ages a
    small warm-up session (its pool started, the glyph caches filled: the start is timed
    apart), so the timed pass is a long-running manager's. The pages of both are compared."""
    import hashlib

    n = cfg.aging_turns
    every = min(timedelta(seconds=1), timedelta(minutes=50) / n)
    turns = [
        {"role": t.role, "content": t.content, "at": t.at}
        for t in make_turns(n, end=END, every=every, seed=11)
    ]
    warm = [
        {"role": t.role, "content": t.content, "at": t.at}
        for t in make_turns(300, end=END, every=timedelta(seconds=1), seed=12)
    ]
    now = turns[-1]["at"] + timedelta(minutes=1)
    rec = Recorder(rows, "draw_pool", backend.name, OM, n)
    prints: dict[int, set[str]] = {}
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    for i in range(cfg.draw_pool_repeats):
        for workers in (1, cfg.draw_pool) if i % 2 == 0 else (cfg.draw_pool, 1):
            with backend.database(f"pool{workers}x{i}") as url:
                mm = MemoryManager(url, target=TARGET, draw_workers=workers)
                try:
                    mm.add_turns("warm", warm)
                    mm.add_turns(SESSION, turns)
                    log(f"{backend.name}: first pass, draw_workers={workers} (run {i + 1})")
                    started = mm.age(now=now, sessions=["warm"])
                    cpu = time.process_time()  # this process's CPU: all threads, no workers
                    rep = mm.age(now=now, sessions=[SESSION])
                    cpu = time.process_time() - cpu
                    if started.errors or rep.errors:
                        raise RuntimeError(f"aging failed: {started.errors + rep.errors}")
                    drawn = rep.pages_prepared + sum(rep.pages_moved.values())
                    tier = f"workers={workers}"
                    rec("start_seconds", started.seconds, "s", tier=tier)
                    rec("pages", drawn, "pages", tier=tier)
                    rec("seconds", rep.seconds, "s", tier=tier)
                    rec("pages_per_s", ratio(drawn, rep.seconds), "pages/s", tier=tier)
                    rec("parent_cpu_ms_per_page", ratio(cpu * 1000, drawn), "ms", tier=tier)
                    digest = hashlib.sha256()
                    for page in mm.pages(SESSION):
                        for lab in (t.label for t in IMAGE_TIERS):
                            digest.update(mm.page_image(SESSION, page.page_id, lab))
                    prints.setdefault(workers, set()).add(digest.hexdigest())
                finally:
                    mm.close()
            if hasattr(os, "getloadavg"):
                load.append(os.getloadavg()[0])
    same = len(prints.get(1, set()) | prints.get(cfg.draw_pool, set())) == 1
    rec("same_bytes", float(same), "bool")
    if load:
        rec("load_avg_1min_max", max(load), "load")
        rec("load_avg_1min_min", min(load), "load")


def draw_pool_section(cfg: Config, rows: Sequence[Row]) -> list[str]:
    """The first pass drawn in-process and by a pool (when measured)."""
    if not cfg.draw_pool:
        return []
    out: list[str] = []
    by: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.section == "draw_pool":
            by.setdefault((r.backend, r.tier), []).append(r)
    for b in sorted({b for b, _ in by}):
        body = []
        best: dict[int, float] = {}
        for workers in (1, cfg.draw_pool):
            got = by.get((b, f"workers={workers}"), [])

            def vals(metric: str, got: list[Row] = got) -> list[float]:
                return [float(r.value) for r in got if r.metric == metric]

            rates = vals("pages_per_s")
            if not rates:
                continue
            best[workers] = max(rates)
            body.append(
                [
                    "in-process" if workers == 1 else f"pool of {workers}",
                    f"{statistics.mean(vals('pages')):.0f}",
                    " / ".join(f"{v:.2f}" for v in vals("seconds")),
                    " / ".join(f"{v:.2f}" for v in rates),
                    f"{max(rates):.2f}",
                    fmt_ratio(ratio(max(rates), best.get(1, math.nan))),
                    fmt_ms(statistics.mean(vals("parent_cpu_ms_per_page"))),
                    " / ".join(f"{v:.2f}" for v in vals("start_seconds")),
                ]
            )
        rest = {r.metric: r.value for r in by.get((b, ""), [])}
        same = "yes" if rest.get("same_bytes") == 1.0 else "NO"
        loads = (
            f"; 1-min load average {rest['load_avg_1min_min']:.2f}-{rest['load_avg_1min_max']:.2f}"
            if "load_avg_1min_max" in rest
            else ""
        )
        out += [
            f"## first pass: in-process against a draw pool ({b})",
            "",
            f"One session of {cfg.aging_turns:,} fresh turns, its first pass (packing, every "
            "page drawn at the four image tiers), by a manager that has already aged a warm-up "
            "session (its pool started: 'warm-up s'); runs alternated, each on a fresh "
            f"database, on {usable_cores()} usable cores{loads}. Same page bytes: {same}. "
            "'CPU of this process': what the pass costs the process that runs it (reads, "
            "commits, and the drawing unless a pool draws): with n workers the pass cannot "
            "go faster than one page per that time, nor n times faster than in-process.",
            "",
            md_table(
                [
                    "drawing",
                    "pages",
                    "seconds (each run)",
                    "pages/s (each run)",
                    "best pages/s",
                    "× in-process",
                    "CPU of this process per page",
                    "warm-up s",
                ],
                body,
            ),
            "",
        ]
    return out


CONTENTION_AGERS = 2
CONTENTION_ROUND_TURNS = 120  # turns of the fresh session each ager adds before its next pass
CONTENTION_PACE = 0.002  # seconds between two timed add_turn calls (a request stream)


def _contention_ager(url: str, k: int, started: Any, stop: Any, out: Any) -> None:
    """One aging worker (its own process): each round adds a fresh session, then runs a full
    pass over the whole file with a clock one day later, so there is always drawing to do:
    the new session's pages go to large (four images each), the older ones one tier down."""
    mm = MemoryManager(url, target=TARGET, policy=POLICY)
    passes = moved = skipped = 0
    errors: list[str] = []
    try:
        i = 0
        while not stop.is_set():
            newest = END + timedelta(days=i)
            turns = make_turns(
                CONTENTION_ROUND_TURNS, end=newest, every=timedelta(seconds=20), seed=1000 * k + i
            )
            mm.add_turns(
                f"ager-{k}-{i}", [{"role": t.role, "content": t.content, "at": t.at} for t in turns]
            )
            started.set()
            rep = mm.age(now=newest + COME_BACK)
            passes += 1
            moved += sum(rep.pages_moved.values())
            skipped += getattr(rep, "pages_skipped", 0)
            errors += rep.errors
            i += 1
    except Exception as exc:  # reported to the parent, which prints it
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        mm.close()
        out.put({"passes": passes, "moved": moved, "skipped": skipped, "errors": errors[:5]})


def _paced_adds(mm: MemoryManager, n: int, start: datetime) -> tuple[list[float], int]:
    """``n`` single add_turn calls, CONTENTION_PACE apart; their latencies and the failures."""
    times: list[float] = []
    failures = 0
    texts = make_turns(n, end=start + timedelta(seconds=n), every=timedelta(seconds=1), seed=5)
    for t in texts:
        try:
            ms, _ = timed(lambda t=t: mm.add_turn(SESSION, t.role, t.content, at=t.at))
            times.append(ms)
        except Exception:  # StoreBusy under the old design: counted, not timed
            failures += 1
        time.sleep(CONTENTION_PACE)
    return times, failures


def bench_contention(cfg: Config, backend: Backend, rows: list[Row]) -> None:
    """``add_turn`` p50/p99 on one SQLite file, alone and while two aging processes run full
    passes against it continuously; the ratio is the cost aging puts on a writer (goal
    p99 <= 3x). Both phases pace their calls the same way, on the same session."""
    import multiprocessing

    n = cfg.contention_samples
    rec = Recorder(rows, "contention", backend.name, OM, n)
    ctx = multiprocessing.get_context("spawn")
    with backend.database("contention") as url:
        mm = MemoryManager(url, target=TARGET, policy=POLICY)
        procs = []
        stop = ctx.Event()
        out = ctx.Queue()
        try:
            _paced_adds(mm, 30, END - timedelta(days=30))  # warm-up
            log(f"{backend.name}: {n} add_turn calls alone (half before the agers, half after)")
            alone, fail_alone = _paced_adds(mm, n // 2, END - timedelta(days=20))
            started = [ctx.Event() for _ in range(CONTENTION_AGERS)]
            procs = [
                ctx.Process(target=_contention_ager, args=(url, k, started[k], stop, out))
                for k in range(CONTENTION_AGERS)
            ]
            for p in procs:
                p.start()
            for e in started:
                e.wait(120)
            time.sleep(1.0)  # both in the middle of a pass
            log(f"{backend.name}: {n} add_turn calls beside {CONTENTION_AGERS} agers")
            busy, fail_busy = _paced_adds(mm, n, END - timedelta(days=10))
        finally:
            stop.set()
            results = [out.get(timeout=600) for _ in procs]
            for p in procs:
                p.join(60)
        try:
            after, fail_after = _paced_adds(mm, n - n // 2, END - timedelta(days=5))
            alone, fail_alone = alone + after, fail_alone + fail_after
        finally:
            mm.close()
    for label, times, fails in (("alone", alone, fail_alone), ("agers", busy, fail_busy)):
        rec.latency(f"add_{label}", times)
        rec(f"add_{label}_max", max(times, default=math.nan), "ms", len(times))
        rec(f"add_{label}_failed", fails, "calls", n)
    rec("p99_ratio", ratio(percentile(busy, 99), percentile(alone, 99)), "x", n)
    rec("p50_ratio", ratio(percentile(busy, 50), percentile(alone, 50)), "x", n)
    rec("ager_passes", sum(r["passes"] for r in results), "passes")
    rec("ager_pages_moved", sum(r["moved"] for r in results), "pages")
    rec("ager_pages_skipped", sum(r["skipped"] for r in results), "pages")
    for r in results:
        for e in r["errors"]:
            log(f"ager error: {e}")


IDLE_SESSIONS = 1_001


def bench_idle_pass(cfg: Config, backend: Backend, rows: list[Row]) -> None:
    """An aging pass with nothing to do over ``cfg.idle_sessions`` aged sessions (1,001; quick
    101): its time, the
    statements it sends and the write transactions it opens; beside it, the floor: the pass's
    first statement (the sessions query) run again on the raw driver connection."""
    from sqlalchemy import event

    n = cfg.idle_sessions
    rec = Recorder(rows, "idle_pass", backend.name, OM, n)
    with backend.database("idle") as url:
        mm = MemoryManager(url, target=TARGET, policy=POLICY, renderer=ReplayRenderer())
        try:
            log(f"{backend.name}: {n:,} sessions for an aging pass with nothing to do")
            turns = make_turns(24, end=END, every=timedelta(minutes=2), seed=3)
            batch = {
                f"idle-{k}": [{"role": t.role, "content": t.content, "at": t.at} for t in turns]
                for k in range(n)
            }
            mm.add_sessions(batch)
            now = END + timedelta(days=2)  # pages at base: they can still fade, later
            first = mm.age(now=now)
            if first.errors:
                raise RuntimeError(f"aging failed: {first.errors}")
            statements: list[tuple[str, Any]] = []
            writes = 0

            def sent(_c, _cur, statement, parameters, _ctx, _many) -> None:  # type: ignore[no-untyped-def]
                statements.append((statement, parameters))

            def began(conn) -> None:  # type: ignore[no-untyped-def]
                nonlocal writes
                writes += "IMMEDIATE" in str(conn.get_execution_options().get("sqlite_begin", ""))

            engine = mm.database.engine
            event.listen(engine, "before_cursor_execute", sent)
            event.listen(engine, "begin", began)
            try:
                idle = mm.age(now=now)
            finally:
                event.remove(engine, "before_cursor_execute", sent)
                event.remove(engine, "begin", began)
            if idle.changed or idle.errors:
                raise RuntimeError(f"the idle pass did something: {idle}")
            times, _ = sample_calls(lambda: mm.age(now=now), 3 if cfg.quick else 10, warmup=0)
            rec("pass_ms_p50", percentile(times, 50), "ms", len(times))
            rec("statements", len(statements), "statements")
            if backend.name == "sqlite":
                rec("write_transactions", writes, "transactions")
            floor = math.nan
            queries = [(q, p) for q, p in statements if q.lstrip().upper().startswith("SELECT")]
            if queries:
                statement, parameters = queries[0]  # the sessions query
                raw = mm.database.engine.raw_connection()
                try:
                    cur = raw.cursor()
                    cur.execute(statement, parameters)
                    cur.fetchall()
                    ts = []
                    for _ in range(20):
                        ms, _ = timed(lambda: (cur.execute(statement, parameters), cur.fetchall()))
                        ts.append(ms)
                    floor = percentile(ts, 50)
                    raw.rollback()
                finally:
                    raw.close()
            rec("floor_ms_p50", floor, "ms", 20)
            rec("sessions_visited", idle.sessions_visited, "sessions")
        finally:
            mm.close()


def bench_png(mm: MemoryManager, rows: list[Row], max_pages: int = 4) -> None:
    """PNG encoding per tier: what :meth:`PageRenderer.to_png` does (unfiltered rows; zlib
    RLE for downsampled images) beside the baseline (Pillow, level 6), on the aging
    session's pages: ms, bytes and whether the pixels are equal."""
    import io

    from PIL import Image

    renderer = PageRenderer()
    target = get_target(TARGET)
    layout = target.layout
    all_turns = mm.turns(SESSION)
    groups = [
        [RenderTurn(t.role, t.at, t.content) for t in all_turns[p.first_seq - 1 : p.last_seq]]
        for p in mm.pages(SESSION)[:max_pages]
    ]
    rec = Recorder(rows, "png", "-", OM, "")
    for tier in IMAGE_TIERS:
        size = target.spec(tier).size
        now_ms, base_ms, now_b, base_b, same = [], [], [], [], True
        for g in groups:
            plan = renderer.plan(g, layout, size)
            img = renderer.downsample(renderer.draw(plan.layout, plan.canvas), size)
            ms, png = timed(lambda img=img: renderer.to_png(img))
            buf = io.BytesIO()
            t0 = time.perf_counter()
            img.save(buf, "PNG", compress_level=6)
            base_ms.append((time.perf_counter() - t0) * 1000)
            now_ms.append(ms)
            now_b.append(len(png))
            base_b.append(len(buf.getvalue()))
            same = same and Image.open(io.BytesIO(png)).tobytes() == img.tobytes()
        if not groups:
            return
        rec("encode_ms", statistics.mean(now_ms), "ms", len(groups), tier.label)
        rec("encode_ms_level6", statistics.mean(base_ms), "ms", len(groups), tier.label)
        rec("png_bytes", statistics.mean(now_b), "B", len(groups), tier.label)
        rec("png_bytes_level6", statistics.mean(base_b), "B", len(groups), tier.label)
        rec("pixels_equal", float(same), "bool", len(groups), tier.label)


def aging_extra_section(cfg: Config, rows: Sequence[Row]) -> list[str]:
    """The aging rows beyond throughput: add_turn beside agers, the idle pass (when measured)."""
    t = Table(rows)
    out: list[str] = []
    body = []
    for tier in IMAGE_TIERS:
        lab = tier.label

        def p(metric: str, lab: str = lab) -> float:
            return t.v("png", "-", OM, "", metric, lab)

        if math.isnan(p("encode_ms")):
            continue
        body.append(
            [
                lab,
                fmt_ms(p("encode_ms")),
                fmt_ms(p("encode_ms_level6")),
                fmt_ratio(ratio(p("encode_ms"), p("encode_ms_level6"))),
                fmt_bytes(p("png_bytes")),
                fmt_ratio(ratio(p("png_bytes"), p("png_bytes_level6"))),
                "yes" if p("pixels_equal") == 1.0 else "NO",
            ]
        )
    if body:
        out += [
            "## PNG encoding per tier",
            "",
            "One image of each tier of the aging session's pages (mean over up to 4): the "
            "encoder render uses (unfiltered rows: level 4 for a drawn bitmap, zlib RLE for a "
            "downsampled one; memory/png.py) beside the baseline, Pillow's encoder at level 6.",
            "",
            md_table(
                [
                    "tier",
                    "encode ms",
                    "level 6 ms",
                    "time ratio",
                    "bytes",
                    "bytes ratio",
                    "same pixels",
                ],
                body,
            ),
            "",
        ]
    if cfg.idle_pass:
        n = cfg.idle_sessions
        body = []
        for b in sorted({r.backend for r in rows if r.section == "idle_pass"}):

            def v(metric: str, b: str = b) -> float:
                return t.v("idle_pass", b, OM, n, metric)

            body.append(
                [
                    b,
                    fmt_ms(v("pass_ms_p50")),
                    f"{v('statements'):.0f}",
                    "–"
                    if math.isnan(v("write_transactions"))
                    else f"{v('write_transactions'):.0f}",
                    fmt_ms(v("floor_ms_p50")),
                    fmt_ratio(ratio(v("pass_ms_p50"), v("floor_ms_p50"))),
                ]
            )
        out += [
            f"## aging pass with nothing to do ({n:,} sessions)",
            "",
            f"{n:,} sessions of 24 turns, aged to base; then passes at the same clock (nothing "
            "due). Floor: the pass's first statement (the sessions query) alone on the raw "
            "driver connection. Goal: a pass <= 20 ms, no write transaction.",
            "",
            md_table(
                ["backend", "pass p50 ms", "statements", "write transactions", "floor ms", "ratio"],
                body,
            ),
            "",
        ]
    n = cfg.contention_samples
    if n:
        b = "sqlite"

        def v(metric: str) -> float:
            return t.v("contention", b, OM, n, metric)

        body = [
            [
                label,
                fmt_ms(v(f"add_{key}_p50")),
                fmt_ms(v(f"add_{key}_p99")),
                fmt_ms(v(f"add_{key}_max")),
                f"{v(f'add_{key}_failed'):.0f}",
            ]
            for label, key in (("alone", "alone"), (f"beside {CONTENTION_AGERS} agers", "agers"))
        ]
        out += [
            "## add_turn beside aging workers (SQLite)",
            "",
            f"{n} single add_turn calls, {CONTENTION_PACE * 1000:g} ms apart, on one file: alone "
            f"(half before, half after), and while {CONTENTION_AGERS} aging processes run full passes against it without "
            f"pause (each round adds a fresh {CONTENTION_ROUND_TURNS}-turn session and draws its "
            "pages, and moves older pages a tier down). The agers also compete for the CPU.",
            "",
            md_table(["add_turn", "p50 ms", "p99 ms", "max ms", "failed"], body),
            "",
            f"- p99 beside agers / alone = **{fmt_ratio(v('p99_ratio'))}** (goal <= 3x); p50 "
            f"{fmt_ratio(v('p50_ratio'))}. The agers ran {v('ager_passes'):.0f} passes, moved "
            f"{v('ager_pages_moved'):.0f} pages, skipped {v('ager_pages_skipped'):.0f} "
            "(changed by the other ager while drawn).",
            "",
        ]
    return out


# --------------------------------------------------------------------------------------------------
# Store hot paths against their floors: the same SQL on the bare driver, in the same run


ADD_SQL = {
    "sqlite": (
        "INSERT INTO om_sessions (key, owner, created_at, metadata, next_seq) "
        "VALUES (?, '', ?, '{}', ?) ON CONFLICT (owner, key) DO UPDATE "
        "SET next_seq = om_sessions.next_seq + ? RETURNING id, next_seq",
        "INSERT INTO om_turns (session_id, seq, role, content, at, tokens, metadata, "
        "search_text) VALUES (?, ?, ?, ?, ?, ?, '{}', NULL)",
    ),
    "postgresql": (
        "INSERT INTO om_sessions (key, owner, created_at, metadata, next_seq) "
        "VALUES (%s, '', %s, '{}'::json, %s) ON CONFLICT (owner, key) DO UPDATE "
        "SET next_seq = om_sessions.next_seq + %s RETURNING id, next_seq",
        "INSERT INTO om_turns (session_id, seq, role, content, at, tokens, metadata, "
        "search_text) VALUES (%s, %s, %s, %s, %s, %s, '{}'::json, NULL)",
    ),
}


def raw_connection(backend: Backend, url: str) -> Any:
    """A bare driver connection to the database at ``url``, tuned as optical-memory tunes its
    own (SQLite: WAL, synchronous=NORMAL, mmap), transactions issued by hand."""
    if backend.name == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "mmap_size=268435456"):
            conn.execute(f"PRAGMA {pragma}")
        return conn
    import psycopg
    from sqlalchemy import make_url

    u = make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database
    )


def raw_add(backend: Backend, conn: Any, key: str, t: ChatTurn) -> None:
    """One add_turn's two statements and its commit, on the bare driver."""
    reserve, insert = ADD_SQL[backend.name]
    when: Any = t.at
    if backend.name == "sqlite":
        when = t.at.astimezone(UTC).replace(tzinfo=None).isoformat(" ")
        conn.execute("BEGIN IMMEDIATE")
    cur = conn.cursor()
    sid, seq = cur.execute(reserve, (key, when, 1, 1)).fetchone()
    cur.execute(insert, (sid, seq, t.role, t.content, when, len(t.content) // 4 + 3))
    if backend.name == "sqlite":
        conn.execute("COMMIT")
    else:
        conn.commit()


def cpu_and_wall(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list[float], float]:
    """Wall times of ``fn(item)`` for each item (ms) and the mean CPU time of this process per
    call (ms): what a call costs the application's own cores, the server's aside."""
    cpu = time.process_time()
    times = [timed(lambda item=item: fn(item))[0] for item in items]
    return times, (time.process_time() - cpu) * 1000 / max(1, len(items))


def bench_add_floor(cfg: Config, backend: Backend, rows: list[Row]) -> None:
    """add_turn against the same two statements on the bare driver and against LangChain's
    SQLChatMessageHistory.add_message: p50 wall time and CPU per call, each on a fresh
    database, one session of a few hundred turns."""
    k = max(50, min(cfg.add_samples, 600))
    turns = make_turns(k + 20, end=END, every=timedelta(seconds=1), seed=3)
    warm, timed_turns = turns[:20], turns[20:]
    # Two databases of the same schema: a writer on one file would make the other
    # connection drop its page cache at every turn (WAL change detection), on both sides.
    with backend.database("addfloor") as url, backend.database("addfloorraw") as raw_url:
        MemoryManager(raw_url).close()  # the schema the raw driver writes to
        mm = MemoryManager(url, target=TARGET)
        conn = raw_connection(backend, raw_url)
        try:
            for t in warm:
                mm.add_turn(SESSION, t.role, t.content, at=t.at)
                raw_add(backend, conn, "raw", t)
            log(f"{backend.name}: add_turn against the same SQL on the bare driver")
            # Interleaved in blocks of 10, so both see the same machine load.
            om_times: list[float] = []
            raw_times: list[float] = []
            om_cpu = raw_cpu = 0.0
            for i in range(0, len(timed_turns), 10):
                block = timed_turns[i : i + 10]
                times, cpu = cpu_and_wall(
                    lambda t: mm.add_turn(SESSION, t.role, t.content, at=t.at), block
                )
                om_times += times
                om_cpu += cpu * len(block)
                times, cpu = cpu_and_wall(lambda t: raw_add(backend, conn, "raw", t), block)
                raw_times += times
                raw_cpu += cpu * len(block)
            for system, times, cpu in ((OM, om_times, om_cpu), (RAW, raw_times, raw_cpu)):
                rec = Recorder(rows, "add_floor", backend.name, system, k)
                rec.latency("add", times)
                rec("add_cpu", cpu / len(timed_turns), "ms", k)
        finally:
            conn.close()
            mm.close()
    if not cfg.baseline:
        return
    with backend.database("addfloorlc") as url:
        store = LcStore(wal_engine(url) if backend.name == "sqlite" else url)
        try:
            for t in warm:
                store.single(store.prepare(t))
            msgs = [store.prepare(t) for t in timed_turns]
            times, cpu = cpu_and_wall(store.single, msgs)
            rec = Recorder(rows, "add_floor", backend.name, LC, k)
            rec.latency("add", times)
            rec("add_cpu", cpu, "ms", k)
        finally:
            store.close()


def bench_assemble_floor(
    cfg: Config, backend: Backend, mm: MemoryManager, now: datetime, rows: list[Row], n: int
) -> None:
    """The SQL one assemble call sends (captured from the engine), replayed on the bare
    driver in one transaction with the same parameters: the floor for assembly's reads."""
    from sqlalchemy import event

    captured: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(("BEGIN", "PRAGMA", "SET", "SHOW")):
            captured.append((statement, parameters))

    engine = mm.database.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        mm.assemble(SESSION, budget=BUDGET, target=TARGET, now=now)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    conn = raw_connection(backend, mm.url)

    def replay() -> None:
        if backend.name == "sqlite":
            conn.execute("BEGIN")
        cur = conn.cursor()
        for sql, params in captured:
            cur.execute(sql, params)
            cur.fetchall()
        if backend.name == "sqlite":
            conn.execute("COMMIT")
        else:
            conn.rollback()

    def library() -> None:
        mm.assemble(SESSION, budget=BUDGET, target=TARGET, now=now)

    om_times: list[float] = []
    raw_times: list[float] = []
    try:
        replay()
        gc.collect()
        for _ in range(cfg.assemble_samples):  # interleaved: both see the same machine load
            om_times.append(timed(library)[0])
            raw_times.append(timed(replay)[0])
    finally:
        conn.close()
    Recorder(rows, "assemble_floor", backend.name, OM, n).latency("read", om_times)
    rec = Recorder(rows, "assemble_floor", backend.name, RAW, n)
    rec.latency("read", raw_times)
    rec("statements", len(captured), "statements")


def floor_lines(t: Table, names: Sequence[str], sizes: Sequence[int], has_lc: bool) -> list[str]:
    """The store rows of the report: each hot path beside its floor from the same run."""
    body = []
    for b in names:
        k = next((r.turns for r in t.index.values() if r.section == "add_floor"), "")
        om50, raw50 = t.v("add_floor", b, OM, k, "add_p50"), t.v("add_floor", b, RAW, k, "add_p50")
        omc, rawc = t.v("add_floor", b, OM, k, "add_cpu"), t.v("add_floor", b, RAW, k, "add_cpu")
        lc50, lcc = t.v("add_floor", b, LC, k, "add_p50"), t.v("add_floor", b, LC, k, "add_cpu")
        body.append(
            [
                b,
                "add_turn p50 / CPU per call",
                f"{fmt_ms(om50)} / {fmt_ms(omc)} ms",
                f"{fmt_ms(raw50)} / {fmt_ms(rawc)} ms",
                f"{fmt_ratio(ratio(om50, raw50))} / {fmt_ratio(ratio(omc, rawc))}",
                f"{fmt_ms(lc50)} / {fmt_ms(lcc)} ms" if has_lc else "–",
                f"{fmt_ratio(ratio(om50, lc50))} / {fmt_ratio(ratio(omc, lcc))}" if has_lc else "–",
            ]
        )
        big = max(sizes)
        om = t.v("assemble_floor", b, OM, big, "read_p50")
        raw = t.v("assemble_floor", b, RAW, big, "read_p50")
        body.append(
            [
                b,
                f"assemble p50, {big:,} turns",
                f"{fmt_ms(om)} ms",
                f"{fmt_ms(raw)} ms ({t.v('assemble_floor', b, RAW, big, 'statements'):.0f} statements)",
                fmt_ratio(ratio(om, raw)),
                "–",
                "–",
            ]
        )
    return [
        "## store hot paths against their floors",
        "",
        "The floor is the same SQL on the bare driver (sqlite3 or psycopg, the same pragmas), "
        "measured in this run, interleaved with the library's calls so both see the same load: "
        "for add_turn the two statements and the commit it sends; for assemble every statement "
        "one call sent, replayed with its parameters in one transaction. CPU: this process's CPU time per call (the server's aside). LangChain: "
        "SQLChatMessageHistory.add_message on a fresh database (SQLite with WAL).",
        "",
        md_table(
            [
                "backend",
                "measure",
                "optical-memory",
                "raw driver (floor)",
                "ratio to floor",
                "LangChain",
                "ratio to LangChain",
            ],
            body,
        ),
        "",
    ]


# --------------------------------------------------------------------------------------------------
# Report


class Table:
    def __init__(self, rows: Sequence[Row]) -> None:
        self.index = {(r.section, r.backend, r.system, r.turns, r.tier, r.metric): r for r in rows}

    def v(
        self, section: str, backend: str, system: str, turns: Any, metric: str, tier: str = ""
    ) -> float:
        r = self.index.get((section, backend, system, turns, tier, metric))
        return math.nan if r is None else float(r.value)

    def n(self, section: str, backend: str, system: str, turns: Any, metric: str) -> str:
        r = self.index.get((section, backend, system, turns, "", metric))
        return "–" if r is None else str(r.samples)


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def aging_section(cfg: Config, t: Table, names: Sequence[str]) -> list[str]:
    """The aging throughput table: pack, then one tier move a pass, real rendering."""
    body = []
    for b in names:
        n = cfg.aging_turns
        packed = t.v("aging", b, OM, n, "pages", "pack")
        secs = t.v("aging", b, OM, n, "seconds", "pack")
        body.append(
            [
                b,
                "pack (text)",
                f"{packed:.0f}",
                "0",
                f"{secs:.2f}",
                f"{ratio(packed, secs):.1f}",
                fmt_ms(ratio(secs * 1000, packed)),
                "–",
            ]
        )
        for tier in IMAGE_TIERS:
            lab = tier.label
            body.append(
                [
                    b,
                    lab,
                    f"{t.v('aging', b, OM, n, 'pages', lab):.0f}",
                    f"{t.v('aging', b, OM, n, 'images_per_page', lab):.0f}",
                    f"{t.v('aging', b, OM, n, 'seconds', lab):.2f}",
                    f"{t.v('aging', b, OM, n, 'pages_per_s', lab):.1f}",
                    fmt_ms(t.v("aging", b, OM, n, "ms_per_page", lab)),
                    fmt_ms(t.v("render", "-", OM, "", "render_ms", lab)),
                ]
            )
    return [
        "## aging throughput (real rendering)",
        "",
        f"One session of {cfg.aging_turns:,} fresh turns: a pass packs it into pages and "
        "prepares each (draws it once, at every image tier, as renditions: the first pass, "
        "in the pack row), then four passes move every page one tier down (now = +2 h, +2 d, "
        "+8 d, +31 d). A tier move promotes the stored rendition of its tier (and keeps the "
        "fainter ones and their visual tokens) instead of drawing again, unless the page has "
        "pinned or recalled turns; 'images' is what the page holds after the move. 'draw only' "
        "is render + PNG of one image at that tier without the database (mean over up to 8 "
        "pages): the cost a move paid when it drew again.",
        "",
        md_table(
            [
                "backend",
                "move to",
                "pages",
                "images",
                "seconds",
                "pages/s",
                "ms/page",
                "draw only ms (1 image)",
            ],
            body,
        ),
        "",
    ]


def report(cfg: Config, rows: Sequence[Row], backends: Sequence[Backend], env: str) -> str:
    t = Table(rows)
    names = [b.name for b in backends]
    sizes = cfg.sizes
    has_lc = cfg.baseline
    out = [
        "# optical-memory speed benchmark",
        "",
        env,
        "",
        f"Budget {BUDGET} tokens, target {TARGET}, default AgingPolicy (8 turns of text, "
        "TimeLadder 1 h / 1 d / 7 d / 30 d) but min_fill=0 "
        "(see the assemble section). Synthetic two-person chat, "
        f"~{statistics.mean(len(x.content) for x in make_turns(200)):.0f} characters a turn, "
        f"one turn every {TURN_EVERY.total_seconds():g} s (100,000 turns span "
        f"{(TURN_EVERY * 100_000).days} days); each session is the newest N turns of the "
        "largest, so the recent history that assembly reads is the same at every size and only "
        "the older history grows. Baseline: langchain-community "
        "`SQLChatMessageHistory` as it comes (one URL string; on SQLite the default rollback "
        'journal), `.messages` + `trim_messages(strategy="last", max_tokens=4096, '
        "token_counter=count_tokens_approximately)`. Ratios are optical-memory / baseline: "
        "below 1× optical-memory is faster or smaller.",
        "",
    ]

    # add_turn
    body = []
    for b in names:
        for n in sizes:
            om50, om99 = t.v("add", b, OM, n, "add_p50"), t.v("add", b, OM, n, "add_p99")
            lc50, lc99 = t.v("add", b, LC, n, "add_p50"), t.v("add", b, LC, n, "add_p99")
            row = [b, fmt_n(n), t.n("add", b, OM, n, "add_p50"), fmt_ms(om50), fmt_ms(om99)]
            if has_lc:
                row += [
                    fmt_ms(lc50),
                    fmt_ms(lc99),
                    fmt_ratio(ratio(om50, lc50)),
                    fmt_ratio(ratio(om99, lc99)),
                    fmt_ms(t.v("add", b, LC_WAL, n, "add_p50")),
                    fmt_ms(t.v("add", b, LC_WAL, n, "add_p99")),
                ]
            body.append(row)
    header = ["backend", "session grows to", "calls timed", "add_turn p50 ms", "add_turn p99 ms"]
    if has_lc:
        header += [
            "add_message p50 ms",
            "add_message p99 ms",
            "p50 ratio",
            "p99 ratio",
            "add_message +WAL p50",
            "+WAL p99",
        ]
    out += [
        "## add_turn latency while a session grows",
        "",
        f"Single calls timed in {GROWTH_POINTS} groups from the empty session to the full one; "
        f"the rest added in batches of {BULK_BATCH:,}. The '+WAL' columns time the baseline on "
        "the same file after switching it to optical-memory's pragmas (WAL, synchronous=NORMAL), "
        "at the full length (SQLite only).",
        "",
        md_table(header, body),
        "",
    ]

    big = max(sizes)
    body = []
    for b in names:
        groups = sorted(
            (
                r
                for r in rows
                if r.section == "add_growth"
                and r.backend == b
                and r.turns == big
                and r.system == OM
            ),
            key=lambda r: int(r.metric.rsplit("_", 1)[1]),
        )
        for r in groups:
            length = int(r.metric.rsplit("_", 1)[1])
            lc = [
                x
                for x in rows
                if x.section == "add_growth"
                and x.backend == b
                and x.turns == big
                and x.system == LC
                and x.metric == r.metric
            ]
            lcv = lc[0].value if lc else math.nan
            row = [b, fmt_n(length), fmt_ms(r.value)]
            if has_lc:
                row += [fmt_ms(lcv), fmt_ratio(ratio(r.value, lcv))]
            body.append(row)
    header = ["backend", "session length", "add_turn p50 ms"]
    if has_lc:
        header += ["add_message p50 ms", "ratio"]
    out += [f"### p50 by session length (the {big:,}-turn session)", "", md_table(header, body), ""]

    # assemble
    body = []
    for b in names:
        for n in sizes:
            tiers = "/".join(
                str(int(t.v("prep", b, OM, n, "pages_at_tier", tier.label))) for tier in Tier
            )
            om50, om99 = (
                t.v("assemble", b, OM, n, "read_p50"),
                t.v("assemble", b, OM, n, "read_p99"),
            )
            row = [
                b,
                fmt_n(n),
                tiers,
                t.n("assemble", b, OM, n, "read_p50"),
                fmt_ms(om50),
                fmt_ms(om99),
                f"{t.v('assemble', b, OM, n, 'context_tokens'):.0f}",
                f"{t.v('assemble', b, OM, n, 'turns_covered'):,.0f}",
                fmt_bytes(t.v("assemble", b, OM, n, "png_bytes_read")),
            ]
            if has_lc:
                lc50 = t.v("assemble", b, LC, n, "read_p50")
                lc99 = t.v("assemble", b, LC, n, "read_p99")
                row += [
                    t.n("assemble", b, LC, n, "read_p50"),
                    fmt_ms(lc50),
                    fmt_ms(lc99),
                    f"{t.v('assemble', b, LC, n, 'context_tokens'):.0f}",
                    f"{t.v('assemble', b, LC, n, 'turns_covered'):,.0f}",
                    fmt_ratio(ratio(om50, lc50)),
                    fmt_ratio(ratio(om99, lc99)),
                ]
            body.append(row)
    header = [
        "backend",
        "turns",
        "pages text/large/base/small/tiny",
        "calls",
        "assemble p50 ms",
        "assemble p99 ms",
        "context tokens",
        "turns covered",
        "image bytes read",
    ]
    if has_lc:
        header += [
            "calls",
            "messages+trim p50 ms",
            "messages+trim p99 ms",
            "context tokens",
            "turns covered",
            "p50 ratio",
            "p99 ratio",
        ]
    lo = min(sizes)
    growth = []

    def grew(b: str, who: str, small: int, metric: str = "read_p50") -> float:
        return ratio(t.v("assemble", b, who, big, metric), t.v("assemble", b, who, small, metric))

    def grew_cue(b: str) -> float:
        return ratio(
            t.v("assemble", b, OM, big, "read_cue_p50"), t.v("assemble", b, OM, big, "read_p50")
        )

    for b in names:
        with_cue = t.v("assemble", b, OM, big, "read_cue_p50")
        growth.append(
            f"- {b}: assemble with a cue ({CUE!r}) at {big:,} turns: p50 "
            f"{fmt_ms(with_cue)} ms = **{fmt_ratio(grew_cue(b))}** of assemble without "
            "(timed alternately; goal <= 2x)"
        )
        recall_p50 = t.v("assemble", b, OM, big, "recall_p50")
        if recall_p50 == recall_p50:  # measured (not NaN)
            growth.append(
                f"- {b}: recall({CUE!r}) at {big:,} turns, with its rehearsal write: p50 "
                f"**{fmt_ms(recall_p50)} ms** (goal <= 5 ms on SQLite)"
            )
    for b in names:
        against = [lo] + ([sorted(sizes)[-2]] if len(sizes) > 2 else [])
        for small in against:
            line = f"- {b}: assemble p50 at {big:,} / {small:,} turns = **{fmt_ratio(grew(b, OM, small))}**"
            if small == lo:
                line += f" (p99 {fmt_ratio(grew(b, OM, small, 'read_p99'))})"
            if has_lc:
                line += f"; baseline messages+trim: {fmt_ratio(grew(b, LC, small))}"
            growth.append(line)
    render_note = (
        "every page drawn for real (--real-render)"
        if cfg.real_render
        else "a renderer that draws the first page of each tier set and stores those same PNG "
        "bytes for the later pages (same rows, tiers and image sizes; drawing is timed below)"
    )
    out += [
        "## assemble vs history length",
        "",
        f"Each session aged by one real aging pass (pack, default time ladder, tier flips, "
        f"renditions, a transaction per page) with {render_note}. Aging and assembly run "
        f"{COME_BACK.total_seconds() / 3600:g} h after the newest turn (a user coming back) with "
        "min_fill=0, so every page is sealed after the default hour and has left the text "
        "tier, and every size has the same shape: the last 8 turns as text, pages behind them. "
        "(With the default min_fill of 0.25, a newest page under a quarter full stays unpaged "
        "text, up to ~1,300 tokens.) Turns covered: how many of the "
        "most recent turns the context reaches back over (as text or on a page).",
        "",
        md_table(header, body),
        "",
        "Growth with history. Assembly stops at the budget, so once a session holds more than "
        "a budget's worth of history its cost must stay flat; below that (the smallest size "
        "here) the context itself is smaller, so the ratio to it is an upper bound:",
        "",
        *growth,
        "",
    ]

    out += aging_section(cfg, t, names)

    out += floor_lines(t, names, sizes, has_lc)

    # bytes
    body = []
    for b in names:
        for n in sizes:
            text = t.v("bytes", b, OM, n, "bytes_per_10k_text_only")
            aged = t.v("bytes", b, OM, n, "bytes_per_10k_aged")
            row = [b, fmt_n(n), fmt_bytes(text), fmt_bytes(aged)]
            if has_lc:
                lc = t.v("bytes", b, LC, n, "bytes_per_10k")
                row += [fmt_bytes(lc), fmt_ratio(ratio(text, lc)), fmt_ratio(ratio(aged, lc))]
            body.append(row)
    header = ["backend", "turns", "optical-memory text only", "optical-memory aged (with pages)"]
    if has_lc:
        header += ["baseline", "text-only ratio", "aged ratio"]
    out += [
        "## database bytes per 10,000 turns",
        "",
        "SQLite: file + WAL after `wal_checkpoint(TRUNCATE)`; PostgreSQL: "
        "`pg_total_relation_size` of the om_ tables (baseline: message_store), as on disk "
        "(no VACUUM). Small sessions are dominated by the fixed size of the schema.",
        "",
        md_table(header, body),
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Entry points


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description="Latency, throughput and storage of optical-memory against langchain-"
        "community's SQLChatMessageHistory, on SQLite and PostgreSQL. Prints markdown tables "
        "and writes a CSV.",
    )
    p.add_argument(
        "--sizes",
        default=None,
        help="session lengths in turns, comma-separated (default 100,10000,100000)",
    )
    p.add_argument(
        "--pg-url",
        default=None,
        help=f"PostgreSQL server URL to benchmark too (default ${PG_ENV}); "
        "a scratch database per size is created and dropped",
    )
    p.add_argument(
        "--no-pg", action="store_true", help="SQLite only, even when $" + PG_ENV + " is set"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="CSV path; the tables go next to it as .md (default benchmarks/results/speed.csv)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few samples (smoke test)")
    p.add_argument(
        "--add-samples",
        type=int,
        default=None,
        help="single add calls timed per size (default 1000; quick 20)",
    )
    p.add_argument(
        "--assemble-samples",
        type=int,
        default=None,
        help="assemble calls timed per size (default 100; quick 5)",
    )
    p.add_argument(
        "--aging-turns",
        type=int,
        default=None,
        help="turns in the aging throughput session (default 2000; quick 250)",
    )
    p.add_argument(
        "--real-render",
        action="store_true",
        help="draw every page when aging the big sessions (slow: ~0.1 s a page)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip SQLChatMessageHistory")
    p.add_argument(
        "--aging-contention",
        type=int,
        nargs="?",
        const=-1,
        default=0,
        metavar="CALLS",
        help="also time add_turn on SQLite while two aging processes run against the same file, "
        "against add_turn without them (default 400 calls each; quick 60)",
    )
    p.add_argument(
        "--aging-idle",
        action="store_true",
        help=f"also time an aging pass with nothing to do over {IDLE_SESSIONS:,} aged sessions "
        "(quick: 101; statements, write transactions, and the sessions query alone as floor)",
    )
    p.add_argument(
        "--draw-pool",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="WORKERS",
        help="also time the first pass on SQLite drawn in-process and by a pool of WORKERS "
        "processes (default 2), alternated, twice each (quick: once)",
    )
    p.add_argument(
        "--aging-only",
        action="store_true",
        help="only the aging rows (throughput, and --aging-contention if given): no sizes",
    )
    a = p.parse_args(argv)
    sizes = (
        tuple(int(s.replace("_", "")) for s in a.sizes.split(",") if s.strip())
        if a.sizes
        else (QUICK_SIZES if a.quick else DEFAULT_SIZES)
    )
    if not sizes or min(sizes) < 10:
        p.error("--sizes: each size must be at least 10 turns")
    if a.draw_pool == 1 or a.draw_pool < 0:
        p.error("--draw-pool: a pool has at least 2 workers")
    pg = None if a.no_pg else (a.pg_url or os.environ.get(PG_ENV) or None)
    return Config(
        sizes=tuple(sorted(set(sizes))),
        pg_url=pg,
        out=a.out,
        add_samples=a.add_samples or (20 if a.quick else 1000),
        assemble_samples=a.assemble_samples or (5 if a.quick else 100),
        baseline_read_seconds=1.0 if a.quick else 20.0,
        aging_turns=a.aging_turns or (250 if a.quick else 2000),
        real_render=a.real_render,
        baseline=not a.no_baseline,
        quick=a.quick,
        contention_samples=(
            (60 if a.quick else 400) if a.aging_contention == -1 else max(0, a.aging_contention)
        ),
        aging_only=a.aging_only,
        idle_pass=a.aging_idle,
        idle_sessions=101 if a.quick else IDLE_SESSIONS,
        draw_pool=max(0, a.draw_pool),
        draw_pool_repeats=1 if a.quick else 2,
    )


def environment(backends: Sequence[Backend]) -> str:
    import sqlalchemy

    parts = [
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}",
        f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()})",
        *(b.describe() for b in backends),
        f"run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]
    return "Environment: " + "; ".join(parts) + "."


def run(cfg: Config) -> tuple[list[Row], str]:
    """Run every measurement; returns the rows (also written to ``cfg.out``) and the report."""
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="om-speed-") as tmp:
        backends: list[Backend] = [SQLiteBackend(Path(tmp))]
        if cfg.pg_url:
            backends.append(PostgresBackend(cfg.pg_url))
        try:
            log(f"generating {max(cfg.sizes):,} turns")
            longest = make_turns(max(cfg.sizes))  # each size: the newest n of these
            for backend in backends:
                for n in () if cfg.aging_only else cfg.sizes:
                    turns = longest[len(longest) - n :]
                    bench_optical(cfg, backend, n, turns, rows)
                    if cfg.baseline:
                        bench_baseline(cfg, backend, n, turns, rows)
                bench_add_floor(cfg, backend, rows)
                bench_aging(cfg, backend, rows)
            if cfg.contention_samples:
                bench_contention(cfg, backends[0], rows)
            if cfg.idle_pass:
                for backend in backends:
                    bench_idle_pass(cfg, backend, rows)
            if cfg.draw_pool:
                bench_draw_pool(cfg, backends[0], rows)
            env = environment(backends)
            if cfg.aging_only:
                head = ["# optical-memory aging benchmark", "", env, ""]
                body = aging_section(cfg, Table(rows), [b.name for b in backends])
                text = "\n".join(head + body)
            else:
                text = report(cfg, rows, backends, env)
            text += "\n" + "\n".join(aging_extra_section(cfg, rows) + draw_pool_section(cfg, rows))
        finally:
            for b in backends:
                if isinstance(b, PostgresBackend):
                    b.close()
    Recorder(rows, "run", "-", "-", "")("seconds", time.perf_counter() - started, "s")
    write_csv(cfg.out, rows)
    cfg.out.with_suffix(".md").write_text(text + "\n")
    return rows, text


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert tuple(f.name for f in fields(Row)) == CSV_COLUMNS
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            if isinstance(d["value"], float):
                d["value"] = f"{d['value']:.6g}"
            w.writerow(d)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    rows, text = run(cfg)
    print(text)
    total = next(r.value for r in rows if r.section == "run")
    print(
        f"\nCSV: {cfg.out} ({len(rows)} rows), tables: {cfg.out.with_suffix('.md')}; "
        f"run took {total:.0f} s."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
