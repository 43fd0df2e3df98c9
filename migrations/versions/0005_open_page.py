"""The open page: ``om_pages.open`` marks a session's newest page while it may still grow.

Turns that left the text window but do not fill a page yet are packed into one open page,
rendered and prepared like any text page, and re-cut by each aging pass when new turns join
it; it is sealed (``open`` false) once full or when the sitting ends. Every page written
before this revision is sealed. A downgrade forgets which page was open: it is then sealed.

On SQLite the table is rebuilt with ``AUTOINCREMENT`` again (0002's batch copy had dropped
it): open pages are replaced and merged pages replace several, so page rows are deleted in
every pass now, and a page id must never be handed out twice.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(
        "om_pages",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        batch.add_column(sa.Column("open", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("om_pages") as batch:
        batch.drop_column("open")
