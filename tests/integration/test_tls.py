"""Mutual TLS with the network's own CA, and servers pinned by role."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.config import NodeConfig
from creditnet.domain import Purpose
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout
from creditnet.node.service import CityNodeService
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity, node_server_name
from creditnet.rpc import start_server
from creditnet.store import AsyncStore
from creditnet.v2 import node_pb2_grpc
from creditnet_bank import BankClient, SectionStatus
from tests.integration.helpers import consent


async def test_a_certificate_from_another_ca_cannot_connect(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    foreign = CertificateAuthority.create("not the network CA")
    intruder = issue_identity(foreign, Role.bank(DEMO_BANK))
    # The intruder even trusts the real CA for the server side; the server refuses it.
    trust = TrustStore.load(layout.ca)
    async with secure_channel(
        layout.node_endpoint(pilot.SHANGHAI), intruder, trust, node_server_name(pilot.SHANGHAI)
    ) as ch:
        try:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("a foreign certificate completed the TLS handshake")


async def test_a_server_with_another_citys_certificate_is_not_accepted_as_that_city(
    network: InProcessNetwork, layout: NetworkLayout, tmp_path: object
) -> None:
    """Whoever listens at Hefei's address must hold Hefei's certificate."""
    await network.stop_node(pilot.HEFEI)
    hefei = NodeConfig.load(layout.node_config(pilot.HEFEI))
    nanjing = NodeConfig.load(layout.node_config(pilot.NANJING))
    ident = Identity.load(nanjing.cert, nanjing.key)
    trust = TrustStore.load(nanjing.ca)
    store = await AsyncStore.open(nanjing.database_url)
    impostor = CityNodeService(city=pilot.NANJING, identity=ident, trust=trust, store=store, ledger=None)
    handle = await start_server(
        listen=hefei.listen,
        identity=ident,
        trust=trust,
        register=lambda s: node_pb2_grpc.add_CityNodeServiceServicer_to_server(impostor, s),
        service_names=["creditnet.v2.CityNodeService"],
    )
    try:
        async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
            report = await bank.query(
                layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION, timeout=3
            )
        section = report.section(pilot.HEFEI)
        assert section is not None and section.status is SectionStatus.UNAVAILABLE
    finally:
        await handle.server.stop(0)
        await store.close()
        await network.start_node(pilot.HEFEI)
