"""The tables as creditnet 0.1 created them with create_all: node and credit chain.

Every table and index is created only if missing, so a database made by
create_all before migrations existed (possibly without the chain tables, if its
node never ran) is adopted by upgrading it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# What UtcDateTime stores: an aware timestamp (TIMESTAMP WITH TIME ZONE on
# PostgreSQL, UTC text on SQLite).
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    _node_tables()
    _chain_tables()


def _node_tables() -> None:
    op.create_table(
        "enterprises",
        sa.Column("uscc", sa.String(length=18), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("home_city", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("uscc"),
        if_not_exists=True,
    )
    op.create_table(
        "records",
        # INTEGER exactly on SQLite so that the column is the rowid alias.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("provider_id", sa.String(), nullable=False),
        sa.Column("record_id", sa.String(), nullable=False),
        sa.Column("uscc", sa.String(length=18), nullable=False),
        sa.Column("category", sa.String(length=24), nullable=False),
        sa.Column("city", sa.String(length=16), nullable=False),
        sa.Column("record_date", sa.Date(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("length(provider_id) > 0", name="ck_records_provider_id"),
        sa.CheckConstraint("length(record_id) > 0", name="ck_records_record_id"),
        sa.CheckConstraint("length(uscc) = 18", name="ck_records_uscc_length"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider_id", "record_id", name="uq_records_provider_record"),
        if_not_exists=True,
    )
    op.create_index("ix_records_lookup", "records", ["uscc", "category", "record_date"], if_not_exists=True)
    op.create_table(
        "query_uses",
        sa.Column("query_id", sa.String(), nullable=False),
        sa.Column("consent_digest", sa.LargeBinary(), nullable=False),
        sa.Column("used_at", UTC_DATETIME, nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint("length(query_id) BETWEEN 1 AND 128", name="ck_query_uses_query_id"),
        sa.PrimaryKeyConstraint("query_id"),
        if_not_exists=True,
    )
    op.create_index("ix_query_uses_expires_at", "query_uses", ["expires_at"], if_not_exists=True)
    op.create_table(
        "consent_uses",
        sa.Column("consent_digest", sa.LargeBinary(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("consent_digest"),
        if_not_exists=True,
    )
    op.create_table(
        "revocations",
        sa.Column("consent_digest", sa.LargeBinary(), nullable=False),
        sa.Column("consent_id", sa.String(), nullable=False),
        sa.Column("uscc", sa.String(length=18), nullable=False),
        sa.Column("revoked_at", UTC_DATETIME, nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("consent_digest"),
        if_not_exists=True,
    )


def _chain_tables() -> None:
    op.create_table(
        "chain_entry",
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("uscc", sa.String(length=18), nullable=True),
        sa.Column("salt", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("idx"),
        if_not_exists=True,
    )
    op.create_index("ix_chain_entry_uscc", "chain_entry", ["uscc", "idx"], if_not_exists=True)
    op.create_table(
        "chain_hash",
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
        if_not_exists=True,
    )
    op.create_table(
        "chain_meta",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_table(
        "chain_checkpoint",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("cosignatures", sa.Integer(), nullable=False),
        sa.Column("signed_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("size"),
        if_not_exists=True,
    )
    op.create_table(
        "witness_state",
        sa.Column("origin", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("origin"),
        if_not_exists=True,
    )
    op.create_table(
        "chain_evidence",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("origin", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("first", sa.Text(), nullable=False),
        sa.Column("second", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("found_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )


def downgrade() -> None:
    for table in (
        "chain_evidence",
        "witness_state",
        "chain_checkpoint",
        "chain_meta",
        "chain_hash",
        "chain_entry",
        "revocations",
        "consent_uses",
        "query_uses",
        "records",
        "enterprises",
    ):
        # Indexes go with their tables.
        op.drop_table(table)
