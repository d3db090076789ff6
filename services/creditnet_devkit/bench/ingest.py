"""Store ingestion against raw ``sqlite3.executemany`` of the same rows, in one run.

The baseline inserts the records, already as tuples, into an equivalent
table (the same unique key and lookup index, WAL, synchronous=FULL), one
``executemany`` and one commit per batch of `BATCH`. The store ingests the
same records as a node receives them: in provider-signed batches of the same
size, each record kept with its batch and inclusion path; the batches are
signed before the clock starts.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from creditnet import pilot
from creditnet.pki import CertificateAuthority
from creditnet.store import Store
from creditnet.v2 import records_pb2
from creditnet_devkit import synthetic
from creditnet_devkit.bench.provenance import bench_provider, signed_batches

__all__ = [
    "BATCH",
    "bench_ingest",
]

BATCH = 5000


def bench_ingest(tmp: Path, rows: int) -> dict[str, Any]:
    recs: list[records_pb2.CreditRecord] = []
    for item in synthetic.generate(11, max(rows // 20, 10)):
        if isinstance(item, records_pb2.CreditRecord):
            recs.append(item)
            if len(recs) >= rows:
                break
    db = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE r (id INTEGER PRIMARY KEY, provider_id TEXT, record_id TEXT, uscc TEXT, category TEXT,"
        " city TEXT, record_date TEXT, source TEXT, payload BLOB, UNIQUE(provider_id, record_id))"
    )
    db.execute("CREATE INDEX r_lookup ON r (uscc, category, record_date)")
    tuples = [
        (
            "bench",
            r.record_id,
            r.enterprise_uscc,
            r.WhichOneof("detail"),
            str(r.city),
            f"{r.record_date.year:04d}-{r.record_date.month:02d}-{r.record_date.day:02d}",
            r.source,
            r.SerializeToString(),
        )
        for r in recs
    ]
    t0 = time.perf_counter()
    for i in range(0, len(tuples), BATCH):
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR IGNORE INTO r (provider_id, record_id, uscc, category, city, record_date,"
            " source, payload) VALUES (?,?,?,?,?,?,?,?)",
            tuples[i : i + BATCH],
        )
        db.execute("COMMIT")
    raw = len(tuples) / (time.perf_counter() - t0)
    db.close()

    provider = bench_provider(CertificateAuthority.create(), pilot.HEFEI)
    signed = signed_batches(provider, recs, BATCH)
    store = Store.open(f"sqlite:///{tmp / 'store.db'}", migrate=True)
    t0 = time.perf_counter()
    for part, proof in signed:
        store.ingest(part, proof.provider_id, signed=proof, leaves=range(len(part)))
    ours = len(recs) / (time.perf_counter() - t0)
    store.close()
    return {"rows": len(recs), "raw_executemany_per_second": raw, "store_ingest_per_second": ours}
