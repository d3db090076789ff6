"""Record counts per provider and category, kept by ingest.

Statistics (``creditnet node stats``, GetNodeInfo) counted the records table
with two GROUP BYs, a scan of every record: seconds to minutes at tens of
millions of records. Ingest now keeps these counts in the same transaction as
the records; this revision creates the table and counts what is already stored.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "record_counts",
        sa.Column("provider_id", sa.String(), nullable=False),
        sa.Column("category", sa.String(length=24), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("records >= 0", name="ck_record_counts_records"),
        sa.PrimaryKeyConstraint("provider_id", "category"),
    )
    op.execute(
        "INSERT INTO record_counts (provider_id, category, records)"
        " SELECT provider_id, category, count(*) FROM records GROUP BY provider_id, category"
    )


def downgrade() -> None:
    op.drop_table("record_counts")
