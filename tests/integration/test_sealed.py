"""Sealed answers end to end: the aggregator relays ciphertext it cannot read, move or forge.

docs/protocol.md, "Sealed answers"; docs/security.md, "The aggregator reads no record".
"""

from __future__ import annotations

import grpc
import pytest

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.domain import City, Purpose
from creditnet.envelope import ANSWER_TYPE, QUERY_TYPE, digest, sign
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore
from creditnet.sealing import AnswerSuite, parse_answer_key, seal
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, query_pb2, records_pb2
from creditnet_bank import BankClient, QueryRefused, SectionStatus
from creditnet_bank.verify import Section
from tests.integration.helpers import consent, node_refusal


async def _relay(
    layout: NetworkLayout, trust: TrustStore, q: envelope_pb2.SignedEnvelope
) -> aggregator_pb2.FederatedQueryResponse:
    """What the aggregator relays to the bank for `q`, byte for byte."""
    async with secure_channel(layout.aggregator_endpoint, layout.bank(), trust, AGGREGATOR_SERVER_NAME) as ch:
        resp: aggregator_pb2.FederatedQueryResponse = await aggregator_pb2_grpc.AggregatorServiceStub(
            ch
        ).FederatedQuery(aggregator_pb2.FederatedQueryRequest(query=q, exhaustive=True), timeout=10)
    return resp


def _record_values(rec: records_pb2.CreditRecord) -> list[bytes]:
    """Record content that must never be readable by the aggregator."""
    values = [rec.SerializeToString(), rec.source.encode(), rec.record_id.encode()]
    detail = rec.WhichOneof("detail")
    assert detail is not None
    values.append(getattr(rec, detail).SerializeToString())
    return [v for v in values if len(v) >= 8]


@pytest.mark.parametrize("suite", list(AnswerSuite))
async def test_the_aggregator_relays_no_record_bytes(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, suite: AnswerSuite
) -> None:
    env = consent(layout)
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q = bank.sign_query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION, suite=suite)
        await bank.ready_directory()
        resp = await _relay(layout, trust, q)
        report = bank.verify_response(q, resp, exhaustive=True)
    relayed = resp.SerializeToString()
    # The bank's report is as before: verified sections with records and the profile.
    assert all(s.status in (SectionStatus.OK, SectionStatus.NO_RECORDS) for s in report.sections), [
        (s.city, s.status, s.reason) for s in report.sections
    ]
    records = [rec for s in report.sections for rec in s.records]
    assert len({s.city for s in report.sections if s.records}) >= 3
    assert report.profile is not None
    for s in report.sections:
        assert s.answer is not None and s.receipt is not None and s.ledger_index is not None
        # The aggregator still reports each city's status, and it is the bank's.
        raw = next(r for r in resp.sections if r.city == s.city.proto)
        assert SectionStatus.from_proto(raw.status) is s.status
        assert raw.sealed_answer.suite == suite.proto
    # Not one record, record field, source or profile name is in what the aggregator relayed.
    assert records
    for rec in records:
        for value in _record_values(rec):
            assert value not in relayed, rec.record_id
    assert report.profile.name.encode() not in relayed
    assert report.profile.SerializeToString() not in relayed


async def _two_cities_with_records(
    layout: NetworkLayout, trust: TrustStore, bank: BankClient
) -> tuple[envelope_pb2.SignedEnvelope, aggregator_pb2.FederatedQueryResponse, list[int]]:
    q = bank.sign_query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)
    await bank.ready_directory()
    resp = await _relay(layout, trust, q)
    full = [i for i, s in enumerate(resp.sections) if s.status == aggregator_pb2.SECTION_STATUS_OK]
    assert len(full) >= 2
    return q, resp, full


def _status(report_sections: list[Section], city: str) -> tuple[SectionStatus, str]:
    s = next(s for s in report_sections if s.city.proto == city)
    return s.status, s.reason


