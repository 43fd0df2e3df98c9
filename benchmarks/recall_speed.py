"""Recall speed: ``MemoryManager.recall`` latency on a large archive.

    python -m benchmarks.recall_speed                 # SQLite file, 100,000 turns
    python -m benchmarks.recall_speed --turns 10000   # smaller
    python -m benchmarks.recall_speed --url postgresql://postgres@127.0.0.1:5432/scratch

Fills an empty store with synthetic two-person chat (``benchmarks.chatgen``: a small vocabulary,
so common cue words match a third of the archive) in sessions of 1,000 turns, added with
``add_sessions`` in big batches. Every session also holds a few planted facts with a rare code
(``my booking code is QX-…``) and a line of Chinese or Japanese. Then it times ``recall`` (the
search and its rehearsal write) for three kinds of cue, each in its session:

* ``rare``: a question naming a planted code ("what was the booking code QX-…?");
* ``common``: a question made of the chat's own, frequent words ("when did Maya book flights to
  Lisbon?");
* ``cjk``: a Chinese or Japanese question containing a two-character word;
* ``prose``: a long pasted paragraph (about 50 search terms, most of them in no turn) that
  also names a planted code, as a proxy's cue is when a user pastes text into the chat.

plus ``owner`` (a rare cue with ``scope="owner"`` over one owner's ten sessions) and the time
of one ``forget`` (which rewrites the SQLite index into one segment). Prints p50/p99 in ms as a
markdown table. A measurement of one machine at one time, never an assertion.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.chatgen import conversation
from optical_memory import MemoryManager

START = datetime(2025, 1, 1, tzinfo=UTC)
SESSION_TURNS = 1000
BATCH_SESSIONS = 20
OWNER_SESSIONS = 10
CJK_LINES = [
    "我下个月要去東京出差，住在新宿的酒店。",
    "明日は東京タワーの近くで友達と会います。",
    "我们在上海的办公室下周三搬家。",
    "来週、大阪城を見に行く予定です。",
]
CJK_CUES = ["我什么时候去東京？", "東京タワーで誰と会いますか", "上海办公室什么时候搬家", "大阪城"]
COMMON_CUES = [
    "when did Maya book flights to Lisbon?",
    "what did the landlord repair after the storm?",
    "did my sister order the blue bicycle?",
    "who painted the kitchen shelves on Tuesday?",
]
PROSE = (
    "Could you help me draft a migration plan for our Kubernetes deployment: the ingress "
    "controller keeps timing out, certificates rotate weekly, Prometheus alerts fire on latency, "
    "the Postgres replica lags behind during nightly backups, Terraform state drifted after "
    "someone edited security groups manually, and the on-call rotation needs a runbook covering "
    "rollback, canary analysis, feature flags, schema versioning, secrets management with Vault, "
    "log retention, cost dashboards, autoscaling thresholds, node pools, spot instances, and "
    "disaster recovery drills for the payments service and the analytics warehouse. Oh, and "
    "which booking code was {code}?"
)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def code(session: int, i: int) -> str:
    return f"QX-{session * 7919 + i * 104729:07d}"


def session_turns(index: int, size: int) -> list[dict]:  # type: ignore[type-arg]
    turns = conversation(size, START + timedelta(days=index), timedelta(seconds=60), seed=index)
    *codes, cjk = random.Random(index).sample(range(size), 4)  # anywhere in it
    for i, at in enumerate(codes):
        turns[at] = {**turns[at], "content": f"My booking code is {code(index, i)}, keep it."}
    turns[cjk] = {**turns[cjk], "content": CJK_LINES[index % len(CJK_LINES)]}
    return turns


def fill(mm: MemoryManager, n_sessions: int, size: int) -> float:
    started = time.perf_counter()
    for first in range(0, n_sessions, BATCH_SESSIONS):
        batch = range(first, min(first + BATCH_SESSIONS, n_sessions))
        owned: dict[str | None, dict[str, list]] = {}  # type: ignore[type-arg]
        for i in batch:
            owner = f"owner-{i // OWNER_SESSIONS}"
            owned.setdefault(owner, {})[f"chat-{i}"] = session_turns(i, size)
        for owner, sessions in owned.items():
            mm.scoped(owner).add_sessions(sessions)
    return time.perf_counter() - started


def timings(fn: Callable[[int], object], n: int) -> list[float]:
    for i in range(min(20, n)):  # warm the page cache and the statement cache
        fn(i)
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def run(url: str, turns: int, queries: int, size: int = SESSION_TURNS) -> dict[str, list[float]]:
    n_sessions = max(1, turns // size)
    results: dict[str, list[float]] = {}
    with MemoryManager(url) as mm:
        took = fill(mm, n_sessions, size)
        print(f"filled {n_sessions * size:,} turns in {took:.1f} s", file=sys.stderr)
        rng = random.Random(1)
        picks = [rng.randrange(n_sessions) for _ in range(queries + 20)]

        def view(i: int) -> MemoryManager:
            return mm.scoped(f"owner-{i // OWNER_SESSIONS}")

        def rare(i: int) -> object:
            s = picks[i]
            got = view(s).recall(f"chat-{s}", f"what was the booking code {code(s, i % 3)}?")
            assert got and code(s, i % 3) in got[0].turn.content, got[:1]
            return got

        def common(i: int) -> object:
            s = picks[i]
            return view(s).recall(f"chat-{s}", COMMON_CUES[i % len(COMMON_CUES)])

        def cjk(i: int) -> object:
            s = picks[i]
            got = view(s).recall(f"chat-{s}", CJK_CUES[s % len(CJK_CUES)])
            assert got and got[0].turn.content == CJK_LINES[s % len(CJK_LINES)], got[:1]
            return got

        def owner(i: int) -> object:
            s = picks[i]
            home = s - s % OWNER_SESSIONS  # the code is in another session of the same owner
            other = home + (s + 1) % OWNER_SESSIONS if n_sessions > 1 else s
            other = min(other, n_sessions - 1)
            got = view(s).recall(f"chat-{s}", f"booking code {code(other, 0)}", scope="owner")
            assert got and code(other, 0) in got[0].turn.content, got[:1]
            return got

        def prose(i: int) -> object:
            s = picks[i]
            got = view(s).recall(f"chat-{s}", PROSE.format(code=code(s, i % 3)))
            assert got and code(s, i % 3) in got[0].turn.content, got[:1]
            return got

        kinds = (("rare", rare), ("common", common), ("cjk", cjk), ("prose", prose))
        for name, fn in (*kinds, ("owner", owner)):
            results[name] = timings(fn, queries)
        t = time.perf_counter()
        view(n_sessions - 1).forget(f"chat-{n_sessions - 1}")
        results["forget"] = [(time.perf_counter() - t) * 1000]
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument(
        "--session-turns",
        type=int,
        default=SESSION_TURNS,
        help="turns per session (past 20,000, common words count in the newest 20,000)",
    )
    ap.add_argument("--url", help="a store URL (default: a scratch SQLite file)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'recall.db'}"
        results = run(url, args.turns, args.queries, args.session_turns)
    backend = url.split(":", 1)[0]
    print(
        f"\nrecall at {args.turns:,} turns in sessions of {args.session_turns:,} ({backend}, "
        f"{args.queries} queries per cue kind)\n"
    )
    print("| cue | p50 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|")
    for name, values in results.items():
        print(
            f"| {name} | {percentile(values, 50):.2f} | {percentile(values, 99):.2f} "
            f"| {statistics.fmean(values):.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
