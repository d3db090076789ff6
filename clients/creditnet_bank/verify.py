"""Offline verification of a federated answer, section by section.

The bank trusts neither the aggregator nor any single node: each section's
sealed answer must open, with the bank's key for the query, as the answer of
exactly that city to exactly this query, and the answer inside must be
signed by the node of exactly the city it claims, answer exactly this query
(id and digest), and disclose nothing outside the consented scope. A
section that fails any check is reported as INVALID with the reason, and its
content is dropped.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from creditnet import policy
from creditnet import query as query_mod
from creditnet import uscc as uscc_mod
from creditnet.chain.receipts import DEFAULT_QUORUM, ReceiptError, verify_receipt
from creditnet.consent import ConsentTerms
from creditnet.dates import date_from_proto, ts_from_proto
from creditnet.directory.model import Directory
from creditnet.domain import Category, City
from creditnet.envelope import ANSWER_TYPE, EnvelopeVerifier, digest
from creditnet.errors import CreditnetError, Error
from creditnet.pki import RoleKind
from creditnet.sealing import AnswerKeyPair, SealError, open_sealed
from creditnet.v2 import aggregator_pb2, chain_pb2, consent_pb2, envelope_pb2, query_pb2, records_pb2
from creditnet_bank.provenance import proven_records

__all__ = [
    "AnswerInvalid",
    "Section",
    "SectionStatus",
    "answer_bounds",
    "consent_terms",
    "scope_cities",
    "verify_section",
]


class SectionStatus(enum.Enum):
    OK = "ok"
    NO_RECORDS = "no_records"
    DENIED = "denied"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    # The aggregator did not ask this city: by its routing, the city holds
    # no records of the enterprise. The aggregator's word (docs/protocol.md,
    # "Routing"); `exhaustive=True` asks every city instead.
    NOT_ASKED = "not_asked"
    # The bank's own status, never on the wire: a city of the effective scope
    # for which the aggregator returned no section at all (creditnet_bank.scope).
    MISSING = "missing"

    @classmethod
    def from_proto(cls, value: int) -> SectionStatus:
        return _STATUS_BY_NUMBER.get(value, cls.INVALID)


# Once, not once per section (hundreds in a national answer). A number that
# names no status of ours (or MISSING, which is never on the wire) is INVALID.
_STATUS_BY_NUMBER: Final = {
    v.number: SectionStatus[v.name.removeprefix("SECTION_STATUS_")]
    for v in aggregator_pb2.SectionStatus.DESCRIPTOR.values
    if v.name.removeprefix("SECTION_STATUS_") in SectionStatus.__members__
    and v.name != "SECTION_STATUS_MISSING"
}
# Routing reasons as the report names them ("holds_records"); 0 (unspecified) is "".
_ROUTING_BY_NUMBER: Final = {
    v.number: v.name.removeprefix("ROUTING_").lower()
    for v in aggregator_pb2.Routing.DESCRIPTOR.values
    if v.number
}


@dataclass(slots=True)
class Section:
    city: City
    status: SectionStatus
    reason: str = ""
    code: str = ""
    latency_ms: int = 0
    as_of: dt.datetime | None = None
    categories: tuple[Category, ...] = ()
    data_from: dt.date | None = None
    data_to: dt.date | None = None
    profile: records_pb2.EnterpriseProfile | None = None
    records: list[records_pb2.CreditRecord] = field(default_factory=list)
    # Records the node holds in scope but withheld: no provider signature covers them.
    withheld_unsigned: int = 0
    # The node's signed answer, kept so the bank can show it to others.
    answer: envelope_pb2.SignedEnvelope | None = None
    # The credit-chain receipt proving the access was logged, and where.
    receipt: chain_pb2.Receipt | None = None
    ledger_index: int | None = None
    # Whether the aggregator says it asked this city, and why ("registration",
    # "holds_records", "asked_for", "not_asked"; "" from an aggregator that does not route).
    asked: bool = True
    routing: str = ""
    routing_detail: str = ""
    # False for a section the aggregator returned for a city outside the
    # effective scope: reported INVALID, never opened (creditnet_bank.scope).
    in_scope: bool = True


class AnswerInvalid(Error):
    pass


def consent_terms(query: query_pb2.CreditQuery) -> ConsentTerms:
    """The consent the bank itself put in its query (it signed over it)."""
    msg = consent_pb2.Consent()
    msg.ParseFromString(query.consent.payload)
    return ConsentTerms.from_proto(msg)


def answer_bounds(query: query_pb2.CreditQuery) -> policy.Grant:
    """The most any answer to the bank's own `query` may hold: the consent policy's bound.

    Not `policy.permit`: the bank bounds answers by the consent even for a
    query the nodes should have refused, and checks no time (an answer is
    verified after the fact).
    """
    return policy.bound(consent_terms(query), policy.asked_by(query))


def scope_cities(query: query_pb2.CreditQuery, members: Iterable[City] = ()) -> tuple[City, ...]:
    """The cities a query asks, by code: those it names, else its consent's, else every member.

    `members` are the network's member cities as the bank knows them; when
    it knows none (empty) and neither the query nor the consent names a
    city, the result is empty: every city the aggregator answers for is in scope.
    """
    named = tuple(City.from_proto(c) for c in query.cities)
    # Every city the bank named is accounted for, even one its consent does
    # not cover (nodes refuse such a query; the bank does not rely on it, and
    # reports an answer from it INVALID): the granted scope alone could drop it.
    return tuple(sorted(named)) if named else answer_bounds(query).scope(members)


def verify_section(
    verifier: EnvelopeVerifier,
    section: aggregator_pb2.CitySection,
    query_env: envelope_pb2.SignedEnvelope,
    query: query_pb2.CreditQuery,
    directory: Directory | None = None,
    *,
    exhaustive: bool = False,
    answer_key: AnswerKeyPair | None = None,
) -> Section:
    """Verify one city's section; with the bank's `directory`, its receipt is
    checked against the witnesses the directory assigns to the city's log.

    The sealed answer is opened with `answer_key` (by default the key this
    process made for the query, `query.answer_key_for`) as this city's
    answer to this query, then its node signature, terms and receipt are
    checked as of any answer.

    A section the aggregator says it did not ask is taken as such only when
    the bank can find nothing wrong with the claim: the query was not
    exhaustive, the city is not the enterprise's registration city, and the
    section carries no answer. Otherwise it is INVALID."""
    try:
        city = City.from_proto(section.city)
    except ValueError:
        raise AnswerInvalid("the aggregator returned a section for an unknown city") from None
    status = SectionStatus.from_proto(section.status)
    base = Section(
        city=city,
        status=status,
        reason=section.reason,
        code=section.code,
        latency_ms=section.latency_ms,
        asked=status is not SectionStatus.NOT_ASKED,
        routing=_ROUTING_BY_NUMBER.get(section.routing, ""),
        routing_detail=section.routing_detail,
    )
    if status is SectionStatus.NOT_ASKED:
        return _check_not_asked(base, section, query, exhaustive)
    if status not in (SectionStatus.OK, SectionStatus.NO_RECORDS):
        return base
    try:
        env = _open(section, query_env, city, answer_key or query_mod.answer_key_for(query_env))
        verified = _verify_answer(verifier, base, env, query_env, query)
        _verify_receipt(verifier, verified, section, query_env, query, directory)
        return verified
    except (AnswerInvalid, SealError, CreditnetError, ValueError) as exc:
        # Nothing of a section that failed verification is kept.
        return Section(
            city=base.city,
            status=SectionStatus.INVALID,
            reason=f"answer rejected by the bank client: {exc}",
            code=base.code,
            latency_ms=base.latency_ms,
        )


@functools.lru_cache(maxsize=256)
def _home_city(uscc: str) -> City | None:
    # Once per query, not once per not-asked section (hundreds in a national network).
    return uscc_mod.home_city(uscc)


def _check_not_asked(
    base: Section, raw: aggregator_pb2.CitySection, query: query_pb2.CreditQuery, exhaustive: bool
) -> Section:
    why = ""
    if exhaustive:
        why = "the bank asked for an exhaustive query, yet the aggregator did not ask this city"
    elif _home_city(query.enterprise_uscc) == base.city:
        why = "the aggregator did not ask the enterprise's registration city"
    elif raw.HasField("sealed_answer") or raw.HasField("receipt") or raw.asked:
        why = "a section said not to be asked carries an answer, a receipt or asked=true"
    if not why:
        return base
    return Section(
        city=base.city,
        status=SectionStatus.INVALID,
        reason=f"routing rejected by the bank client: {why}",
        routing=base.routing,
        routing_detail=base.routing_detail,
    )


def _open(
    raw: aggregator_pb2.CitySection,
    query_env: envelope_pb2.SignedEnvelope,
    city: City,
    answer_key: AnswerKeyPair | None,
) -> envelope_pb2.SignedEnvelope:
    """The node's signed answer, opened as `city`'s answer to this query (SealError otherwise)."""
    if answer_key is None:
        raise AnswerInvalid("the bank holds no answer key for this query: the answer cannot be opened")
    if not raw.HasField("sealed_answer"):
        raise AnswerInvalid("the section carries no sealed answer")
    return open_sealed(answer_key, raw.sealed_answer, digest(query_env.payload), city)


def _verify_receipt(
    verifier: EnvelopeVerifier,
    section: Section,
    raw: aggregator_pb2.CitySection,
    query_env: envelope_pb2.SignedEnvelope,
    query: query_pb2.CreditQuery,
    directory: Directory | None,
) -> None:
    """The answer must come with a receipt: the access is on the node's log."""
    if not raw.HasField("receipt"):
        raise AnswerInvalid("the answer carries no credit-chain receipt")
    quorum, assigned = DEFAULT_QUORUM, None
    if directory is not None:
        assignment = directory.witnesses_of(section.city.code)
        if assignment is None:
            raise AnswerInvalid("receipt: the network directory assigns no witnesses to this city's log")
        quorum, assigned = assignment.quorum, assignment.witnesses
    try:
        vr = verify_receipt(verifier.trust, raw.receipt, section.city.value, quorum, assigned=assigned)
    except ReceiptError as exc:
        raise AnswerInvalid(f"receipt: {exc}") from None
    entry = vr.entry
    if entry.kind != chain_pb2.ENTRY_KIND_QUERY_ANSWERED or entry.city != section.city.proto:
        raise AnswerInvalid("receipt: the logged entry is not this city's answer")
    if entry.query_digest != digest(query_env.payload) or entry.bank_code != query.bank_code:
        raise AnswerInvalid("receipt: the logged entry is for another query")
    assert section.answer is not None
    if entry.disclosed_digest != digest(section.answer.payload):
        raise AnswerInvalid("receipt: the logged disclosure is not this answer")
    section.receipt = raw.receipt
    section.ledger_index = vr.index


