"""AsyncStore: the Store for an asyncio (``grpc.aio``) server.

Nothing here blocks the event loop; every database call runs on a thread.

Reads (profiles, records, revocation and use lookups, statistics) run on a
small thread pool. They never wait for writers: SQLite in WAL mode and
PostgreSQL both give readers a committed snapshot.

Writes (ingest, profile upserts, claims, revocations, pruning) all go through
ONE writer thread, in the order they were submitted. A single writer means
that SQLite never has two of this process's transactions competing for its
write lock, and it makes group commit possible: claims are the hot write path
(one per answered query) and each needs a durable commit, i.e. an fsync. The
writer takes everything queued when it wakes and runs each run of consecutive
claims as one transaction with one commit (:meth:`Store.claim_queries`): each
claim gets its own savepoint, so one that fails is rolled back alone and only
its caller sees the error. Under load the number of fsyncs per claim drops
with the queue length, while a lone claim still commits at once (the writer
never waits to fill a group). A caller's future is resolved only after the
commit that holds its claim, so OK always means "recorded durably".

If a group's commit itself fails, nothing of it was recorded and each claim
is retried alone; a claim that raised inside a group (a deadlock with another
process, for instance) is retried once alone after the group committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import datetime as dt
import functools
import logging
import queue
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar

from sqlalchemy.exc import DBAPIError

from creditnet.domain import Category
from creditnet.provenance import SignedBatch
from creditnet.store.store import (
    ClaimedQuery,
    ClaimOutcome,
    Disclosure,
    IngestResult,
    KeptAnswer,
    QueryClaim,
    Store,
    StoreStats,
)
from creditnet.v2 import records_pb2

__all__ = [
    "AsyncStore",
    "GroupCommitStats",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Claims in one group at most: bounds a transaction's length and the latency
# of the first claim in it.
MAX_GROUP: Final = 256
READER_THREADS: Final = 4


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: cf.Future[Any]


@dataclass(slots=True)
class _Claim:
    claim: QueryClaim
    future: cf.Future[ClaimOutcome]


_Job = _Call | _Claim


@dataclass(frozen=True, slots=True)
class GroupCommitStats:
    """How well claims are grouped: ``claims / transactions`` claims per commit
    (a claim retried alone after its group counts twice)."""

    claims: int
    transactions: int


class _Writer:
    """The one thread that writes, grouping consecutive claims into one commit."""

    def __init__(self, store: Store, max_group: int = MAX_GROUP) -> None:
        self._store = store
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # Written by the writer thread only.
        self.claims_done = 0
        self.claim_transactions = 0
        self._thread = threading.Thread(target=self._run, name="creditnet-store-writer", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> cf.Future[T]:
        future: cf.Future[T] = cf.Future()
        self._put(_Call(fn, future))
        return future

    def claim(self, claim: QueryClaim) -> cf.Future[ClaimOutcome]:
        future: cf.Future[ClaimOutcome] = cf.Future()
        self._put(_Claim(claim, future))
        return future

    def stop(self) -> None:
        """Finish every job already submitted, then end the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join()

    def _put(self, job: _Job) -> None:
        # Under the lock so that no job can land behind the stop marker.
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            self._queue.put(job)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs: list[_Job] = []
            first = self._queue.get()
            if first is None:
                return
            jobs.append(first)
            while len(jobs) < self._max_group:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
            self._run_in_order(jobs)

    def _run_in_order(self, jobs: list[_Job]) -> None:
        claims: list[_Claim] = []
        for job in jobs:
            if isinstance(job, _Claim):
                claims.append(job)
                continue
            if claims:
                self._run_claims(claims)
                claims = []
            self._run_call(job)
        if claims:
            self._run_claims(claims)

    @staticmethod
    def _run_call(job: _Call) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            result = job.fn()
        except BaseException as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _run_claims(self, jobs: list[_Claim]) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._store.claim_queries([job.claim for job in live])
            self._count(len(live))
        except Exception as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            log.warning("a group of %d claims failed to commit, retrying each alone: %s", len(live), exc)
            for job in live:
                self._claim_alone(job)
            return
        for job, result in zip(live, results, strict=True):
            if isinstance(result, ClaimOutcome):
                job.future.set_result(result)
            elif len(live) > 1 and isinstance(result, DBAPIError):
                self._claim_alone(job)
            else:
                job.future.set_exception(result)

    def _count(self, claims: int) -> None:
        self.claims_done += claims
        self.claim_transactions += 1

    def _claim_alone(self, job: _Claim) -> None:
        try:
            result = self._store.claim_queries([job.claim])[0]
            self._count(1)
        except Exception as exc:
            job.future.set_exception(exc)
            return
        if isinstance(result, ClaimOutcome):
            job.future.set_result(result)
        else:
            job.future.set_exception(result)


