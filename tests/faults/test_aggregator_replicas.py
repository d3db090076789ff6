"""Two aggregator replicas on one PostgreSQL database: one SIGKILLed, then one frozen, as banks query both.

Every query still gets its verified answer within its deadline (the SDK
fails over to the other replica, and hedges past a frozen one), a revocation sent to one replica is
refused by the other at once, and after the killed replica is back there is
one chain of network checkpoints and no witness evidence against anyone.
Skipped without PostgreSQL unless CREDITNET_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio

from creditnet import consent as consent_mod
from creditnet import pilot
from creditnet.aggregator.state import AggregatorState
from creditnet.chain.keys import LogKey
from creditnet.chain.network import verify_network_checkpoint
from creditnet.channels import secure_channel
from creditnet.domain import Purpose
from creditnet.health import wait_serving
from creditnet.network import (
    DEMO_BANK,
    SECOND_BANK,
    NetworkLayout,
    ProcessNetwork,
    aggregator_process,
    grant_demo_consent,
    provision,
)
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.store import Store
from creditnet.store.scratch import ScratchDatabases, ServerUnavailable
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc
from creditnet_bank import BankClient, QueryRefused, SectionStatus

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)
QUERY_DEADLINE = 10.0
# A bound against hanging, never a timing assertion.
PATIENCE = 60.0


@pytest.fixture(scope="module")
def aggregator_database() -> Iterator[str]:
    with ScratchDatabases("creditnet_replicas") as scratch:
        try:
            url = scratch.create("aggregator")
        except ServerUnavailable as exc:
            if os.environ.get("CREDITNET_REQUIRE_POSTGRES"):
                pytest.fail(f"{exc}")
            pytest.skip(f"{exc}: the aggregator replica test needs PostgreSQL")
        yield url


@pytest.fixture(scope="module")
def layout(aggregator_database: str, tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("replicas"),
        enterprises_per_city=20,
        seed=13,
        aggregator_replicas=2,
        aggregator_database_url=aggregator_database,
    )


@pytest_asyncio.fixture(scope="module")
async def network(layout: NetworkLayout) -> AsyncIterator[ProcessNetwork]:
    net = ProcessNetwork(layout)
    net.start()
    try:
        await net.wait_healthy(timeout=PATIENCE)
        yield net
    finally:
        await asyncio.to_thread(net.stop)


def banks(layout: NetworkLayout) -> tuple[BankClient, BankClient]:
    """One bank that asks replica 0 first and one that asks replica 1 first: queries go through both."""
    first, second = layout.aggregator_endpoints
    # As network.json lists them, with the network directory.
    a = BankClient.from_network(layout.root / "network.json", DEMO_BANK, timeout=QUERY_DEADLINE)
    assert a.endpoints == [first, second]
    b = BankClient(
        aggregator=f"{second},{first}",
        identity=layout.bank(SECOND_BANK),
        trust=TrustStore.load(layout.ca),
        timeout=QUERY_DEADLINE,
    )
    return a, b


async def ask_until(
    bank: BankClient, layout: NetworkLayout, code: str, stop: asyncio.Event, answered: list[str]
) -> None:
    consent = grant_demo_consent(layout, bank=code)
    while not stop.is_set():
        # wait_for only bounds a hang; the SDK itself must answer within QUERY_DEADLINE.
        report = await asyncio.wait_for(
            bank.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=QUERY_DEADLINE),
            QUERY_DEADLINE + 5,
        )
        statuses = {s.city: s.status for s in report.sections}
        assert all(status in ANSWERED for status in statuses.values()), statuses
        answered.append(report.query_id)


class Querying:
    """Two banks querying through both replicas (`banks`), each in a loop, counting the answers."""

    def __init__(self, layout: NetworkLayout) -> None:
        self.a, self.b = banks(layout)
        self.answered: dict[str, list[str]] = {DEMO_BANK: [], SECOND_BANK: []}
        self.stop = asyncio.Event()
        self.flows = [
            asyncio.create_task(ask_until(self.a, layout, DEMO_BANK, self.stop, self.answered[DEMO_BANK])),
            asyncio.create_task(
                ask_until(self.b, layout, SECOND_BANK, self.stop, self.answered[SECOND_BANK])
            ),
        ]

    async def each_answered(self, more: int, than: dict[str, int] | None = None) -> dict[str, int]:
        """Wait until each bank has `more` answers beyond `than` (failing at once if a query failed);
        the counts now."""
        base = than or {}
        await until(
            lambda: all(len(v) >= base.get(k, 0) + more for k, v in self.answered.items()), self.flows
        )
        return {k: len(v) for k, v in self.answered.items()}

    async def end(self) -> None:
        """Stop the loops; every query of both banks must have been answered, none refused or late."""
        self.stop.set()
        results = await asyncio.gather(*self.flows, return_exceptions=True)
        await self.a.close()
        await self.b.close()
        assert [r for r in results if r is not None] == []


async def test_killing_one_of_two_replicas_loses_no_query_and_splits_nothing(
    network: ProcessNetwork, layout: NetworkLayout, aggregator_database: str
) -> None:
    trust = TrustStore.load(layout.ca)
    querying = Querying(layout)
    try:
        before = await querying.each_answered(2)
        # SIGKILL replica 0 with queries in flight through both.
        victim = network.procs[aggregator_process(0)]
        victim.kill()
        await asyncio.to_thread(victim.wait, PATIENCE)
        await querying.each_answered(3, than=before)
        network.start_aggregator(0)
        await wait_serving(
            layout.aggregator_endpoints[0],
            AGGREGATOR_SERVER_NAME,
            network_operator(layout),
            layout.ca,
            timeout=PATIENCE,
            process=network.procs[aggregator_process(0)],
        )
        await querying.each_answered(5, than=before)
    finally:
        await querying.end()

    # A revocation sent to replica 1 is refused by replica 0 at once.
    consent = grant_demo_consent(layout)
    revocation = consent_mod.revoke(layout.enterprise(), consent, reason="loan withdrawn")
    async with secure_channel(
        layout.aggregator_endpoints[1], layout.enterprise(), trust, AGGREGATOR_SERVER_NAME
    ) as channel:
        await aggregator_pb2_grpc.AggregatorServiceStub(channel).BroadcastRevocation(
            aggregator_pb2.BroadcastRevocationRequest(revocation=revocation, consent=consent), timeout=10
        )
    # Only replica 0 is asked: it never saw the revocation but in the database.
    async with BankClient(
        aggregator=layout.aggregator_endpoints[0], identity=layout.bank(), trust=trust, timeout=QUERY_DEADLINE
    ) as only_first:
        with pytest.raises(QueryRefused) as refused:
            await only_first.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.reason.startswith("consent.revoked")

    # The replicas go on signing after the restart (the revocation changed
    # every log), and the chain is one.
    state = AggregatorState(Store.open(aggregator_database))
    try:
        length = len(state.chain())
        await until_async(lambda: len(state.chain()) > length)
        chain = state.chain()
    finally:
        state.close()
    national = national_certificate(layout)
    assert [seq for seq, _ in chain] == list(range(1, len(chain) + 1))
    previous = ""
    for seq, note in chain:
        assert verify_network_checkpoint(trust, note, [national]).sequence == seq
        assert note.split("\n")[2] == base64.b64encode(hashlib.sha256(previous.encode()).digest()).decode()
        previous = note
    # Both replicas serve the committed head.
    heads = {await network_checkpoint(layout, endpoint, trust) for endpoint in layout.aggregator_endpoints}
    assert len(heads) == 1
    # No witness, node or aggregator, holds evidence against anyone.
    for endpoint, server_name in witnesses(layout):
        async with secure_channel(endpoint, network_operator(layout), trust, server_name) as channel:
            evidence = await chain_pb2_grpc.WitnessServiceStub(channel).ListEvidence(
                chain_pb2.ListEvidenceRequest(), timeout=10
            )
        assert list(evidence.evidence) == [], endpoint


async def test_freezing_one_of_two_replicas_loses_no_query(
    network: ProcessNetwork, layout: NetworkLayout
) -> None:
    """A replica stopped (SIGSTOP) takes no call and refuses none: the SDK hedges to the other."""
    victim = network.procs[aggregator_process(0)]
    querying = Querying(layout)
    try:
        before = await querying.each_answered(2)
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            # Bank a asks replica 0 first: without a hedge its next query
            # would wait on the frozen replica to its deadline and fail.
            await querying.each_answered(3, than=before)
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        assert querying.a.endpoints[querying.a.replicas.preferred] == layout.aggregator_endpoints[1]
        await querying.each_answered(5, than=before)
    finally:
        await querying.end()
    # Woken, the replica serves again.
    async with BankClient(
        aggregator=layout.aggregator_endpoints[0],
        identity=layout.bank(),
        trust=TrustStore.load(layout.ca),
        timeout=QUERY_DEADLINE,
    ) as only_first:
        report = await only_first.query(
            layout.demo_enterprise, grant_demo_consent(layout), Purpose.LOAN_APPLICATION
        )
        assert all(s.status in ANSWERED for s in report.sections)


async def until(done: object, flows: list[asyncio.Task[None]]) -> None:
    """Wait until `done()` holds, failing at once if a query flow failed."""
    assert callable(done)
    for _ in range(int(PATIENCE * 10)):
        for flow in flows:
            if flow.done():
                flow.result()
                raise AssertionError("a query flow stopped")
        if done():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("never happened")


async def until_async(done: object) -> None:
    assert callable(done)
    for _ in range(int(PATIENCE * 10)):
        if await asyncio.to_thread(done):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("never happened")


def network_operator(layout: NetworkLayout) -> Identity:
    return layout.identity("operators", pilot.SHANGHAI.value)


def national_certificate(layout: NetworkLayout) -> bytes:
    agg = layout.root / "aggregator"
    return LogKey.load(agg / "logkey.pem", agg / "logkey.key").certificate_der


async def network_checkpoint(layout: NetworkLayout, endpoint: str, trust: TrustStore) -> str:
    async with secure_channel(endpoint, network_operator(layout), trust, AGGREGATOR_SERVER_NAME) as channel:
        resp = await aggregator_pb2_grpc.AggregatorServiceStub(channel).GetNetworkCheckpoint(
            aggregator_pb2.GetNetworkCheckpointRequest(), timeout=10
        )
    return str(resp.checkpoint)


def witnesses(layout: NetworkLayout) -> list[tuple[str, str]]:
    out = [(layout.node_endpoint(c), node_server_name(c)) for c in layout.cities]
    return out + [(ep, AGGREGATOR_SERVER_NAME) for ep in layout.aggregator_endpoints]
