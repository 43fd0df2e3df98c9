"""Blobs last: ``png`` becomes the last column of ``om_pages`` and ``om_page_renditions``.

SQLite stores a row's columns in order, and a value too large for the page spills into an
overflow chain; reading any column stored after it walks that chain. With ``png`` before
width, height, token cost and version, the "everything but the image" reads of ``assemble``
and the listings read every image anyway (57% of an assemble call at 100k turns). With the
blob last, a query that does not ask for it stops before it.

SQLite: both tables are rebuilt (copy, drop, rename) with every row, id, index and constraint;
``om_pages`` keeps ``AUTOINCREMENT`` and its high-water mark, so no page id is handed out
twice. Foreign keys are off while migrating (``migrations._migrating``), so dropping the old
``om_pages`` does not cascade into renditions or cached visual tokens. No triggers live on
these tables (the full-text index's are on ``om_turns``).

PostgreSQL: nothing to do. Its large values live out of line (TOAST) and are only fetched when
selected, so the column order does not cost a read.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-17
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PAGE_COLUMNS = (
    "id",
    "session_id",
    "first_seq",
    "last_seq",
    "first_at",
    "last_at",
    "text_tokens",
    "target",
    "tier",
    "width",
    "height",
    "token_cost",
    "version",
    "created_at",
    "updated_at",
    "imageable",
    "open",
)
RENDITION_COLUMNS = ("page_id", "tier", "width", "height")


def _rebuild(table: str, order: tuple[str, ...], autoincrement: bool) -> None:
    bind = op.get_bind()
    seq = bind.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
    ).scalar()
    with op.batch_alter_table(
        table,
        recreate="always",
        partial_reordering=[order],
        table_kwargs={"sqlite_autoincrement": True} if autoincrement else {},
    ):
        pass
    if seq is not None:  # the rebuilt table's mark is the highest id left: restore the old one
        bind.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, table)
        )
        bind.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
            (table, seq, table),
        )


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild("om_pages", (*PAGE_COLUMNS, "png"), autoincrement=True)
    _rebuild("om_page_renditions", (*RENDITION_COLUMNS, "png"), autoincrement=False)


def downgrade() -> None:
    """Column order is not part of the schema's meaning: the tables stay as they are."""
