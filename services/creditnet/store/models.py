"""The city node's tables, as SQLModel classes.

The database's schema comes from the migrations (``migrations/versions``);
these classes must describe the same tables, which a test checks on both
databases.

Protobuf messages are kept whole as ``payload`` bytes: the node answers with
exactly what the provider submitted (plus provenance), and the proto schema can
grow fields without a table change. The other columns exist only to find rows.

Timestamps are stored in UTC; :class:`UtcDateTime` refuses naive datetimes so
that no local-time value is ever written by accident.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import registry
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

__all__ = [
    "CONSENT_USES",
    "ENTERPRISES",
    "MAX_QUERY_ID_LENGTH",
    "METADATA",
    "QUERY_USES",
    "RECORDS",
    "RECORD_BATCHES",
    "RECORD_COUNTS",
    "REVOCATIONS",
    "ConsentUseRow",
    "EnterpriseRow",
    "NodeModel",
    "QueryUseRow",
    "RecordBatchRow",
    "RecordCountRow",
    "RecordRow",
    "RevocationRow",
    "UtcDateTime",
]

UTC = dt.UTC

# Query ids are UUIDs (36 characters); the bound only keeps junk out.
MAX_QUERY_ID_LENGTH = 128


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An aware datetime, stored in UTC, read back aware in UTC on every dialect."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
        # SQLite keeps the text without an offset, so every value must be in
        # one zone for comparisons (expiry) to be right.
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class NodeModel(SQLModel, registry=registry()):
    """Base of the node's tables: their own metadata, which the migrations'
    autogenerate compares with (together with the chain's)."""


class EnterpriseRow(NodeModel, table=True):
    """Registration profile of an enterprise registered in this node's city."""

    __tablename__ = "enterprises"

    uscc: str = Field(sa_column=Column(String(18), primary_key=True))
    name: str = Field(sa_column=Column(String, nullable=False))
    home_city: str = Field(sa_column=Column(String(16), nullable=False))
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class RecordRow(NodeModel, table=True):
    """One credit record: the serialised ``CreditRecord`` plus its lookup columns."""

    __tablename__ = "records"
    __table_args__ = (
        # A provider resubmitting a record_id stores it once (ingest is idempotent).
        UniqueConstraint("provider_id", "record_id", name="uq_records_provider_record"),
        # The query hot path: one enterprise, some categories, a date range.
        Index("ix_records_lookup", "uscc", "category", "record_date"),
        # Last line of defence behind record validation: a record that cannot
        # belong to any enterprise must never be stored.
        CheckConstraint("length(uscc) = 18", name="ck_records_uscc_length"),
        CheckConstraint("length(record_id) > 0", name="ck_records_record_id"),
        CheckConstraint("length(provider_id) > 0", name="ck_records_provider_id"),
    )

    # INTEGER exactly on SQLite so that the column is the rowid alias.
    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    provider_id: str = Field(sa_column=Column(String, nullable=False))
    record_id: str = Field(sa_column=Column(String, nullable=False))
    uscc: str = Field(sa_column=Column(String(18), nullable=False))
    category: str = Field(sa_column=Column(String(24), nullable=False))
    city: str = Field(sa_column=Column(String(16), nullable=False))
    record_date: dt.date = Field(sa_column=Column(Date, nullable=False))
    source: str = Field(sa_column=Column(String, nullable=False))
    # The exact bytes the provider signed (for records stored before batches
    # were signed: the node's re-serialisation, never disclosed).
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # The signed batch the record came in (record_batches.id), its position
    # there and its inclusion path (hashes concatenated); NULL for records
    # stored before batches were signed, which the node never discloses.
    batch: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    leaf_index: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    inclusion_path: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class RecordBatchRow(NodeModel, table=True):
    """A provider-signed batch manifest (SignedEnvelope bytes), kept once per batch."""

    __tablename__ = "record_batches"
    __table_args__ = (UniqueConstraint("digest", name="uq_record_batches_digest"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    # SHA-256 of the manifest's payload: the same batch sent twice is kept once.
    digest: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    provider_id: str = Field(sa_column=Column(String, nullable=False))
    batch_id: str = Field(sa_column=Column(String, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    envelope: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class RecordCountRow(NodeModel, table=True):
    """How many records one provider has stored in one category.

    Kept by ingest in the same transaction as the records, so statistics read
    a few rows instead of counting every record.
    """

    __tablename__ = "record_counts"
    __table_args__ = (CheckConstraint("records >= 0", name="ck_record_counts_records"),)

    provider_id: str = Field(sa_column=Column(String, primary_key=True))
    category: str = Field(sa_column=Column(String(24), primary_key=True))
    records: int = Field(sa_column=Column(BigInteger, nullable=False))


class QueryUseRow(NodeModel, table=True):
    """A query id already answered; kept until the query itself has expired."""

    __tablename__ = "query_uses"
    __table_args__ = (
        CheckConstraint(
            f"length(query_id) BETWEEN 1 AND {MAX_QUERY_ID_LENGTH}", name="ck_query_uses_query_id"
        ),
    )

    query_id: str = Field(sa_column=Column(String, primary_key=True))
    consent_digest: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    used_at: dt.datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    expires_at: dt.datetime = Field(sa_column=Column(UtcDateTime(), nullable=False, index=True))
    # Written with the credit-chain entry that logged the answer, so that a
    # retry of the identical query gets the same answer again (see Store.kept_answer).
    query_digest: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    answer: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    ledger_index: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class ConsentUseRow(NodeModel, table=True):
    """How many queries a consent (by digest) has been used for at this node."""

    __tablename__ = "consent_uses"

    consent_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    uses: int = Field(sa_column=Column(Integer, nullable=False))


class RevocationRow(NodeModel, table=True):
    """A consent its enterprise revoked, with the signed revocation as evidence."""

    __tablename__ = "revocations"

    consent_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    consent_id: str = Field(sa_column=Column(String, nullable=False))
    uscc: str = Field(sa_column=Column(String(18), nullable=False))
    revoked_at: dt.datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    envelope: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


METADATA = NodeModel.metadata

# Core handles on the tables, for the statements that bypass the ORM (bulk
# ingest and the atomic upserts).
ENTERPRISES = METADATA.tables[EnterpriseRow.__tablename__]
RECORDS = METADATA.tables[RecordRow.__tablename__]
RECORD_BATCHES = METADATA.tables[RecordBatchRow.__tablename__]
RECORD_COUNTS = METADATA.tables[RecordCountRow.__tablename__]
QUERY_USES = METADATA.tables[QueryUseRow.__tablename__]
CONSENT_USES = METADATA.tables[ConsentUseRow.__tablename__]
REVOCATIONS = METADATA.tables[RevocationRow.__tablename__]
