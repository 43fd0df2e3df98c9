"""Attachments: a turn's images, stored losslessly once per session by content.

``om_attachments`` holds the bytes, keyed by (session, sha256), the blob last (see 0009);
``om_turns.attachments`` names a turn's images in order (JSON descriptors, NULL for none).
Existing turns have no images: nothing to backfill. SQLite adds the column in place.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.store import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("om_turns", sa.Column("attachments", sa.JSON(), nullable=True))
    op.create_table(
        "om_attachments",
        sa.Column(
            "session_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["om_sessions.id"],
            name="fk_om_attachments_session_id_om_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "sha256", name="pk_om_attachments"),
    )


def downgrade() -> None:
    op.drop_table("om_attachments")
    with op.batch_alter_table("om_turns") as batch:
        batch.drop_column("attachments")
