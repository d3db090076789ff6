"""The city node's database: credit records, enterprise profiles, replay
protection, consent use counts and revocations (SQLite or PostgreSQL)."""

from creditnet.store.aio import AsyncStore, GroupCommitStats
from creditnet.store.schema import Migration, SchemaNotReady, UnknownRevision, head_revision
from creditnet.store.store import (
    ClaimedQuery,
    ClaimOutcome,
    DisclosedRecord,
    Disclosure,
    IngestResult,
    InvalidRecord,
    KeptAnswer,
    QueryClaim,
    Store,
    StoreStats,
)

__all__ = [
    "AsyncStore",
    "ClaimOutcome",
    "ClaimedQuery",
    "DisclosedRecord",
    "Disclosure",
    "GroupCommitStats",
    "IngestResult",
    "InvalidRecord",
    "KeptAnswer",
    "Migration",
    "QueryClaim",
    "SchemaNotReady",
    "Store",
    "StoreStats",
    "UnknownRevision",
    "head_revision",
]
