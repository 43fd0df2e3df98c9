"""Opening a database: resolve the URL, tune SQLite, migrate to head, retry when locked.

SQLite gets WAL, foreign keys and a busy timeout; write transactions start with
``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of deadlocking on a lock
upgrade. Transient lock and serialization errors are retried a bounded number of times.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .errors import StoreBusy

URL_ENV = "OPTICAL_MEMORY_URL"
BUSY_TIMEOUT_MS = 30_000
RETRIES = 8

T = TypeVar("T")


def default_url() -> str:
    """``$OPTICAL_MEMORY_URL``, else a SQLite file in the user's data directory."""
    if env := os.environ.get(URL_ENV):
        return env
    from platformdirs import user_data_dir

    path = Path(user_data_dir("optical-memory", appauthor=False)) / "memory.db"
    return f"sqlite:///{path}"


def normalise_url(url: str | os.PathLike[str]) -> str:
    """Accept SQLAlchemy URLs, plain ``postgresql://`` ones (psycopg 3 is used) and file paths."""
    text = os.fspath(url)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if text.startswith(prefix):
            return "postgresql+psycopg://" + text[len(prefix) :]
    return text


def create_store_engine(url: str) -> Engine:
    """An engine with the pragmas and transaction behaviour the store relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in database
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_connection.cursor()
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")  # forget() leaves no trace in the file
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def is_transient(exc: BaseException) -> bool:
    """Lock timeouts, busy databases, deadlocks and serialization failures: worth a retry."""
    if isinstance(exc, OperationalError):
        msg = str(exc.orig).lower()
        if "locked" in msg or "busy" in msg:
            return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in ("40001", "40P01", "55P03")
    return False


class Database:
    """An engine plus short read and write transactions with bounded retries."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_store_engine(url)
        self.dialect = self.engine.dialect.name
        self._write_engine = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.dialect == "sqlite"
            else self.engine
        )
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session, session.begin():
            yield session

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction; retry it whole on transient lock errors."""
        delay = 0.01
        for attempt in range(RETRIES + 1):
            try:
                with self._writer() as session, session.begin():
                    return work(session)
            except DBAPIError as exc:
                if not is_transient(exc) or attempt == RETRIES:
                    if is_transient(exc):
                        raise StoreBusy(
                            f"the database stayed locked through {RETRIES} retries; another "
                            "process holds a long write transaction. Try again later."
                        ) from exc
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()
