"""Records signed at their source: each batch's provider-signed manifest, and per record its place in it.

A provider now signs every batch it submits (a RecordBatch manifest over the
Merkle root of its records' exact bytes). The node keeps the manifest
envelope once per batch in ``record_batches`` and, per record, the batch it
came in, its leaf index and its inclusion path, so that every disclosed
record carries what a bank needs to check it against the provider's
signature (docs/protocol.md, "Records signed at their source").

Records stored before this revision have no batch (NULL): the node never
discloses them; it counts them as withheld in its answers until their
provider submits them again, signed.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "record_batches",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("provider_id", sa.String(), nullable=False),
        sa.Column("batch_id", sa.String(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest", name="uq_record_batches_digest"),
    )
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("batch", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("leaf_index", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("inclusion_path", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_column("inclusion_path")
        batch.drop_column("leaf_index")
        batch.drop_column("batch")
    op.drop_table("record_batches")
