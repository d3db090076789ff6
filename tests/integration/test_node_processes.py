"""A spent consent use always ends with its answer logged and kept: a caller
that gives up, a node frozen meanwhile or killed while its claims and entries
commit leave nothing a retry cannot complete (rule 28), on SQLite and
PostgreSQL, with the node as its own process. A claim commits in the same
transaction as its ledger entry, so a node leaves no claim without its entry;
claims that older nodes left so are still completed once."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from sqlalchemy import make_url

from creditnet import pilot
from creditnet.envelope import digest
from creditnet.network import NetworkLayout, free_port
from creditnet.pki import TrustStore
from creditnet.query import CLOCK_SKEW
from creditnet.store import ClaimOutcome, Store
from creditnet.v2 import chain_pb2, envelope_pb2, query_pb2
from tests.integration.conftest import SQLITE
from tests.integration.helpers import consent, opened_answer
from tests.integration.processes import (
    NodeProcess,
    claims,
    fresh_database,
    query,
    query_id,
    unanswered_claims,
)

pytestmark = pytest.mark.slow

CITY = pilot.HEFEI
CLIENTS = 8


@pytest.fixture
def node(
    database: str,
    layout: NetworkLayout,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("claims")
    scratch = None if database == SQLITE else request.getfixturevalue("scratch")
    name = request.node.name.split("[")[0].removeprefix("test_")[:40]
    process = NodeProcess(layout, CITY, fresh_database(database, name, root, scratch), root)
    try:
        yield process
    finally:
        process.close()


def consent_digest(grant: envelope_pb2.SignedEnvelope) -> bytes:
    return digest(grant.payload)


@contextmanager
def claims_held(url: str) -> Iterator[None]:
    """Another writer holds what a claim needs (a long transaction, a stuck
    migration): the node's claims wait until it lets go."""
    if make_url(url).get_backend_name() == SQLITE:
        # SQLite has one write lock for the whole file.
        conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(_libpq(url)) as pg:
        pg.execute("LOCK TABLE consent_uses IN EXCLUSIVE MODE")
        yield
        pg.rollback()


@contextmanager
def appends_stalled(url: str) -> Iterator[None]:
    """No credit-chain entry can commit: on PostgreSQL the log's size row is
    locked (the node's transactions wait, and it dies with them open); SQLite
    has one lock for the whole file, so there the entries' insert fails instead."""
    if make_url(url).get_backend_name() == SQLITE:
        conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        conn.execute(
            "CREATE TRIGGER stall BEFORE INSERT ON chain_entry BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER stall")
            conn.close()
        return
    with psycopg.connect(_libpq(url)) as pg:
        pg.execute("LOCK TABLE chain_meta IN EXCLUSIVE MODE")
        yield
        pg.rollback()


def left_unanswered(url: str, queries: list[envelope_pb2.SignedEnvelope], max_uses: int) -> None:
    """Claim `queries` the way a node before one-transaction claims could leave
    them when killed between its claim's commit and its entry's: a use spent,
    no answer kept, no entry."""
    with Store.open(url) as store:
        for q in queries:
            terms = query_pb2.CreditQuery.FromString(q.payload)
            grant = terms.consent
            outcome = store.claim_query(
                terms.query_id,
                digest(grant.payload),
                max_uses,
                terms.expires_at.ToDatetime(tzinfo=dt.UTC) + CLOCK_SKEW,
                query_digest=digest(q.payload),
            )
            assert outcome is ClaimOutcome.OK


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def answered_once(node: NodeProcess, trust: TrustStore, ids: list[str]) -> None:
    entries = await node.entries(trust)
    answered = Counter(e.query_id for e in entries if e.kind == chain_pb2.ENTRY_KIND_QUERY_ANSWERED)
    assert {i: answered[i] for i in ids} == dict.fromkeys(ids, 1)
    assert unanswered_claims(node.url) == 0


