"""Schema migrations: opening never changes the schema, migrating keeps the data."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, make_url

from creditnet.domain import Category
from creditnet.store import (
    ClaimOutcome,
    IngestResult,
    Migration,
    SchemaNotReady,
    Store,
    UnknownRevision,
    head_revision,
)
from creditnet.store.models import METADATA
from creditnet.store.schema import revisions
from tests.store.factories import PROVIDER, SOON, USCC_A, USCC_B, batch, profile, record

ALL_TIME = (dt.date(1900, 1, 1), dt.date(2999, 12, 31))
FIRST, SECOND, HEAD = "0001", "0002", "0006"
DIGEST = b"\x07" * 32
NODE_TABLES = {"enterprises", "records", "query_uses", "consent_uses", "revocations"}
CHAIN_TABLES = {
    "chain_entry",
    "chain_hash",
    "chain_meta",
    "chain_checkpoint",
    "witness_state",
    "chain_evidence",
}
AGGREGATOR_TABLES = {
    "network_head",
    "network_checkpoint",
    "aggregator_revocation",
    "aggregator_revocation_delivery",
}


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_drift(url: str) -> list[object]:
    """What differs between the models and the database's tables."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, METADATA))
    finally:
        engine.dispose()


def execute(url: str, *statements: tuple[str, dict[str, object]]) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for sql, params in statements:
                conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


def test_the_migrations_are_one_line_of_revisions() -> None:
    assert revisions() == [FIRST, SECOND, "0003", "0004", "0005", HEAD]
    assert head_revision() == HEAD


def test_migrating_creates_exactly_the_tables_the_models_describe(db_url: str) -> None:
    assert Store.migrate(db_url) == Migration(before=None, after=HEAD)
    later = {"record_counts", "record_batches", "alembic_version"}
    assert tables(db_url) == NODE_TABLES | CHAIN_TABLES | AGGREGATOR_TABLES | later
    assert schema_drift(db_url) == []
    # Migrating again changes nothing.
    assert Store.migrate(db_url) == Migration(before=HEAD, after=HEAD)


def test_opening_an_empty_database_refuses_and_creates_nothing(db_url: str) -> None:
    with pytest.raises(SchemaNotReady, match=r"creditnet node migrate --config node.json"):
        Store.open(db_url)
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None and not Path(url.database).exists()
    else:
        assert tables(db_url) == set()
        with pytest.raises(SchemaNotReady, match="has no creditnet schema yet"):
            Store.open(db_url)


def test_an_older_revision_is_refused_until_migrated(db_url: str) -> None:
    Store.migrate(db_url, FIRST)
    with pytest.raises(SchemaNotReady, match=f"is at schema revision {FIRST}, this software needs {HEAD}"):
        Store.open(db_url)
    assert Store.revision(db_url) == FIRST  # refusing changed nothing


def test_a_revision_from_a_newer_release_is_refused(migrated_url: str) -> None:
    execute(migrated_url, ("UPDATE alembic_version SET version_num = :v", {"v": "0099"}))
    with pytest.raises(SchemaNotReady, match="0099, which this software does not know"):
        Store.open(migrated_url)
    with pytest.raises(SchemaNotReady, match="migrated by a newer creditnet"):
        Store.migrate(migrated_url)
    assert Store.revision(migrated_url) == "0099"


def test_an_unknown_target_is_a_clear_error_and_changes_nothing(migrated_url: str) -> None:
    with pytest.raises(UnknownRevision, match="'0007' is not a schema revision; use head, base or one of"):
        Store.migrate(migrated_url, "0007")
    assert Store.revision(migrated_url) == HEAD


