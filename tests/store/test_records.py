"""Ingesting and finding credit records."""

from __future__ import annotations

import datetime as dt

import pytest

from creditnet import pilot
from creditnet.domain import Category
from creditnet.store import IngestResult, InvalidRecord, Store
from creditnet.v2 import records_pb2
from tests.store.factories import PROVIDER, USCC_A, USCC_B, batch, record

ALL_TIME = (dt.date(1900, 1, 1), dt.date(2999, 12, 31))


def ids(records: list[records_pb2.CreditRecord]) -> list[str]:
    return [r.record_id for r in records]


def test_find_filters_by_enterprise_category_and_inclusive_dates(store: Store) -> None:
    jan, feb, mar, apr = (dt.date(2024, m, 1) for m in (1, 2, 3, 4))
    store.ingest(
        [
            record("u-mar", category=Category.UTILITY, day=mar),
            record("u-jan", category=Category.UTILITY, day=jan),
            record("u-apr", category=Category.UTILITY, day=apr),
            record("t-feb", category=Category.TAX, day=feb),
            record("l-feb", category=Category.LOAN, day=feb),
            record("b-feb", uscc=USCC_B, category=Category.UTILITY, day=feb),
        ],
        PROVIDER,
    )
    found = store.find_records(USCC_A, {Category.UTILITY, Category.TAX}, feb, mar)
    # Both ends are inclusive; ordered by category name, then date.
    assert ids(found) == ["t-feb", "u-mar"]
    assert ids(store.find_records(USCC_A, [Category.UTILITY], jan, apr)) == ["u-jan", "u-mar", "u-apr"]
    assert ids(store.find_records(USCC_B, list(Category), *ALL_TIME)) == ["b-feb"]
    assert store.find_records(USCC_A, [Category.JUDICIAL], *ALL_TIME) == []
    assert store.find_records(USCC_A, [], *ALL_TIME) == []


def test_same_date_keeps_insertion_order(store: Store) -> None:
    store.ingest([record("z"), record("a"), record("m")], PROVIDER)
    assert ids(store.find_records(USCC_A, [Category.UTILITY], *ALL_TIME)) == ["z", "a", "m"]


def test_found_record_is_the_submitted_one_with_the_node_set_provenance(store: Store) -> None:
    submitted = record("r1", amount=4242)
    submitted.provider_id = "spoofed-by-provider"
    original = submitted.SerializeToString()
    store.ingest([submitted], PROVIDER)

    (found,) = store.find_records(USCC_A, [Category.UTILITY], *ALL_TIME)
    expected = records_pb2.CreditRecord.FromString(original)
    expected.provider_id = PROVIDER
    assert found == expected
    # The caller's message is not changed.
    assert submitted.SerializeToString() == original


def test_same_batch_twice_stores_it_once(store: Store) -> None:
    records = batch("r", 50)
    assert store.ingest(records, PROVIDER) == IngestResult(accepted=50, duplicates=0)
    before = store.find_records(USCC_A, list(Category), *ALL_TIME)

    # A resubmission, even with changed content, changes nothing: first one wins.
    changed = batch("r", 50, amount=999)
    assert store.ingest(changed, PROVIDER) == IngestResult(accepted=0, duplicates=50)
    assert store.find_records(USCC_A, list(Category), *ALL_TIME) == before
    assert store.stats().records == 50


def test_duplicates_are_per_provider_and_within_a_batch(store: Store) -> None:
    result = store.ingest([record("r1"), record("r2"), record("r1")], PROVIDER)
    assert result == IngestResult(accepted=2, duplicates=1)
    # The same record_id from another provider is another record.
    assert store.ingest([record("r1")], "provider:other") == IngestResult(accepted=1, duplicates=0)
    assert store.stats().records_by_provider == {PROVIDER: 2, "provider:other": 1}


@pytest.mark.parametrize("bad_uscc", ["91340100000000001", "9134010000000000011"])
def test_a_row_the_database_refuses_mid_batch_leaves_nothing_of_the_batch(
    store: Store, bad_uscc: str
) -> None:
    store.ingest(batch("kept", 3), PROVIDER)
    records = batch("doomed", 10)
    records[6] = record("doomed-bad", uscc=bad_uscc)

    with pytest.raises(InvalidRecord, match="nothing of it was stored"):
        store.ingest(records, PROVIDER)

    assert store.stats().records == 3
    assert ids(store.find_records(USCC_A, [Category.UTILITY], *ALL_TIME)) == [
        "kept-00000",
        "kept-00001",
        "kept-00002",
    ]
    # The refused batch's good records can be submitted again, as new.
    del records[6]
    assert store.ingest(records, PROVIDER) == IngestResult(accepted=9, duplicates=0)


def _no_detail() -> records_pb2.CreditRecord:
    rec = record("x")
    rec.ClearField("utility")
    return rec


def _no_city() -> records_pb2.CreditRecord:
    rec = record("x")
    rec.ClearField("city")
    return rec


def _impossible_date() -> records_pb2.CreditRecord:
    rec = record("x")
    rec.record_date.month = 2
    rec.record_date.day = 30
    return rec


def _nul_in_source() -> records_pb2.CreditRecord:
    return record("x", source="State Grid\0Hefei")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_no_detail, "has no detail"),
        (_no_city, "unknown city"),
        (_impossible_date, "is not a date"),
        # PostgreSQL cannot store it, so neither backend does.
        (_nul_in_source, "a text field holds a NUL character"),
    ],
)
def test_records_the_store_cannot_index_are_refused_before_writing(
    store: Store, make: object, message: str
) -> None:
    assert callable(make)
    records = [*batch("ok", 3), make()]
    with pytest.raises(InvalidRecord, match=message) as err:
        store.ingest(records, PROVIDER)
    assert "record 3 ('x')" in str(err.value)
    assert store.stats().records == 0


def test_provider_id_is_required(store: Store) -> None:
    with pytest.raises(ValueError, match="provider_id is empty or holds a NUL character"):
        store.ingest([record("r1")], "")
    assert store.ingest([], PROVIDER) == IngestResult(accepted=0, duplicates=0)


def test_inverted_date_range_is_an_error(store: Store) -> None:
    with pytest.raises(ValueError, match="after date_to"):
        store.find_records(USCC_A, [Category.UTILITY], dt.date(2024, 2, 1), dt.date(2024, 1, 1))


def test_records_survive_reopening(migrated_url: str) -> None:
    first = Store.open(migrated_url)
    try:
        first.ingest(batch("r", 20, category=Category.TAX, city=pilot.HEFEI), PROVIDER)
    finally:
        first.close()
    again = Store.open(migrated_url)
    try:
        found = again.find_records(USCC_A, [Category.TAX], *ALL_TIME)
        assert ids(found) == [f"r-{i:05d}" for i in range(20)]
        assert all(r.provider_id == PROVIDER and r.WhichOneof("detail") == "tax" for r in found)
        assert again.ingest(batch("r", 20, category=Category.TAX), PROVIDER).duplicates == 20
    finally:
        again.close()
