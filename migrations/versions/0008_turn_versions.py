"""Turn versions: a regenerated reply or an edited message supersedes the turns it replaces.

A superseded turn stays in ``om_turns`` (the archive keeps every version) but leaves the live
sequence: its ``seq`` becomes ``-id``, its place is kept in ``superseded_seq`` and the time in
``superseded_at``. Existing rows are all live (both columns NULL).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.store import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE ADD COLUMN on both backends: om_turns keeps its index triggers
    op.add_column("om_turns", sa.Column("superseded_seq", sa.Integer(), nullable=True))
    op.add_column("om_turns", sa.Column("superseded_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("om_turns") as batch:
        batch.drop_column("superseded_at")
        batch.drop_column("superseded_seq")
