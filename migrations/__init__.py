"""Alembic migrations, shipped inside the package so they run from an installed wheel."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from optical_memory.errors import DatabaseTooNew

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_known(revision: str | None) -> None:
    """Refuse a database stamped with a revision these scripts do not have: it was written by
    a newer optical-memory, and migrating it (or using it) with this one could lose data."""
    if revision is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    try:
        known = script.get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        known = False
    if not known:
        raise DatabaseTooNew(
            f"the database's schema is at revision {revision!r}, which this optical-memory "
            f"does not know (its newest is {head_revision()!r}): it was written by a newer "
            "version. Upgrade optical-memory (pip install -U optical-memory) to open it"
        )


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` in one transaction (a no-op when already there).
    Raises :class:`DatabaseTooNew` for a database from a newer version."""
    current = current_revision(engine)
    if revision == "head" and current == head_revision():
        return
    check_known(current)
    with _migrating(engine) as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    check_known(current_revision(engine))
    with _migrating(engine) as conn:
        command.downgrade(alembic_config(conn), revision)


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One transaction to migrate in. On SQLite, batch operations copy a table and drop the
    old one, and with foreign keys on that DROP cascades into the child tables (losing, say,
    a page's cached visual tokens); so foreign keys are off while migrating, checked before
    commit, and back on afterwards."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    engine = engine.execution_options(sqlite_begin="IMMEDIATE")  # one migrator at a time
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys=OFF")  # outside a transaction, or it is ignored
        try:
            with conn.begin():
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"migration left dangling references: {broken[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")
