"""``om_pending_purges``: forgets whose bytes may still sit in a database file.

On SQLite, ``forget`` ends by checkpointing the write-ahead log into the main file and
truncating it; a reader holding an older snapshot keeps the old frames (with the forgotten text)
alive, and the checkpoint reports busy. The forgetting transaction writes a row here, and the
row is deleted once the log has been truncated, so a forget that could not finish (or a crash
right after its commit) is finished by the next open or write. A row names nothing of what was
forgotten: an id and a time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-16
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.store import BigId, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "om_pending_purges",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_om_pending_purges"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("om_pending_purges")
