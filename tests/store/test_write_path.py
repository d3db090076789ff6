"""One write path per node: a query's claim, its credit-chain entry and its kept
answer commit together on the store's one writer thread, grouped with the
queries queued beside them; nothing else writes the node's database."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from creditnet.chain.keys import LogKey
from creditnet.chain.merkle import leaf_hash, root_from_leaves
from creditnet.ledger.log import Ledger
from creditnet.ledger.sqlstore import KeptQueryAnswer
from creditnet.pki import CertificateAuthority
from creditnet.store import WRITER_THREAD, AsyncStore, ClaimOutcome, ClaimRefused, QueryClaim
from creditnet.v2 import chain_pb2
from creditnet.witness.server import Witness
from tests.store.factories import PROVIDER, SOON, USCC_A, batch, profile
from tests.store.test_aio import _hold_writer

CONSENT = b"\x05" * 32
REVOKED = b"\x06" * 32
ONCE = b"\x07" * 32
OTHER = b"\x08" * 32


@pytest_asyncio.fixture
async def ledger(astore: AsyncStore) -> AsyncIterator[Ledger]:
    key = LogKey.issue(CertificateAuthority.create(), "340100")
    led = await asyncio.to_thread(Ledger, astore, key, quorum=0)
    try:
        yield led
    finally:
        await led.stop()


def answered(query_id: str, consent: bytes = CONSENT, max_uses: int = 0) -> dict[str, Any]:
    """What a node appends for an answered query: the entry, the kept answer and the claim."""
    query_digest = hashlib.sha256(query_id.encode()).digest()
    return {
        "entry": chain_pb2.LedgerEntry(
            kind=chain_pb2.ENTRY_KIND_QUERY_ANSWERED, query_id=query_id, query_digest=query_digest
        ),
        "uscc": USCC_A,
        "answer": KeptQueryAnswer(query_id, query_digest, b"signed answer to " + query_id.encode()),
        "claim": QueryClaim(query_id, consent, max_uses, SOON, query_digest),
    }


@contextmanager
def counted_commits(astore: AsyncStore) -> Iterator[list[int]]:
    """Durable commits of the node's database while the block runs (savepoints are not commits)."""
    commits = [0]

    def count(_conn: object) -> None:
        commits[0] += 1

    engine = astore.store.engine
    event.listen(engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(engine, "commit", count)


async def test_a_lone_answered_query_is_one_commit(astore: AsyncStore, ledger: Ledger) -> None:
    with counted_commits(astore) as commits:
        appended = await ledger.append(**answered("solo"))
    assert commits == [1]
    claimed = await astore.claimed("solo")
    assert claimed is not None and claimed.kept is not None
    assert claimed.kept.ledger_index == appended.index == 0
    assert claimed.kept.answer == b"signed answer to solo"
    assert ledger.log.entries(0, 1) == [(0, appended.entry)]
    assert await astore.consent_uses(CONSENT) == 1


async def test_queries_queued_together_commit_once_with_their_entries(
    astore: AsyncStore, ledger: Ledger
) -> None:
    # The ledger's own set-up wrote (in a transaction of the writer's) before.
    before = astore.group_commit_stats
    release = await _hold_writer(astore)
    with counted_commits(astore) as commits:
        pending = [asyncio.ensure_future(ledger.append(**answered(f"q{i}"))) for i in range(20)]
        await asyncio.sleep(0)  # every append reaches the writer's queue
        release.set()
        appended = await asyncio.gather(*pending)
    assert [a.index for a in appended] == list(range(20))
    assert commits == [1]
    stats = astore.group_commit_stats
    assert (stats.claims, stats.entries, stats.transactions - before.transactions) == (20, 20, 1)
    assert ledger.group_commits == 1 and ledger.committed_size == 20
    # The root the writer handed over is the root of what is on disk.
    leaves = [leaf_hash(e) for _, e in ledger.log.entries(0, 20)]
    assert ledger._roots[20] == root_from_leaves(leaves) == ledger.log.tree.root()
    for i, a in enumerate(appended):
        claimed = await astore.claimed(f"q{i}")
        assert claimed is not None and claimed.kept is not None and claimed.kept.ledger_index == a.index


async def test_other_writes_queued_with_queries_share_their_commit_and_fail_alone(
    astore: AsyncStore, ledger: Ledger
) -> None:
    # What the witness's state and checkpoint saves do: Store.run_write from another thread.
    store = astore.store
    await asyncio.to_thread(store.run_write, lambda c: c.exec_driver_sql("CREATE TABLE scratch (x INTEGER)"))

    def refused(conn: Any) -> None:
        conn.exec_driver_sql("INSERT INTO scratch VALUES (2)")
        raise ValueError("refused after writing")

    release = await _hold_writer(astore)
    with counted_commits(astore) as commits:
        pending = [asyncio.ensure_future(ledger.append(**answered(f"w{i}"))) for i in range(3)]
        kept = asyncio.ensure_future(
            asyncio.to_thread(store.run_write, lambda c: c.exec_driver_sql("INSERT INTO scratch VALUES (1)"))
        )
        failed = asyncio.ensure_future(asyncio.to_thread(store.run_write, refused))
        while astore._writer._queue.qsize() < 5:  # every job queued behind the parked one
            await asyncio.sleep(0.01)
        release.set()
        appended = await asyncio.gather(*pending)
        await kept
        with pytest.raises(ValueError, match="refused after writing"):
            await failed
    assert [a.index for a in appended] == [0, 1, 2]
    assert commits == [1]

    def scratch() -> list[int]:
        with store.engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql("SELECT x FROM scratch")]

    assert await asyncio.to_thread(scratch) == [1]