def test_a_database_at_the_first_revision_upgrades_with_its_data_intact(db_url: str) -> None:
    # Rows as the first release wrote them, with plain SQL: this test must not
    # depend on today's code being able to write an old schema.
    Store.migrate(db_url, FIRST)
    rows = [
        (PROVIDER, "u1", USCC_A, Category.UTILITY, dt.date(2024, 1, 31)),
        (PROVIDER, "u2", USCC_A, Category.UTILITY, dt.date(2024, 2, 29)),
        (PROVIDER, "t1", USCC_A, Category.TAX, dt.date(2023, 12, 31)),
        ("provider:court", "j1", USCC_B, Category.JUDICIAL, dt.date(2022, 6, 1)),
    ]
    inserts: list[tuple[str, dict[str, object]]] = []
    for provider, record_id, uscc, category, day in rows:
        payload = record(record_id, uscc=uscc, category=category, day=day)
        payload.provider_id = provider
        inserts.append(
            (
                "INSERT INTO records (provider_id, record_id, uscc, category, city, record_date, source,"
                " payload) VALUES (:p, :r, :u, :c, '340100', :d, 'old source', :b)",
                {
                    "p": provider,
                    "r": record_id,
                    "u": uscc,
                    "c": category.value,
                    "d": day,
                    "b": payload.SerializeToString(),
                },
            )
        )
    old_profile = profile(USCC_A)
    inserts += [
        (
            "INSERT INTO enterprises (uscc, name, home_city, payload) VALUES (:u, :n, '340100', :b)",
            {"u": USCC_A, "n": old_profile.name, "b": old_profile.SerializeToString(deterministic=True)},
        ),
        (
            "INSERT INTO query_uses (query_id, consent_digest, used_at, expires_at) VALUES (:q, :d, :t, :e)",
            {"q": "answered-before", "d": DIGEST, "t": dt.datetime(2025, 1, 1, tzinfo=dt.UTC), "e": SOON},
        ),
        ("INSERT INTO consent_uses (consent_digest, uses) VALUES (:d, 1)", {"d": DIGEST}),
        (
            "INSERT INTO revocations (consent_digest, consent_id, uscc, revoked_at, envelope)"
            " VALUES (:d, 'c-old', :u, :t, :e)",
            {"d": b"\x09" * 32, "u": USCC_B, "t": dt.datetime(2025, 2, 1, tzinfo=dt.UTC), "e": b"signed"},
        ),
        ("INSERT INTO chain_meta (id, size) VALUES (1, 1)", {}),
        (
            "INSERT INTO chain_entry (idx, entry, kind, uscc, salt) VALUES (0, :e, 1, :u, :s)",
            {"e": b"entry-0", "u": USCC_A, "s": b"salt"},
        ),
    ]
    execute(db_url, *inserts)

    assert Store.migrate(db_url) == Migration(before=FIRST, after=HEAD)
    assert schema_drift(db_url) == []
    with Store.open(db_url) as store:
        found = store.find_records(USCC_A, list(Category), *ALL_TIME)
        assert [r.record_id for r in found] == ["t1", "u1", "u2"]
        assert all(r.provider_id == PROVIDER for r in found)
        assert store.get_profile(USCC_A) == old_profile
        # The new revision counted what was already stored.
        stats = store.stats()
        assert stats.records_by_category == {Category.UTILITY: 2, Category.TAX: 1, Category.JUDICIAL: 1}
        assert stats.records_by_provider == {PROVIDER: 3, "provider:court": 1}
        assert (stats.enterprises, stats.answered_queries, stats.revocations) == (1, 1, 1)
        # Replay protection, use counts and revocations carry over.
        assert store.claim_query("answered-before", DIGEST, 0, SOON) is ClaimOutcome.REPLAY
        assert store.claim_query("new", DIGEST, 2, SOON) is ClaimOutcome.OK
        assert store.claim_query("newer", DIGEST, 2, SOON) is ClaimOutcome.LIMIT_EXCEEDED
        assert store.is_revoked(b"\x09" * 32)
        # Old records are still duplicates, and new ones add to the counts.
        again = [record("u1"), record("u3")]
        assert store.ingest(again, PROVIDER) == IngestResult(accepted=1, duplicates=1)
        assert store.stats().records_by_provider == {PROVIDER: 4, "provider:court": 1}
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT entry, salt FROM chain_entry")).one() == (b"entry-0", b"salt")


