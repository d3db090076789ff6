"""A frozen node at the bank's default deadline: the bank still gets every section that arrived.

gRPC sends a 10 s deadline as `grpc-timeout: 10100m` (C-core rounds up to
three significant digits), so an aggregator that spent its whole
`time_remaining()` on the frozen node answered after the bank had given up,
and the healthy cities' answers (accesses logged, consent uses spent) were
lost with the whole query.
"""

from __future__ import annotations

import asyncio

import pytest

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.domain import Purpose
from creditnet.network import NetworkLayout, grant_demo_consent
from creditnet.pki import AGGREGATOR_SERVER_NAME
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2
from creditnet_bank import BankClient, Report, SectionStatus
from creditnet_bank.client import DEFAULT_TIMEOUT
from tests.faults.conftest import FaultNetwork, network_json

pytestmark = pytest.mark.slow

VICTIM = pilot.JIAXING
ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)


@pytest.fixture(scope="module")
def consent(fault_layout: NetworkLayout) -> envelope_pb2.SignedEnvelope:
    return grant_demo_consent(fault_layout)


def assert_healthy_cities_answered(report: Report) -> None:
    got = {s.city: s for s in report.sections}
    assert got[VICTIM].status is SectionStatus.TIMEOUT, got[VICTIM]
    for city in pilot.CITIES:
        if city != VICTIM:
            # Answered, with a receipt the SDK verified against the network CA.
            assert got[city].status in ANSWERED, (city, got[city].status, got[city].reason)
            assert got[city].receipt is not None and got[city].ledger_index is not None


async def test_with_a_frozen_node_the_sdks_default_deadline_still_returns_every_healthy_section(
    network: FaultNetwork, fault_layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope
) -> None:
    async with BankClient.from_network(network_json(fault_layout)) as bank:
        assert bank.timeout == DEFAULT_TIMEOUT == 10.0
        # A connected channel, as a bank's long-lived client has: its calls'
        # deadlines go out at once, and 10 s goes out as 10.1 s.
        await bank.nodes()
        network.freeze(VICTIM)
        try:
            # No timeout given: the SDK's default. A DEADLINE_EXCEEDED for the
            # whole query raises QueryRefused here.
            reports = await asyncio.gather(
                *(
                    bank.query(fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION)
                    for _ in range(3)
                )
            )
        finally:
            network.thaw(VICTIM)
    for report in reports:
        assert_healthy_cities_answered(report)


async def test_a_plain_grpc_client_without_the_budget_header_gets_its_sections_at_ten_seconds(
    network: FaultNetwork, fault_layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope
) -> None:
    # What a Java or Go client sends: a deadline and nothing else. The
    # aggregator must allow for the rounding of grpc-timeout on its own.
    async with BankClient.from_network(network_json(fault_layout)) as bank:
        # The responses are verified below, off the SDK's own call: its directory is read first.
        await bank.ready_directory()
        queries = [
            bank.sign_query(fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION) for _ in range(3)
        ]
        async with secure_channel(
            fault_layout.aggregator_endpoint, bank.identity, bank.trust, AGGREGATOR_SERVER_NAME
        ) as channel:
            stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
            await stub.ListNodes(aggregator_pb2.ListNodesRequest(), timeout=10.0)
            network.freeze(VICTIM)
            try:
                responses = await asyncio.gather(
                    *(
                        stub.FederatedQuery(aggregator_pb2.FederatedQueryRequest(query=q), timeout=10.0)
                        for q in queries
                    )
                )
            finally:
                network.thaw(VICTIM)
        reports = [bank.verify_response(q, r) for q, r in zip(queries, responses, strict=True)]
    for report in reports:
        assert_healthy_cities_answered(report)
