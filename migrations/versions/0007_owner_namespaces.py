"""Owners are namespaces: a session is (owner, key), unique together instead of key alone.

The same session id under two owners is two sessions, and a write under one owner never learns
whether another uses the id. ``om_sessions.owner`` becomes NOT NULL with the empty string
standing for "no owner" (no owner may be named ''): a unique index treats NULLs as distinct on
both backends, '' is one namespace like any other, so the no-owner sessions stay unique by key
and the upsert of ``add_turn`` can name plain columns (``ON CONFLICT (owner, key)``). The new
index ``ix_om_sessions_owner_key (owner, key)`` replaces both ``ix_om_sessions_key`` and
``ix_om_sessions_owner`` (owner-only lookups use its leading column).

Every existing session keeps its id and stays under the owner it has (NULL becomes ''). On
SQLite the table is rebuilt (a column's nullability cannot be altered in place) with
``AUTOINCREMENT`` and its sequence kept, so no forgotten session's id is handed out again;
only ``om_sessions`` is copied, so ``om_turns`` and the full-text index's triggers on it
(0004), which name session row ids, are untouched. Foreign keys are off while migrating (see
``migrations._migrating``), so the copy-and-drop does not cascade into the children.

Downgrade: back to unique keys, '' to NULL; refused (nothing changed) while two owners hold
sessions of the same id, since the older schema cannot hold both.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-17
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _sequence(bind: sa.Connection) -> int | None:
    """SQLite's AUTOINCREMENT high-water mark of om_sessions (None elsewhere or unset)."""
    if bind.dialect.name != "sqlite":
        return None
    return bind.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = 'om_sessions'"
    ).scalar()


def _restore_sequence(bind: sa.Connection, seq: int | None) -> None:
    if seq is None:
        return
    bind.exec_driver_sql(
        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'om_sessions'", (seq,)
    )
    bind.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'om_sessions', ? "
        "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'om_sessions')",
        (seq,),
    )


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    seq = _sequence(bind)
    op.execute("UPDATE om_sessions SET owner = '' WHERE owner IS NULL")
    op.drop_index("ix_om_sessions_key", table_name="om_sessions")
    op.drop_index("ix_om_sessions_owner", table_name="om_sessions")
    with op.batch_alter_table(
        "om_sessions",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        batch.alter_column(
            "owner",
            existing_type=sa.String(256),
            nullable=False,
            server_default="",
        )
    op.create_index("ix_om_sessions_owner_key", "om_sessions", ["owner", "key"], unique=True)
    _restore_sequence(bind, seq)


def downgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    shared = bind.exec_driver_sql(
        "SELECT key FROM om_sessions GROUP BY key HAVING COUNT(*) > 1 LIMIT 1"
    ).scalar()
    if shared is not None:
        raise RuntimeError(
            f"cannot downgrade below 0007: several owners have a session {shared!r}, and the "
            "older schema allows one session per id; forget or rename one of them first"
        )
    seq = _sequence(bind)
    op.drop_index("ix_om_sessions_owner_key", table_name="om_sessions")
    with op.batch_alter_table(
        "om_sessions",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        batch.alter_column(
            "owner", existing_type=sa.String(256), nullable=True, server_default=None
        )
    op.execute("UPDATE om_sessions SET owner = NULL WHERE owner = ''")
    op.create_index("ix_om_sessions_key", "om_sessions", ["key"], unique=True)
    op.create_index("ix_om_sessions_owner", "om_sessions", ["owner"])
    _restore_sequence(bind, seq)
