"""Drawing pages in worker processes: the pool an aging pass hands its drawings to.

Drawing a page (layout, rasterising and PNG encoding of every tier) is pure CPU given its
turns and the renderer's settings, and Pillow holds the GIL for most of it, so threads do not
help; processes do. A :class:`DrawPool` keeps a ``concurrent.futures.ProcessPoolExecutor``
whose workers each build one :class:`~optical_memory.render.PageRenderer` with the parent's
settings (font sizes, the effective-size floor, the fallback font files), receive plain data
(:class:`~optical_memory.render.RenderTurn` values: speaker, date, text, the images' bytes; the
layout canvas; the image sizes) and send back :class:`~optical_memory.render.RenderedImage`
values, the same bytes the parent would have drawn. Nothing else crosses: no database, no
connection, no salience function, no encoder (the parent decides which turns an abridged page
keeps whole before it sends them, and encodes visual tokens after the images come back).

The workers are started with the ``spawn`` method, never ``fork``: the parent holds database
connections and threads (the scheduler's, SQLAlchemy's pool) that a forked child would copy in
whatever state they were. As with any spawn pool, the program's main module must be importable
without side effects (``if __name__ == "__main__":``). The pool starts lazily, at the first
drawing, is reused across passes, and is shut down by :meth:`DrawPool.close` (the manager's
``close``). A worker that dies mid-drawing (killed, out of memory) fails that drawing with
:class:`~optical_memory.errors.DrawingFailed`: nothing is written for it and the next pass
draws it again; the broken pool is dropped and the next drawing starts a fresh one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from .errors import DrawingFailed, InvalidConfiguration, MemoryClosed
from .glyphs import FALLBACK_FONTS_ENV
from .render import PageRenderer, RenderedImage, RenderTurn

AUTO = "auto"
START_METHOD = "spawn"
STALL_CHECK_SECONDS = 2.0
"""How long :meth:`DrawPool.result` waits before it makes sure no worker died unnoticed."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_draw_workers(value: object) -> int:
    """How many processes draw a pass's pages: ``value`` itself (an int >= 1; 1 draws in the
    calling process, with no pool), or for ``"auto"`` one per usable core but one, the one
    left to the process's own work (its requests, the pass's reads and commits): 1 (no pool)
    on machines of one or two cores.

    Raises:
        InvalidConfiguration: neither a positive int nor ``"auto"``.
    """
    if value == AUTO:
        return max(1, usable_cores() - 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfiguration(
            f'draw_workers must be a positive int or "auto", got {value!r:.40}'
        )
    return value


@dataclass(frozen=True)
class RendererSettings:
    """What a worker needs to build a renderer that draws the same bytes as the parent's."""

    min_font_px: int
    max_font_px: int
    min_effective_px: float
    fallback_fonts: tuple[str, ...]  # every fallback face, the environment's included

    @classmethod
    def of(cls, renderer: PageRenderer) -> RendererSettings:
        return cls(
            renderer.min_font_px,
            renderer.max_font_px,
            renderer.min_effective_px,
            renderer.fallback_fonts,
        )

    def build(self) -> PageRenderer:
        return PageRenderer(
            min_font_px=self.min_font_px,
            max_font_px=self.max_font_px,
            min_effective_px=self.min_effective_px,
            fallback_fonts=self.fallback_fonts,
        )


def can_draw_elsewhere(renderer: PageRenderer) -> bool:
    """Whether a worker can rebuild ``renderer`` from its settings: a plain PageRenderer. A
    subclass may draw differently, so its pages are drawn in the calling process."""
    return type(renderer) is PageRenderer


_renderer: PageRenderer | None = None  # the worker's own, built once by _start_worker


def _start_worker(settings: RendererSettings) -> None:
    global _renderer
    # The parent's fallback list already holds the environment's fonts, in order: read them
    # only from there, so a face is neither added twice nor taken from a changed variable.
    os.environ.pop(FALLBACK_FONTS_ENV, None)
    _renderer = settings.build()


def _noop() -> None:
    """A task that only wakes the executor's manager (see :meth:`DrawPool.result`)."""


def _render(
    turns: Sequence[RenderTurn], canvas: tuple[int, int], sizes: Sequence[tuple[int, int]]
) -> list[RenderedImage]:
    assert _renderer is not None, "worker started without its renderer"
    return _renderer.render(turns, canvas, sizes)


class DrawPool:
    """Worker processes that draw pages with a copy of one renderer (see the module's doc).

    Thread-safe: passes on several threads may share one pool.
    """

    def __init__(self, renderer: PageRenderer, workers: int) -> None:
        if not can_draw_elsewhere(renderer):
            raise InvalidConfiguration("only a plain PageRenderer can draw in worker processes")
        if workers < 2:
            raise InvalidConfiguration("a draw pool needs at least 2 workers")
        self.settings = RendererSettings.of(renderer)
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        # which executor each pending drawing went to: a broken one is dropped, not its heir
        self._origin: weakref.WeakKeyDictionary[Future[Any], ProcessPoolExecutor] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether worker processes are running (the pool starts at its first drawing)."""
        return self._executor is not None

    def submit(
        self,
        turns: Sequence[RenderTurn],
        canvas: tuple[int, int],
        sizes: Sequence[tuple[int, int]],
    ) -> Future[list[RenderedImage]]:
        """Start drawing ``turns`` as :meth:`PageRenderer.render` would; read the result with
        :meth:`result`.

        Raises:
            MemoryClosed: the pool was closed.
        """
        with self._lock:
            if self._closed:
                raise MemoryClosed("the draw pool was closed with its manager")
            for _ in range(2):
                if self._executor is None:
                    self._executor = ProcessPoolExecutor(
                        max_workers=self.workers,
                        mp_context=multiprocessing.get_context(START_METHOD),
                        initializer=_start_worker,
                        initargs=(self.settings,),
                    )
                try:
                    future = self._executor.submit(_render, list(turns), canvas, list(sizes))
                    self._origin[future] = self._executor
                    return future
                except BrokenProcessPool:
                    # A worker died while the pool was idle: start a fresh one, once.
                    self._drop(self._executor)
            raise DrawingFailed("the drawing processes could not be started")

    def result(self, future: Future[list[RenderedImage]]) -> list[RenderedImage]:
        """The images of a drawing, or the error the drawing raised, as drawing in this
        process would have raised it.

        Raises:
            DrawingFailed: the worker died before it finished (the pool is dropped; the next
                drawing starts a fresh one).
        """
        try:
            while True:
                try:
                    return future.result(timeout=STALL_CHECK_SECONDS)
                except TimeoutError:
                    self._wake(future)
        except BrokenProcessPool as exc:
            with self._lock:
                self._drop(self._origin.get(future))
            raise DrawingFailed(
                "a drawing process died before it finished (killed, out of memory, or it "
                "could not start: a program that makes a MemoryManager with draw_workers "
                "must keep its main module importable, behind if __name__ == '__main__'); "
                "nothing was written for the page, the next aging pass draws it again"
            ) from exc

    def _wake(self, future: Future[list[RenderedImage]]) -> None:
        """Make the executor look at its workers again. Its manager thread waits on the
        workers it knew when it last woke, and ``submit`` wakes it before it starts a worker
        on demand (CPython 3.11): a worker started so, then killed, would go unnoticed and
        its drawing never end. A submitted task wakes it; a dead worker then breaks the
        pool, and the drawing raises ``BrokenProcessPool``."""
        with self._lock:
            executor = self._origin.get(future)
        if executor is not None:
            # Broken or shut down already: the drawing's future says so.
            with contextlib.suppress(BrokenProcessPool, RuntimeError):
                executor.submit(_noop)

    def _drop(self, executor: ProcessPoolExecutor | None) -> None:
        """Forget a broken executor (under the lock), and stop what is left of its workers.

        CPython 3.11 terminates the workers its manager thread knew of when the pool broke;
        one started on demand after that (``submit`` starts them) lives on, blocked sending
        its drawing into a pipe no one reads, and the interpreter's exit then waits for it
        forever (seen in this suite). Every worker is started under this pool's lock, so all
        of them are in the executor's table by now."""
        if executor is not None and executor is self._executor:
            self._executor = None
            # CPython's own table of the executor's workers (copied in one step under the GIL).
            procs = list((getattr(executor, "_processes", None) or {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()

    def close(self) -> None:
        """Stop the workers (drawings not started are cancelled, running ones are waited for)
        and refuse further drawings. Idempotent."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
