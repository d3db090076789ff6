"""`creditnet node run --workers 2`: one public port served by two worker
processes over one database (SQLite and PostgreSQL), with the leader
process as the one writer, as real processes on real ports.

Every new connection is a new TCP connection, which the kernel hands to one
of the workers (SO_REUSEPORT); the leader's ListWorkers says which worker
asked for how many appends, so the tests see that both served."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from creditnet import pilot
from creditnet.aggregator.directory import NodeDirectory
from creditnet.chain.receipts import verify_receipt
from creditnet.channels import CHANNEL_OPTIONS
from creditnet.config import AggregatorConfig
from creditnet.directory.publish import targets
from creditnet.directory.revoke import revoke
from creditnet.envelope import digest
from creditnet.internal.v1 import leader_pb2, leader_pb2_grpc
from creditnet.network import NetworkLayout, provision
from creditnet.node.leader import PEER_CERTIFICATE
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.provider import signed_request
from creditnet.v2 import (
    chain_pb2,
    chain_pb2_grpc,
    envelope_pb2,
    node_pb2,
    node_pb2_grpc,
    query_pb2,
    records_pb2,
)
from tests.integration.conftest import SQLITE
from tests.integration.helpers import consent, opened_answer, utility_record
from tests.integration.processes import (
    PATIENCE,
    NodeProcess,
    claims,
    fresh_database,
    query,
    query_id,
    unanswered_claims,
)

pytestmark = pytest.mark.slow

CITY = pilot.HEFEI
WORKERS = 2
# Enough fresh connections that the kernel's hashing reaches both workers
# (each lands on either with even odds: all on one has odds 2**-31).
CONNECTIONS = 32


@pytest.fixture
def node(
    database: str,
    layout: NetworkLayout,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("workers")
    scratch = None if database == SQLITE else request.getfixturevalue("scratch")
    name = "workers_" + request.node.name.split("[")[0].removeprefix("test_")[:30]
    process = NodeProcess(layout, CITY, fresh_database(database, name, root, scratch), root, workers=WORKERS)
    try:
        yield process
    finally:
        process.close()


def connection(node: NodeProcess, identity: Identity, trust: TrustStore) -> grpc.aio.Channel:
    """A channel with a TCP connection of its own: gRPC shares one between
    channels to the same target unless told not to, and each worker would
    then see all of them or none."""
    creds = grpc.ssl_channel_credentials(trust.ca_pem, identity.key_pem, identity.cert_pem)
    options = [
        *CHANNEL_OPTIONS,
        ("grpc.ssl_target_name_override", node_server_name(CITY)),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpc.aio.secure_channel(node.listen, creds, options=options)


async def ask(
    node: NodeProcess, layout: NetworkLayout, q: envelope_pb2.SignedEnvelope, trust: TrustStore
) -> node_pb2.QueryResponse:
    async with connection(node, layout.bank(), trust) as ch:
        return await node_pb2_grpc.CityNodeServiceStub(ch).Query(node_pb2.QueryRequest(query=q), timeout=30)


async def outcome(
    node: NodeProcess, layout: NetworkLayout, q: envelope_pb2.SignedEnvelope, trust: TrustStore
) -> str:
    """``ok``, or the rule id of the refusal."""
    try:
        await ask(node, layout, q, trust)
    except grpc.aio.AioRpcError as exc:
        return (exc.details() or "").split(":")[0]
    return "ok"


def leader_socket(node: NodeProcess) -> str:
    found = re.search(rb"its socket is (\S+)", node.log_path(node.starts).read_bytes())
    assert found is not None, "the leader did not say where its socket is"
    return found.group(1).decode()


async def workers(node: NodeProcess) -> list[leader_pb2.Worker]:
    async with grpc.aio.insecure_channel(f"unix:{leader_socket(node)}") as ch:
        resp = await leader_pb2_grpc.LeaderServiceStub(ch).ListWorkers(
            leader_pb2.ListWorkersRequest(), timeout=10
        )
    return list(resp.workers)


async def all_serving(node: NodeProcess, starts: int = 1) -> list[leader_pb2.Worker]:
    """The workers, once all WORKERS run (each slot started `starts` times at least)."""
    for _ in range(int(PATIENCE / 0.1)):
        listed = await workers(node)
        if len(listed) == WORKERS and all(w.starts >= starts for w in listed):
            return listed
        await asyncio.sleep(0.1)
    raise AssertionError(f"the leader runs {await workers(node)}, not {WORKERS} workers")


async def submit(node: NodeProcess, layout: NetworkLayout, trust: TrustStore, record_id: str) -> None:
    """One record of the demo enterprise, over a connection of its own (to whichever worker)."""
    provider = layout.provider(CITY)

    async def stream() -> AsyncIterator[node_pb2.SubmitRecordsRequest]:
        yield signed_request(provider, [utility_record(layout.demo_enterprise, CITY, record_id)])

    async with connection(node, provider, trust) as ch:
        resp = await node_pb2_grpc.CityNodeServiceStub(ch).SubmitRecords(stream(), timeout=30)
    assert resp.accepted == 1, resp


def checked(
    resp: node_pb2.QueryResponse, q: envelope_pb2.SignedEnvelope, trust: TrustStore
) -> query_pb2.CityAnswer:
    """The answer to `q`, its receipt verified (quorum 0: the test node has no witnesses)."""
    answer = query_pb2.CityAnswer.FromString(opened_answer(resp, q, CITY).payload)
    assert (answer.query_id, answer.query_digest) == (query_id(q), digest(q.payload))
    verified = verify_receipt(trust, resp.receipt, CITY.value, quorum=0)
    assert verified.entry.kind == chain_pb2.ENTRY_KIND_QUERY_ANSWERED
    assert verified.entry.query_id == query_id(q)
    return answer


async def test_two_workers_answer_over_one_writer(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    node.start()
    await node.serving()
    await all_serving(node)
    # Records ingested through several connections (so through both workers)...
    ingested = {f"workers-{i}" for i in range(8)}
    await asyncio.gather(*(submit(node, layout, trust, r) for r in sorted(ingested)))

    grant = consent(layout)
    queries = [query(layout, grant, CITY) for _ in range(CONNECTIONS)]
    answers = await asyncio.gather(*(ask(node, layout, q, trust) for q in queries))

    for q, resp in zip(queries, answers, strict=True):
        answer = checked(resp, q, trust)
        # ...are all in every answer, whichever worker gave it.
        disclosed = {records_pb2.CreditRecord.FromString(p.record).record_id for p in answer.proven_records}
        assert ingested <= disclosed
    served = await workers(node)
    assert len({w.pid for w in served}) == WORKERS
    assert all(w.appends > 0 for w in served), f"a worker served no query: {served}"
    assert sum(w.appends for w in served) == CONNECTIONS

    # A replay (another query under an answered id) is refused, whichever worker it reaches.
    replays = [query(layout, grant, CITY, query_id=query_id(q)) for q in queries[:8]]
    assert await asyncio.gather(*(outcome(node, layout, r, trust) for r in replays)) == ["query.replay"] * 8
    # The very query again gets the answer kept for it, from any worker.
    again = await asyncio.gather(*(ask(node, layout, q, trust) for q in queries[:8]))
    for q, resp in zip(queries[:8], again, strict=True):
        checked(resp, q, trust)

    # One writer: one claim per answered query, each with its one entry.
    entries = await node.entries(trust)
    answered = Counter(e.query_id for e in entries if e.kind == chain_pb2.ENTRY_KIND_QUERY_ANSWERED)
    assert answered == Counter({query_id(q): 1 for q in queries})
    assert claims(node.url) == CONNECTIONS and unanswered_claims(node.url) == 0
    submitted = [e for e in entries if e.kind == chain_pb2.ENTRY_KIND_RECORDS_SUBMITTED]
    assert len(submitted) == len(ingested)

    pids = [w.pid for w in served]
    assert await node.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_killed_worker_loses_no_acknowledged_query_and_is_restarted(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    node.start()
    await node.serving()
    victim, survivor = await all_serving(node)
    grant = consent(layout)
    queries = [query(layout, grant, CITY) for _ in range(CONNECTIONS)]

    async def answered(q: envelope_pb2.SignedEnvelope) -> node_pb2.QueryResponse | None:
        try:
            return await ask(node, layout, q, trust)
        except grpc.aio.AioRpcError:
            return None

    sent = [asyncio.create_task(answered(q)) for q in queries]
    # Some are answered before the kill, some are cut by it, some go to the survivor.
    await asyncio.wait(sent, return_when=asyncio.FIRST_COMPLETED)
    os.kill(victim.pid, signal.SIGKILL)
    outcomes = await asyncio.gather(*sent)

    acknowledged = [(q, r) for q, r in zip(queries, outcomes, strict=True) if r is not None]
    assert acknowledged
    for q, resp in acknowledged:
        checked(resp, q, trust)
    restarted = await all_serving(node, starts=1)
    assert victim.pid not in {w.pid for w in restarted} and survivor.pid in {w.pid for w in restarted}
    assert {w.slot: w.starts for w in restarted}[victim.slot] == 2

    # Nothing acknowledged is lost: each is logged once, and every query,
    # retried, gets its answer (the kept one, or answered now) once.
    retried = await asyncio.gather(*(ask(node, layout, q, trust) for q in queries))
    for q, resp in zip(queries, retried, strict=True):
        checked(resp, q, trust)
    for q, resp in acknowledged:
        assert retried[queries.index(q)].receipt.index == resp.receipt.index
    entries = await node.entries(trust)
    answered = Counter(e.query_id for e in entries if e.kind == chain_pb2.ENTRY_KIND_QUERY_ANSWERED)
    assert answered == Counter({query_id(q): 1 for q in queries})
    assert claims(node.url) == CONNECTIONS and unanswered_claims(node.url) == 0
    assert await node.stop() == 0


async def test_a_forwarded_call_runs_as_its_tls_peer_whatever_its_metadata_says(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    node.start()
    await node.serving()
    await all_serving(node)
    provider = layout.provider(CITY)

    async def stream() -> AsyncIterator[node_pb2.SubmitRecordsRequest]:
        yield signed_request(provider, [utility_record(layout.demo_enterprise, CITY, "forged")])

    # A bank sends the header by which a worker tells the leader who the TLS
    # peer is, naming a provider: over connections to both workers, the
    # leader still sees the bank.
    for _ in range(8):
        async with connection(node, layout.bank(), trust) as ch:
            stub = node_pb2_grpc.CityNodeServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SubmitRecords(
                    stream(), metadata=[(PEER_CERTIFICATE, provider.cert_pem)], timeout=30
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (refused.value.details() or "").startswith("peer.role")
            # A forwarded read answers from the leader's ledger and store.
            info = await stub.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=30)
            assert info.city == CITY.proto and info.records == 0
    # On the leader's socket, a public call that names no TLS peer is refused, not served as anyone.
    async with grpc.aio.insecure_channel(f"unix:{leader_socket(node)}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as unnamed:
            await node_pb2_grpc.CityNodeServiceStub(ch).GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=10)
    assert unnamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (unnamed.value.details() or "").startswith("peer.certificate")
    assert os.stat(leader_socket(node)).st_mode & 0o777 == 0o600
    assert os.stat(Path(leader_socket(node)).parent).st_mode & 0o777 == 0o700
    assert await node.stop() == 0


@pytest.fixture(scope="module")
def dlayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("workers-directory"),
        enterprises_per_city=5,
        seed=13,
        directory_refresh=dt.timedelta(seconds=1),
    )


async def test_workers_follow_the_leaders_directory_and_refuse_a_certificate_it_revokes(
    dlayout: NetworkLayout, tmp_path: Path
) -> None:
    trust = TrustStore.load(dlayout.ca)
    url = fresh_database(SQLITE, "workers-directory", tmp_path, None)
    node = NodeProcess(
        dlayout, CITY, url, tmp_path, listen=dlayout.node_endpoint(CITY), workers=WORKERS, directory=True
    )
    try:
        node.start()
        await node.serving()
        await all_serving(node)
        bank = dlayout.bank()

        async def refusals() -> list[str]:
            """What the bank's calls get over connections to both workers: ``ok`` or the refusing rule."""
            grant = consent(dlayout)

            async def one() -> list[str]:
                async with connection(node, bank, trust) as ch:
                    got = []
                    for call in (
                        chain_pb2_grpc.ChainServiceStub(ch).GetCheckpoint(
                            chain_pb2.GetCheckpointRequest(), timeout=10
                        ),
                        node_pb2_grpc.CityNodeServiceStub(ch).Query(
                            node_pb2.QueryRequest(query=query(dlayout, grant, CITY)), timeout=1
                        ),
                    ):
                        try:
                            await call
                            got.append("ok")
                        except grpc.aio.AioRpcError as exc:
                            # A deadline is the code's (its details, gRPC's or the node's, vary).
                            code = exc.code()
                            rule = (exc.details() or code.name).split(":")[0]
                            got.append(code.name if code == grpc.StatusCode.DEADLINE_EXCEEDED else rule)
                    return got

            return [r for rs in await asyncio.gather(*(one() for _ in range(8))) for r in rs]

        # Served (the query waits for witnesses this test does not run: it is
        # logged, and unpublished when its deadline comes).
        assert set(await refusals()) <= {"ok", "chain.unpublished", "DEADLINE_EXCEEDED"}
        # The revoking directory is offered to the node (a forwarded call);
        # its leader takes it, and the workers follow.
        target = next(t for t in targets(dlayout) if t.name == CITY.value)
        await revoke(dlayout, bank.cert, only=[target])
        for _ in range(int(PATIENCE / 0.2)):
            if set(await refusals()) == {"cert.revoked"}:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the workers still serve a revoked bank: {await refusals()}")
        assert await node.stop() == 0
    finally:
        node.close()


async def test_an_aggregator_with_several_connections_to_a_node_spreads_its_queries_over_the_workers(
    node: NodeProcess, layout: NetworkLayout, trust: TrustStore
) -> None:
    node.start()
    await node.serving()
    await all_serving(node)
    aggregator = AggregatorConfig.load(layout.aggregator_config)
    identity = Identity.load(aggregator.cert, aggregator.key)
    links = NodeDirectory({CITY: node.listen}, identity, trust, connections_per_node=CONNECTIONS // 2)
    try:
        link = links.get(CITY)
        assert link is not None
        grant = consent(layout)
        queries = [query(layout, grant, CITY) for _ in range(CONNECTIONS)]
        answers = await asyncio.gather(
            *(link.query_stub().Query(node_pb2.QueryRequest(query=q), timeout=30) for q in queries)
        )
    finally:
        await links.close()
    for q, resp in zip(queries, answers, strict=True):
        checked(resp, q, trust)
    served = await workers(node)
    assert all(w.appends > 0 for w in served), f"a worker served none of the aggregator's queries: {served}"
    assert await node.stop() == 0
