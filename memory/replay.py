"""The demo's simulated clock: replay a conversation as time passes, aging it the way the
scheduler would.

Turns without times get plausible ones (:func:`fill_times`); :func:`replay` adds them in time
order and runs one aging pass per simulated step, so that weeks of history fade through the
tiers in seconds. Errors are library errors (:class:`InvalidInput`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput
from .export import inside
from .importers import Conversations
from .validation import shifted

if TYPE_CHECKING:
    from .manager import MemoryManager

__all__ = [
    "MAX_PASSES",
    "fill_times",
    "fresh_sqlite_url",
    "replay",
    "replay_step",
    "sample_conversation",
    "time_span",
]

SAMPLE_PACKAGE = "optical_memory.sample"
SAMPLE_FILE = "conversation.jsonl"
MAX_PASSES = 2000
"""The most aging passes a replay runs: a long history stretches the step instead."""


def sample_conversation() -> Path:
    """The sample conversation that ships with the package (JSON Lines)."""
    return Path(str(resources.files(SAMPLE_PACKAGE).joinpath(SAMPLE_FILE)))


def fill_times(convs: Conversations, now: datetime) -> Conversations:
    """Give every turn a time: missing ones follow the previous turn by a minute; a session with
    no times at all is spread evenly over the 90 days before ``now``. Times never go backwards
    within a session."""
    out: Conversations = {}
    for sid, turns in convs.items():
        known = [t["at"] for t in turns if t.get("at") is not None]
        filled: list[dict[str, Any]] = []
        if not known:
            span = timedelta(days=90) / max(1, len(turns))
            start = shifted(now, -timedelta(days=90))
            filled = [{**t, "at": shifted(start, i * span)} for i, t in enumerate(turns)]
        else:
            first_known = next(i for i, t in enumerate(turns) if t.get("at") is not None)
            clock = shifted(known[0], -timedelta(minutes=first_known + 1))
            for t in turns:
                at = t.get("at")
                clock = shifted(clock, timedelta(minutes=1)) if at is None else max(at, clock)
                filled.append({**t, "at": clock})
        out[sid] = filled
    return out


def time_span(convs: Conversations) -> tuple[datetime, datetime]:
    """The first and the last turn's time over all sessions (times filled in)."""
    starts = [t[0]["at"] for t in convs.values() if t]
    if not starts:
        raise InvalidInput("nothing to replay: the conversation is empty")
    return min(starts), max(t[-1]["at"] for t in convs.values() if t)


def replay_step(convs: Conversations, step: timedelta, max_passes: int = MAX_PASSES) -> timedelta:
    """``step``, stretched where needed so that replaying ``convs`` takes at most
    ``max_passes`` aging passes."""
    if not step > timedelta(0):
        raise InvalidInput(f"the replay step must be positive, got {step}")
    first, last = time_span(convs)
    return max(step, (last - first) / max_passes)


def replay(
    mm: MemoryManager,
    convs: Conversations,
    step: timedelta,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[datetime, int]:
    """Add the turns as simulated time passes and run one aging pass per ``step``, the way the
    scheduler would; returns the final simulated time and the number of passes.
    ``on_step(n, total)`` is called after each pass."""
    if not step > timedelta(0):
        raise InvalidInput(f"the replay step must be positive, got {step}")
    timeline = sorted(
        ((t["at"], sid, i) for sid, turns in convs.items() for i, t in enumerate(turns)),
        key=lambda x: (x[0], x[1], x[2]),
    )
    if not timeline:
        raise InvalidInput("nothing to replay: the conversation is empty")
    start, end = timeline[0][0], shifted(timeline[-1][0], timedelta(minutes=5))
    passes = max(1, math.ceil((end - start) / step))
    cursor = {sid: 0 for sid in convs}
    k = 0
    for n in range(1, passes + 1):
        now = min(shifted(start, n * step), end)
        batch: dict[str, list[dict[str, Any]]] = {}
        while k < len(timeline) and timeline[k][0] <= now:
            _, sid, _i = timeline[k]
            turns = convs[sid]
            while cursor[sid] < len(turns) and turns[cursor[sid]]["at"] <= now:
                batch.setdefault(sid, []).append(turns[cursor[sid]])
                cursor[sid] += 1
            k += 1
        if batch:
            mm.add_sessions(batch)
        mm.age(now=now)
        if on_step is not None:
            on_step(n, passes)
    return end, passes


def fresh_sqlite_url(out: Path, name: str) -> str:
    """A ``sqlite:///`` URL for ``out/name``, after removing any database (and its WAL, shared
    memory and journal files) left there by an earlier run."""
    path = inside(out, name)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"
