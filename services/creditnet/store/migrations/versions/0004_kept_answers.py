"""Each answered query keeps its signed answer and its credit-chain index.

A bank that retries a query whose answer was lost on the way (the aggregator
crashed after the node answered) sends the same signed query again. The node
answers a query id only once, so before this revision the retry was refused
as a replay and the bank never saw the answer. Now the node re-sends the very
answer it gave, with a receipt for the one entry that logged it: nothing new
is disclosed and nothing is logged twice. The answer is kept only as long as
the query id is (until the query expires).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("query_uses") as batch:
        batch.add_column(sa.Column("query_digest", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("answer", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("ledger_index", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("query_uses") as batch:
        batch.drop_column("ledger_index")
        batch.drop_column("answer")
        batch.drop_column("query_digest")
