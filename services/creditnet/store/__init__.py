"""The city node's database: credit records, enterprise profiles, replay
protection, consent use counts and revocations (SQLite or PostgreSQL)."""

from creditnet.store.aio import WRITER_THREAD, AppendLog, AsyncStore, GroupCommitStats, LogPosition
from creditnet.store.schema import Migration, SchemaNotReady, UnknownRevision, head_revision
from creditnet.store.store import (
    ClaimedQuery,
    ClaimOutcome,
    ClaimRefused,
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
    "WRITER_THREAD",
    "AppendLog",
    "AsyncStore",
    "ClaimOutcome",
    "ClaimRefused",
    "ClaimedQuery",
    "DisclosedRecord",
    "Disclosure",
    "GroupCommitStats",
    "IngestResult",
    "InvalidRecord",
    "KeptAnswer",
    "LogPosition",
    "Migration",
    "QueryClaim",
    "SchemaNotReady",
    "Store",
    "StoreStats",
    "UnknownRevision",
    "head_revision",
]
