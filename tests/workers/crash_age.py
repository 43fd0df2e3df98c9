"""Fork server for the crash tests: each stdin line ``<sqlite path> <now iso> [<kill at>]``
forks a child that opens the store, says ``ready <pid>``, runs one aging pass and says
``done <pid> {report}``; the server reports ``exit <pid> <status>`` once the child is gone.

With ``<kill at>`` = k > 0 the child SIGKILLs itself just before the k-th SQL statement of the
pass (BEGIN and COMMIT included), so a test can crash it at chosen points instead of at random
times; the report of a pass that ran to the end counts its statements.

Forking from this small, single-threaded process (imports done, no engine open) saves the
interpreter start-up on every trial, so the test can afford many of them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime

from hardening import ThumbnailEncoder
from sqlalchemy import event

from optical_memory import AgingPolicy, MemoryManager


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def child(path: str, now: datetime, kill_at: int = 0) -> None:
    mm = MemoryManager(f"sqlite:///{path}", encoder=ThumbnailEncoder(), policy=AgingPolicy())
    statements = 0

    def count(*_args: object) -> None:
        nonlocal statements
        statements += 1
        if statements == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def commit(*_args: object) -> None:  # the driver's COMMIT is a statement too
        count()

    event.listen(mm.database.engine, "before_cursor_execute", count)
    event.listen(mm.database.engine, "commit", commit)
    say(f"ready {os.getpid()}")
    report = mm.age(now=now)
    event.remove(mm.database.engine, "before_cursor_execute", count)
    event.remove(mm.database.engine, "commit", commit)
    mm.close()
    result = {"moved": report.pages_moved, "errors": report.errors, "statements": statements}
    say(f"done {os.getpid()} {json.dumps(result)}")


def main() -> None:
    for line in sys.stdin:
        path, stamp, *rest = line.split()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(path, datetime.fromisoformat(stamp), int(rest[0]) if rest else 0)
            except BaseException as exc:  # report, never fall back into the server loop
                say(f"error {os.getpid()} {type(exc).__name__}: {exc}")
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        say(f"exit {pid} {status}")


if __name__ == "__main__":
    main()
