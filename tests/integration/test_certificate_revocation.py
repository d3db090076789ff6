"""Certificate revocation through the signed directory, on real servers: `creditnet pki revoke`.

A revoked certificate is refused by every node and the aggregator, as a TLS
peer (`cert.revoked` on every call) and as the signer of a signed object
(`consent.cert.revoked`), including where an earlier verification of it was
cached; other certificates are unaffected.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.directory.publish import Target, targets
from creditnet.directory.revoke import revoke
from creditnet.domain import Purpose
from creditnet.network import (
    DEMO_BANK,
    SECOND_BANK,
    InProcessNetwork,
    NetworkLayout,
    provision,
    wait_federated,
)
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc
from creditnet_bank import BankClient, QueryRefused, SectionStatus
from tests.integration.helpers import consent, node_refusal

REFRESH = dt.timedelta(seconds=1)
PATIENCE = 30


@pytest.fixture(scope="module")
def rlayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("revocation-network"),
        enterprises_per_city=5,
        seed=11,
        directory_refresh=REFRESH,
    )


@pytest_asyncio.fixture(scope="module")
async def rnetwork(rlayout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(rlayout)
    await net.start()
    yield net
    await net.stop()


async def refusal(layout: NetworkLayout, target: Target, caller: Identity) -> str | None:
    """The rule a plain call by `caller` on `target` is refused with for its certificate; None if not."""
    trust = TrustStore.load(layout.ca)
    async with secure_channel(target.endpoint, caller, trust, target.server_name) as channel:
        try:
            if target.name == "aggregator":
                await aggregator_pb2_grpc.AggregatorServiceStub(channel).ListNodes(
                    aggregator_pb2.ListNodesRequest(), timeout=5
                )
            else:
                await chain_pb2_grpc.ChainServiceStub(channel).GetCheckpoint(
                    chain_pb2.GetCheckpointRequest(), timeout=5
                )
        except grpc.aio.AioRpcError as exc:
            rule = (exc.details() or "").partition(":")[0]
            if rule.startswith("cert."):
                return f"{exc.code().name} {rule}"
    return None


async def refused_everywhere(layout: NetworkLayout, caller: Identity) -> bool:
    found = await asyncio.gather(*(refusal(layout, t, caller) for t in targets(layout)))
    return set(found) == {"UNAUTHENTICATED cert.revoked"}


async def pki_revoke(layout: NetworkLayout, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "creditnet",
        "pki",
        "revoke",
        "--network",
        str(layout.root),
        *args,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def federated(layout: NetworkLayout, bank: str) -> set[SectionStatus]:
    async with BankClient.from_network(layout.root / "network.json", bank) as client:
        report = await client.query(
            layout.demo_enterprise, consent(layout, bank=bank), Purpose.LOAN_APPLICATION
        )
    return {s.status for s in report.sections}


async def test_a_revoked_bank_is_refused_by_every_node_and_the_aggregator_and_another_bank_is_not(
    rlayout: NetworkLayout, rnetwork: InProcessNetwork
) -> None:
    # Served before: the servers have its certificate verified and cached.
    assert await federated(rlayout, DEMO_BANK) <= {SectionStatus.OK, SectionStatus.NO_RECORDS}
    bank = rlayout.bank(DEMO_BANK)
    assert not await refused_everywhere(rlayout, bank)

    code, out = await pki_revoke(
        rlayout, "--cert", str(rlayout.path(rlayout.data["identities"]["banks"][DEMO_BANK]["cert"]))
    )
    assert code == 0, out

    assert await refused_everywhere(rlayout, bank)
    with pytest.raises(QueryRefused) as refused:
        await federated(rlayout, DEMO_BANK)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.reason.startswith("cert.revoked:")
    query = query_mod.build(
        bank, consent(rlayout), enterprise_uscc=rlayout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
    )
    trust = TrustStore.load(rlayout.ca)
    code_, details = await node_refusal(rlayout, pilot.SHANGHAI, query, bank, trust)
    assert code_ == grpc.StatusCode.UNAUTHENTICATED and details.startswith("cert.revoked:")

    assert await federated(rlayout, SECOND_BANK) <= {SectionStatus.OK, SectionStatus.NO_RECORDS}
    assert not await refused_everywhere(rlayout, rlayout.bank(SECOND_BANK))


async def test_a_node_down_during_a_revocation_refuses_the_certificate_after_one_refresh_from_its_peers(
    rlayout: NetworkLayout, rnetwork: InProcessNetwork
) -> None:
    ca = CertificateAuthority.load(rlayout.root / "pki")
    bank = issue_identity(ca, Role.bank("B0320H232000007"))
    bank.save(rlayout.root / "banks" / "late.pem", rlayout.root / "banks" / "late.key")
    assert not await refused_everywhere(rlayout, bank)

    await rnetwork.stop_node(pilot.HEFEI)
    code, out = await pki_revoke(rlayout, "--cert", str(rlayout.root / "banks" / "late.pem"))
    # One server could not be reached, and the command says so.
    assert code == 1 and '"server": "340100"' in out, out
    await rnetwork.start_node(pilot.HEFEI)

    for _ in range(PATIENCE * 5):
        if await refused_everywhere(rlayout, bank):
            break
        await asyncio.sleep(REFRESH.total_seconds() / 5)
    else:
        raise AssertionError(
            f"340100 does not refuse the revoked certificate within {PATIENCE} refresh intervals"
        )
    # Leave the network whole for the next test: the aggregator reaches hefei again.
    operator = rlayout.identity("operators", pilot.SHANGHAI.value)
    await wait_federated(rlayout.aggregator_endpoint, operator, TrustStore.load(rlayout.ca), 30)


async def test_a_consent_signed_with_a_revoked_certificate_is_refused_though_verified_and_cached_before(
    rlayout: NetworkLayout, rnetwork: InProcessNetwork
) -> None:
    env = consent(rlayout, bank=SECOND_BANK)
    bank = rlayout.bank(SECOND_BANK)
    trust = TrustStore.load(rlayout.ca)
    async with BankClient.from_network(rlayout.root / "network.json", SECOND_BANK) as client:
        report = await client.query(rlayout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        assert {s.status for s in report.sections} <= {SectionStatus.OK, SectionStatus.NO_RECORDS}

        done = await revoke(rlayout, rlayout.enterprise().cert)
        assert all(a.ok for a in done.answers)

        # The same consent envelope, verified and cached by every server before.
        with pytest.raises(QueryRefused) as refused:
            await client.query(rlayout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.reason.startswith("consent.cert.revoked:")
    query = query_mod.build(
        bank, env, enterprise_uscc=rlayout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
    )
    for city in pilot.CITIES:
        code, details = await node_refusal(rlayout, city, query, bank, trust)
        assert code == grpc.StatusCode.UNAUTHENTICATED and details.startswith("consent.cert.revoked:"), city


async def test_pki_revoke_by_serial_finds_the_certificate_in_the_state_dir_and_refuses_an_unknown_one(
    rlayout: NetworkLayout, rnetwork: InProcessNetwork
) -> None:
    provider = rlayout.identity("providers", "330400-all")
    assert not await refused_everywhere(rlayout, provider)
    code, out = await pki_revoke(rlayout, "--serial", f"{provider.cert.serial_number:x}")
    assert code == 0, out
    assert await refused_everywhere(rlayout, provider)

    code, out = await pki_revoke(rlayout, "--serial", "1234abcd")
    assert code == 1 and "revoke.unknown" in out, out


async def test_a_revoked_log_key_gets_no_cosignature_so_its_node_answers_nothing_and_the_others_answer(
    rlayout: NetworkLayout, rnetwork: InProcessNetwork
) -> None:
    # The demo enterprise's first certificate was revoked above; a new one (new key) is not.
    ca = CertificateAuthority.load(rlayout.root / "pki")
    enterprise = issue_identity(ca, Role.enterprise(rlayout.demo_enterprise))
    env = consent(rlayout, bank=SECOND_BANK, enterprise=enterprise)
    code, out = await pki_revoke(rlayout, "--cert", str(rlayout.root / "nodes" / "330400" / "logkey.pem"))
    assert code == 0, out

    async with BankClient.from_network(rlayout.root / "network.json", SECOND_BANK) as client:
        report = await client.query(rlayout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
    sections = {s.city: s for s in report.sections}
    jiaxing = sections.pop(pilot.JIAXING)
    # Every witness (the other nodes and the aggregator) refuses its checkpoints.
    assert jiaxing.status is SectionStatus.UNAVAILABLE and jiaxing.reason.startswith("chain.unpublished"), (
        jiaxing.status,
        jiaxing.reason,
    )
    assert {s.status for s in sections.values()} <= {SectionStatus.OK, SectionStatus.NO_RECORDS}, [
        s.reason for s in sections.values()
    ]
