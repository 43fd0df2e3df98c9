"""Which aging pass works on a session: on PostgreSQL, one pass at a time per session.

Why: several processes on one PostgreSQL (service workers, each with its scheduler, or a cron
``age`` beside them) find the same sessions due at the same time. The version check at each
commit already makes every change commit once, but both passes drew it, at full cost: with two
workers the machine drew every due page twice. A pass now holds a session-level advisory lock
on the session while it packs, plans, draws and commits it; another pass that finds the lock
held skips the session (``AgingReport.sessions_busy``), and the holder ages it. The lock lives
on a connection of its own, outside any transaction: it is released when the session is done,
or by the server when the connection closes (a killed process leaves nothing behind).

SQLite has no lock across processes to lean on here: two processes passing over one file may
still draw a page twice (one commit wins, as before).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from .database import Database

__all__ = ["CLAIM_NAMESPACE", "claim_key", "claimed"]

CLAIM_NAMESPACE = 0x6F6D6167
"""The first key of the two-key advisory locks (``"omag"``), so that they cannot be taken for
an application's own one-key locks on the same database."""

_TRY = text("SELECT pg_try_advisory_lock(:ns, :key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:ns, :key)")


def claim_key(session_row_id: int) -> int:
    """The second key: the session's row id, folded into PostgreSQL's ``int4`` (two sessions
    2**31 rows apart share a claim: one waits for the next pass, nothing worse)."""
    return int(session_row_id) % 2**31


@contextmanager
def claimed(db: Database, session_row_id: int) -> Iterator[bool]:
    """Whether this pass may age the session: True while no other pass holds it (and then
    held until the block ends); always True on SQLite."""
    if db.dialect != "postgresql":
        yield True
        return
    params = {"ns": CLAIM_NAMESPACE, "key": claim_key(session_row_id)}
    with db.read_once() as conn:  # autocommit: the lock is the connection's, not a transaction's
        got = bool(conn.execute(_TRY, params).scalar_one())
        try:
            yield got
        finally:
            if got:
                conn.execute(_UNLOCK, params)
