"""Writer process for the concurrency tests.

    python writer.py URL WRITER_ID TURNS SESSIONS PAUSE_S

Opens the store (on a fresh SQLite file the writers race to create it), prints ``ready``,
waits for a line on stdin, then appends TURNS turns round-robin over the comma-separated
SESSIONS, every third call a batch of two via ``add_turns``. Prints one JSON line with what
it wrote (session -> list of (index, seq, batch size)) and every error; exits 1 on any error.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import UTC, datetime, timedelta

from optical_memory import MemoryManager

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def content(writer: str, i: int) -> str:
    return f"{writer}:{i} " + "lorem ipsum dolor sit amet " * 16


def main() -> int:
    url, writer, n, sessions, pause = sys.argv[1:6]
    names = sessions.split(",")
    wrote: dict[str, list[list[int]]] = {s: [] for s in names}
    errors: list[str] = []
    mm = MemoryManager(url)
    print("ready", flush=True)
    sys.stdin.readline()
    i = 0
    call = 0
    while i < int(n):
        sid = names[call % len(names)]
        at = T0 + timedelta(seconds=i)
        try:
            if call % 3 == 2 and i + 1 < int(n):
                turns = mm.add_turns(
                    sid,
                    [("user", content(writer, i), at), ("assistant", content(writer, i + 1), at)],
                )
            else:
                turns = [mm.add_turn(sid, "user", content(writer, i), at)]
            for k, t in enumerate(turns):
                wrote[sid].append([i + k, t.seq, len(turns)])
            i += len(turns)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            i += 1
        call += 1
        if float(pause):
            time.sleep(float(pause))
    mm.close()
    print(json.dumps({"writer": writer, "wrote": wrote, "errors": errors}), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
