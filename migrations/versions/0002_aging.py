"""The forgetting engine: page renditions, and per-session paging and aging marks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.store import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("om_sessions") as batch:
        batch.add_column(sa.Column("paged_until", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("aged_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("om_pages") as batch:
        batch.add_column(
            sa.Column("imageable", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    # Pages written before this revision already cover some turns.
    op.execute(
        "UPDATE om_sessions SET paged_until = COALESCE("
        "(SELECT MAX(last_seq) FROM om_pages WHERE om_pages.session_id = om_sessions.id), 0)"
    )
    op.create_table(
        "om_page_renditions",
        sa.Column("page_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tier", sa.String(8), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("page_id", "tier", name="pk_om_page_renditions"),
        sa.ForeignKeyConstraint(
            ["page_id"],
            ["om_pages.id"],
            name="fk_om_page_renditions_page_id_om_pages",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("om_page_renditions")
    with op.batch_alter_table("om_pages") as batch:
        batch.drop_column("imageable")
    with op.batch_alter_table("om_sessions") as batch:
        batch.drop_column("aged_at")
        batch.drop_column("paged_until")
