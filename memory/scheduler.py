"""Background aging with APScheduler: one interval job, never two passes at once.

Several processes may each run a scheduler on one database; the pass itself makes that safe
(row claims with SKIP LOCKED on PostgreSQL, immediate transactions on SQLite). A failing pass
is logged and the next one runs on time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

if TYPE_CHECKING:
    from .aging import AgingReport
    from .manager import MemoryManager

log = logging.getLogger("optical_memory.scheduler")


class AgingScheduler:
    """Runs ``MemoryManager.age()`` every interval on a background thread."""

    JOB_ID = "optical-memory-aging"

    def __init__(self, manager: MemoryManager) -> None:
        self.manager = manager
        self.last_report: AgingReport | None = None
        self.last_error: BaseException | None = None
        self.passes = 0
        self.failures = 0
        self._scheduler = BackgroundScheduler(timezone=UTC)

    def start(self, every: timedelta | float, *, run_now: bool = False) -> None:
        seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
        if seconds <= 0:
            raise ValueError("every must be a positive interval")
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
        try:
            self.last_report = self.manager.age()
            self.passes += 1
            for err in self.last_report.errors:
                log.warning("aging: %s", err)
        except Exception as exc:
            self.failures += 1
            self.last_error = exc
            log.exception("aging pass failed; the scheduler keeps running")

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def stop(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
