"""Each log is cosigned by the witnesses the network directory assigns it, and receipts are
checked against that assignment (docs/directory.md, "Witness assignment")."""

from __future__ import annotations

import dataclasses

import pytest

from creditnet.chain.note import Note
from creditnet.chain.receipts import ReceiptError, verify_receipt
from creditnet.channels import secure_channel
from creditnet.directory.model import Directory
from creditnet.directory.sign import load
from creditnet.domain import Purpose
from creditnet.envelope import EnvelopeVerifier
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout, wait_federated
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, query_pb2
from creditnet_bank import BankClient, SectionStatus
from creditnet_bank.report import Report
from creditnet_bank.verify import verify_section
from tests.integration.helpers import consent


def held_directory(layout: NetworkLayout) -> Directory:
    return Directory.from_payload(load(layout.path(layout.data["directory"]["file"])).payload)


@dataclasses.dataclass
class Asked:
    query: envelope_pb2.SignedEnvelope
    response: aggregator_pb2.FederatedQueryResponse
    report: Report


async def federated(layout: NetworkLayout, trust: TrustStore) -> Asked:
    """A federated query of the demo bank; the raw response and the SDK's verified report of it."""
    # Other tests stop nodes and put impostors at their addresses: wait until
    # the aggregator reaches every node again (its channels back off up to 2 s).
    operator = layout.identity("operators", layout.cities[0].value)
    await wait_federated(layout.aggregator_endpoint, operator, trust, 30)
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q = bank.sign_query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)
        await bank.ready_directory()
        async with secure_channel(
            layout.aggregator_endpoint, layout.bank(), trust, AGGREGATOR_SERVER_NAME
        ) as ch:
            resp = await aggregator_pb2_grpc.AggregatorServiceStub(ch).FederatedQuery(
                aggregator_pb2.FederatedQueryRequest(query=q), timeout=30
            )
        return Asked(q, resp, bank.verify_response(q, resp))


async def test_every_node_asks_exactly_the_witnesses_its_log_is_assigned(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    d = held_directory(layout)
    asked = await federated(layout, trust)
    resp = asked.response
    sections = asked.report.sections
    assert len(sections) == len(layout.cities)
    assert all(s.status in (SectionStatus.OK, SectionStatus.NO_RECORDS) for s in sections), [
        (s.city, s.status, s.reason) for s in sections
    ]
    for city in layout.cities:
        assignment = d.witnesses_of(city.code)
        assert assignment is not None
        # A ring of three other cities plus the national aggregator, quorum 3:
        # four witnesses whatever the number of cities, not every other node.
        assert len(assignment.witnesses) == 4 and "national" in assignment.witnesses
        assert city.code not in assignment.witnesses and assignment.quorum == 3
        ledger = network.nodes[city].ledger
        assert {w.name for w in ledger.witnesses} == set(assignment.witnesses)
        assert ledger.quorum == assignment.quorum
    # Every receipt's checkpoint is cosigned by assigned witnesses only.
    for raw in resp.sections:
        assignment = d.witnesses_of(raw.city)
        assert assignment is not None
        cosigners = {sig.name.rsplit("/", 1)[-1] for sig in Note.parse(raw.receipt.checkpoint).signatures}
        cosigners.discard(raw.city)
        assert len(cosigners) >= assignment.quorum and cosigners <= set(assignment.witnesses), cosigners


async def test_a_receipt_counts_only_the_cosignatures_of_assigned_witnesses(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    d = held_directory(layout)
    raw = (await federated(layout, trust)).response.sections[0]
    assignment = d.witnesses_of(raw.city)
    assert assignment is not None
    # Against the real assignment the receipt verifies...
    verify_receipt(trust, raw.receipt, raw.city, assignment.quorum, assigned=assignment.witnesses)
    # ...but had the directory assigned other witnesses, the same cosignatures
    # would not make a quorum: they count only for the log they are assigned to.
    others = tuple(c.code for c in d.cities if c.code not in assignment.witnesses and c.code != raw.city)
    with pytest.raises(ReceiptError, match=r"witness key certificates|cosignature"):
        verify_receipt(trust, raw.receipt, raw.city, assignment.quorum, assigned=("national", *others))


async def test_the_bank_refuses_a_receipt_its_directory_does_not_back(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    d = held_directory(layout)
    asked = await federated(layout, trust)
    raw = asked.response.sections[0]
    query = query_pb2.CreditQuery.FromString(asked.query.payload)
    verifier = EnvelopeVerifier(trust)
    ok = verify_section(verifier, raw, asked.query, query, d)
    assert ok.status in (SectionStatus.OK, SectionStatus.NO_RECORDS), ok.reason
    # The same section, checked against a directory that assigns its log no witnesses.
    unassigned = dataclasses.replace(
        d, witness_assignments=tuple(w for w in d.witness_assignments if w.log != raw.city)
    )
    refused = verify_section(verifier, raw, asked.query, query, unassigned)
    assert refused.status is SectionStatus.INVALID
    assert "assigns no witnesses" in refused.reason
