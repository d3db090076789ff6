"""What a node's membership filter is built from: each enterprise with records once, and the total."""

from __future__ import annotations

from creditnet.store import Store
from tests.store.factories import PROVIDER, USCC_A, USCC_B, record


def test_the_scan_gives_every_enterprise_with_records_once_in_code_order(store: Store) -> None:
    assert store.record_total() == 0
    assert store.scan_record_usccs(lambda u: None) == 0
    usccs = sorted(f"91340100000000{i:04d}" for i in range(25))
    store.ingest([record(f"r{i}", uscc=u) for i, u in enumerate(usccs * 2)], PROVIDER)
    store.ingest([record("a", uscc=USCC_A), record("b", uscc=USCC_B)], PROVIDER)
    seen: list[str] = []
    # Chunks smaller than the enterprises: the scan pages through them.
    total = store.scan_record_usccs(seen.append, chunk=7)
    assert total == store.record_total() == 52
    assert seen == sorted({*usccs, USCC_A, USCC_B})