async def test_queries_whose_callers_gave_up_while_a_frozen_node_claimed_them_are_answered_on_retry(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    node.start()
    await node.serving()
    grant = consent(layout)
    queries = [query(layout, grant, CITY) for _ in range(CLIENTS)]
    with claims_held(node.url):
        sent = [asyncio.create_task(node.outcome(q, trust, timeout=3.0)) for q in queries]
        # Long enough for every query to reach its claim (a bound, not a
        # timing assertion: a query frozen before its claim is claimed on
        # retry instead, and passes all the same).
        await asyncio.sleep(1.0)
        node.freeze()
        gave_up = await asyncio.gather(*sent)
    # The claims commit as the node resumes and sees its callers gone.
    node.thaw()
    assert gave_up == ["DEADLINE_EXCEEDED"] * CLIENTS

    retried = await asyncio.gather(*(node.ask(q, trust) for q in queries))

    for q, resp in zip(queries, retried, strict=True):
        answer = query_pb2.CityAnswer.FromString(opened_answer(resp, q, node.city).payload)
        assert (answer.query_id, answer.query_digest) == (query_id(q), digest(q.payload))
        assert chain_pb2.LedgerEntry.FromString(resp.receipt.entry).query_id == query_id(q)
    await answered_once(node, trust, [query_id(q) for q in queries])
    with Store.open(node.url) as store:
        assert store.consent_uses(consent_digest(grant)) == CLIENTS


async def test_a_node_killed_while_its_entries_commit_leaves_no_claim_without_its_entry(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    node.start()
    await node.serving()
    # Exactly one use per query: a retry that spent a second one would be refused.
    grant = consent(layout, max_uses=CLIENTS)
    queries = [query(layout, grant, CITY) for _ in range(CLIENTS)]
    answered = query(layout, grant, CITY)
    acknowledged = await node.ask(answered, trust)
    with appends_stalled(node.url):
        sent = [asyncio.create_task(node.outcome(q, trust, timeout=30.0)) for q in queries]
        # Long enough for the queries to reach the writer (a bound, not a
        # timing assertion: one that did not is simply not claimed either).
        await asyncio.sleep(1.5)
        await node.kill()
    outcomes = await asyncio.gather(*sent)
    assert "ok" not in outcomes
    # The claims went with the entries they were committed with: the only
    # claim is the acknowledged query's, and it holds its answer.
    assert claims(node.url) == 1 and unanswered_claims(node.url) == 0

    node.start()
    await node.serving()
    again = await node.ask(answered, trust)
    assert opened_answer(again, answered, node.city) == opened_answer(acknowledged, answered, node.city)
    assert again.receipt.index == acknowledged.receipt.index
    retried = await asyncio.gather(*(node.ask(q, trust) for q in queries[: CLIENTS - 1]))
    for q, resp in zip(queries[: CLIENTS - 1], retried, strict=True):
        answer = query_pb2.CityAnswer.FromString(opened_answer(resp, q, node.city).payload)
        assert (answer.query_id, answer.query_digest) == (query_id(q), digest(q.payload))
    await answered_once(node, trust, [query_id(q) for q in [answered, *queries[: CLIENTS - 1]]])
    with Store.open(node.url) as store:
        assert store.consent_uses(consent_digest(grant)) == CLIENTS


async def test_claims_an_older_node_left_without_answers_are_answered_once_on_retry(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    grant = consent(layout, max_uses=CLIENTS)
    queries = [query(layout, grant, CITY) for _ in range(CLIENTS)]
    left_unanswered(node.url, queries, CLIENTS)
    assert unanswered_claims(node.url) == CLIENTS

    node.start()
    await node.serving()
    # Each query retried twice at once: one completion, one entry, one answer.
    pairs = await asyncio.gather(*(asyncio.gather(node.ask(q, trust), node.ask(q, trust)) for q in queries))

    for q, (first, second) in zip(queries, pairs, strict=True):
        signed = opened_answer(first, q, node.city)
        assert signed == opened_answer(second, q, node.city)
        assert first.receipt.index == second.receipt.index
        answer = query_pb2.CityAnswer.FromString(signed.payload)
        assert (answer.query_id, answer.query_digest) == (query_id(q), digest(q.payload))
    await answered_once(node, trust, [query_id(q) for q in queries])
    with Store.open(node.url) as store:
        assert store.consent_uses(consent_digest(grant)) == CLIENTS
    # The same again later is the kept answer; another query under one of
    # those ids is still a replay.
    again = await node.ask(queries[0], trust)
    assert opened_answer(again, queries[0], node.city) == opened_answer(pairs[0][0], queries[0], node.city)
    other = query(layout, consent(layout), CITY, query_id=query_id(queries[0]))
    assert await node.outcome(other, trust) == "query.replay"


async def test_a_second_node_process_on_one_database_is_refused_and_the_first_keeps_serving(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    node.start()
    await node.serving()
    grant = consent(layout)
    first = await node.ask(query(layout, grant, CITY), trust)

    second = node.start(listen=f"127.0.0.1:{free_port()}")
    try:
        code = await asyncio.to_thread(second.wait, 60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()

    assert code == 1
    # (The message is wrapped to the terminal's width.)
    said = " ".join(node.log_path(2).read_text(encoding="utf-8").split())
    assert "store.in_use" in said and "already served by creditnet node 340100" in said, said
    assert "single writer" in said, said
    # The first is untouched: it serves, and its log goes on.
    assert node.running().poll() is None
    later = await node.ask(query(layout, grant, CITY), trust)
    assert later.receipt.index == first.receipt.index + 1
    # Once it has stopped, the next one starts on the same database.
    assert await node.stop() == 0
    node.start()
    await node.serving()
    after = await node.ask(query(layout, grant, CITY), trust)
    assert after.receipt.index == later.receipt.index + 1
