"""An enterprise's revocation is honoured by the aggregator and by every node."""

from __future__ import annotations

import grpc
import pytest

from creditnet import consent as consent_mod
from creditnet import pilot
from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.domain import Purpose
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout
from creditnet.pki import AGGREGATOR_SERVER_NAME, CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, consent_pb2, envelope_pb2
from creditnet_bank import BankClient, QueryRefused
from tests.integration.helpers import consent, node_refusal


async def broadcast(  # type: ignore[no-untyped-def]
    layout: NetworkLayout,
    trust: TrustStore,
    rev: envelope_pb2.SignedEnvelope,
    consent: envelope_pb2.SignedEnvelope,
    caller=None,
):
    ident = caller or layout.enterprise()
    async with secure_channel(layout.aggregator_endpoint, ident, trust, AGGREGATOR_SERVER_NAME) as ch:
        return await aggregator_pb2_grpc.AggregatorServiceStub(ch).BroadcastRevocation(
            aggregator_pb2.BroadcastRevocationRequest(revocation=rev, consent=consent), timeout=5
        )


async def test_revoked_consent_is_refused_everywhere(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    env = consent(layout)
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        assert not report.missing_cities
        # Signed before the revocation, sent after it: still refused.
        direct = query_mod.build(
            layout.bank(), env, enterprise_uscc=layout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
        )

        resp = await broadcast(
            layout, trust, consent_mod.revoke(layout.enterprise(), env, reason="loan withdrawn"), env
        )
        assert len(resp.deliveries) == 5 and all(d.delivered for d in resp.deliveries)

        with pytest.raises(QueryRefused) as refused:
            await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.reason.startswith("consent.revoked")
    for city in pilot.CITIES:
        code, reason = await node_refusal(layout, city, direct, layout.bank(), trust)
        assert code == grpc.StatusCode.PERMISSION_DENIED and reason.startswith("consent.revoked")
    # Other consents of the same enterprise are unaffected.
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)
        assert not report.missing_cities


async def test_only_the_enterprise_can_revoke(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, ca: CertificateAuthority
) -> None:
    env = consent(layout)
    other = issue_identity(ca, Role.enterprise("91310000MA1FL8XQ37"))
    with pytest.raises(Exception, match=r"revocation\.signer"):
        consent_mod.revoke(other, env)
    # Forge one anyway: sign the revocation payload with another enterprise's key.
    real = consent_mod.revoke(layout.enterprise(), env)
    from creditnet.envelope import REVOCATION_TYPE, sign

    forged = sign(REVOCATION_TYPE, real.payload, other)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await broadcast(layout, trust, forged, env, caller=other)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nor can it name itself and the digest of somebody else's consent.
    msg = consent_pb2.ConsentRevocation()
    msg.ParseFromString(real.payload)
    msg.enterprise_uscc = other.role.subject
    self_named = sign(REVOCATION_TYPE, msg.SerializeToString(), other)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await broadcast(layout, trust, self_named, env, caller=other)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (err.value.details() or "").startswith("revocation.signer")
    # And a revocation must come with the very consent it names.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await broadcast(layout, trust, real, consent(layout))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
    assert not report.missing_cities