async def test_a_refused_claim_in_a_group_loses_nothing_of_the_others(
    astore: AsyncStore, ledger: Ledger
) -> None:
    await astore.revoke(REVOKED, "c-revoked", USCC_A, SOON, b"revocation")
    assert await astore.claim_query("taken", OTHER, 0, SOON) is ClaimOutcome.OK
    # A claim the database itself refuses (validation keeps it out in real use).
    bad = answered("bad")
    object.__setattr__(bad["claim"], "query_id", "x" * 200)
    refusal = chain_pb2.LedgerEntry(kind=chain_pb2.ENTRY_KIND_QUERY_REFUSED, query_id="refused")

    release = await _hold_writer(astore)
    jobs = {
        "a": ledger.append(**answered("a")),
        "replay": ledger.append(**answered("taken")),
        "revoked": ledger.append(**answered("r", consent=REVOKED)),
        "once": ledger.append(**answered("once-1", consent=ONCE, max_uses=1)),
        "twice": ledger.append(**answered("once-2", consent=ONCE, max_uses=1)),
        "bad": ledger.append(**bad),
        "refusal": ledger.append(refusal),
        "z": ledger.append(**answered("z")),
    }
    pending = {name: asyncio.ensure_future(job) for name, job in jobs.items()}
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait(pending.values())

    refused = {
        name: fut.exception().outcome  # type: ignore[union-attr]
        for name, fut in pending.items()
        if isinstance(fut.exception(), ClaimRefused)
    }
    assert refused == {
        "replay": ClaimOutcome.REPLAY,
        "revoked": ClaimOutcome.REVOKED,
        "twice": ClaimOutcome.LIMIT_EXCEEDED,
    }
    with pytest.raises(IntegrityError):
        pending["bad"].result()
    # The others landed, in submission order, each with its kept answer.
    assert [pending[n].result().index for n in ("a", "once", "refusal", "z")] == [0, 1, 2, 3]
    logged = [chain_pb2.LedgerEntry.FromString(e).query_id for _, e in ledger.log.entries(0, 10)]
    assert logged == ["a", "once-1", "refused", "z"]
    assert ledger.log.tree.size == ledger.committed_size == 4
    assert ledger.log.tree.root() == root_from_leaves([leaf_hash(e) for _, e in ledger.log.entries(0, 4)])
    for qid, index in (("a", 0), ("once-1", 1), ("z", 3)):
        claimed = await astore.claimed(qid)
        assert claimed is not None and claimed.kept is not None and claimed.kept.ledger_index == index
    # Nothing of a refused claim was recorded: no use spent, no claim, no entry.
    assert await astore.claimed("r") is None and await astore.claimed("once-2") is None
    taken = await astore.claimed("taken")
    assert taken is not None and taken.kept is None and taken.query_digest is None
    assert await astore.consent_uses(ONCE) == 1
    assert await astore.consent_uses(REVOKED) == 0
    assert await astore.consent_uses(CONSENT) == 2
    assert astore.group_commit_stats.entries == 4


