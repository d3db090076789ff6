"""Records, profiles and times for the store tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from creditnet import pilot
from creditnet.dates import date_to_proto
from creditnet.domain import Category, City
from creditnet.v2 import records_pb2

USCC_A = "913401000000000001"
USCC_B = "913401000000000002"
PROVIDER = "provider:340100-data"
DAY = dt.date(2024, 3, 31)
SOON = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def record(
    record_id: str,
    *,
    uscc: str = USCC_A,
    category: Category = Category.UTILITY,
    day: dt.date = DAY,
    city: City = pilot.HEFEI,
    source: str = "State Grid Hefei Power Supply",
    amount: int = 100,
) -> records_pb2.CreditRecord:
    rec = records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=uscc,
        city=city.proto,
        source=source,
        record_date=date_to_proto(day),
    )
    detail = getattr(rec, category.oneof_field)
    detail.SetInParent()
    # A field every category has in some form, so that payloads differ.
    if category is Category.UTILITY:
        rec.utility.amount_due_fen = amount
    elif category is Category.TAX:
        rec.tax.tax_paid_fen = amount
    elif category is Category.LOAN:
        rec.loan.principal_fen = amount
    return rec


def batch(prefix: str, n: int, **kwargs: Any) -> list[records_pb2.CreditRecord]:
    return [record(f"{prefix}-{i:05d}", **kwargs) for i in range(n)]


def profile(
    uscc: str = USCC_A, name: str = "Hefei Quantum Devices Co., Ltd."
) -> records_pb2.EnterpriseProfile:
    return records_pb2.EnterpriseProfile(
        uscc=uscc,
        name=name,
        industry="C39",
        home_city=pilot.HEFEI.proto,
        registered_capital_fen=10_000_000_00,
        founded=date_to_proto(dt.date(2016, 5, 4)),
    )
