"""Recall: a full-text index of the archive, and the marks that pins and rehearsal write.

- ``om_turns.search_text`` (nullable): what the index reads when it differs from the content.
  Tokenizers do not segment Chinese, Japanese or Korean, so for a turn with such characters
  the writer stores a copy with each of them standing alone (and NULs, which PostgreSQL text
  cannot hold, as spaces); NULL for every other turn, so plain turns cost nothing extra.
  Existing turns are filled in here.
- SQLite: ``om_turns_fts``, a contentless FTS5 table (``porter unicode61 remove_diacritics 2``)
  over ``coalesce(search_text, content)`` plus one scope token per turn (``s<session row id>x``)
  that lets a session-scoped search intersect posting lists instead of ranking the whole
  archive. Contentless: the text is stored once, in ``om_turns``. Triggers keep it in sync in
  the writing transaction; deletes go through FTS5's ``'delete'`` command with the values
  that were indexed (turns are immutable; an update trigger re-indexes anyway, should one
  ever happen). Existing turns are indexed here.
- PostgreSQL: ``om_turns.search_vector``, a stored generated ``tsvector`` over
  ``to_tsvector('english', left(coalesce(search_text, content), 100000))``, with a GIN index
  ``om_turns_fts``. Stored rather than an expression index: ranking and index rechecks read
  the vector instead of re-parsing every candidate turn (50x faster on a session of 1,000
  turns), for about the size of the text again. (The first 100k characters of a turn: a
  tsvector is capped at 1 MB.) Not in the models: SQLite has no such column.
- ``om_turn_marks(turn_id, session_id, pinned, recalls, recalled_at)``: pins and rehearsal in
  a small table beside the turns rather than columns on them. Turns stay write-once (an
  ``UPDATE`` of a row holding a long turn rewrites it, and on PostgreSQL re-indexes its text in
  the GIN index); marks are sparse (most turns are never pinned or recalled); every recall
  writes one short row per recalled turn.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.recall import search_text
from optical_memory.store import BigId, LosslessText, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FTS = "om_turns_fts"
TOKENIZE = "porter unicode61 remove_diacritics 2"
SQLITE_ROW = "coalesce({r}.search_text, {r}.content), 's' || {r}.session_id || 'x'"  # body, scope
PG_VECTOR = "to_tsvector('english'::regconfig, left(coalesce(search_text, content), 100000))"
BATCH = 1000


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("om_turns", sa.Column("search_text", sa.Text(), nullable=True))
    _fill_search_text(bind)
    if bind.dialect.name == "sqlite":
        op.execute(
            f"CREATE VIRTUAL TABLE {FTS} USING fts5(body, scope, content='', tokenize='{TOKENIZE}')"
        )
        new, old = SQLITE_ROW.format(r="new"), SQLITE_ROW.format(r="old")
        op.execute(
            f"CREATE TRIGGER {FTS}_ai AFTER INSERT ON om_turns BEGIN "
            f"INSERT INTO {FTS}(rowid, body, scope) VALUES (new.id, {new}); END"
        )
        op.execute(
            f"CREATE TRIGGER {FTS}_ad AFTER DELETE ON om_turns BEGIN "
            f"INSERT INTO {FTS}({FTS}, rowid, body, scope) VALUES ('delete', old.id, {old}); END"
        )
        op.execute(
            f"CREATE TRIGGER {FTS}_au AFTER UPDATE OF content, search_text, session_id "
            f"ON om_turns BEGIN "
            f"INSERT INTO {FTS}({FTS}, rowid, body, scope) VALUES ('delete', old.id, {old}); "
            f"INSERT INTO {FTS}(rowid, body, scope) VALUES (new.id, {new}); END"
        )
        op.execute(
            f"INSERT INTO {FTS}(rowid, body, scope) "
            f"SELECT t.id, {SQLITE_ROW.format(r='t')} FROM om_turns t"
        )
        op.execute(f"INSERT INTO {FTS}({FTS}) VALUES ('optimize')")
    else:
        op.execute(
            "ALTER TABLE om_turns ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS ({PG_VECTOR}) STORED"
        )
        op.execute(f"CREATE INDEX {FTS} ON om_turns USING gin (search_vector)")

    op.create_table(
        "om_turn_marks",
        sa.Column("turn_id", BigId, nullable=False),
        sa.Column("session_id", BigId, nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("recalls", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("recalled_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("turn_id", name="pk_om_turn_marks"),
        sa.ForeignKeyConstraint(
            ["turn_id"],
            ["om_turns.id"],
            name="fk_om_turn_marks_turn_id_om_turns",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["om_sessions.id"],
            name="fk_om_turn_marks_session_id_om_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_om_turn_marks_session_id", "om_turn_marks", ["session_id"])


def _fill_search_text(bind: sa.Connection) -> None:
    """Compute search_text for the turns written before this revision, in id order."""
    turns = sa.table(
        "om_turns",
        sa.column("id", sa.BigInteger()),
        sa.column("content", LosslessText()),
        sa.column("search_text", sa.Text()),
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(turns.c.id, turns.c.content)
            .where(turns.c.id > last)
            .order_by(turns.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        updates = [
            {"tid": r.id, "st": st} for r in rows if (st := search_text(r.content)) is not None
        ]
        if updates:
            bind.execute(
                turns.update()
                .where(turns.c.id == sa.bindparam("tid"))
                .values(search_text=sa.bindparam("st")),
                updates,
            )


def downgrade() -> None:
    op.drop_index("ix_om_turn_marks_session_id", table_name="om_turn_marks")
    op.drop_table("om_turn_marks")
    if op.get_bind().dialect.name == "sqlite":
        for suffix in ("au", "ad", "ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {FTS}")
    else:
        op.execute(f"DROP INDEX IF EXISTS {FTS}")
        op.execute("ALTER TABLE om_turns DROP COLUMN IF EXISTS search_vector")
    with op.batch_alter_table("om_turns") as batch:
        batch.drop_column("search_text")