async def test_a_failed_append_rolls_back_its_claims_and_the_log_goes_on(
    astore: AsyncStore, ledger: Ledger
) -> None:
    first = await ledger.append(**answered("first"))
    assert first.index == 0
    # The database refuses the entries (a full disk, say): the group's
    # transaction fails, its claims with it, and the tree forgets the batch.
    sqlite = astore.store.backend == "sqlite"

    def stall(conn: Any) -> None:
        if sqlite:
            conn.exec_driver_sql(
                "CREATE TRIGGER stall BEFORE INSERT ON chain_entry"
                " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
            )
            return
        conn.exec_driver_sql(
            "CREATE FUNCTION stall() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk trouble'; END $$"
            " LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER stall BEFORE INSERT ON chain_entry FOR EACH ROW EXECUTE FUNCTION stall()"
        )

    def mend(conn: Any) -> None:
        conn.exec_driver_sql("DROP TRIGGER stall" if sqlite else "DROP TRIGGER stall ON chain_entry")
        if not sqlite:
            conn.exec_driver_sql("DROP FUNCTION stall()")

    await astore.run_write(stall)
    try:
        with pytest.raises(Exception, match="disk trouble"):
            await ledger.append(**answered("lost"))
    finally:
        await astore.run_write(mend)
    assert await astore.claimed("lost") is None
    assert await astore.consent_uses(CONSENT) == 1
    assert ledger.log.tree.size == ledger.committed_size == 1
    again = await ledger.append(**answered("lost"))
    assert again.index == 1
    leaves = [leaf_hash(e) for _, e in ledger.log.entries(0, 2)]
    assert ledger.log.tree.root() == root_from_leaves(leaves)
    # Proofs from the cache hold only committed nodes.
    assert ledger.log.cached_inclusion_proof(1, 2) == ledger.log.tree.inclusion_proof(1, 2)


async def test_only_the_writer_thread_writes_the_node_database(astore: AsyncStore, ledger: Ledger) -> None:
    writers: set[str] = set()
    statements: list[str] = []

    def spy(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in {"INSERT", "UPDATE", "DELETE"}:
            writers.add(threading.current_thread().name)
            statements.append(statement.split("(", 1)[0][:40])

    engine = astore.store.engine
    event.listen(engine, "before_cursor_execute", spy)
    try:
        await astore.upsert_profiles([profile()])
        await astore.ingest(batch("r", 3), PROVIDER)
        await ledger.append(**answered("q1"))
        await ledger.append(chain_pb2.LedgerEntry(kind=chain_pb2.ENTRY_KIND_QUERY_REFUSED, query_id="no"))
        await astore.revoke(REVOKED, "c", USCC_A, SOON, b"revocation")
        await astore.prune_queries(SOON)
        # The checkpoint save runs off the loop (publish), the witness on its own thread.
        await asyncio.to_thread(ledger._save_checkpoint, 2, "note", 0, [b"cert"])
        witness = Witness(astore.store, LogKey.issue(CertificateAuthority.create(), "320100"))
        await asyncio.to_thread(witness.record_evidence, "340100", "split_view", "a", "b", "test")
        # The synchronous store from any thread: routed to the writer too.
        await asyncio.to_thread(astore.store.upsert_profiles, [profile()])
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert len(statements) >= 10
    assert writers == {WRITER_THREAD}
    # A write transaction opened elsewhere is refused, not raced.
    with pytest.raises(RuntimeError, match="writer thread only"), astore.store.write_transaction():
        pass


async def test_a_lone_claim_without_a_ledger_still_commits_alone(astore: AsyncStore) -> None:
    # The chain-free baseline keeps the claim-only job.
    with counted_commits(astore) as commits:
        assert await astore.claim_query("alone", CONSENT, 0, SOON) is ClaimOutcome.OK
    assert commits == [1]
    assert await astore.claim_query("alone", CONSENT, 0, SOON) is ClaimOutcome.REPLAY
