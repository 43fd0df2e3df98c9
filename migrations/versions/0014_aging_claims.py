"""Aging claims: ``om_aging_claims``, which pass is aging a session, until when.

SQLite has no lock two processes can hold while one of them draws (its write lock would make
every writer wait for the drawing), so a pass writes a short lease row for the session it
ages and deletes it when done; another process's pass leaves a session with a live lease to
its holder. A lease whose process is gone (killed mid-pass) is taken over by a pass on its
host, and any lease expires. PostgreSQL holds
its claims in advisory locks instead (see ``optical_memory.claims``) and leaves this table
empty; the table exists on both so that the schema is one.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.store import BigId

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "om_aging_claims",
        sa.Column("session_id", BigId, nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name="pk_om_aging_claims"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["om_sessions.id"],
            name="fk_om_aging_claims_session_id_om_sessions",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("om_aging_claims")
