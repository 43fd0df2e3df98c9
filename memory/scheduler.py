"""Background aging with APScheduler: one interval job, never two passes at once.

Several processes may each run a scheduler on one database; the pass itself makes that safe
(it draws outside transactions and commits with version checks, claiming rows with SKIP
LOCKED on PostgreSQL; see :mod:`.aging`). A failing pass
is logged and the next one runs on time. The scheduler is handed the pass as a callable and
knows nothing of the manager.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from .errors import InvalidConfiguration

if TYPE_CHECKING:
    from .aging import AgingReport

log = logging.getLogger("optical_memory.scheduler")

MAX_INTERVAL = timedelta(days=3660)  # ten years between two passes is already no aging


def check_interval(every: object) -> float:
    """Seconds between two passes (a number or a timedelta): positive, finite, at most
    MAX_INTERVAL; else :class:`InvalidConfiguration`."""
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise InvalidConfiguration(
            f"every must be seconds or a timedelta, got {type(every).__name__}"
        )
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_INTERVAL.total_seconds():
        raise InvalidConfiguration(
            f"every must be a positive, finite interval of at most {MAX_INTERVAL.days} "
            f"days, got {every!r}"
        )
    return seconds


class AgingScheduler:
    """Runs an aging pass (``run_pass``, e.g. ``MemoryManager.age``) every interval on a
    background thread."""

    JOB_ID = "optical-memory-aging"

    def __init__(self, run_pass: Callable[[], AgingReport]) -> None:
        self.run_pass = run_pass
        self.last_report: AgingReport | None = None
        self.last_error: BaseException | None = None
        self.passes = 0
        self.failures = 0
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._idle = threading.Event()  # set while no pass runs
        self._idle.set()
        self._stopping = False

    def start(self, every: timedelta | float, *, run_now: bool = False) -> None:
        seconds = check_interval(every)
        self._stopping = False
        self._scheduler.add_job(
            self.run_once,
            "interval",
            seconds=seconds,
            id=self.JOB_ID,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC) if run_now else None,
        )
        if not self._scheduler.running:
            self._scheduler.start()
        if not run_now:
            self._scheduler.get_job(self.JOB_ID).modify(
                next_run_time=datetime.now(UTC) + timedelta(seconds=seconds)
            )

    def run_once(self) -> None:
        """One pass; errors are logged and kept, never raised into the scheduler thread."""
        if self._stopping:  # queued before stop(): do not start it
            return
        self._idle.clear()
        try:
            self.last_report = self.run_pass()
            self.passes += 1
            for err in self.last_report.errors:
                log.warning("aging: %s", err)
        except Exception as exc:
            self.failures += 1
            self.last_error = exc
            log.exception("aging pass failed; the scheduler keeps running")
        finally:
            self._idle.set()

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def stop(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop scheduling passes. With ``wait``, wait for a running pass to end, for at most
        ``timeout`` seconds (None: as long as it takes). True when no pass is running any more;
        False when one still is (it goes on in its thread, and no new one starts)."""
        self._stopping = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait and timeout is None)
        return self._idle.wait(timeout) if wait else self._idle.is_set()
