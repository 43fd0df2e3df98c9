"""How long ``record_openai_messages`` takes to align a resent conversation with the store.

    python -m benchmarks.record_alignment            # 1,000 / 2,000 / 4,000 messages
    python -m benchmarks.record_alignment --quick

A chat backend sends the whole conversation on every request. For each size N, a session of N
stored messages gets (a) the same N messages again (nothing to store), (b) N messages whose
last reply was regenerated (one new version of a turn), (c) N + 2 messages (a new exchange).
Each is timed (median of a few runs, on SQLite in a temporary directory), with the ratio of the
largest size to the smallest: linear alignment doubles when N doubles, a quadratic one grows
four times. The floor is ``memory.turns`` itself at the same size (reading what is stored).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from optical_memory import MemoryManager
from optical_memory.adapters.openai import record_openai_messages


def conversation(n: int) -> list[dict[str, Any]]:
    out = []
    for k in range(n // 2):
        out.append({"role": "user", "content": f"Question {k} about the harbour fees."})
        out.append({"role": "assistant", "content": f"Answer {k}: they went up by a third."})
    return out


def timed(fn: Any, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(n: int, root: Path) -> dict[str, float]:
    memory = MemoryManager(f"sqlite:///{root / f'align-{n}.db'}")
    convo = conversation(n)
    record_openai_messages(memory, "s", convo)
    fresh = MemoryManager(f"sqlite:///{root / f'align-{n}.db'}")  # a new process: cold log
    out = {
        "floor: turns()": timed(lambda: fresh.turns("s")),
        "resend (cold)": timed(lambda: record_openai_messages(fresh, "s", convo), repeat=1),
        "resend": timed(lambda: record_openai_messages(memory, "s", convo)),
    }
    regenerated = [*convo[:-1], {"role": "assistant", "content": "A regenerated answer."}]
    out["regenerate"] = timed(lambda: record_openai_messages(memory, "s", regenerated), 1)
    grown = [*regenerated, {"role": "user", "content": "One more?"},
             {"role": "assistant", "content": "Sure."}]  # fmt: skip
    out["new exchange"] = timed(lambda: record_openai_messages(memory, "s", grown), 1)
    out["stored turns (want N+2)"] = len(memory.turns("s")) / 1000  # printed as a count
    memory.close()
    fresh.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    sizes = [200, 400] if args.quick else [1000, 2000, 4000]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {n: measure(n, Path(tmp)) for n in sizes}
    names = list(rows[sizes[0]])
    print(f"{'messages':>22}" + "".join(f"{n:>12,}" for n in sizes) + f"{'ratio':>10}")
    for name in names:
        if name.startswith("stored"):
            cells = "".join(f"{rows[n][name] * 1000:>12.0f}" for n in sizes)
            print(f"{name:>22}{cells}")
            continue
        cells = "".join(f"{rows[n][name] * 1000:>10.1f}ms" for n in sizes)
        ratio = rows[sizes[-1]][name] / max(rows[sizes[0]][name], 1e-9)
        print(f"{name:>22}{cells}{ratio:>9.1f}x")


if __name__ == "__main__":
    main()
