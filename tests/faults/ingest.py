"""Provider batches the fault tests stream, and how to count them in a node's database."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

from creditnet import pilot
from creditnet import uscc as uscc_mod
from creditnet.dates import date_to_proto
from creditnet.domain import Category
from creditnet.network import NetworkLayout
from creditnet.store import Store
from creditnet.v2 import records_pb2

CITY = pilot.HEFEI
BATCH = 25
DAY = dt.date(2025, 6, 30)


def enterprise(run: str) -> str:
    """A Hefei enterprise of its own for one test run, so no query of the demo enterprise sees its records."""
    return uscc_mod.make_uscc(random.Random(run), CITY, entity="92")


def reading(record_id: str, uscc: str) -> records_pb2.CreditRecord:
    return records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=uscc,
        city=CITY.proto,
        source="国网合肥供电公司",
        record_date=date_to_proto(DAY),
        utility=records_pb2.UtilityRecord(
            kind=records_pb2.UTILITY_KIND_ELECTRICITY,
            account_id="HF-0001",
            period_start=date_to_proto(dt.date(2025, 6, 1)),
            period_end=date_to_proto(DAY),
            amount_due_fen=1000,
            amount_paid_fen=1000,
        ),
    )


def batch(run: str, number: int, uscc: str) -> list[records_pb2.CreditRecord]:
    return [reading(f"{run}-b{number:04d}-r{i:02d}", uscc) for i in range(BATCH)]


def stored_per_batch(layout: NetworkLayout, uscc: str, run: str) -> Counter[int]:
    """Records of `run` in the node's database, by batch number (read directly, as an auditor would)."""
    store = Store.open(f"sqlite:///{layout.node_config(CITY).parent / 'node.db'}")
    try:
        found = store.find_records(uscc, [Category.UTILITY], DAY, DAY)
    finally:
        store.close()
    return Counter(int(r.record_id.split("-b")[1][:4]) for r in found if r.record_id.startswith(f"{run}-"))
