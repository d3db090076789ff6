"""An enterprise's history on the running network: only it may read it, and no flood hides a real access.

Each test uses an enterprise of its own, so that no other test's queries are
in its history.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
import pytest

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.auditor.history import HistoryError, Outcome, build_request, fetch_history, verify_history
from creditnet.dates import ts_to_proto, utcnow
from creditnet.domain import City, Purpose
from creditnet.envelope import CONSENT_TYPE, HISTORY_REQUEST_TYPE, sign
from creditnet.ledger.service import HISTORY_PAGE
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import chain_pb2, envelope_pb2
from creditnet_devkit import synthetic
from tests.integration.helpers import ask_node, consent, node_refusal
from tests.integration.test_chain import read_history


def fresh_enterprise(ca: CertificateAuthority, serial: int) -> tuple[str, Identity]:
    uscc = synthetic.plan_enterprise(11, pilot.HEFEI, serial).uscc
    return uscc, issue_identity(ca, Role.enterprise(uscc))


async def history_refusal(
    layout: NetworkLayout,
    caller: Identity,
    trust: TrustStore,
    city: City,
    request: envelope_pb2.SignedEnvelope,
) -> tuple[grpc.StatusCode, str]:
    try:
        await read_history(layout, caller, trust, city, request)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError(f"the {city.value} node served a history request it should refuse")


async def test_a_history_goes_only_to_the_enterprise_that_signed_for_that_node_and_only_once(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, ca: CertificateAuthority
) -> None:
    uscc, me = fresh_enterprise(ca, 39)
    env = consent(layout, enterprise=me, uscc=uscc)
    await ask_node(
        layout,
        pilot.HEFEI,
        query_mod.build(layout.bank(), env, enterprise_uscc=uscc, purpose=Purpose.LOAN_APPLICATION),
        layout.bank(),
        trust,
    )
    request = build_request(me, pilot.HEFEI)

    # The enterprise's signed request in anyone else's hands reads nothing:
    # not a bank's, not another node's, not another enterprise's connection.
    others = [
        layout.bank(),
        issue_identity(ca, Role.node(pilot.NANJING)),
        issue_identity(ca, Role.bank("B9990001")),
        layout.enterprise(),
    ]
    for other in others:
        code, reason = await history_refusal(layout, other, trust, pilot.HEFEI, request)
        assert code == grpc.StatusCode.PERMISSION_DENIED and reason.startswith("history.caller"), reason

    # Made for Hefei, it is refused by Nanjing, even from the enterprise.
    code, reason = await history_refusal(layout, me, trust, pilot.NANJING, request)
    assert code == grpc.StatusCode.PERMISSION_DENIED and reason.startswith("history.city"), reason

    # Served once, to the enterprise; the same request again is refused.
    raw, wanted = await read_history(layout, me, trust, pilot.HEFEI, request)
    items, _ = verify_history(trust, pilot.HEFEI, raw, wanted)
    assert [i.outcome for i in items] == [Outcome.ANSWERED]
    code, reason = await history_refusal(layout, me, trust, pilot.HEFEI, request)
    assert code == grpc.StatusCode.ALREADY_EXISTS and reason.startswith("history.replay"), reason

    # A request id in another spelling is not a new id: only the canonical form is accepted.
    msg = chain_pb2.HistoryRequest.FromString(request.payload)
    for spelling in (msg.request_id.upper(), "{" + msg.request_id + "}", "urn:uuid:" + msg.request_id):
        msg.request_id = spelling
        msg.issued_at.CopyFrom(ts_to_proto(utcnow()))
        again = sign(HISTORY_REQUEST_TYPE, msg.SerializeToString(deterministic=True), me)
        code, reason = await history_refusal(layout, me, trust, pilot.HEFEI, again)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and reason.startswith("history.malformed"), reason

    # A code in another spelling is refused too (the CLI normalises what people type).
    assert uscc.lower() != uscc, "the test needs a code with letters"
    msg.request_id, msg.enterprise_uscc = str(uuid.uuid4()), uscc.lower()
    lower = sign(HISTORY_REQUEST_TYPE, msg.SerializeToString(deterministic=True), me)
    code, reason = await history_refusal(layout, me, trust, pilot.HEFEI, lower)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason.startswith("history.malformed"), reason


async def test_refused_queries_cannot_push_an_enterprises_real_access_out_of_view(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, ca: CertificateAuthority
) -> None:
    uscc, me = fresh_enterprise(ca, 32)
    attacker = issue_identity(ca, Role.bank("B9990002"))
    good = consent(layout, enterprise=me, uscc=uscc)
    # Queries naming the enterprise with a 1-byte "consent" nobody signed, and
    # with the enterprise's real consent (granted to another bank): refused,
    # and none of them is an access to the enterprise's data, so none is in
    # its history.
    junk = envelope_pb2.SignedEnvelope(payload_type=CONSENT_TYPE, payload=b"x")
    for carried in (junk, good):
        q = query_mod.build(attacker, carried, enterprise_uscc=uscc, purpose=Purpose.LOAN_APPLICATION)
        code, _ = await node_refusal(layout, pilot.HEFEI, q, attacker, trust)
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

    # More refusals than one streamed message holds, from the bank the
    # consent was granted to, for a purpose it does not cover: these are
    # attempts on the enterprise's consent, so they are in its history...
    floods = HISTORY_PAGE + 8

    async def wrong_purpose() -> None:
        q = query_mod.build(layout.bank(), good, enterprise_uscc=uscc, purpose=Purpose.GUARANTEE)
        _, reason = await node_refusal(layout, pilot.HEFEI, q, layout.bank(), trust)
        assert reason.startswith("consent.purpose_mismatch"), reason

    for start in range(0, floods, 16):
        await asyncio.gather(*(wrong_purpose() for _ in range(min(16, floods - start))))
    # ...followed by one real access.
    real = query_mod.build(layout.bank(), good, enterprise_uscc=uscc, purpose=Purpose.LOAN_APPLICATION)
    await ask_node(layout, pilot.HEFEI, real, layout.bank(), trust)
    real_id = query_mod.parse_terms(real.payload)[0].query_id
    hefei = {pilot.HEFEI: layout.node_endpoint(pilot.HEFEI)}

    # Newest first, the real access is the first thing the enterprise sees.
    newest = await fetch_history(me, trust, hefei, newest_first=True, limit=3)
    assert not newest.failures
    assert [(i.outcome, i.query_id) for i in newest.items[:1]] == [(Outcome.ANSWERED, real_id)]
    assert len(newest.items) == 3
    summary = newest.summaries[pilot.HEFEI]
    assert (summary.answered, summary.refused, summary.revoked) == (1, floods, 0)
    assert [(b.bank, b.refused) for b in summary.refused_by_bank] == [(DEMO_BANK, floods)]
    assert not summary.verified  # a limited read: the counts are the node's word

    # Only the real accesses, whatever the refusals.
    answered = await fetch_history(me, trust, hefei, outcomes=[Outcome.ANSWERED])
    assert [(i.outcome, i.query_id) for i in answered.items] == [(Outcome.ANSWERED, real_id)]

    # Everything, over several streamed messages, each item verified and the summary matching them.
    everything = await fetch_history(me, trust, hefei)
    assert not everything.failures and len(everything.items) == floods + 1
    assert everything.items[-1].query_id == real_id
    assert everything.summaries[pilot.HEFEI].verified
    assert {i.bank for i in everything.items} == {DEMO_BANK}


async def test_an_enterprise_that_was_never_asked_about_has_an_empty_history_everywhere(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, ca: CertificateAuthority
) -> None:
    _, me = fresh_enterprise(ca, 33)
    endpoints = {c: layout.node_endpoint(c) for c in pilot.CITIES}
    history = await fetch_history(me, trust, endpoints)
    assert not history.failures and history.items == ()
    assert all(s.answered == s.refused == s.revoked == 0 for s in history.summaries.values())


async def test_a_stale_history_request_is_refused(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, ca: CertificateAuthority
) -> None:
    uscc, me = fresh_enterprise(ca, 34)
    msg = chain_pb2.HistoryRequest(
        enterprise_uscc=uscc,
        issued_at=ts_to_proto(utcnow() - dt.timedelta(minutes=10)),
        request_id=str(uuid.uuid4()),
        city=pilot.HEFEI.proto,
    )
    old = sign(HISTORY_REQUEST_TYPE, msg.SerializeToString(deterministic=True), me)
    code, reason = await history_refusal(layout, me, trust, pilot.HEFEI, old)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and reason.startswith("history.stale"), reason


def test_a_negative_limit_is_refused_before_anything_is_signed(layout: NetworkLayout) -> None:
    with pytest.raises(HistoryError, match="--limit"):
        build_request(layout.enterprise(), pilot.HEFEI, limit=-1)
