"""The aggregator's state in its database, so that replicas can share it.

Before this revision the aggregator kept its network-checkpoint head in a
JSON file and its revocation outbox as files in its state directory; only
its witness state was in a database. Two aggregator processes serving one
network must see one head, one chain and one set of revocations, so all of
it moves here (docs/deployment.md, "Aggregator replicas"):

- ``network_head``: one row (id 1, made by the first round) naming the
  sequence of the newest network checkpoint. A replica signs sequence n+1 only inside the transaction that
  holds this row locked and reads n from it.
- ``network_checkpoint``: every network checkpoint signed, by sequence (the
  primary key: no two of one sequence), with what GetNetworkCheckpoint serves.
- ``aggregator_revocation`` and ``aggregator_revocation_delivery``: the
  revocation outbox and which member nodes have it.

A node's database gets the (empty) tables too: one schema, one migration chain.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "network_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "network_checkpoint",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("cities", sa.Text(), nullable=False),
        sa.Column("signed_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
    )
    op.create_table(
        "aggregator_revocation",
        sa.Column("consent_digest", sa.LargeBinary(), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("published_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("consent_digest"),
    )
    op.create_table(
        "aggregator_revocation_delivery",
        sa.Column("consent_digest", sa.LargeBinary(), nullable=False),
        sa.Column("city", sa.String(length=6), nullable=False),
        sa.Column("delivered_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("consent_digest", "city"),
    )


def downgrade() -> None:
    for table in (
        "aggregator_revocation_delivery",
        "aggregator_revocation",
        "network_checkpoint",
        "network_head",
    ):
        op.drop_table(table)