class AsyncStore:
    """Async face of a :class:`Store`. Open with ``await AsyncStore.open(url)``."""

    def __init__(self, store: Store, *, readers: int = READER_THREADS) -> None:
        self._store = store
        self._readers = cf.ThreadPoolExecutor(readers, thread_name_prefix="creditnet-store-read")
        self._writer = _Writer(store)
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, readers: int = READER_THREADS, migrate: bool = False) -> AsyncStore:
        """:meth:`Store.open` off the event loop (``migrate`` as there)."""
        store = await asyncio.to_thread(functools.partial(Store.open, url, migrate=migrate))
        return cls(store, readers=readers)

    async def close(self) -> None:
        """Finish the writes already submitted, then release the database."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def group_commit_stats(self) -> GroupCommitStats:
        return GroupCommitStats(self._writer.claims_done, self._writer.claim_transactions)

    @property
    def store(self) -> Store:
        """The synchronous store underneath (for tools and tests)."""
        return self._store

    # -- writes (the writer thread) -------------------------------------------

    async def ingest(
        self,
        records: Sequence[records_pb2.CreditRecord],
        provider_id: str,
        *,
        signed: SignedBatch | None = None,
        leaves: Sequence[int] | None = None,
    ) -> IngestResult:
        return await self._write(
            functools.partial(self._store.ingest, records, provider_id, signed=signed, leaves=leaves)
        )

    async def upsert_profiles(self, profiles: Sequence[records_pb2.EnterpriseProfile]) -> int:
        return await self._write(functools.partial(self._store.upsert_profiles, profiles))

    async def claim_query(
        self,
        query_id: str,
        consent_digest: bytes,
        max_uses: int,
        expires_at: dt.datetime,
        *,
        query_digest: bytes | None = None,
    ) -> ClaimOutcome:
        claim = QueryClaim(query_id, consent_digest, max_uses, expires_at, query_digest)
        return await asyncio.wrap_future(self._writer.claim(claim))

    async def revoke(
        self,
        consent_digest: bytes,
        consent_id: str,
        uscc: str,
        revoked_at: dt.datetime,
        envelope: bytes,
    ) -> bool:
        return await self._write(
            functools.partial(self._store.revoke, consent_digest, consent_id, uscc, revoked_at, envelope)
        )

    async def prune_queries(self, now: dt.datetime) -> int:
        return await self._write(functools.partial(self._store.prune_queries, now))

    # -- reads (the reader pool) ----------------------------------------------

    async def find_records(
        self,
        uscc: str,
        categories: Collection[Category],
        date_from: dt.date,
        date_to: dt.date,
    ) -> list[records_pb2.CreditRecord]:
        return await self._read(
            functools.partial(self._store.find_records, uscc, categories, date_from, date_to)
        )

    async def disclose(
        self,
        uscc: str,
        categories: Collection[Category],
        date_from: dt.date,
        date_to: dt.date,
        *,
        with_profile: bool,
    ) -> Disclosure:
        return await self._read(
            functools.partial(
                self._store.disclose, uscc, categories, date_from, date_to, with_profile=with_profile
            )
        )

    async def get_profile(self, uscc: str) -> records_pb2.EnterpriseProfile | None:
        return await self._read(functools.partial(self._store.get_profile, uscc))

    async def kept_answer(self, query_id: str, query_digest: bytes) -> KeptAnswer | None:
        return await self._read(functools.partial(self._store.kept_answer, query_id, query_digest))

    async def claimed(self, query_id: str) -> ClaimedQuery | None:
        return await self._read(functools.partial(self._store.claimed, query_id))

    async def is_revoked(self, consent_digest: bytes) -> bool:
        return await self._read(functools.partial(self._store.is_revoked, consent_digest))

    async def consent_uses(self, consent_digest: bytes) -> int:
        return await self._read(functools.partial(self._store.consent_uses, consent_digest))

    async def stats(self) -> StoreStats:
        return await self._read(self._store.stats)

    async def record_total(self) -> int:
        return await self._read(self._store.record_total)

    # -- internals -------------------------------------------------------------

    async def _write(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._writer.call(fn))

    async def _read(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn)

    def _shutdown(self) -> None:
        try:
            self._writer.stop()
            self._readers.shutdown(wait=True)
        finally:
            self._store.close()
