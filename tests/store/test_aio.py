"""AsyncStore: every Store method without blocking the loop, and group commit."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading

import pytest
from sqlalchemy.exc import IntegrityError

from creditnet.domain import Category
from creditnet.store import AsyncStore, ClaimOutcome, IngestResult, QueryClaim
from tests.store.factories import PROVIDER, SOON, USCC_A, batch, profile

OK, REPLAY, LIMIT = ClaimOutcome.OK, ClaimOutcome.REPLAY, ClaimOutcome.LIMIT_EXCEEDED
CONSENT = b"\x03" * 32
OTHER = b"\x04" * 32


async def test_every_store_method_has_an_async_twin(astore: AsyncStore) -> None:
    assert await astore.upsert_profiles([profile()]) == 1
    assert (await astore.get_profile(USCC_A)) == profile()
    assert await astore.ingest(batch("r", 5), PROVIDER) == IngestResult(5, 0)
    found = await astore.find_records(USCC_A, [Category.UTILITY], dt.date(2000, 1, 1), dt.date(2100, 1, 1))
    assert [r.record_id for r in found] == [f"r-{i:05d}" for i in range(5)]
    assert await astore.claim_query("q1", CONSENT, 0, SOON) is OK
    assert await astore.consent_uses(CONSENT) == 1
    assert await astore.revoke(CONSENT, "c1", USCC_A, SOON, b"env") is True
    assert await astore.is_revoked(CONSENT) is True
    assert await astore.prune_queries(SOON + dt.timedelta(seconds=1)) == 1
    stats = await astore.stats()
    assert (stats.enterprises, stats.records, stats.revocations, stats.answered_queries) == (1, 5, 1, 0)


async def test_concurrent_claims_of_one_query_id_give_exactly_one_ok(astore: AsyncStore) -> None:
    outcomes = await asyncio.gather(*(astore.claim_query("same", CONSENT, 0, SOON) for _ in range(64)))
    assert outcomes.count(OK) == 1
    assert outcomes.count(REPLAY) == 63
    assert await astore.consent_uses(CONSENT) == 1


async def test_concurrent_claims_under_max_uses_three_give_exactly_three_ok(astore: AsyncStore) -> None:
    outcomes = await asyncio.gather(*(astore.claim_query(f"q{i}", CONSENT, 3, SOON) for i in range(40)))
    assert outcomes.count(OK) == 3
    assert outcomes.count(LIMIT) == 37
    assert await astore.consent_uses(CONSENT) == 3


async def _hold_writer(astore: AsyncStore) -> threading.Event:
    """Park the writer thread on a job until the event is set, so that the
    next writes queue up behind it (the test reaches into the writer)."""
    release = threading.Event()
    started = threading.Event()

    def park() -> None:
        started.set()
        release.wait()

    astore._writer.call(park)
    await asyncio.to_thread(started.wait)
    return release


async def test_queued_claims_share_one_transaction(astore: AsyncStore) -> None:
    release = await _hold_writer(astore)
    pending = [asyncio.ensure_future(astore.claim_query(f"q{i}", CONSENT, 0, SOON)) for i in range(30)]
    pending.append(asyncio.ensure_future(astore.claim_query("q0", OTHER, 0, SOON)))
    await asyncio.sleep(0)  # let every claim reach the queue
    release.set()
    outcomes = await asyncio.gather(*pending)
    assert outcomes == [OK] * 30 + [REPLAY]
    assert astore.group_commit_stats.claims == 31
    assert astore.group_commit_stats.transactions == 1


async def test_a_claim_the_database_refuses_does_not_fail_its_group(astore: AsyncStore) -> None:
    # Validation keeps such a claim out in real use; built past it, it stands
    # for any claim the database refuses inside a group.
    valid = QueryClaim("x", CONSENT, 0, SOON)
    too_long = "x" * 200
    bad = dataclasses.replace(valid)
    object.__setattr__(bad, "query_id", too_long)

    release = await _hold_writer(astore)
    first = asyncio.ensure_future(astore.claim_query("before", CONSENT, 0, SOON))
    refused = asyncio.wrap_future(astore._writer.claim(bad))
    last = asyncio.ensure_future(astore.claim_query("after", CONSENT, 0, SOON))
    await asyncio.sleep(0)
    release.set()

    assert await first is OK
    assert await last is OK
    with pytest.raises(IntegrityError):
        await refused
    assert await astore.consent_uses(CONSENT) == 2
    assert (await astore.stats()).answered_queries == 2


async def test_writes_run_in_submission_order(astore: AsyncStore) -> None:
    # A revocation queued before a claim is seen by it, and one queued after is not.
    release = await _hold_writer(astore)
    before = asyncio.ensure_future(astore.claim_query("before", CONSENT, 0, SOON))
    revoked = asyncio.ensure_future(astore.revoke(CONSENT, "c1", USCC_A, SOON, b"env"))
    after = asyncio.ensure_future(astore.claim_query("after", CONSENT, 0, SOON))
    await asyncio.sleep(0)
    release.set()
    assert [await before, await revoked, await after] == [OK, True, ClaimOutcome.REVOKED]


async def test_close_finishes_queued_writes_then_refuses_more(migrated_url: str) -> None:
    astore = await AsyncStore.open(migrated_url)
    release = await _hold_writer(astore)
    queued = asyncio.ensure_future(astore.ingest(batch("r", 10), PROVIDER))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(astore.close())
    await asyncio.sleep(0)
    release.set()
    await closing
    assert await queued == IngestResult(10, 0)
    with pytest.raises(RuntimeError, match="closed"):
        await astore.claim_query("q", CONSENT, 0, SOON)
    with pytest.raises(RuntimeError, match="closed"):
        await astore.stats()

    async with await AsyncStore.open(migrated_url) as again:
        assert (await again.stats()).records == 10


async def test_a_node_forgets_expired_query_ids_on_its_own(astore: AsyncStore) -> None:
    from creditnet.node.server import prune_expired_queries

    assert await astore.claim_query("old", CONSENT, 0, SOON) is OK
    assert await astore.claim_query("young", CONSENT, 0, SOON + dt.timedelta(hours=1)) is OK
    pruning = asyncio.create_task(
        prune_expired_queries(astore, interval=0.01, clock=lambda: SOON + dt.timedelta(seconds=1))
    )
    try:
        for _ in range(200):
            # Claiming again tells whether the id is still remembered.
            if await astore.claim_query("old", CONSENT, 0, SOON) is OK:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the expired query id was never forgotten")
        assert await astore.claim_query("young", CONSENT, 0, SOON) is ClaimOutcome.REPLAY
    finally:
        pruning.cancel()
