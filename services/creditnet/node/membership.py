"""The node's membership filter: built from its store, kept current with every ingestion, signed.

Records reach a node two ways: a provider's ``SubmitRecords`` stream in this
process, and ``creditnet node ingest`` (or any other writer) on the same
database from outside. The first adds its enterprises to the live filter
*before* its batch commits, and a new filter is signed before the provider's
call returns, so a committed record is never missing from the filter the
node serves. The second is noticed by comparing the store's record total
(kept counts: a few rows) with the total the filter accounts for, every
``check_interval``; a difference rebuilds the filter from the store.

A rebuild (at start, after an outside write, or when the filter has filled
past its false-positive bound) scans the store's distinct USCCs in a worker
thread, while ingestion waits: ingests hold the filter shared, a rebuild
holds it alone, so no batch can commit between the scan's total and the swap
without its enterprises in the new filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Callable, Collection

from creditnet.dates import utcnow
from creditnet.domain import City
from creditnet.pki import Identity
from creditnet.routing import MAX_ESTIMATED_FP, RESIGN_INTERVAL, BloomFilter, RoutingKey, sign_filter
from creditnet.store import AsyncStore, Store
from creditnet.v2 import envelope_pb2

__all__ = [
    "MembershipPublisher",
    "build_filter",
]

log = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0


def build_filter(store: Store, key: RoutingKey) -> tuple[BloomFilter, int]:
    """A filter of every enterprise `store` holds records of, and the record total it covers (blocking)."""
    usccs: list[str] = []
    total = store.scan_record_usccs(usccs.append)
    bloom = BloomFilter.sized(len(usccs))
    bloom.add_many(key.tag(u) for u in usccs)
    # Exact here (add_many counts a tag whose bits were all set already as old).
    bloom.entries = len(usccs)
    return bloom, total


def _insert(bloom: BloomFilter, key: RoutingKey, usccs: list[str]) -> None:
    bloom.add_many(key.tag(u) for u in usccs)


class MembershipPublisher:
    def __init__(
        self,
        *,
        city: City,
        identity: Identity,
        key: RoutingKey,
        store: AsyncStore,
        clock: Callable[[], dt.datetime] = utcnow,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.city = city
        self.identity = identity
        self.key = key
        self.store = store
        self.clock = clock
        self.check_interval = check_interval
        self.bloom: BloomFilter | None = None
        # The record total the live filter covers.
        self.accounted = 0
        self.current: envelope_pb2.SignedEnvelope | None = None
        self.version = 0
        self._signed_at: dt.datetime | None = None
        self._changes = 0
        self._published_changes = -1
        self._sign_lock = asyncio.Lock()
        self._turn = asyncio.Condition()
        self._ingesting = 0
        self._exclusive = False
        # Rebuilds waiting: new ingests let them go first (no starvation).
        self._wanting = 0
        self._task: asyncio.Task[None] | None = None
        # Set, and replaced, whenever a new version is signed: what long-polling callers wait on.
        self._signed = asyncio.Event()

    async def start(self) -> None:
        await self.rebuild()
        self.start_checking()

    def start_checking(self) -> None:
        """Check for outside writes and re-sign, every `check_interval`, until `stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def ingesting(self, usccs: Collection[str]) -> AsyncIterator[None]:
        """Around one batch's commit: its enterprises are in the live filter before it commits."""
        async with self._turn:
            await self._turn.wait_for(lambda: not self._exclusive and not self._wanting)
            self._ingesting += 1
        try:
            bloom = self.bloom
            if bloom is not None and usccs:
                # Tags and bits off the event loop (a batch holds up to 10,000 enterprises).
                await asyncio.to_thread(_insert, bloom, self.key, list(usccs))
                self._changes += 1
            yield
        finally:
            async with self._turn:
                self._ingesting -= 1
                self._turn.notify_all()

    def committed(self, accepted: int) -> None:
        """Inside `ingesting`, once the batch committed: `accepted` new records are covered."""
        self.accounted += accepted

    @contextlib.asynccontextmanager
    async def _alone(self) -> AsyncIterator[None]:
        async with self._turn:
            self._wanting += 1
            try:
                await self._turn.wait_for(lambda: self._ingesting == 0 and not self._exclusive)
            finally:
                self._wanting -= 1
                self._turn.notify_all()
            self._exclusive = True
        try:
            yield
        finally:
            async with self._turn:
                self._exclusive = False
                self._turn.notify_all()

    async def rebuild(self) -> None:
        async with self._alone():
            await self._rebuild_alone()
        await self.publish()

    async def _rebuild_alone(self) -> None:
        bloom, total = await asyncio.to_thread(build_filter, self.store.store, self.key)
        self.bloom, self.accounted = bloom, total
        self._changes += 1
        log.info(
            "membership filter of %s: %d enterprises, %d bytes, estimated false positives %.3f%%",
            self.city.value,
            bloom.entries,
            bloom.bit_count // 8,
            100 * bloom.estimated_fp,
        )

    async def publish(self, *, force: bool = False) -> envelope_pb2.SignedEnvelope:
        """Sign the live filter if it changed since last signed (or `force`); returns the current one."""
        target = self._changes
        async with self._sign_lock:
            if self.current is not None and self._published_changes >= target and not force:
                return self.current
            bloom = self.bloom
            assert bloom is not None
            now = self.clock()
            version = max(self.version + 1, int(now.timestamp() * 1_000_000))
            changes = self._changes
            env = await asyncio.to_thread(
                sign_filter, bloom, self.city, version, now, self.key, self.identity
            )
            self.current, self.version, self._signed_at = env, version, now
            self._published_changes = changes
            self._signed.set()
            self._signed = asyncio.Event()
            return env

    async def signed_after(self, version: int, timeout: float) -> None:
        """Return once a version newer than `version` is signed, or after `timeout` seconds."""
        signed = self._signed
        if self.version != version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signed.wait(), timeout)

    async def check(self) -> None:
        """Rebuild if records were written from outside or the filter is too full; re-sign when due."""
        rebuilt = False
        async with self._alone():
            total = await self.store.record_total()
            bloom = self.bloom
            if total != self.accounted or bloom is None or bloom.estimated_fp > MAX_ESTIMATED_FP:
                await self._rebuild_alone()
                rebuilt = True
        due = self._signed_at is None or self.clock() - self._signed_at >= RESIGN_INTERVAL
        if rebuilt or due:
            await self.publish(force=due)

    async def _run(self) -> None:
        # A random phase: hundreds of nodes started together in one host would otherwise check
        # (and re-sign, and be fetched) in the same instant, every interval.
        await asyncio.sleep(random.uniform(0, self.check_interval))
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check()
            except Exception:
                log.exception("updating the membership filter failed; trying again")
