"""Credit-chain benchmarks: durable appends, and proofs at a million entries."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from creditnet.chain.keys import LogKey
from creditnet.ledger.log import Ledger
from creditnet.ledger.sqlstore import PendingEntry, SqlLog
from creditnet.pki import CertificateAuthority
from creditnet.store import AsyncStore, Store
from creditnet.v2 import chain_pb2

__all__ = [
    "bench_appends",
    "bench_proofs",
]


def _entry(i: int) -> chain_pb2.LedgerEntry:
    return chain_pb2.LedgerEntry(
        kind=chain_pb2.ENTRY_KIND_QUERY_ANSWERED,
        query_id=f"{i:032x}",
        query_digest=hashlib.sha256(i.to_bytes(8, "big")).digest(),
        bank_code="B0310H231000001",
        consent_digest=hashlib.sha256(b"consent").digest(),
        disclosed_digest=hashlib.sha256(b"answer" + i.to_bytes(8, "big")).digest(),
        enterprise_commitment=hashlib.sha256(b"e" + i.to_bytes(8, "big")).digest(),
    )


async def _appends(tmp: Path, n: int, concurrency: int) -> tuple[float, int]:
    ca = CertificateAuthority.create()
    store = await AsyncStore.open(f"sqlite:///{tmp / 'ledger-bench.db'}", migrate=True)
    ledger = await asyncio.to_thread(Ledger, store, LogKey.issue(ca, "310000"), quorum=0)
    ledger.start()
    entries = [_entry(i) for i in range(n)]
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            await ledger.append(entries[i], None)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    groups = ledger.group_commits
    await ledger.stop()
    await store.close()
    return n / elapsed, groups


def bench_appends(tmp: Path, n: int = 20_000, concurrency: int = 64) -> dict[str, Any]:
    rate, groups = asyncio.run(_appends(tmp, n, concurrency))
    batch = max(1, n // max(groups, 1))
    # The physical floor: hash the same entries and commit once per batch of
    # the size the ledger's group commit actually used, durably.
    data = [_entry(i).SerializeToString(deterministic=True) for i in range(n)]
    db = sqlite3.connect(tmp / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, size INTEGER)")
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        for e in data[start : start + batch]:
            hashlib.sha256(b"\x00" + e).digest()
        db.execute("BEGIN")
        db.execute("INSERT INTO t (size) VALUES (?)", (start + batch,))
        db.execute("COMMIT")
    floor = n / (time.perf_counter() - t0)
    db.close()
    return {"entries": n, "appends_per_second": rate, "floor_per_second": floor, "group_commits": groups}


def bench_proofs(tmp: Path, n: int = 1_000_000, samples: int = 2000) -> dict[str, Any]:
    store = Store.open(f"sqlite:///{tmp / 'proofs.db'}", migrate=True)
    log = SqlLog(store)
    t0 = time.perf_counter()
    step = 20_000
    for start in range(0, n, step):
        log.append(
            [PendingEntry(_entry(i).SerializeToString(), 1) for i in range(start, min(n, start + step))]
        )
    build = time.perf_counter() - t0
    rng = random.Random(1)
    fresh = SqlLog(store)  # empty hash cache: every proof reads the database
    t0 = time.perf_counter()
    for _ in range(samples):
        fresh.tree.inclusion_proof(rng.randrange(n), n)
    inclusion = (time.perf_counter() - t0) / samples
    t0 = time.perf_counter()
    for _ in range(samples):
        a = rng.randrange(1, n)
        fresh.tree.consistency_proof(a, rng.randrange(a, n + 1))
    consistency = (time.perf_counter() - t0) / samples
    t0 = time.perf_counter()
    fresh.tree.root(n // 3)
    root = time.perf_counter() - t0
    store.close()
    return {
        "entries": n,
        "build_seconds": build,
        "inclusion_proof_us": inclusion * 1e6,
        "consistency_proof_us": consistency * 1e6,
        "past_root_us": root * 1e6,
    }
