"""Every table of a creditnet database, as SQLModel classes: the node's own,
the credit chain's and the aggregator's.

The store owns the schema: the database's tables come from its migrations
(``migrations/versions``), one line of revisions for every database (a node's
holds the aggregator's tables empty, an aggregator's the node's), and these
classes, on one metadata, must describe the same tables, which a test checks
on both databases. Other packages use these tables under their own names
(``ledger``, ``witness``, ``aggregator.models``) but never declare or migrate one.

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
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import registry
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

__all__ = [
    "AGGREGATOR_DELIVERIES",
    "AGGREGATOR_REVOCATIONS",
    "CHAIN_CHECKPOINTS",
    "CHAIN_ENTRIES",
    "CHAIN_EVIDENCE",
    "CHAIN_HASHES",
    "CHAIN_META",
    "CONSENT_USES",
    "ENTERPRISES",
    "MAX_QUERY_ID_LENGTH",
    "METADATA",
    "NETWORK_CHECKPOINTS",
    "NETWORK_HEAD",
    "QUERY_USES",
    "RECORDS",
    "RECORD_BATCHES",
    "RECORD_COUNTS",
    "REVOCATIONS",
    "WITNESS_STATE",
    "AggregatorDeliveryRow",
    "AggregatorRevocationRow",
    "ChainCheckpointRow",
    "ChainEntryRow",
    "ChainHashRow",
    "ChainMetaRow",
    "ConsentUseRow",
    "EnterpriseRow",
    "EvidenceRow",
    "NetworkCheckpointRow",
    "NetworkHeadRow",
    "NodeModel",
    "QueryUseRow",
    "RecordBatchRow",
    "RecordCountRow",
    "RecordRow",
    "RevocationRow",
    "UtcDateTime",
    "WitnessStateRow",
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
    """Base of every table: one metadata, which the migrations' autogenerate compares with."""


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


# -- the credit chain (creditnet.ledger, creditnet.witness) -----------------------
#
# ``chain_hash`` holds every perfect-subtree hash of the log (see chain/tree.py),
# so roots and proofs after a restart read O(log n) rows. ``chain_entry`` keeps
# the exact entry bytes, plus — privately, never served to the public — the
# USCC and salt behind each entry's enterprise commitment, so the node can
# answer an enterprise's own history. ``witness_state`` is what this node, as a
# witness, last cosigned for every other log; ``chain_evidence`` keeps proof
# of misbehaviour it has seen.


class ChainEntryRow(NodeModel, table=True):
    __tablename__ = "chain_entry"

    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    entry: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    kind: int = Field(sa_column=Column(Integer, nullable=False))
    uscc: str | None = Field(default=None, sa_column=Column(String(18), nullable=True))
    salt: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))

    __table_args__ = (Index("ix_chain_entry_uscc", "uscc", "idx"),)


class ChainHashRow(NodeModel, table=True):
    __tablename__ = "chain_hash"

    level: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ChainMetaRow(NodeModel, table=True):
    __tablename__ = "chain_meta"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))


class ChainCheckpointRow(NodeModel, table=True):
    """Every checkpoint this node signed, with the cosignatures it gathered."""

    __tablename__ = "chain_checkpoint"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    cosignatures: int = Field(sa_column=Column(Integer, nullable=False))
    signed_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    # DER certificates of the log key and the cosigning witnesses, each
    # prefixed by its length (4 bytes, big-endian); see ledger.sqlstore.pack_certificates.
    key_certificates: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class WitnessStateRow(NodeModel, table=True):
    __tablename__ = "witness_state"

    origin: str = Field(sa_column=Column(String(200), primary_key=True))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class EvidenceRow(NodeModel, table=True):
    __tablename__ = "chain_evidence"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    origin: str = Field(sa_column=Column(String(200), nullable=False))
    kind: str = Field(sa_column=Column(String(40), nullable=False))
    first: str = Field(sa_column=Column(Text, nullable=False))
    second: str = Field(sa_column=Column(Text, nullable=False))
    detail: str = Field(sa_column=Column(Text, nullable=False))
    found_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


# -- the aggregator (creditnet.aggregator), revision 0006 -----------------------


class NetworkHeadRow(NodeModel, table=True):
    __tablename__ = "network_head"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))


class NetworkCheckpointRow(NodeModel, table=True):
    __tablename__ = "network_checkpoint"

    sequence: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    # JSON: every city's size, root, checkpoint note and log-key certificates.
    cities: str = Field(sa_column=Column(Text, nullable=False))
    signed_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class AggregatorRevocationRow(NodeModel, table=True):
    __tablename__ = "aggregator_revocation"

    consent_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    # The RevokeConsentRequest every node gets (revocation and the consent it revokes).
    request: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    published_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class AggregatorDeliveryRow(NodeModel, table=True):
    __tablename__ = "aggregator_revocation_delivery"

    consent_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    city: str = Field(sa_column=Column(String(6), primary_key=True))
    delivered_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


METADATA = NodeModel.metadata

# Core handles on the tables, for the statements that bypass the ORM (all of
# them: bulk ingest, the atomic upserts, the claim and append hot path).
ENTERPRISES = METADATA.tables[EnterpriseRow.__tablename__]
RECORDS = METADATA.tables[RecordRow.__tablename__]
RECORD_BATCHES = METADATA.tables[RecordBatchRow.__tablename__]
RECORD_COUNTS = METADATA.tables[RecordCountRow.__tablename__]
QUERY_USES = METADATA.tables[QueryUseRow.__tablename__]
CONSENT_USES = METADATA.tables[ConsentUseRow.__tablename__]
REVOCATIONS = METADATA.tables[RevocationRow.__tablename__]
CHAIN_ENTRIES = METADATA.tables[ChainEntryRow.__tablename__]
CHAIN_HASHES = METADATA.tables[ChainHashRow.__tablename__]
CHAIN_META = METADATA.tables[ChainMetaRow.__tablename__]
CHAIN_CHECKPOINTS = METADATA.tables[ChainCheckpointRow.__tablename__]
WITNESS_STATE = METADATA.tables[WitnessStateRow.__tablename__]
CHAIN_EVIDENCE = METADATA.tables[EvidenceRow.__tablename__]
NETWORK_HEAD = METADATA.tables[NetworkHeadRow.__tablename__]
NETWORK_CHECKPOINTS = METADATA.tables[NetworkCheckpointRow.__tablename__]
AGGREGATOR_REVOCATIONS = METADATA.tables[AggregatorRevocationRow.__tablename__]
AGGREGATOR_DELIVERIES = METADATA.tables[AggregatorDeliveryRow.__tablename__]
