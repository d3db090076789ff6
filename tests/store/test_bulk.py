"""Bulk ingestion: readers see a whole batch or none of it, and the kept
counts always agree with the records."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select

from creditnet.domain import Category
from creditnet.store import Store
from creditnet.store.models import RECORD_COUNTS, RECORDS
from tests.store.factories import PROVIDER, USCC_A, USCC_B, batch
from tests.store.test_records import ALL_TIME

BATCH = 10_000
BATCHES = 3


class MidBatchReads:
    """Holds each ingest transaction open, after its records are written and
    before it commits, until the polling reader has finished a read that
    started inside that transaction; keeps what that read saw."""

    def __init__(self) -> None:
        self.writer: int | None = None
        self.during: list[int] = []
        self._reads = 0
        self._wanted: int | None = None
        self._cond = threading.Condition()

    def read(self, rows: int) -> None:
        with self._cond:
            self._reads += 1
            if self._reads == self._wanted:
                self.during.append(rows)
            self._cond.notify_all()

    def hold(self, conn: Any, cursor: Any, statement: str, *args: object) -> None:
        # The count update is the ingest transaction's last statement, after
        # every record of the batch was inserted, on both backends.
        if threading.get_ident() != self.writer or not statement.startswith("INSERT INTO record_counts"):
            return
        with self._cond:
            # The read in flight may have started before this transaction
            # wrote anything; the one after it cannot have.
            wanted = self._wanted = self._reads + 2
            self._cond.wait_for(lambda: self._reads >= wanted)
            self._wanted = None


@pytest.fixture
def gate(store: Store) -> Iterator[MidBatchReads]:
    g = MidBatchReads()
    event.listen(store.engine, "before_cursor_execute", g.hold)
    yield g
    event.remove(store.engine, "before_cursor_execute", g.hold)


def snapshot(store: Store) -> tuple[int, int, int]:
    """Records, kept count and one enterprise's records, all in one snapshot."""
    with store.engine.connect() as conn:
        if store.backend == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            rows = conn.execute(select(func.count()).select_from(RECORDS)).scalar_one()
            kept = conn.execute(select(func.coalesce(func.sum(RECORD_COUNTS.c.records), 0))).scalar_one()
            tax = conn.execute(
                select(func.count()).where(RECORDS.c.uscc == USCC_B, RECORDS.c.category == "tax")
            ).scalar_one()
    return int(rows), int(kept), int(tax)


def test_a_reader_sees_whole_batches_or_nothing(store: Store, gate: MidBatchReads) -> None:
    seen: list[tuple[int, int, int]] = []
    stop = threading.Event()
    failure: list[BaseException] = []

    def poll() -> None:
        try:
            while not stop.is_set():
                seen.append(snapshot(store))
                gate.read(seen[-1][0])
                # Back-to-back SQLite readers starve a writer of its lock
                # (its busy handler backs off); a real node's reads have gaps.
                stop.wait(0.001)
        except BaseException as exc:
            failure.append(exc)
            raise

    half = BATCH // 2
    reader = threading.Thread(target=poll)
    reader.start()
    gate.writer = threading.get_ident()
    try:
        for n in range(BATCHES):
            # Each batch spans two enterprises and two categories.
            records = batch(f"u{n}", half) + batch(f"t{n}", half, uscc=USCC_B, category=Category.TAX)
            assert store.ingest(records, PROVIDER).accepted == BATCH
    finally:
        gate.writer = None
        stop.set()
        reader.join()
    assert not failure
    # Inside each batch's transaction the reader saw the batches before it, whole.
    assert gate.during == [n * BATCH for n in range(BATCHES)]
    for rows, kept, tax in seen:
        assert rows % BATCH == 0, f"a reader saw {rows} records: part of a batch"
        assert kept == rows and tax == rows // 2
    assert [rows for rows, _, _ in seen] == sorted(rows for rows, _, _ in seen)
    assert store.stats().records == BATCHES * BATCH
    assert len(store.find_records(USCC_A, [Category.UTILITY], *ALL_TIME)) == BATCHES * half


def test_kept_counts_match_the_records_after_duplicates_and_refusals(store: Store) -> None:
    store.ingest(batch("a", 40) + batch("b", 7, category=Category.LOAN), PROVIDER)
    store.ingest(batch("a", 45) + batch("c", 3, category=Category.IP, uscc=USCC_B), PROVIDER)
    store.ingest(batch("a", 10), "provider:other")
    with pytest.raises(ValueError, match="holds a NUL"):
        store.ingest([*batch("z", 5), *batch("bad\0", 1)], PROVIDER)

    with store.engine.connect() as conn:
        counted = {
            (str(p), Category(c)): int(n)
            for p, c, n in conn.execute(
                select(RECORDS.c.provider_id, RECORDS.c.category, func.count()).group_by(
                    RECORDS.c.provider_id, RECORDS.c.category
                )
            )
        }
    assert counted == {
        (PROVIDER, Category.UTILITY): 45,
        (PROVIDER, Category.LOAN): 7,
        (PROVIDER, Category.IP): 3,
        ("provider:other", Category.UTILITY): 10,
    }
    stats = store.stats()
    assert stats.records_by_category == {Category.UTILITY: 55, Category.LOAN: 7, Category.IP: 3}
    assert stats.records_by_provider == {PROVIDER: 55, "provider:other": 10}
    assert stats.records == 65
