"""The city node's database: credit records, enterprise profiles, replay
protection, consent use counts and revocations (SQLite or PostgreSQL)."""

from creditnet.store.aio import AsyncStore, GroupCommitStats
from creditnet.store.store import (
    ClaimOutcome,
    IngestResult,
    InvalidRecord,
    QueryClaim,
    Store,
    StoreStats,
)

__all__ = [
    "AsyncStore",
    "ClaimOutcome",
    "GroupCommitStats",
    "IngestResult",
    "InvalidRecord",
    "QueryClaim",
    "Store",
    "StoreStats",
]
