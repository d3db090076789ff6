"""The log-key certificates of a checkpoint's signers, kept with the checkpoint.

A receipt carries the certificates of the node's log key and of every witness
that cosigned its checkpoint, so that a bank can check the cosignatures
without asking anyone. Before this revision only the note was kept, and a
node that restarted served its last checkpoint with its own certificate alone
until the next one was published. Checkpoints stored before it keep an empty
list: the node republishes at its next append.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chain_checkpoint") as batch:
        batch.add_column(sa.Column("key_certificates", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chain_checkpoint") as batch:
        batch.drop_column("key_certificates")
