"""Every node checks every rule itself: the aggregator is bypassed or lies."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.dates import utcnow
from creditnet.domain import Category, Purpose
from creditnet.envelope import QUERY_TYPE, sign
from creditnet.network import SECOND_BANK, InProcessNetwork, NetworkLayout
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.v2 import envelope_pb2, query_pb2
from tests.integration.helpers import ask_node, consent, node_refusal, opened_answer

SC = grpc.StatusCode


def _query(
    layout: NetworkLayout, env: envelope_pb2.SignedEnvelope, **kw: object
) -> envelope_pb2.SignedEnvelope:
    args: dict[str, object] = {"enterprise_uscc": layout.demo_enterprise, "purpose": Purpose.LOAN_APPLICATION}
    args.update(kw)
    return query_mod.build(layout.bank(), env, **args)  # type: ignore[arg-type]


async def test_bank_may_ask_a_node_directly_and_gets_a_signed_answer(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    q = _query(layout, consent(layout))
    resp = await ask_node(layout, pilot.SHANGHAI, q, layout.bank(), trust)
    answer = query_pb2.CityAnswer()
    answer.ParseFromString(opened_answer(resp, q, pilot.SHANGHAI).payload)
    assert answer.city == pilot.SHANGHAI.proto and answer.enterprise_uscc == layout.demo_enterprise


def _cases(
    layout: NetworkLayout, ca: CertificateAuthority
) -> list[tuple[str, envelope_pb2.SignedEnvelope, SC, str]]:
    now = utcnow()
    good = consent(layout)
    cases: list[tuple[str, envelope_pb2.SignedEnvelope, SC, str]] = []

    tampered = _query(layout, good)
    tampered.payload = tampered.payload[:-1] + bytes([tampered.payload[-1] ^ 1])
    cases.append(("tampered payload", tampered, SC.UNAUTHENTICATED, "query.signature"))

    as_consent = envelope_pb2.SignedEnvelope()
    as_consent.CopyFrom(_query(layout, good))
    as_consent.payload_type = "application/vnd.creditnet.consent.v2+protobuf"
    cases.append(("payload type swapped", as_consent, SC.INVALID_ARGUMENT, "query.type"))

    cases.append(("consent signed as query", good, SC.INVALID_ARGUMENT, "query.type"))

    foreign = CertificateAuthority.create("some other CA")
    rogue_bank = issue_identity(foreign, Role.bank(layout.bank().role.subject))
    cases.append(
        (
            "bank certificate from a foreign CA",
            query_mod.build(
                rogue_bank, good, enterprise_uscc=layout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
            ),
            SC.UNAUTHENTICATED,
            "query.cert.untrusted",
        )
    )

    ent = layout.enterprise()
    msg = query_pb2.CreditQuery()
    msg.ParseFromString(_query(layout, good).payload)
    cases.append(
        (
            "query signed by an enterprise",
            sign(QUERY_TYPE, msg.SerializeToString(), ent),
            SC.PERMISSION_DENIED,
            "query.signer_role",
        )
    )

    other = issue_identity(ca, Role.bank(SECOND_BANK))
    cases.append(
        (
            "consent granted to another bank",
            query_mod.build(
                other, good, enterprise_uscc=layout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
            ),
            SC.PERMISSION_DENIED,
            "consent.bank_mismatch",
        )
    )
    cases.append(
        (
            "purpose differs",
            _query(layout, good, purpose=Purpose.GUARANTEE),
            SC.PERMISSION_DENIED,
            "consent.purpose_mismatch",
        )
    )
    narrow = consent(layout, categories=(Category.TAX,))
    cases.append(
        (
            "category widened",
            _query(layout, narrow, categories=(Category.TAX, Category.LOAN)),
            SC.PERMISSION_DENIED,
            "consent.category_not_covered",
        )
    )
    shanghai_only = consent(layout, cities=(pilot.SHANGHAI,))
    cases.append(
        (
            "city widened",
            _query(layout, shanghai_only, cities=(pilot.SHANGHAI, pilot.HEFEI)),
            SC.PERMISSION_DENIED,
            "consent.city_not_covered",
        )
    )
    expired = consent(layout, not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1))
    cases.append(("consent expired", _query(layout, expired), SC.FAILED_PRECONDITION, "consent.expired"))
    future = consent(layout, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=2))
    cases.append(
        ("consent not yet valid", _query(layout, future), SC.FAILED_PRECONDITION, "consent.not_yet_valid")
    )
    stale = _query(layout, good, now=now - dt.timedelta(minutes=10))
    cases.append(("query expired", stale, SC.FAILED_PRECONDITION, "query.expired"))
    early = _query(layout, good, now=now + dt.timedelta(minutes=10))
    cases.append(("query from the future", early, SC.FAILED_PRECONDITION, "query.not_yet_valid"))

    second_ent = issue_identity(ca, Role.enterprise("91310000MA1FL8XQ37"))
    forged = consent(layout, enterprise=second_ent, uscc=layout.demo_enterprise)
    cases.append(
        (
            "consent signed by another enterprise",
            _query(layout, forged),
            SC.PERMISSION_DENIED,
            "consent.signer",
        )
    )
    other_ent_consent = consent(layout, enterprise=second_ent, uscc="91310000MA1FL8XQ37")
    cases.append(
        (
            "consent of another enterprise",
            _query(layout, other_ent_consent),
            SC.PERMISSION_DENIED,
            "consent.enterprise_mismatch",
        )
    )
    return cases


async def test_every_rule_is_enforced_by_every_node_without_the_aggregator(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore
) -> None:
    cases = _cases(layout, ca)
    failures = []
    for name, env, code, rule in cases:
        for city in pilot.CITIES:
            got_code, reason = await node_refusal(layout, city, env, layout.bank(), trust)
            if got_code != code or not reason.startswith(rule):
                failures.append(
                    f"{name} @ {city.value}: {got_code.name} {reason!r}, expected {code.name} {rule}"
                )
            assert layout.demo_enterprise not in reason
    assert not failures, "\n".join(failures)


async def test_a_node_refuses_a_query_for_a_city_outside_its_scope(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    q = _query(layout, consent(layout), cities=(pilot.SHANGHAI,))
    code, reason = await node_refusal(layout, pilot.HEFEI, q, layout.bank(), trust)
    assert code == SC.PERMISSION_DENIED and reason.startswith("query.city_not_in_scope")


async def test_a_misbehaving_aggregator_can_neither_alter_nor_widen_a_query(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    """The aggregator's own certificate is valid and trusted for forwarding, but
    everything it changes breaks the bank's signature, and it cannot sign as a bank."""
    aggregator = layout.identity("aggregator", "national")
    narrow = consent(layout, categories=(Category.TAX,), cities=(pilot.SHANGHAI,))
    original = _query(layout, narrow)
    msg = query_pb2.CreditQuery()
    msg.ParseFromString(original.payload)

    widened = query_pb2.CreditQuery()
    widened.CopyFrom(msg)
    widened.categories.append(Category.LOAN.proto)
    kept_signature = envelope_pb2.SignedEnvelope()
    kept_signature.CopyFrom(original)
    kept_signature.payload = widened.SerializeToString()
    resigned = sign(QUERY_TYPE, widened.SerializeToString(), aggregator)

    retargeted = query_pb2.CreditQuery()
    retargeted.CopyFrom(msg)
    retargeted.enterprise_uscc = "91310000MA1FL8XQ37"
    retargeted_env = envelope_pb2.SignedEnvelope()
    retargeted_env.CopyFrom(original)
    retargeted_env.payload = retargeted.SerializeToString()

    for city in pilot.CITIES:
        for env, code, rule in (
            (kept_signature, SC.UNAUTHENTICATED, "query.signature"),
            (resigned, SC.PERMISSION_DENIED, "query.signer_role"),
            (retargeted_env, SC.UNAUTHENTICATED, "query.signature"),
        ):
            got, reason = await node_refusal(layout, city, env, aggregator, trust)
            assert (got, reason.split(":")[0]) == (code, rule)


async def test_callers_other_than_banks_and_the_aggregator_cannot_query(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    q = _query(layout, consent(layout))
    code, reason = await node_refusal(layout, pilot.NANJING, q, layout.enterprise(), trust)
    assert code == SC.PERMISSION_DENIED and reason.startswith("peer.role")


@pytest.mark.parametrize("size", [9 * 1024 * 1024])
async def test_oversized_messages_are_refused(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, size: int
) -> None:
    env = envelope_pb2.SignedEnvelope(payload_type=QUERY_TYPE, payload=b"x" * size)
    code, _ = await node_refusal(layout, pilot.JIAXING, env, layout.bank(), trust)
    assert code == SC.RESOURCE_EXHAUSTED
