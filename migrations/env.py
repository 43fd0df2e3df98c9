"""Alembic environment: runs on the connection the library hands over (see __init__.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from optical_memory.store import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "optical-memory migrations run through optical_memory.migrations.upgrade(engine) "
        "or `optical-memory db upgrade`, not the alembic command line"
    )

if connection.dialect.name == "postgresql":
    # Two processes opening a fresh database at once: the second waits, then finds head.
    connection.execute(text("SELECT pg_advisory_xact_lock(7041998311)"))

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
context.run_migrations()