async def test_a_sealed_answer_swapped_between_cities_is_refused(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q, resp, (a, b, *_) = await _two_cities_with_records(layout, trust, bank)
        swapped = aggregator_pb2.FederatedQueryResponse()
        swapped.CopyFrom(resp)
        sa, sb = swapped.sections[a], swapped.sections[b]
        # The aggregator swaps the answers (and receipts) of two cities.
        answer_a, receipt_a = query_pb2.SealedAnswer(), sa.receipt.__class__()
        answer_a.CopyFrom(sa.sealed_answer)
        receipt_a.CopyFrom(sa.receipt)
        sa.sealed_answer.CopyFrom(sb.sealed_answer)
        sa.receipt.CopyFrom(sb.receipt)
        sb.sealed_answer.CopyFrom(answer_a)
        sb.receipt.CopyFrom(receipt_a)
        report = bank.verify_response(q, swapped)
    for section in (sa, sb):
        status, reason = _status(report.sections, section.city)
        assert status is SectionStatus.INVALID and "does not open" in reason, reason
    assert all(not s.records for s in report.sections if s.city.proto in (sa.city, sb.city))


async def test_a_sealed_answer_replayed_from_another_query_is_refused(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q1, resp1, full = await _two_cities_with_records(layout, trust, bank)
        q2, resp2, _ = await _two_cities_with_records(layout, trust, bank)
        replayed = aggregator_pb2.FederatedQueryResponse()
        replayed.CopyFrom(resp2)
        i = full[0]
        assert replayed.sections[i].city == resp1.sections[i].city
        replayed.sections[i].CopyFrom(resp1.sections[i])  # the same city's section, of the first query
        report = bank.verify_response(q2, replayed)
        honest = bank.verify_response(q1, resp1)
    status, reason = _status(report.sections, resp1.sections[i].city)
    assert status is SectionStatus.INVALID and "does not open" in reason, reason
    assert _status(honest.sections, resp1.sections[i].city)[0] is SectionStatus.OK


async def test_an_answer_sealed_by_the_aggregator_without_the_nodes_signature_is_refused(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q, resp, (i, *_) = await _two_cities_with_records(layout, trust, bank)
        city = City(resp.sections[i].city)
        query = query_pb2.CreditQuery.FromString(q.payload)
        # The aggregator knows everything public: the query, its digest, its
        # key, the city. It writes an answer and seals it to the bank's key.
        forged = query_pb2.CityAnswer(
            query_id=query.query_id,
            query_digest=digest(q.payload),
            city=city.proto,
            enterprise_uscc=query.enterprise_uscc,
        )
        key = parse_answer_key(query)
        unsigned = envelope_pb2.SignedEnvelope(payload_type=ANSWER_TYPE, payload=forged.SerializeToString())
        signed_by_other = sign(ANSWER_TYPE, forged.SerializeToString(), layout.bank())
        for fake in (unsigned, signed_by_other):
            tampered = aggregator_pb2.FederatedQueryResponse()
            tampered.CopyFrom(resp)
            tampered.sections[i].sealed_answer.CopyFrom(
                seal(key, fake, digest(q.payload), city, discloses=True)
            )
            report = bank.verify_response(q, tampered)
            status, reason = _status(report.sections, city.proto)
            assert status is SectionStatus.INVALID, reason
            assert "signature" in reason or "not by the" in reason, reason


async def test_a_query_without_an_answer_key_is_refused_at_the_aggregator_and_the_nodes(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    env = consent(layout)
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q = bank.sign_query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        msg = query_pb2.CreditQuery.FromString(q.payload)
        msg.ClearField("answer_key")
        keyless = sign(QUERY_TYPE, msg.SerializeToString(deterministic=True), layout.bank())
        with pytest.raises(QueryRefused) as refused:
            await bank.send(keyless)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.reason.startswith("query.answer_key_missing")
    code, details = await node_refusal(layout, pilot.HEFEI, keyless, layout.bank(), trust)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("query.answer_key_missing")
    assert query_mod.answer_key_for(keyless) is None