def _verify_answer(
    verifier: EnvelopeVerifier,
    base: Section,
    env: envelope_pb2.SignedEnvelope,
    query_env: envelope_pb2.SignedEnvelope,
    query: query_pb2.CreditQuery,
) -> Section:
    verified = verifier.verify(env, ANSWER_TYPE, what="answer")
    signer = verified.signer.role
    if signer.kind is not RoleKind.NODE or signer.city != base.city:
        raise AnswerInvalid(f"signed by {signer.uri}, not by the {base.city.value} node")
    answer = query_pb2.CityAnswer()
    try:
        answer.ParseFromString(verified.payload)
    except DecodeError:
        raise AnswerInvalid("payload is not a CityAnswer") from None
    if answer.city != base.city.proto:
        raise AnswerInvalid("answer names another city")
    if answer.query_id != query.query_id or answer.query_digest != digest(query_env.payload):
        raise AnswerInvalid("answer is for a different query")
    if answer.enterprise_uscc != query.enterprise_uscc:
        raise AnswerInvalid("answer is about a different enterprise")
    categories = tuple(Category.from_proto(c) for c in answer.categories)
    # The consent bounds every answer, whether or not the query named categories
    # or cities; a query can only narrow it (what it names outside the consent bounds nothing).
    bounds = answer_bounds(query)
    if not bounds.covers(base.city):
        raise AnswerInvalid("answer from a city the consent does not cover for this query")
    if not set(categories) <= set(bounds.categories):
        raise AnswerInvalid("answer discloses categories that were not asked for or not consented")
    data_from, data_to = date_from_proto(answer.data_from), date_from_proto(answer.data_to)
    if data_from < bounds.data_from or data_to > bounds.data_to:
        raise AnswerInvalid("answer covers a period outside the consent")
    # Every record as its provider signed it, or the section is INVALID.
    records = proven_records(verifier, answer, base.city)
    for rec in records:
        field_name = rec.WhichOneof("detail")
        if field_name is None or Category.from_oneof_field(field_name) not in categories:
            raise AnswerInvalid("a record lies outside the disclosed categories")
        if rec.enterprise_uscc != query.enterprise_uscc:
            raise AnswerInvalid("a record is about a different enterprise")
        if not data_from <= date_from_proto(rec.record_date) <= data_to:
            raise AnswerInvalid("a record lies outside the consented period")
    base.as_of = ts_from_proto(answer.as_of)
    base.categories = categories
    base.data_from, base.data_to = data_from, data_to
    base.profile = answer.profile if answer.HasField("profile") else None
    base.records = records
    base.withheld_unsigned = answer.withheld_unsigned
    base.answer = env
    base.status = SectionStatus.OK if (base.records or base.profile) else SectionStatus.NO_RECORDS
    return base
