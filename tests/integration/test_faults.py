"""A dead or hung node never delays the answer past the caller's deadline."""

from __future__ import annotations

import asyncio

import grpc

from creditnet import pilot
from creditnet.config import NodeConfig
from creditnet.domain import Purpose
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout
from creditnet.pki import Identity, TrustStore
from creditnet.rpc import start_server
from creditnet.v2 import node_pb2, node_pb2_grpc
from creditnet_bank import BankClient, SectionStatus
from tests.integration.helpers import consent


class HungNode(node_pb2_grpc.CityNodeServiceServicer):
    """Accepts the call, then never answers: a node stuck on a lock or a disk."""

    def __init__(self) -> None:
        self.calls = 0

    async def Query(
        self, request: node_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.QueryResponse:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_stopped_node_is_unavailable_while_the_others_answer(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    await network.stop_node(pilot.NANJING)
    try:
        async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
            report = await bank.query(
                layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION, timeout=5
            )
        by_city = {s.city: s for s in report.sections}
        assert by_city[pilot.NANJING].status is SectionStatus.UNAVAILABLE
        assert report.missing_cities == [pilot.NANJING]
        assert all(
            s.status in (SectionStatus.OK, SectionStatus.NO_RECORDS)
            for c, s in by_city.items()
            if c != pilot.NANJING
        )
    finally:
        await network.start_node(pilot.NANJING)
    # Once it is back, the aggregator uses it again over the same channel.
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        for _ in range(50):
            report = await bank.query(
                layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION, timeout=5
            )
            if not report.missing_cities:
                break
            await asyncio.sleep(0.1)
    assert not report.missing_cities


async def test_hung_node_times_out_within_the_callers_deadline(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    await network.stop_node(pilot.HEFEI)
    cfg = NodeConfig.load(layout.node_config(pilot.HEFEI))
    hung = HungNode()
    handle = await start_server(
        listen=cfg.listen,
        identity=Identity.load(cfg.cert, cfg.key),
        trust=TrustStore.load(cfg.ca),
        register=lambda s: node_pb2_grpc.add_CityNodeServiceServicer_to_server(hung, s),
        service_names=["creditnet.v2.CityNodeService"],
    )
    try:
        async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
            # The bank's own deadline is 1.5 s: had the aggregator waited for
            # Hefei, this call would fail with DEADLINE_EXCEEDED instead.
            report = None
            for _ in range(20):
                report = await bank.query(
                    layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION, timeout=1.5
                )
                if hung.calls:
                    break
        assert report is not None and hung.calls >= 1
        by_city = {s.city: s for s in report.sections}
        assert by_city[pilot.HEFEI].status is SectionStatus.TIMEOUT
        assert report.missing_cities == [pilot.HEFEI]
    finally:
        await handle.server.stop(0)
        await network.start_node(pilot.HEFEI)
