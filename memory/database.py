"""Opening a database: resolve the URL, tune SQLite, run short transactions, retry when locked.

Migrations are applied by :meth:`Database.open` (``MemoryManager`` calls it on open; see
``migrations``).

- **Writes** start with ``BEGIN IMMEDIATE`` on SQLite, so two writers queue on the lock instead
  of deadlocking on a lock upgrade. A write that finds the database locked (or, on PostgreSQL,
  a lock timeout, a deadlock or a serialization failure) is retried whole, and the waiting is
  bounded in total: ``busy_timeout`` seconds (default :data:`DEFAULT_BUSY_TIMEOUT`, 10 s) across
  every attempt, the lock waits inside SQLite or PostgreSQL included. Past it the caller gets
  :class:`StoreBusy`. The same bound caps the wait for a pooled connection, and a PostgreSQL
  connection attempt.
- **Reads** (:meth:`Database.read`) are one snapshot, whatever commits meanwhile: on PostgreSQL a
  ``REPEATABLE READ``, read-only transaction; on SQLite a deferred transaction in WAL mode, whose
  snapshot is fixed by its first ``SELECT`` (the ``BEGIN`` goes out before the first query).
- **Errors** a caller can act on come out typed: a read-only file or URL (:class:`StoreReadOnly`),
  a full disk (:class:`StoreFull`), a file that is not a database (:class:`DatabaseCorrupt`), a
  database that cannot be opened or reached (:class:`DatabaseUnavailable`), a schema newer than
  this version (:class:`DatabaseTooNew`), an unsupported backend (:class:`UnsupportedDatabase`).
- **Forgetting** on SQLite ends with ``PRAGMA wal_checkpoint(TRUNCATE)``, which copies the
  zeroed pages into the main file and empties the write-ahead log. A reader holding an older
  snapshot keeps the old frames alive; then the checkpoint reports busy, a note in
  ``om_pending_purges`` (written in the forgetting transaction itself) stays, and
  :meth:`Database.finish_purges` retries: on the next open, after the next write of this
  process, or when called.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import create_engine, delete, event, func, insert, inspect, make_url, select
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from . import migrations
from .errors import (
    DatabaseCorrupt,
    DatabaseUnavailable,
    ForgetIncomplete,
    InvalidConfiguration,
    MemoryClosed,
    MissingExtra,
    OpticalMemoryError,
    StoreBusy,
    StoreFull,
    StoreReadOnly,
    UnsupportedDatabase,
)
from .store import PendingPurgeRow

log = logging.getLogger("optical_memory.database")

URL_ENV = "OPTICAL_MEMORY_URL"
DEFAULT_BUSY_TIMEOUT = 10.0
"""Seconds a call may wait, in total, for locks held by others before :class:`StoreBusy`."""
MAX_BUSY_TIMEOUT = 3600.0
PING_AFTER_IDLE = 5.0  # seconds a pooled PostgreSQL connection may idle before it is pinged
LOCK_TIMEOUT_SLACK_MS = 100  # how far past its deadline a first write attempt may wait
SQLITE_MMAP_BYTES = 256 << 20  # address space, not memory: the OS pages the file in as read
BUSY_TIMEOUT_MS = int(DEFAULT_BUSY_TIMEOUT * 1000)  # kept for callers of the old constant
SUPPORTED = ("sqlite", "postgresql")
SUPPORTED_DRIVERS = ("pysqlite", "psycopg", "psycopg2")  # synchronous drivers the store runs on
PURGE_TABLE = "om_pending_purges"

T = TypeVar("T")

# The deadline (time.monotonic()) of the write attempt running on this thread, if any: the
# begin hook gives SQLite's busy handler, or PostgreSQL's lock_timeout, only what is left of it.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "optical_memory_deadline", default=None
)


def default_url() -> str:
    """``$OPTICAL_MEMORY_URL``, else a SQLite file in the user's data directory."""
    if env := os.environ.get(URL_ENV):
        return env
    from platformdirs import user_data_dir

    path = Path(user_data_dir("optical-memory", appauthor=False)) / "memory.db"
    return f"sqlite:///{path}"


