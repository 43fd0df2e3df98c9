"""Fork server for the crash tests: each stdin line ``<sqlite path> <now iso>`` forks a child
that opens the store, says ``ready <pid>``, runs one aging pass and says ``done <pid>``; the
server reports ``exit <pid> <status>`` once the child is gone (SIGKILLed by the test, usually).

Forking from this small, single-threaded process (imports done, no engine open) saves the
interpreter start-up on every trial, so the test can afford many of them.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime

from hardening import ThumbnailEncoder

from optical_memory import AgingPolicy, MemoryManager


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def child(path: str, now: datetime) -> None:
    mm = MemoryManager(f"sqlite:///{path}", encoder=ThumbnailEncoder(), policy=AgingPolicy())
    say(f"ready {os.getpid()}")
    report = mm.age(now=now)
    mm.close()
    say(f"done {os.getpid()} {json.dumps({'moved': report.pages_moved, 'errors': report.errors})}")


def main() -> None:
    for line in sys.stdin:
        path, stamp = line.split()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(path, datetime.fromisoformat(stamp))
            except BaseException as exc:  # report, never fall back into the server loop
                say(f"error {os.getpid()} {type(exc).__name__}: {exc}")
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        say(f"exit {pid} {status}")


if __name__ == "__main__":
    main()
