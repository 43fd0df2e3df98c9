"""A scratch PostgreSQL database for one benchmark run: made on the server, dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url, text

from optical_memory.database import normalise_url


@contextmanager
def scratch_pg_database(server_url: str, prefix: str = "om_bench") -> Iterator[str]:
    """The URL of a new, empty database on ``server_url``'s server, dropped on exit (even
    with connections left open to it)."""
    server_url = normalise_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
