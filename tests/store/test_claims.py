"""Replay protection, consent use limits, revocations and pruning."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from creditnet.domain import Category
from creditnet.store import ClaimedQuery, ClaimOutcome, QueryClaim, Store
from tests.store.factories import PROVIDER, SOON, USCC_A, USCC_B, batch, profile, record

OK, REPLAY, LIMIT, REVOKED = (
    ClaimOutcome.OK,
    ClaimOutcome.REPLAY,
    ClaimOutcome.LIMIT_EXCEEDED,
    ClaimOutcome.REVOKED,
)
REPO = Path(__file__).resolve().parents[2]
CONSENT = b"\x01" * 32
OTHER = b"\x02" * 32
REVOKED_AT = dt.datetime(2025, 6, 1, 8, 0, tzinfo=dt.UTC)


def revoke(store: Store, digest: bytes = CONSENT) -> bool:
    return store.revoke(digest, "consent-1", USCC_A, REVOKED_AT, b"signed revocation")


def test_a_query_id_is_answered_once(store: Store) -> None:
    assert store.claim_query("q1", CONSENT, 0, SOON) is OK
    assert store.claim_query("q1", CONSENT, 0, SOON) is REPLAY
    # A replay is refused whatever consent it names.
    assert store.claim_query("q1", OTHER, 0, SOON) is REPLAY
    assert store.consent_uses(CONSENT) == 1
    assert store.consent_uses(OTHER) == 0


def test_a_claim_names_its_query_and_holds_no_answer_until_its_entry_is_written(store: Store) -> None:
    query_digest = b"\x09" * 32
    assert store.claim_query("q1", CONSENT, 0, SOON, query_digest=query_digest) is OK
    # Until the credit chain writes the entry and the kept answer, the claim
    # says which signed query spent the use, so that only that query's retry
    # may complete it.
    assert store.claimed("q1") == ClaimedQuery(query_digest, None)
    assert store.claim_query("q1", CONSENT, 0, SOON, query_digest=query_digest) is REPLAY
    assert store.claimed("q1") == ClaimedQuery(query_digest, None)
    assert store.claimed("q2") is None


def test_max_uses_is_enforced_per_consent(store: Store) -> None:
    assert [store.claim_query(f"q{i}", CONSENT, 2, SOON) for i in range(4)] == [OK, OK, LIMIT, LIMIT]
    assert store.consent_uses(CONSENT) == 2
    # Refused claims record nothing: neither a use nor the query id.
    assert store.stats().answered_queries == 2
    assert store.claim_query("q0", OTHER, 2, SOON) is REPLAY
    assert store.claim_query("other", OTHER, 2, SOON) is OK


def test_zero_max_uses_means_unlimited_but_counted(store: Store) -> None:
    assert {store.claim_query(f"q{i}", CONSENT, 0, SOON) for i in range(25)} == {OK}
    assert store.consent_uses(CONSENT) == 25


def test_revoked_consent_is_refused(store: Store) -> None:
    assert store.claim_query("before", CONSENT, 0, SOON) is OK
    assert not store.is_revoked(CONSENT)
    assert revoke(store) is True
    assert revoke(store) is False  # already revoked
    assert store.is_revoked(CONSENT)
    assert not store.is_revoked(OTHER)

    assert store.claim_query("after", CONSENT, 0, SOON) is REVOKED
    assert store.consent_uses(CONSENT) == 1
    assert store.claim_query("after", OTHER, 0, SOON) is OK  # the refused id was not recorded


def test_outcome_precedence_is_replay_then_limit_then_revoked(store: Store) -> None:
    assert store.claim_query("q1", CONSENT, 1, SOON) is OK
    revoke(store)
    assert store.claim_query("q1", CONSENT, 1, SOON) is REPLAY
    assert store.claim_query("q2", CONSENT, 1, SOON) is LIMIT
    assert store.claim_query("q3", CONSENT, 5, SOON) is REVOKED


def test_claims_in_one_group_see_each_other(store: Store) -> None:
    claims = [QueryClaim(q, CONSENT, 2, SOON) for q in ("a", "b", "a", "c")]
    assert store.claim_queries(claims) == [OK, OK, REPLAY, LIMIT]
    assert store.consent_uses(CONSENT) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", CONSENT, 0, SOON), "query_id must have 1 to 128 characters"),
        (("q" * 129, CONSENT, 0, SOON), "query_id must have 1 to 128 characters"),
        (("q", b"", 0, SOON), "consent_digest is empty"),
        (("q", CONSENT, -1, SOON), "max_uses must be 0"),
        (("q", CONSENT, 0, dt.datetime(2030, 1, 1)), "expires_at is a naive datetime"),
    ],
)
def test_bad_claims_are_refused_and_change_nothing(
    store: Store, args: tuple[str, bytes, int, dt.datetime], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.claim_query(*args)
    assert store.stats().answered_queries == 0
    assert store.consent_uses(CONSENT) == 0


def test_bad_revocations_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.revoke(CONSENT, "c", USCC_A, dt.datetime(2025, 1, 1), b"env")
    with pytest.raises(ValueError, match="envelope is empty"):
        store.revoke(CONSENT, "c", USCC_A, REVOKED_AT, b"")
    assert not store.is_revoked(CONSENT)


def test_prune_forgets_only_expired_query_ids(store: Store) -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    # Expiry in another zone: compared as instants, not as wall-clock text.
    cst = dt.timezone(dt.timedelta(hours=8))
    store.claim_query("expired", CONSENT, 0, now - dt.timedelta(seconds=1))
    store.claim_query("expired-cst", CONSENT, 0, dt.datetime(2026, 3, 1, 19, 59, tzinfo=cst))
    store.claim_query("exactly-now", CONSENT, 0, now)
    store.claim_query("live-cst", CONSENT, 0, dt.datetime(2026, 3, 1, 20, 1, tzinfo=cst))

    assert store.prune_queries(now) == 2
    assert store.prune_queries(now) == 0
    assert store.stats().answered_queries == 2
    assert store.claim_query("exactly-now", CONSENT, 0, SOON) is REPLAY
    assert store.claim_query("live-cst", CONSENT, 0, SOON) is REPLAY
    # Uses are not forgotten with the query ids.
    assert store.consent_uses(CONSENT) == 4
    with pytest.raises(ValueError, match="naive"):
        store.prune_queries(dt.datetime(2026, 1, 1))


def test_stats_count_what_the_node_holds(store: Store) -> None:
    empty = store.stats()
    assert (empty.enterprises, empty.records, empty.records_by_category) == (0, 0, {})

    store.upsert_profiles([profile(USCC_A), profile(USCC_B)])
    store.ingest(batch("u", 3, category=Category.UTILITY), PROVIDER)
    store.ingest(batch("t", 2, category=Category.TAX, uscc=USCC_B), PROVIDER)
    store.ingest([record("j", category=Category.JUDICIAL)], "provider:court")
    store.claim_query("q1", CONSENT, 0, SOON)
    revoke(store)

    stats = store.stats()
    assert stats.enterprises == 2
    assert stats.records == 6
    assert stats.records_by_category == {Category.UTILITY: 3, Category.TAX: 2, Category.JUDICIAL: 1}
    assert stats.records_by_provider == {PROVIDER: 5, "provider:court": 1}
    assert (stats.answered_queries, stats.revocations) == (1, 1)
    assert stats.db_size_bytes is not None and stats.db_size_bytes > 0


def test_threads_claiming_one_query_id_get_one_ok(store: Store) -> None:
    threads = 8
    start = threading.Barrier(threads)
    outcomes: list[ClaimOutcome] = []

    def claim(i: int) -> None:
        start.wait()
        outcomes.append(store.claim_query("contested", OTHER, 0, SOON))
        outcomes.append(store.claim_query(f"own-{i}", CONSENT, 3, SOON))

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert outcomes.count(OK) == 1 + 3
    assert outcomes.count(REPLAY) == threads - 1
    assert outcomes.count(LIMIT) == threads - 3
    assert store.consent_uses(CONSENT) == 3


def test_processes_claiming_the_same_ids_get_one_ok_each(migrated_url: str) -> None:
    processes, shared = 3, 15
    children = []
    for p in range(processes):
        claims = [{"query_id": f"shared-{i}", "digest": OTHER.hex(), "max_uses": 0} for i in range(shared)]
        claims += [{"query_id": f"own-{p}-{i}", "digest": CONSENT.hex(), "max_uses": 4} for i in range(5)]
        if p % 2:
            claims.reverse()
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.store.workers", "claim", migrated_url, json.dumps(claims)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.communicate()[1]
    # All open and waiting: let them race.
    results: dict[str, list[str]] = {}
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        out, err = child.communicate()
        assert child.returncode == 0, err
        for query_id, outcome in json.loads(out).items():
            results.setdefault(query_id, []).append(outcome)

    for i in range(shared):
        assert sorted(results[f"shared-{i}"]) == ["ok", "replay", "replay"]
    own = [o for q, outs in results.items() if q.startswith("own-") for o in outs]
    assert len(own) == processes * 5
    assert own.count("ok") == 4
    assert own.count("limit_exceeded") == processes * 5 - 4
    with Store.open(migrated_url) as store:
        assert store.consent_uses(CONSENT) == 4
