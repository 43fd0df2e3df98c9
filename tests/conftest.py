"""Shared fixtures: a fresh memory on SQLite, and on PostgreSQL when a server URL is given.

PostgreSQL tests read ``OPTICAL_MEMORY_TEST_PG_URL`` (e.g.
``postgresql://postgres@127.0.0.1:5432/test``) and skip without it; with
``OPTICAL_MEMORY_REQUIRE_PG=1`` (set by CI) a missing or unreachable server fails them instead.
Each test gets its own database, dropped afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for `import benchmarks.…` helpers shared with the benchmarks

PG_ENV = "OPTICAL_MEMORY_TEST_PG_URL"
REQUIRE_PG_ENV = "OPTICAL_MEMORY_REQUIRE_PG"


def _pg_unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_PG_ENV):
        pytest.fail(f"PostgreSQL is required here but {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        _pg_unavailable(f"{PG_ENV} is not set")
    from sqlalchemy import create_engine, text

    from optical_memory.database import normalise_url

    url = normalise_url(url)
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # pragma: no cover - depends on the machine
        _pg_unavailable(f"cannot connect to {url}: {exc}")
    return url


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A brand-new PostgreSQL database for one test, dropped afterwards."""
    from benchmarks.scratch import scratch_pg_database

    with scratch_pg_database(pg_server_url, "om_test") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'memory.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'memory.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def mm(db_url: str):  # type: ignore[no-untyped-def]
    from optical_memory import MemoryManager

    with MemoryManager(db_url) as manager:
        yield manager
