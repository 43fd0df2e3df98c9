"""``om_api_keys``: the HTTP service's API keys, each bound to one owner; only a hash stored.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from optical_memory.store import BigId, UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "om_api_keys",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_om_api_keys"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_om_api_keys_key_hash", "om_api_keys", ["key_hash"], unique=True)
    op.create_index("ix_om_api_keys_owner", "om_api_keys", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_om_api_keys_owner", table_name="om_api_keys")
    op.drop_index("ix_om_api_keys_key_hash", table_name="om_api_keys")
    op.drop_table("om_api_keys")
