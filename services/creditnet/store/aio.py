"""AsyncStore: the Store for an asyncio (``grpc.aio``) server.

Nothing here blocks the event loop; every database call runs on a thread.

Reads (profiles, records, revocation and use lookups, statistics) run on a
small thread pool. They never wait for writers: SQLite in WAL mode and
PostgreSQL both give readers a committed snapshot.

Every write to the node's database (ingest, profile upserts, claims, the
credit chain's entries and checkpoints, revocations, pruning, the witness's
state) goes through ONE writer thread, in the order it was submitted: the
store routes its own write methods and :meth:`Store.run_write` there. A single
writer means that SQLite never has two of this process's transactions
competing for its write lock, and it makes group commit possible.

The other parts of a node that write (the witness's state, checkpoints: through
:meth:`Store.run_write`) join the same groups, each in a savepoint of its own.

The hot path is an answered query: its claim (replay protection, consent use)
and its credit-chain entry with the kept answer are one job (:meth:`AsyncStore.append`
with a claim). The writer takes everything queued when it wakes and runs each
run of consecutive claims and appends as ONE transaction with one commit: each
claim gets its own savepoint, so one that is refused or fails is rolled back
alone (with nothing of its entry written) and only its caller sees it; the
entries of the others are appended after the claims, in submission order.
Under load the number of fsyncs per query drops with the queue length, while a
lone query still commits at once (the writer never waits to fill a group). A
caller's future is resolved only after the commit that holds its job, so OK
always means "recorded durably".

If a group's commit itself fails, nothing of it was recorded and each job is
retried alone; a claim that raised inside a group (a deadlock with another
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
from typing import Any, Final, ParamSpec, Protocol, Self, TypeVar

from sqlalchemy import Connection
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
    "AppendLog",
    "AsyncStore",
    "GroupCommitStats",
    "LogPosition",
    "WriterExecutor",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
UTC = dt.UTC

# Claims in one group at most: bounds a transaction's length and the latency
# of the first claim in it.
MAX_GROUP: Final = 256
READER_THREADS: Final = 4
# The name of the thread that writes the node's database.
WRITER_THREAD: Final = "creditnet-store-writer"


class AppendLog(Protocol):
    """An append-only log kept in the store's database (the credit chain), written by the writer only."""

    def write(self, conn: Connection, entries: Sequence[Any]) -> int:
        """Append `entries` inside the writer's transaction; returns the first one's index."""
        ...

    def committed(self) -> tuple[int, bytes]:
        """After the commit of what :meth:`write` wrote: the log's size and root."""
        ...

    def abandoned(self) -> None:
        """What :meth:`write` wrote was rolled back: forget it."""
        ...


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where an append landed: its first entry's index, and the log's size
    and root after the commit that holds it."""

    index: int
    size: int
    root: bytes


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: cf.Future[Any]


@dataclass(slots=True)
class _Claim:
    claim: QueryClaim
    future: cf.Future[ClaimOutcome]


@dataclass(slots=True)
class _Append:
    log: AppendLog
    entries: Sequence[Any]
    # Committed with the entries, or neither is: an answered query.
    claim: QueryClaim | None
    future: cf.Future[LogPosition | ClaimOutcome]


@dataclass(slots=True)
class _Transact:
    """A write of another part of the node (Store.run_write): the witness's state, a checkpoint."""

    fn: Callable[[Connection], Any]
    future: cf.Future[Any]
    claim: None = None


_Job = _Call | _Claim | _Append | _Transact
_Grouped = _Claim | _Append | _Transact


@dataclass(frozen=True, slots=True)
class GroupCommitStats:
    """How well writes are grouped: ``claims / transactions`` claims and
    ``entries / transactions`` log entries per commit (a job retried alone
    after its group counts twice)."""

    claims: int
    transactions: int
    entries: int = 0