def normalise_url(url: str | os.PathLike[str]) -> str:
    """Accept SQLAlchemy URLs, plain ``postgresql://`` ones (psycopg 3 is used) and file paths."""
    if not isinstance(url, str | os.PathLike):
        raise InvalidConfiguration(
            f"the database URL must be a string or a path, got {type(url).__name__}"
        )
    text = os.fspath(url)
    if isinstance(text, bytes):
        raise InvalidConfiguration("the database URL must be text, not bytes")
    if not text.strip() or "\x00" in text:
        raise InvalidConfiguration(
            "the database URL is empty or holds NUL characters; pass sqlite:///path.db, "
            "postgresql://user@host/db or a file path"
        )
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if text.startswith(prefix):
            return "postgresql+psycopg://" + text[len(prefix) :]
    return text


def check_busy_timeout(value: object) -> float:
    """Seconds, positive and finite (at most an hour)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfiguration(
            f"busy_timeout must be a number of seconds, got {type(value).__name__}"
        )
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_BUSY_TIMEOUT:
        raise InvalidConfiguration(
            f"busy_timeout must be more than 0 and at most {MAX_BUSY_TIMEOUT:g} seconds, "
            f"got {value!r}"
        )
    return seconds


def parse_url(url: str) -> URL:
    """The URL parsed, refusing backends the store does not support (typed, with the fix)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise InvalidConfiguration(
            f"cannot parse the database URL {url!r:.120}: {exc}; pass sqlite:///path.db, "
            "postgresql://user@host/db or a file path"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise UnsupportedDatabase(
            f"{backend!r} databases are not supported; use SQLite (sqlite:///path.db, or a "
            "file path) or PostgreSQL (postgresql://user@host/db)"
        )
    uri_args = {"mode", "cache", "immutable", "vfs", "nolock", "psow"} & set(parsed.query)
    uri = str(parsed.query.get("uri", "")).lower() == "true"
    if (
        backend == "sqlite"
        and uri_args
        and not (uri and (parsed.database or "").startswith("file:"))
    ):
        # SQLAlchemy drops these without uri=true (a mode=ro store would be written), and
        # with it but no file: the whole text is a file name: a new, empty store.
        raise InvalidConfiguration(
            f"SQLite's {', '.join(sorted(uri_args))} apply to a file: URI: write "
            "sqlite:///file:/path/to/memory.db?mode=ro&uri=true"
        )
    driver = parsed.get_driver_name()
    if driver not in SUPPORTED_DRIVERS:
        raise UnsupportedDatabase(
            f"the {backend} driver {driver!r} is not supported: use sqlite:///path.db or "
            "postgresql://user@host/db (psycopg 3). The store's calls are synchronous; their "
            "async twins (aadd_turn, aassemble, ...) run them off the event loop"
        )
    return parsed


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (``file:`` URIs too), or None for memory and other backends."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in parsed.query.items()}
    if database in ("", ":memory:") or query.get("mode") == "memory" or "mode=memory" in database:
        return None
    if database.startswith("file:"):
        parts = urlsplit(database)
        if "mode=memory" in parts.query:
            return None
        path = parts.path or database[len("file:") :]
        return Path(path).expanduser() if path else None
    return Path(database).expanduser()


def _sqlite_may_create(url: str) -> bool:
    """Whether opening this SQLite URL may create the file (and so its directory)."""
    parsed = make_url(url)
    database = parsed.database or ""
    modes = [v[-1] if isinstance(v, tuple) else v for k, v in parsed.query.items() if k == "mode"]
    if database.startswith("file:"):
        modes += [p[5:] for p in urlsplit(database).query.split("&") if p.startswith("mode=")]
    return not any(m in ("ro", "rw") for m in modes)


def _json_loads(data: str | bytes) -> Any:
    """PostgreSQL's JSON values as psycopg reads them, with the empty object (nearly every
    turn's metadata) made without the JSON decoder: 300 turns read cost ~1 ms of decoding."""
    if data == "{}" or data == b"{}":
        return {}
    return json.loads(data)


def create_store_engine(url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Engine:
    """An engine with the pragmas and transaction behaviour the store relies on."""
    parsed = parse_url(url)
    busy = check_busy_timeout(busy_timeout)
    busy_ms = max(1, int(busy * 1000))
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, object] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = max(2, math.ceil(busy))
        try:
            engine = create_engine(
                url, pool_timeout=busy, connect_args=connect_args, json_deserializer=_json_loads
            )
        except ModuleNotFoundError as exc:  # SQLAlchemy imports the driver itself
            if (exc.name or "").partition(".")[0] in ("psycopg", "psycopg2"):
                raise MissingExtra("a PostgreSQL database", "postgres", exc.name) from None
            raise

        @event.listens_for(engine, "connect")
        def _pg_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_connection.cursor()
            cur.execute(f"SET lock_timeout = {busy_ms}")  # no lock wait outlives the bound
            cur.close()
            dbapi_connection.commit()

        @event.listens_for(engine, "checkin")
        def _pg_checkin(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
            record.info["om_idle_since"] = time.monotonic()

        @event.listens_for(engine, "checkout")
        def _pg_checkout(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
            # pool_pre_ping, but only for a connection idle long enough to have been dropped
            # (a server restart, an idle timeout): a round trip saved on every busy call.
            idle = record.info.pop("om_idle_since", None)
            if idle is None or time.monotonic() - idle < PING_AFTER_IDLE:
                return
            try:
                cur = dbapi_connection.cursor()
                cur.execute("SELECT 1")
                cur.close()
                dbapi_connection.rollback()
            except Exception as exc:  # noqa: BLE001 - any failure: the pool reconnects
                raise DisconnectionError(str(exc)) from exc

        @event.listens_for(engine, "begin")
        def _pg_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                return  # one statement, a transaction of its own (see Database.read_once)
            deadline = _DEADLINE.get()
            if deadline is not None:  # a write attempt: only what is left of its time
                left = max(1, int((deadline - time.monotonic()) * 1000))
                # A first attempt has (nearly) the whole bound left: the session's
                # lock_timeout already says so, and a round trip per write is saved.
                if left < busy_ms - LOCK_TIMEOUT_SLACK_MS:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {left}")

        return engine

    path = sqlite_file(url)
    in_memory = path is None
    if path is not None and _sqlite_may_create(url):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailable(
                f"cannot create the directory {path.parent} for the database: "
                f"{exc.strerror or exc}; check the path and its permissions"
            ) from None
    engine = create_engine(
        url,
        connect_args={"timeout": busy, "check_same_thread": False},
        **({"poolclass": StaticPool} if in_memory else {"pool_timeout": busy}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_connection.cursor()
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Reads through a memory map instead of read() calls: assemble reads many small
            # rows; pages the OS already holds cost no copy (0.9x of an assemble call).
            cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")  # forget() leaves no trace in the file
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()
        record.info["om_busy_ms"] = busy_ms

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        deadline = _DEADLINE.get()
        want = busy_ms
        if deadline is not None:  # a write attempt: only what is left of its time
            left = max(1, int((deadline - time.monotonic()) * 1000))
            # A first attempt has (nearly) the whole bound left: the connection's timeout
            # already says so, and the two PRAGMAs that would set it and set it back are saved.
            if left < busy_ms - LOCK_TIMEOUT_SLACK_MS:
                want = left
        info = conn.connection.info
        if info.get("om_busy_ms") != want:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={want}")
            info["om_busy_ms"] = want
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode != "NONE":  # NONE: one statement outside a transaction (Database.read_once)
            conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def says_locked(message: str) -> bool:
    """Whether a SQLite error's message says another connection held the lock."""
    msg = message.lower()
    return "locked" in msg or "busy" in msg


def is_transient(exc: BaseException) -> bool:
    """Lock timeouts, busy databases, deadlocks and serialization failures: worth a retry."""
    if isinstance(exc, OperationalError) and says_locked(str(exc.orig)):
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in ("40001", "40P01", "55P03")
    return False


def typed_error(exc: BaseException, url: str) -> OpticalMemoryError | None:
    """The typed error a database failure stands for (None: a bug to see as it is)."""
    if isinstance(exc, OpticalMemoryError):
        return exc
    if isinstance(exc, PoolTimeout):
        return StoreBusy(
            "no database connection came free within the busy timeout; too many callers at "
            "once: raise busy_timeout or the pool size, or try again later"
        )
    if not isinstance(exc, DBAPIError):
        return None
    where = _display(url)
    orig = exc.orig
    msg = str(orig).lower()
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or ""
    if is_transient(exc):
        return StoreBusy(
            f"{where} stayed locked for the whole busy timeout; another process holds a long "
            "transaction. Try again later, or raise busy_timeout"
        )
    if "readonly" in msg or "read-only" in msg or code == "25006":
        return StoreReadOnly(
            f"{where} is read-only (the file, its directory, or the URL's mode=ro); nothing was "
            "written. Open it writable to change it"
        )
    if "disk is full" in msg or "database or disk is full" in msg or code == "53100":
        return StoreFull(
            f"{where}: the disk (or the database's size limit) is full; nothing was written. "
            "Free some space and try again"
        )
    if "not a database" in msg or "malformed" in msg or code.startswith("XX"):
        return DatabaseCorrupt(
            f"{where} is not an optical-memory database, or it is damaged ({_first_line(orig)}); "
            "point the URL at another file or restore a backup"
        )
    if (
        "unable to open" in msg
        or "disk i/o error" in msg
        or code.startswith(("08", "28", "3D", "57P"))
        or (code == "" and isinstance(exc, OperationalError) and "postgresql" in url)
    ):
        return DatabaseUnavailable(
            f"cannot open {where}: {_first_line(orig)}; check that the path or server exists "
            "and that this process may use it"
        )
    return None


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Raise database failures a caller can act on as typed errors."""
    try:
        yield
    except (DBAPIError, PoolTimeout) as exc:
        typed = typed_error(exc, url)
        if typed is None:
            raise
        raise typed from exc


def _display(url: str) -> str:
    try:
        return repr(make_url(url).render_as_string(hide_password=True))
    except Exception:  # noqa: BLE001 - only for a message
        return "the database"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class DriverStatement:
    """A Core statement compiled once for one dialect and run on the driver's own cursor of
    a connection inside its transaction: what a hot write sends without SQLAlchemy's
    per-call execution machinery. Values go through the columns' own bind processing (the
    same stored bytes as a Core execute); driver errors are raised as SQLAlchemy's, so the
    write's retries and typed errors see them as before. Only for statements whose every
    value is given (no Python-side defaults are applied)."""

    def __init__(self, statement: Any, engine: Engine, keys: Sequence[str] | None = None) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect, column_keys=keys)
        if dialect.paramstyle not in ("qmark", "numeric"):
            raise InvalidConfiguration(
                f"DriverStatement needs positional binds, not {dialect.paramstyle}"
            )
        self.sql = str(compiled)
        self._names = tuple(compiled.positiontup or ())
        processors = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        self._steps = tuple((n, processors.get(n)) for n in self._names)
        self._error = dialect.loaded_dbapi.Error

    def run(self, conn: Connection, values: Mapping[str, Any]) -> Any:
        """Execute with ``values`` on ``conn``'s driver connection; the first row, if any."""
        params = tuple(p(values[n]) if p else values[n] for n, p in self._steps)
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(self.sql, params)
            return cursor.fetchone()
        except self._error as exc:
            raise DBAPIError.instance(self.sql, params, exc, self._error) from exc
        finally:
            cursor.close()


class Database:
    """An engine plus short read and write transactions with bounded, total waits."""

    def __init__(self, url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.url = url
        self.busy_timeout = check_busy_timeout(busy_timeout)
        self.engine = create_store_engine(url, self.busy_timeout)
        self.dialect = self.engine.dialect.name
        self._file = sqlite_file(url)  # None: PostgreSQL, or SQLite in memory
        self.closed = False
        self._purges_pending = False  # a forget of this process left a note to finish
        self._has_purge_table = False
        if self.dialect == "sqlite":
            self._write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
            self._read_engine = self.engine
            self._once_engine = self.engine.execution_options(sqlite_begin="NONE")
        else:
            self._write_engine = self.engine
            self._read_engine = self.engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            self._once_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._reader = sessionmaker(self._read_engine, expire_on_commit=False)
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)

    # -- opening -----------------------------------------------------------------------------

    def open(self, *, migrate: bool = True) -> None:
        """Connect (typed errors when that fails), migrate to head, finish pending forgets."""
        with translated(self.url):
            if migrate:
                migrations.upgrade(self.engine)
            else:
                with self.engine.connect():
                    pass
            self._has_purge_table = inspect(self.engine).has_table(PURGE_TABLE)
        if self._has_purge_table and self._file is not None:
            try:
                with self.read() as s:
                    self._purges_pending = bool(
                        s.scalar(select(func.count()).select_from(PendingPurgeRow))
                    )
            except OpticalMemoryError:  # a busy or read-only store still opens
                return
            if self._purges_pending:
                self._try_finish_purges()

    def _check_open(self) -> None:
        if self.closed:
            raise MemoryClosed("this MemoryManager is closed; open a new one")

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only snapshot: every query inside sees the same committed state."""
        self._check_open()
        with translated(self.url), self._reader() as session, session.begin():
            yield session

    @contextmanager
    def read_once(self) -> Iterator[Connection]:
        """A connection for a read that is one statement, run outside a transaction: a single
        statement sees one consistent snapshot by itself, and PostgreSQL is spared the BEGIN
        and COMMIT round trips (one round trip instead of three)."""
        self._check_open()
        with translated(self.url), self._once_engine.connect() as conn:
            yield conn

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction; retry it whole on transient lock errors, for
        at most ``busy_timeout`` seconds in all, then raise :class:`StoreBusy`."""

        def attempt() -> T:
            with self._writer() as session, session.begin():
                return work(session)

        return self._retrying(attempt)

    def write_core(self, work: Callable[[Connection], T], *, one_statement: bool = False) -> T:
        """:meth:`write` on a plain connection (SQLAlchemy Core, no ORM session): for the hot
        write paths, whose statements are built once. Same transaction, retries and errors.

        ``one_statement``: ``work`` runs a single statement, atomic by itself. On PostgreSQL
        its first attempt then runs in autocommit, which saves the BEGIN and COMMIT round
        trips; a retry runs in a transaction again, under what is left of the time bound."""
        autocommit = one_statement and self.dialect == "postgresql"

        def attempt() -> T:
            nonlocal autocommit
            if autocommit:
                autocommit = False  # the first attempt only
                with self._once_engine.connect() as conn:
                    return work(conn)
            with self._write_engine.connect() as conn, conn.begin():
                return work(conn)

        return self._retrying(attempt)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        attempts = 0
        token = _DEADLINE.set(deadline)
        try:
            while True:
                self._check_open()
                attempts += 1
                try:
                    result = attempt()
                    break
                except (DBAPIError, PoolTimeout) as exc:
                    left = deadline - time.monotonic()
                    if isinstance(exc, DBAPIError) and is_transient(exc) and left > 0:
                        time.sleep(min(left, delay * (1 + random.random())))
                        delay = min(delay * 2, 0.25)
                        continue
                    typed = typed_error(exc, self.url)
                    if isinstance(typed, StoreBusy):
                        raise StoreBusy(
                            f"the database stayed locked for {self.busy_timeout:g} s "
                            f"({attempts} attempts); another process holds a long write "
                            "transaction. Try again later, or raise busy_timeout"
                        ) from exc
                    if typed is None:
                        raise
                    raise typed from exc
        finally:
            _DEADLINE.reset(token)
        if self._purges_pending:
            self._try_finish_purges()
        return result

    # -- forgetting --------------------------------------------------------------------------

    def note_purge(self, s: Session, now: datetime | None = None) -> None:
        """Inside a forgetting transaction: leave the note that the files still need purging
        (SQLite only; nothing to do where the table is missing, e.g. ``migrate=False``)."""
        if self.dialect == "sqlite" and self._has_purge_table and self._file is not None:
            s.execute(insert(PendingPurgeRow).values(created_at=now or datetime.now(UTC)))
            self._purges_pending = True

    def finish_purges(self, wait: bool = True) -> None:
        """Push forgotten pages out of every SQLite file: checkpoint the write-ahead log into
        the main file and truncate it, then drop the notes. Waits up to ``busy_timeout`` for
        readers on old snapshots (``wait=False``: not at all); raises
        :class:`ForgetIncomplete` if one still holds the old pages."""
        self._check_open()
        if self.dialect != "sqlite" or self._file is None:
            self._purges_pending = False
            return
        noted = None
        if self._has_purge_table:  # the notes this checkpoint settles (not later ones)
            with self.read() as s:
                noted = s.scalar(select(func.max(PendingPurgeRow.id)))
        deadline = time.monotonic() + (self.busy_timeout if wait else 0.0)
        self._rebuild(deadline)
        while self._checkpoint(deadline):
            left = deadline - time.monotonic()
            if left <= 0:
                self._purges_pending = True
                raise ForgetIncomplete(
                    "the session is deleted, but its bytes are still in the database's "
                    "write-ahead log: another connection has held an old snapshot (a long "
                    f"read) for over {self.busy_timeout:g} s. End that reader; the next write "
                    "or open finishes the job, or call finish_forget()"
                )
            time.sleep(min(left, 0.05))
        self._purges_pending = False
        if noted is not None:
            self.write(
                lambda s: s.execute(delete(PendingPurgeRow).where(PendingPurgeRow.id <= noted))
            )

    def _try_finish_purges(self) -> None:
        """Best effort, without waiting (after a write, on open); the note stays if blocked."""
        self._purges_pending = False
        try:
            self.finish_purges(wait=False)
        except OpticalMemoryError as exc:
            self._purges_pending = True
            log.info("forgotten data not purged yet: %s", exc)

    @contextmanager
    def _bounded_cursor(self, deadline: float) -> Iterator[sqlite3.Cursor]:
        """A driver cursor outside any transaction (what ``VACUUM`` and a checkpoint need),
        its busy handler given what is left of the time to ``deadline``."""
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        with translated(self.url):
            raw = self.engine.raw_connection()
            try:
                cur = raw.driver_connection.cursor()
                cur.execute(f"PRAGMA busy_timeout={left_ms}")
                raw.info["om_busy_ms"] = left_ms
                try:
                    yield cur
                finally:
                    cur.close()
            finally:
                raw.close()

    def _rebuild(self, deadline: float) -> None:
        """``VACUUM``: the file rebuilt from its live rows. ``secure_delete`` zeroes a deleted
        row, but copies of it that SQLite left while it rebalanced a page (in the page's free
        gap, beside rows still live) survive it; only a rebuild leaves no byte of them. It
        costs a pass over the whole file, and waits for a writer as a write does."""
        with self._bounded_cursor(deadline) as cur:
            try:
                cur.execute("VACUUM")
            except sqlite3.OperationalError as exc:
                if not says_locked(str(exc)):
                    raise
                self._purges_pending = True
                raise ForgetIncomplete(
                    "the session is deleted, but the database file is not rebuilt yet: "
                    f"another connection kept writing for over {self.busy_timeout:g} s. "
                    "The next write or open finishes the job, or call finish_forget()"
                ) from None

    def _checkpoint(self, deadline: float) -> bool:
        """One ``wal_checkpoint(TRUNCATE)``, its busy handler given what is left of the time;
        True when a reader kept it from completing."""
        with self._bounded_cursor(deadline) as cur:
            row = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(row and row[0])

    def vacuum_postgres(self, tables: list[str]) -> None:
        """``VACUUM (FULL, ANALYZE)`` of the tables: rewrites each one, so the bytes of deleted
        rows leave the table and index files (plain VACUUM only marks their space free)."""
        self._check_open()
        with translated(self.url), self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in tables:
                conn.exec_driver_sql(f'VACUUM (FULL, ANALYZE) "{table}"')

    def analyze(self) -> None:
        """Refresh PostgreSQL's planner statistics of the turns table after a bulk load: until
        autovacuum gets to it, a table just filled looks empty to the planner, which then sorts
        a whole session to read its newest turns (131 ms instead of 0.5 at 100k turns). SQLite
        plans from its indexes alone: nothing to do."""
        self._check_open()
        if self.dialect != "postgresql":
            return
        with translated(self.url), self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("ANALYZE om_turns")

    def vacuum_sqlite(self) -> None:
        """``VACUUM`` (rebuild the file, dropping free pages) and an emptied write-ahead log."""
        self._check_open()
        if self._file is None:
            return
        with translated(self.url):
            raw = self.engine.raw_connection()
            try:
                raw.driver_connection.execute("VACUUM")
            finally:
                raw.close()
        self.finish_purges()

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new work (calls in flight fail at their next retry) and release connections."""
        self.closed = True
        self.engine.dispose()

    def dispose(self) -> None:
        self.close()


# -- API keys (the service's): appended here, one table, no queries of the core use it ---------

from sqlalchemy import Index as _KeyIndex  # noqa: E402
from sqlalchemy import String as _KeyString  # noqa: E402
from sqlalchemy.orm import Mapped, mapped_column  # noqa: E402

from .store import Base, BigId, UTCDateTime  # noqa: E402


class ApiKeyRow(Base):
    """One API key of the HTTP service, bound to one owner. Only the key's SHA-256 is stored
    (a key is 32 random bytes, so a plain hash cannot be reversed); ``prefix`` (the key's
    first characters) lets ``keys list`` name a key without revealing it. A revoked key keeps
    its row, with ``revoked_at`` set, so listing shows what was revoked and when."""

    __tablename__ = "om_api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(_KeyString(256), nullable=False)
    key_hash: Mapped[str] = mapped_column(_KeyString(64), nullable=False)
    prefix: Mapped[str] = mapped_column(_KeyString(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        _KeyIndex("ix_om_api_keys_key_hash", "key_hash", unique=True),
        _KeyIndex("ix_om_api_keys_owner", "owner"),
        {"sqlite_autoincrement": True},
    )
