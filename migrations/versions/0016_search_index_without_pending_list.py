"""PostgreSQL's search index takes each new turn at once (``fastupdate = off``): with GIN's
default, new entries wait in a pending list that every search reads through, row by row,
until autovacuum merges it (up to ``gin_pending_list_limit``, 4 MB). A busy service's
searches slowed down between vacuums: measured on a 70k-turn store with 8,000 turns
pending, a recall of a rare code took 15-44 ms against 5-16 ms with none. Each insert then
costs a few hundredths of a millisecond more. What waits in the list now is merged here.
SQLite has nothing to change.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

FTS = "om_turns_fts"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER INDEX {FTS} SET (fastupdate = off)")
    op.execute(f"SELECT gin_clean_pending_list('{FTS}'::regclass)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER INDEX {FTS} RESET (fastupdate)")
