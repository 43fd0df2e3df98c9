"""Oversized pages fade: a page holding one turn larger than a page (a pasted document) was
only ever shown as text, whatever its age, and a 19,000-token page of text can take a whole
budget and push every older page out of the prompt. It is now drawn like any other page, its
images showing the turn's opening, cut (the archive keeps the turn whole). Existing such pages
become imageable here; the next aging pass draws them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text("UPDATE om_pages SET imageable = :yes WHERE NOT imageable").bindparams(yes=True)
    )


def downgrade() -> None:
    """Nothing to undo: which pages were oversized is not recorded, and an image of one is a
    valid page image at revision 0011 too."""
