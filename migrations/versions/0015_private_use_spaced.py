"""SQLite's search index reads private-use characters as spaces: FTS5's ``unicode61`` counts
a private-use character (an icon font's glyph, say, or U+E000) as part of the word beside it,
so a turn holding ``\\ue000platypus`` was not found by ``platypus`` there, where PostgreSQL's
parser, like the cue's tokenizer, parts the words. New turns get an index copy with those
characters spaced out (``search_text``); existing ones holding any get it here, and the
index's update trigger re-reads them. PostgreSQL has nothing to change.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

PRIVATE_USE = "\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd"
_PRIVATE = re.compile(f"[{PRIVATE_USE}]")
BATCH = 500


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    rows = conn.execute(
        sa.text("SELECT id, content, search_text FROM om_turns WHERE content GLOB :held"),
        {"held": f"*[{PRIVATE_USE}]*"},
    ).all()
    # The index copy as it was (CJK spaced, NUL as spaces: the same characters), with the
    # private-use ones spaced too: what the library now writes for such a turn.
    spaced = [{"id": r.id, "text": _PRIVATE.sub(" ", r.search_text or r.content)} for r in rows]
    for i in range(0, len(spaced), BATCH):
        conn.execute(
            sa.text("UPDATE om_turns SET search_text = :text WHERE id = :id"),
            spaced[i : i + BATCH],
        )


def downgrade() -> None:
    """Nothing to undo: an index copy with spaces where private-use characters were reads
    the same words to the earlier code (its cue tokenizer never searched for them)."""
