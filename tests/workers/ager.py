"""Aging worker for the concurrency tests.

    python ager.py URL STOP_FILE

Prints ``ready``, waits for a line on stdin, then runs aging passes whose clock cycles through
a few ages (so pages move several times) until STOP_FILE exists; then passes at the final
clock until one changes nothing. Prints one JSON line: pages created, moved, prepared, opened
and merged, as the passes' reports said, and every error.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta

from hardening import ThumbnailEncoder

from optical_memory import MemoryManager

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CLOCK = [timedelta(hours=2), timedelta(days=8), timedelta(days=40)]


def main() -> int:
    url, stop = sys.argv[1:3]
    mm = MemoryManager(url, encoder=ThumbnailEncoder())
    print("ready", flush=True)
    sys.stdin.readline()
    created = moved = skipped = passes = merges = merged = prepared = opened = 0
    errors: list[str] = []

    def one(now: datetime) -> bool:
        nonlocal created, moved, skipped, passes, merges, merged, prepared, opened
        try:
            r = mm.age(now=now)
        except Exception as exc:
            errors.append(f"pass raised {type(exc).__name__}: {exc}")
            return True
        passes += 1
        created += r.pages_created
        moved += sum(r.pages_moved.values())
        skipped += r.pages_skipped
        merges += r.merges
        merged += r.pages_merged
        prepared += r.pages_prepared
        opened += r.pages_opened
        errors.extend(r.errors)
        return r.changed or r.pages_skipped > 0  # skipped: the other worker may still be busy

    k = int(os.getpid()) % len(CLOCK)  # the two workers run out of phase
    while not os.path.exists(stop):
        one(T0 + CLOCK[k % len(CLOCK)])
        k += 1
    while one(T0 + CLOCK[-1]) and len(errors) < 20:
        pass
    mm.close()
    print(
        json.dumps(
            {
                "created": created,
                "moved": moved,
                "skipped": skipped,
                "merges": merges,
                "merged": merged,
                "prepared": prepared,
                "opened": opened,
                "passes": passes,
                "errors": errors,
            }
        ),
        flush=True,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
