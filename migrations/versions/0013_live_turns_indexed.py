"""Only live turns are in SQLite's search index: a superseded turn (a regenerated reply, an
edited message) leaves ``om_turns_fts`` when it leaves the live sequence.

Before, the index kept every version. Search never returned one (its rows are dropped by the
scope), but they took places among the best matches, so the search ranked deeper to fill
``k``, and they weighed in every word's counts and BM25 statistics. The triggers now index a
turn only while its ``seq`` is live (>= 1), take it out when it is superseded, and never issue
a contentless ``'delete'`` for a row that is not indexed (FTS5 leaves its index undefined
after a ``'delete'`` that does not match what it holds).
Existing superseded turns are taken out here. PostgreSQL has nothing to change: its search
filters ``seq >= 1`` in the statement, and its GIN index is over a stored column.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

FTS = "om_turns_fts"
ROW = "coalesce({r}.search_text, {r}.content), 's' || {r}.session_id || 'x'"  # body, scope
NEW, OLD = ROW.format(r="new"), ROW.format(r="old")
ADD = f"INSERT INTO {FTS}(rowid, body, scope) SELECT new.id, {NEW}"
DROP = f"INSERT INTO {FTS}({FTS}, rowid, body, scope) SELECT 'delete', old.id, {OLD}"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for suffix in ("ai", "ad", "au"):
        op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{suffix}")
    # Out of the index while their rows still hold what was indexed (the same values).
    op.execute(
        f"INSERT INTO {FTS}({FTS}, rowid, body, scope) "
        f"SELECT 'delete', t.id, {ROW.format(r='t')} FROM om_turns t WHERE t.seq < 1"
    )
    op.execute(
        f"CREATE TRIGGER {FTS}_ai AFTER INSERT ON om_turns WHEN new.seq >= 1 BEGIN {ADD}; END"
    )
    op.execute(
        f"CREATE TRIGGER {FTS}_ad AFTER DELETE ON om_turns WHEN old.seq >= 1 BEGIN {DROP}; END"
    )
    op.execute(
        # An update that changes what is indexed, and one that moves a turn in or out of the
        # live sequence: each row is taken out and put in once, by one of the two.
        f"CREATE TRIGGER {FTS}_au AFTER UPDATE OF content, search_text, session_id ON om_turns "
        f"WHEN (old.seq >= 1) = (new.seq >= 1) "
        f"BEGIN {DROP} WHERE old.seq >= 1; {ADD} WHERE new.seq >= 1; END"
    )
    op.execute(
        f"CREATE TRIGGER {FTS}_as AFTER UPDATE OF seq, content, search_text, session_id "
        f"ON om_turns "
        f"WHEN (old.seq >= 1) != (new.seq >= 1) "
        f"BEGIN {DROP} WHERE old.seq >= 1; {ADD} WHERE new.seq >= 1; END"
    )
    op.execute(f"INSERT INTO {FTS}({FTS}) VALUES ('optimize')")


def downgrade() -> None:
    """Revision 0012's triggers, which index every version, and the superseded turns back in."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for suffix in ("ai", "ad", "au", "as"):
        op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{suffix}")
    op.execute(
        f"INSERT INTO {FTS}(rowid, body, scope) "
        f"SELECT t.id, {ROW.format(r='t')} FROM om_turns t WHERE t.seq < 1"
    )
    op.execute(
        f"CREATE TRIGGER {FTS}_ai AFTER INSERT ON om_turns BEGIN "
        f"INSERT INTO {FTS}(rowid, body, scope) VALUES (new.id, {NEW}); END"
    )
    op.execute(
        f"CREATE TRIGGER {FTS}_ad AFTER DELETE ON om_turns BEGIN "
        f"INSERT INTO {FTS}({FTS}, rowid, body, scope) VALUES ('delete', old.id, {OLD}); END"
    )
    op.execute(
        f"CREATE TRIGGER {FTS}_au AFTER UPDATE OF content, search_text, session_id "
        f"ON om_turns BEGIN "
        f"INSERT INTO {FTS}({FTS}, rowid, body, scope) VALUES ('delete', old.id, {OLD}); "
        f"INSERT INTO {FTS}(rowid, body, scope) VALUES (new.id, {NEW}); END"
    )