class _Writer:
    """The one thread that writes, grouping consecutive claims and appends into one commit."""

    def __init__(self, store: Store, max_group: int = MAX_GROUP) -> None:
        self._store = store
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # Written by the writer thread only.
        self.claims_done = 0
        self.entries_done = 0
        self.transactions = 0
        self._thread = threading.Thread(target=self._run, name=WRITER_THREAD, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> cf.Future[T]:
        future: cf.Future[T] = cf.Future()
        self._put(_Call(fn, future))
        return future

    def claim(self, claim: QueryClaim) -> cf.Future[ClaimOutcome]:
        future: cf.Future[ClaimOutcome] = cf.Future()
        self._put(_Claim(claim, future))
        return future

    def append(
        self, log: AppendLog, entries: Sequence[Any], claim: QueryClaim | None
    ) -> cf.Future[LogPosition | ClaimOutcome]:
        future: cf.Future[LogPosition | ClaimOutcome] = cf.Future()
        self._put(_Append(log, entries, claim, future))
        return future

    # WriterThread (see Store.attach_writer)
    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, fn: Callable[[], T]) -> T:
        return self.call(fn).result()

    def transact(self, fn: Callable[[Connection], T]) -> T:
        future: cf.Future[T] = cf.Future()
        self._put(_Transact(fn, future))
        return future.result()

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
        group: list[_Grouped] = []
        for job in jobs:
            if not isinstance(job, _Call):
                group.append(job)
                continue
            if group:
                self._run_group(group)
                group = []
            self._run_call(job)
        if group:
            self._run_group(group)

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

    def _run_group(self, jobs: list[_Grouped]) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._commit(live)
        except Exception as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            log.warning("a group of %d writes failed to commit, retrying each alone: %s", len(live), exc)
            for job in live:
                self._alone(job)
            return
        for job, result in zip(live, results, strict=True):
            if len(live) > 1 and isinstance(result, DBAPIError):
                self._alone(job)
            else:
                _resolve(job, result)

    def _alone(self, job: _Grouped) -> None:
        try:
            result = self._commit([job])[0]
        except Exception as exc:
            job.future.set_exception(exc)
            return
        _resolve(job, result)

    def _commit(self, jobs: Sequence[_Grouped]) -> list[object]:
        """One transaction for `jobs`: the claims first, each in its savepoint, then
        the entries of every append whose claim (if any) held, in order."""
        now = dt.datetime.now(UTC)
        results: list[object] = [None] * len(jobs)
        appends: dict[int, tuple[AppendLog, list[tuple[int, _Append]]]] = {}
        written: list[AppendLog] = []
        claims = entries = 0
        try:
            with self._store.write_transaction() as conn:
                for i, job in enumerate(jobs):
                    if isinstance(job, _Transact):
                        results[i] = _in_savepoint(conn, job.fn)
                        continue
                    if job.claim is not None:
                        claims += 1
                        outcome = self._store.claim_in(conn, job.claim, now)
                        if outcome is not ClaimOutcome.OK or isinstance(job, _Claim):
                            results[i] = outcome
                            continue
                    assert isinstance(job, _Append)
                    appends.setdefault(id(job.log), (job.log, []))[1].append((i, job))
                for append_log, items in appends.values():
                    written.append(append_log)
                    first = append_log.write(conn, [e for _, job in items for e in job.entries])
                    for i, job in items:
                        results[i] = first
                        first += len(job.entries)
                        entries += len(job.entries)
        except BaseException:
            for append_log in written:
                try:
                    append_log.abandoned()
                except Exception:
                    # The log refuses its next write until it can reload.
                    log.exception("reloading a log after a failed append failed")
            raise
        for append_log, items in appends.values():
            size, root = append_log.committed()
            for i, _ in items:
                results[i] = LogPosition(int(results[i]), size, root)  # type: ignore[call-overload]
        self.claims_done += claims
        self.entries_done += entries
        self.transactions += 1
        return results


def _in_savepoint(conn: Connection, fn: Callable[[Connection], Any]) -> object:
    """What `fn` returned, or raised (its writes rolled back alone)."""
    try:
        with conn.begin_nested():
            return fn(conn)
    except Exception as exc:
        return exc


def _resolve(job: _Grouped, result: object) -> None:
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)  # type: ignore[arg-type]


class WriterExecutor(cf.Executor):
    """The writer thread as an Executor (for ``loop.run_in_executor``): what is
    submitted runs there, in order with the writes."""

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> cf.Future[T]:
        return self._writer.call(functools.partial(fn, *args, **kwargs))


class AsyncStore:
    """Async face of a :class:`Store`. Open with ``await AsyncStore.open(url)``."""

    def __init__(self, store: Store, *, readers: int = READER_THREADS) -> None:
        self._store = store
        self._readers = cf.ThreadPoolExecutor(readers, thread_name_prefix="creditnet-store-read")
        self._writer = _Writer(store)
        self._executor = WriterExecutor(self._writer)
        store.attach_writer(self._writer)
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
        w = self._writer
        return GroupCommitStats(w.claims_done, w.transactions, w.entries_done)

    @property
    def writer(self) -> cf.Executor:
        """The writer thread as an Executor: for work that must run in order with
        the writes (the credit chain's tree, which the writer extends)."""
        return self._executor

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

    def append(
        self, log: AppendLog, entries: Sequence[Any], claim: QueryClaim | None = None
    ) -> cf.Future[LogPosition | ClaimOutcome]:
        """Append `entries` to `log` durably, with `claim` in the same transaction if given.

        Resolves to where they landed, or to the claim's outcome if it was
        refused (then nothing was written). A concurrent future: the caller
        decides how to wait (the credit chain never lets a cancelled caller
        cancel an append).
        """
        return self._writer.append(log, entries, claim)

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in one write transaction on the writer thread."""
        return await self._write(functools.partial(self._store.run_write, fn))

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
            self._store.attach_writer(None)
            self._readers.shutdown(wait=True)
        finally:
            self._store.close()