def test_downgrade_and_upgrade_round_trip_keeps_the_data(migrated_url: str) -> None:
    with Store.open(migrated_url) as store:
        store.ingest(batch("u", 30) + batch("t", 5, category=Category.TAX), PROVIDER)
        store.ingest(batch("j", 4, category=Category.JUDICIAL, uscc=USCC_B), "provider:court")
        store.upsert_profiles([profile(USCC_A), profile(USCC_B, "Hefei Optics Co., Ltd.")])
        assert store.claim_query("q1", DIGEST, 0, SOON) is ClaimOutcome.OK
        before = store.stats()
        records_before = store.find_records(USCC_A, list(Category), *ALL_TIME)

    assert Store.migrate(migrated_url, FIRST) == Migration(before=HEAD, after=FIRST)
    assert "record_counts" not in tables(migrated_url)
    assert Store.migrate(migrated_url, "head") == Migration(before=FIRST, after=HEAD)
    assert schema_drift(migrated_url) == []
    with Store.open(migrated_url) as store:
        after = store.stats()
        assert (after.records_by_category, after.records_by_provider) == (
            before.records_by_category,
            before.records_by_provider,
        )
        assert (after.enterprises, after.answered_queries) == (2, 1)
        assert store.find_records(USCC_A, list(Category), *ALL_TIME) == records_before

    # All the way down is no tables at all, and back up is an empty store.
    assert Store.migrate(migrated_url, "base") == Migration(before=HEAD, after=None)
    assert tables(migrated_url) <= {"alembic_version"}
    assert Store.migrate(migrated_url) == Migration(before=None, after=HEAD)
    with Store.open(migrated_url) as store:
        assert store.stats().records == 0


def test_a_database_created_before_migrations_is_adopted(db_url: str) -> None:
    # What create_all made before migrations existed, for a node that was
    # loaded but never run: the node tables, no chain tables, no revision.
    engine = create_engine(db_url)
    try:
        METADATA.create_all(engine, tables=[METADATA.tables[name] for name in sorted(NODE_TABLES)])
        with engine.begin() as conn:
            # Columns added by later revisions were not there yet.
            for column in ("query_digest", "answer", "ledger_index"):
                conn.execute(sa.text(f"ALTER TABLE query_uses DROP COLUMN {column}"))
            for column in ("batch", "leaf_index", "inclusion_path"):
                conn.execute(sa.text(f"ALTER TABLE records DROP COLUMN {column}"))
    finally:
        engine.dispose()
    payload = record("legacy").SerializeToString()
    execute(
        db_url,
        (
            "INSERT INTO records (provider_id, record_id, uscc, category, city, record_date, source, payload)"
            " VALUES (:p, 'legacy', :u, 'utility', '340100', :d, 'src', :b)",
            {"p": PROVIDER, "u": USCC_A, "d": dt.date(2024, 3, 31), "b": payload},
        ),
    )
    with pytest.raises(SchemaNotReady, match="created before schema migrations"):
        Store.open(db_url)

    assert Store.migrate(db_url) == Migration(before=None, after=HEAD)
    assert schema_drift(db_url) == []
    with Store.open(db_url) as store:
        assert [r.record_id for r in store.find_records(USCC_A, [Category.UTILITY], *ALL_TIME)] == ["legacy"]
        assert store.stats().records_by_provider == {PROVIDER: 1}


def test_nodes_migrating_at_the_same_moment_migrate_once(db_url: str) -> None:
    start = threading.Barrier(3)
    results: list[Migration | BaseException] = []

    def migrate() -> None:
        start.wait()
        try:
            results.append(Store.migrate(db_url))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == sorted(
        [Migration(None, HEAD), Migration(HEAD, HEAD), Migration(HEAD, HEAD)], key=str
    )
    assert schema_drift(db_url) == []


def test_checkpoints_signed_before_0003_are_kept_without_certificates(db_url: str) -> None:
    Store.migrate(db_url, SECOND)
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO chain_checkpoint (size, note, cosignatures, signed_at)"
                    " VALUES (7, 'note', 3, :at)"
                ),
                {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
            )
    finally:
        engine.dispose()
    assert Store.migrate(db_url) == Migration(before=SECOND, after=HEAD)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT size, note, key_certificates FROM chain_checkpoint")).one()
    finally:
        engine.dispose()
    assert (row.size, row.note, row.key_certificates) == (7, "note", None)
    assert schema_drift(db_url) == []
