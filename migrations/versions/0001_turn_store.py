"""The lossless turn store: sessions, turns, pages and the visual-token cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.store import BigId, LosslessText, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "om_sessions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("key", LosslessText(), nullable=False),
        sa.Column("owner", sa.String(256), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("next_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_om_sessions"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_om_sessions_key", "om_sessions", ["key"], unique=True)
    op.create_index("ix_om_sessions_owner", "om_sessions", ["owner"])

    op.create_table(
        "om_turns",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("session_id", BigId, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", LosslessText(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_om_turns"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["om_sessions.id"],
            name="fk_om_turns_session_id_om_sessions",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("session_id", "seq", name="uq_om_turns_session_seq"),
        sqlite_autoincrement=True,
    )

    op.create_table(
        "om_pages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("session_id", BigId, nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.Column("text_tokens", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("tier", sa.String(8), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("token_cost", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_om_pages"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["om_sessions.id"],
            name="fk_om_pages_session_id_om_sessions",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("session_id", "first_seq", name="uq_om_pages_session_first_seq"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_om_pages_tier_last_at", "om_pages", ["tier", "last_at"])

    op.create_table(
        "om_visual_tokens",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("page_id", BigId, nullable=False),
        sa.Column("tier", sa.String(8), nullable=False),
        sa.Column("encoder_key", sa.String(512), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_om_visual_tokens"),
        sa.ForeignKeyConstraint(
            ["page_id"],
            ["om_pages.id"],
            name="fk_om_visual_tokens_page_id_om_pages",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("page_id", "tier", "encoder_key", name="uq_om_visual_tokens_key"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("om_visual_tokens")
    op.drop_index("ix_om_pages_tier_last_at", table_name="om_pages")
    op.drop_table("om_pages")
    op.drop_table("om_turns")
    op.drop_index("ix_om_sessions_owner", table_name="om_sessions")
    op.drop_index("ix_om_sessions_key", table_name="om_sessions")
    op.drop_table("om_sessions")
