"""Which aging pass works on a session: one pass at a time per session, across processes.

Why: several processes on one database (service workers, each with its scheduler, or a cron
``age`` beside them) find the same sessions due at the same time. The version check at each
commit already makes every change commit once, but both passes drew it, at full cost: with two
workers the machine drew every due page twice. A pass now claims a session while it packs,
plans, draws and commits it; another pass that finds the claim taken skips the session
(``AgingReport.sessions_busy``), and the holder ages it.

- **PostgreSQL**: a session-level advisory lock, on a connection of its own, outside any
  transaction. Released when the session is done, or by the server when the connection closes
  (a killed process leaves nothing behind).
- **SQLite**: a lease row in ``om_aging_claims`` (migration 0014), written in a short
  transaction of its own (SQLite's write lock cannot be held through a drawing: every writer
  would wait for it), deleted when the session is done. The holder's name carries its host
  and process id: a lease whose process is gone (killed mid-pass) is taken over at once by a
  pass on the same host, and any lease ends after ``LEASE``. A pass that runs past its lease
  (or a host name two containers share, with separate process ids) may let another start on
  the session: then a page may be drawn twice, and still committed once.

Claims are taken in real time (``time.time()``), never the pass's ``now`` (which a test or a
replay may set days ahead).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from .database import Database

__all__ = ["CLAIM_NAMESPACE", "LEASE", "claim_key", "claimed", "new_holder"]

CLAIM_NAMESPACE = 0x6F6D6167
"""The first key of the two-key advisory locks (``"omag"``), so that they cannot be taken for
an application's own one-key locks on the same database."""

LEASE = 30 * 60
"""Seconds a SQLite lease lasts: far longer than a pass spends on one session."""

_TRY = text("SELECT pg_try_advisory_lock(:ns, :key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:ns, :key)")
# A session forgotten meanwhile gets no lease (and the pass leaves it, as one held elsewhere).
_LEASE = text(
    "INSERT INTO om_aging_claims (session_id, holder, until) "
    "SELECT :sid, :me, :until WHERE EXISTS (SELECT 1 FROM om_sessions WHERE id = :sid) "
    "ON CONFLICT (session_id) DO UPDATE SET holder = excluded.holder, until = excluded.until "
    "WHERE om_aging_claims.until < :now"
)
_RELEASE = text("DELETE FROM om_aging_claims WHERE session_id = :sid AND holder = :me")
_TAKE_OVER = text(
    "UPDATE om_aging_claims SET holder = :me, until = :until "
    "WHERE session_id = :sid AND holder = :gone"
)
_HOLDER = text("SELECT holder FROM om_aging_claims WHERE session_id = :sid")
_HOST = socket.gethostname()[:24]


def new_holder() -> str:
    """A name for one pass's leases, unique to it (two passes in one process are two
    holders, as two processes are): ``host:pid:random``."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:16]}"


def _gone(holder: str) -> bool:
    """Whether a lease's holder was a process of this host that is no longer running."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit() or os.name != "posix":
        return False  # (on Windows, signal 0 is not a probe)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


def claim_key(session_row_id: int) -> int:
    """The second key: the session's row id, folded into PostgreSQL's ``int4`` (two sessions
    2**31 rows apart share a claim: one waits for the next pass, nothing worse)."""
    return int(session_row_id) % 2**31


@contextmanager
def claimed(db: Database, session_row_id: int, holder: str) -> Iterator[bool]:
    """Whether this pass may age the session: True when no other pass holds it, and then
    held by ``holder`` (see :func:`new_holder`) until the block ends."""
    if db.dialect != "postgresql":
        with _leased(db, int(session_row_id), holder) as got:
            yield got
        return
    params = {"ns": CLAIM_NAMESPACE, "key": claim_key(session_row_id)}
    with db.read_once() as conn:  # autocommit: the lock is the connection's, not a transaction's
        got = bool(conn.execute(_TRY, params).scalar_one())
        try:
            yield got
        finally:
            if got:
                conn.execute(_UNLOCK, params)


@contextmanager
def _leased(db: Database, sid: int, holder: str) -> Iterator[bool]:
    """SQLite's claim: a lease row, taken if none is live or its process is gone."""
    params = {"sid": sid, "me": holder, "now": int(time.time())}
    params["until"] = params["now"] + LEASE
    got = db.write_core(lambda conn: conn.execute(_LEASE, params).rowcount == 1)
    if not got:
        with db.read_once() as conn:
            held_by = conn.execute(_HOLDER, params).scalar()
        if held_by is not None and _gone(held_by):
            took = {**params, "gone": held_by}
            got = db.write_core(lambda conn: conn.execute(_TAKE_OVER, took).rowcount == 1)
    try:
        yield got
    finally:
        if got:
            db.write_core(lambda conn: conn.execute(_RELEASE, params))
