"""One node frozen (SIGSTOP): as a witness it must cost the other cities nothing.

Every node witnesses the others' logs. A frozen node holds a cosign call
until its 2 s timeout, so a log that waited for it held every answer for
2 s or more, and at a 2–3 s deadline healthy cities answered
`chain.unpublished` or timed out with the consent use spent. Now a log asks
spares after a short hedge delay, publishes with the first quorum, and asks
a witness that failed last until it answers again.
"""

from __future__ import annotations

import asyncio

import pytest

from creditnet import pilot
from creditnet.chain.keys import witness_name
from creditnet.chain.network import verify_network_checkpoint
from creditnet.chain.receipts import verify_checkpoint
from creditnet.channels import secure_channel
from creditnet.directory.model import Directory
from creditnet.directory.sign import load
from creditnet.domain import City, Purpose
from creditnet.network import NetworkLayout, grant_demo_consent
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc, envelope_pb2
from creditnet_bank import BankClient, Report, SectionStatus
from tests.faults.conftest import FaultNetwork, eventually, network_json

pytestmark = pytest.mark.slow

VICTIM = pilot.HANGZHOU
OTHERS = [c for c in pilot.CITIES if c != VICTIM]
ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)
# Short enough that a healthy city whose answer waits for the frozen
# witness's 2 s cosign timeout cannot answer in time.
DEADLINE = 2.5


def witnessed_by(layout: NetworkLayout, witness: City) -> list[City]:
    """The cities whose logs the network directory assigns `witness` to cosign."""
    d = Directory.from_payload(load(layout.path(layout.data["directory"]["file"])).payload)
    return [City(w.log) for w in d.witness_assignments if witness.code in w.witnesses and w.log != "national"]


@pytest.fixture(scope="module")
def consent(fault_layout: NetworkLayout) -> envelope_pb2.SignedEnvelope:
    return grant_demo_consent(fault_layout)


async def network_head(layout: NetworkLayout, trust: TrustStore, network: FaultNetwork) -> dict[str, int]:
    async with secure_channel(
        layout.aggregator_endpoint, network.operator, trust, AGGREGATOR_SERVER_NAME
    ) as ch:
        resp = await aggregator_pb2_grpc.AggregatorServiceStub(ch).GetNetworkCheckpoint(
            aggregator_pb2.GetNetworkCheckpointRequest(), timeout=5
        )
    head = verify_network_checkpoint(trust, resp.checkpoint, list(resp.key_certificates))
    return {city: size for city, (size, _) in head.cities.items()}


async def cosigners(
    layout: NetworkLayout, trust: TrustStore, network: FaultNetwork, city: City
) -> tuple[int, tuple[str, ...]]:
    """A city's latest published checkpoint: its size and who cosigned it."""
    async with secure_channel(
        layout.node_endpoint(city), network.operator, trust, node_server_name(city)
    ) as ch:
        resp = await chain_pb2_grpc.ChainServiceStub(ch).GetCheckpoint(
            chain_pb2.GetCheckpointRequest(), timeout=5
        )
    cp = verify_checkpoint(trust, resp.checkpoint, list(resp.key_certificates), city.value)
    return cp.checkpoint.size, cp.witnesses


def check(report: Report) -> dict[City, int]:
    """Every healthy city answered with a verified receipt; their ledger indexes."""
    got = {s.city: s for s in report.sections}
    assert got[VICTIM].status in (SectionStatus.TIMEOUT, SectionStatus.UNAVAILABLE), got[VICTIM]
    indexes = {}
    for city in OTHERS:
        s = got[city]
        assert s.status in ANSWERED, (city.value, s.status.value, s.reason)
        assert s.receipt is not None and s.ledger_index is not None
        indexes[city] = s.ledger_index
    return indexes


async def test_a_frozen_witness_costs_the_other_cities_nothing_and_catches_up_when_thawed(
    network: FaultNetwork,
    fault_layout: NetworkLayout,
    fault_trust: TrustStore,
    consent: envelope_pb2.SignedEnvelope,
) -> None:
    async with BankClient.from_network(network_json(fault_layout)) as bank:

        async def ask(timeout: float) -> Report:
            return await bank.query(
                fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=timeout
            )

        await ask(8.0)  # every channel connected, every witness's latency known
        network.freeze(VICTIM)
        try:

            async def worker() -> list[Report]:
                return [await ask(DEADLINE) for _ in range(4)]

            # Concurrent queries, so that appends also arrive while a cosign
            # round is running: none may wait for the frozen witness.
            batches = await asyncio.gather(*(worker() for _ in range(3)))
            logged: dict[City, int] = {}
            for report in (r for batch in batches for r in batch):
                for city, index in check(report).items():
                    logged[city] = max(logged.get(city, 0), index)

            # The network checkpoint still advances, over every healthy city's answers.
            async def head_covers_answers() -> bool:
                sizes = await network_head(fault_layout, fault_trust, network)
                return all(sizes[c.value] > logged[c] for c in OTHERS)

            await eventually(head_covers_answers, "the network checkpoint covers the answers", attempts=100)
        finally:
            network.thaw(VICTIM)

        # Thawed, the node is asked again and cosigns the new checkpoints of
        # the logs the directory assigns it (not every other city's).
        witnessed = witnessed_by(fault_layout, VICTIM)
        assert witnessed and VICTIM not in witnessed
        at_thaw = {c: (await cosigners(fault_layout, fault_trust, network, c))[0] for c in witnessed}
        caught_up: set[City] = set()

        async def cosigned_by_victim() -> bool:
            await ask(8.0)
            for city in witnessed:
                size, names = await cosigners(fault_layout, fault_trust, network, city)
                if size > at_thaw[city] and witness_name(VICTIM.value) in names:
                    caught_up.add(city)
            return caught_up == set(witnessed)

        await eventually(
            cosigned_by_victim, "the thawed node cosigns the logs it is assigned again", attempts=100
        )
