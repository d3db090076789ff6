"""A bank's signed query, and every check a node makes before answering it.

`authorize` is the single implementation of the stateless rules in
docs/protocol.md ("What a node checks"): the query's own here, the
consent's by `creditnet.policy`. City nodes run it on every query they
receive — whoever forwarded it — and the aggregator runs the same code
before fanning out, so garbage is refused once instead of five times. The
stateful rules (replay, use limit, revocation) are the store's `claim_query`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from creditnet import policy
from creditnet import uscc as uscc_mod
from creditnet.consent import VerifiedConsent, verify_consent
from creditnet.dates import ts_from_proto, ts_to_proto, utcnow
from creditnet.domain import MAX_SCOPE_CITIES, Category, City, Purpose, distinct_from_proto
from creditnet.envelope import QUERY_TYPE, EnvelopeVerifier, digest, sign
from creditnet.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from creditnet.pki import Identity, RoleKind, VerifiedCert
from creditnet.sealing import AnswerKey, AnswerKeyPair, parse_answer_key
from creditnet.v2 import envelope_pb2, query_pb2

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_QUERY_LIFETIME",
    "MAX_QUERY_LIFETIME",
    "MAX_QUERY_PAYLOAD_BYTES",
    "AuthorizedQuery",
    "QueryTerms",
    "Seen",
    "answer_key_for",
    "authorize",
    "build",
    "is_canonical_uuid",
    "parse_terms",
]

MAX_QUERY_LIFETIME = dt.timedelta(minutes=5)
# How far a signer's clock may run ahead of the verifier's.
CLOCK_SKEW = dt.timedelta(seconds=60)
DEFAULT_QUERY_LIFETIME = dt.timedelta(seconds=120)
# A query is a few hundred bytes plus its consent (with the enterprise's
# certificate chain, about 2 KB). Anything far larger is refused before its
# signature is even checked.
MAX_QUERY_PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class QueryTerms:
    query_id: str
    enterprise_uscc: str
    bank_code: str
    purpose: Purpose
    categories: tuple[Category, ...]
    cities: tuple[City, ...]
    issued_at: dt.datetime
    expires_at: dt.datetime
    # The bank's HPKE key for this query's sealed answers.
    answer_key: AnswerKey


@dataclass(frozen=True, slots=True)
class AuthorizedQuery:
    """A query that passed every stateless rule, with the scope its consent grants it."""

    terms: QueryTerms
    digest: bytes
    payload: bytes
    bank: VerifiedCert
    consent: VerifiedConsent
    grant: policy.Grant

    @property
    def categories(self) -> tuple[Category, ...]:
        return self.grant.categories

    @property
    def cities(self) -> tuple[City, ...]:
        """The cities granted, by code; empty means every member city of the network."""
        return self.grant.cities or ()

    @property
    def data_from(self) -> dt.date:
        return self.grant.data_from

    @property
    def data_to(self) -> dt.date:
        return self.grant.data_to

    def scope(self, members: Iterable[City]) -> tuple[City, ...]:
        """The cities to ask, given the network's member cities; by code."""
        return self.grant.scope(members)


@dataclass(slots=True)
class Seen:
    """How far `authorize` got before a refusal, so that it is logged without checking anything twice.

    `terms` is set once the bank's signature verified and the query names
    that bank (rule 14); `consent` once the consent verified as the named
    enterprise's grant to that bank (rule 22). Only then is a refusal an
    access to log against the enterprise (docs/protocol.md, "Credit chain").
    """

    terms: QueryTerms | None = None
    digest: bytes = b""
    consent: VerifiedConsent | None = None


def build(
    bank: Identity,
    consent: envelope_pb2.SignedEnvelope,
    *,
    enterprise_uscc: str,
    purpose: Purpose,
    categories: tuple[Category, ...] = (),
    cities: tuple[City, ...] = (),
    lifetime: dt.timedelta = DEFAULT_QUERY_LIFETIME,
    now: dt.datetime | None = None,
    query_id: str | None = None,
    answer_key: AnswerKeyPair | None = None,
) -> envelope_pb2.SignedEnvelope:
    """Sign a query as `bank` (its certificate must be a bank certificate).

    `answer_key` is the key pair the answers are sealed to; by default a
    fresh one of the default suite. Its private half stays in this process
    (`answer_key_for`) for as long as the query may be answered.
    """
    if bank.role.kind is not RoleKind.BANK:
        raise PermissionDenied("query.signer_role", "queries are signed with a bank certificate")
    if lifetime > MAX_QUERY_LIFETIME:
        raise InvalidArgument("query.lifetime", f"a query may live at most {MAX_QUERY_LIFETIME}")
    issued = now or utcnow()
    msg = query_pb2.CreditQuery(
        query_id=query_id or str(uuid.uuid4()),
        enterprise_uscc=uscc_mod.validate(enterprise_uscc),
        bank_code=bank.role.subject,
        purpose=purpose.proto,
        categories=[c.proto for c in categories],
        cities=[c.proto for c in cities],
        issued_at=ts_to_proto(issued),
        expires_at=ts_to_proto(issued + lifetime),
        consent=consent,
    )
    pair = answer_key or AnswerKeyPair.generate()
    msg.answer_key.CopyFrom(pair.proto)
    env = sign(QUERY_TYPE, msg.SerializeToString(deterministic=True), bank)
    _remember(env, pair, issued + lifetime)
    return env


# The private answer keys of the queries this process built, by query
# digest, until the query expires (plus the clock skew a node allows).
_ANSWER_KEYS: dict[bytes, tuple[AnswerKeyPair, dt.datetime]] = {}


def _remember(env: envelope_pb2.SignedEnvelope, pair: AnswerKeyPair, expires_at: dt.datetime) -> None:
    now = utcnow()
    for key in [k for k, (_, until) in _ANSWER_KEYS.items() if until < now]:
        del _ANSWER_KEYS[key]
    _ANSWER_KEYS[digest(env.payload)] = (pair, expires_at + CLOCK_SKEW)


def answer_key_for(env: envelope_pb2.SignedEnvelope) -> AnswerKeyPair | None:
    """The private answer key of a query this process built, None if unknown or forgotten."""
    held = _ANSWER_KEYS.get(digest(env.payload))
    return held[0] if held is not None else None


def parse_terms(payload: bytes) -> tuple[QueryTerms, envelope_pb2.SignedEnvelope]:
    msg = query_pb2.CreditQuery()
    try:
        msg.ParseFromString(payload)
    except DecodeError:
        raise InvalidArgument("query.malformed", "query payload is not a valid CreditQuery message") from None
    if not is_canonical_uuid(msg.query_id):
        # Replay protection compares ids as strings: one spelling only.
        raise InvalidArgument(
            "query.malformed", "query_id must be a UUID in canonical lower-case 8-4-4-4-12 form"
        )
    try:
        uscc = uscc_mod.canonical(msg.enterprise_uscc)
    except ValueError as exc:
        raise InvalidArgument("query.uscc", f"enterprise_uscc is invalid: {exc}") from None
    try:
        terms = QueryTerms(
            query_id=msg.query_id,
            enterprise_uscc=uscc,
            bank_code=msg.bank_code,
            purpose=Purpose.from_proto(msg.purpose),
            categories=distinct_from_proto(Category.from_proto, msg.categories, len(Category), "categories"),
            cities=distinct_from_proto(City.from_proto, msg.cities, MAX_SCOPE_CITIES, "cities"),
            issued_at=ts_from_proto(msg.issued_at),
            expires_at=ts_from_proto(msg.expires_at),
            answer_key=parse_answer_key(msg),
        )
    except ValueError as exc:
        raise InvalidArgument("query.malformed", f"query fields are invalid: {exc}") from None
    if not msg.HasField("consent"):
        raise InvalidArgument("query.consent_missing", "the query carries no consent")
    return terms, msg.consent


def is_canonical_uuid(text: str) -> bool:
    """Whether `text` is a UUID written the one way the protocol allows (lower-case 8-4-4-4-12)."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def authorize(
    verifier: EnvelopeVerifier,
    env: envelope_pb2.SignedEnvelope,
    *,
    city: City | None,
    now: dt.datetime | None = None,
    seen: Seen | None = None,
) -> AuthorizedQuery:
    """Run every stateless rule; `city` is the answering node's (None: the aggregator).

    `seen`, if given, records what was established before a refusal.
    """
    seen = seen if seen is not None else Seen()
    now = now or utcnow()
    verified = verifier.verify(env, QUERY_TYPE, what="query", at=now, max_payload=MAX_QUERY_PAYLOAD_BYTES)
    bank = verified.signer
    if bank.role.kind is not RoleKind.BANK:
        raise PermissionDenied("query.signer_role", "the query is not signed by a bank certificate")
    terms, consent_env = parse_terms(verified.payload)
    if terms.bank_code != bank.role.subject:
        raise PermissionDenied("query.bank_mismatch", "the query names a different bank than its signer")
    seen.terms, seen.digest = terms, verified.digest

    if terms.issued_at > now + CLOCK_SKEW:
        raise FailedPrecondition(
            "query.not_yet_valid", "the query is issued in the future; check the bank's clock"
        )
    if terms.expires_at <= terms.issued_at or terms.expires_at - terms.issued_at > MAX_QUERY_LIFETIME:
        raise InvalidArgument("query.lifetime", f"a query must expire within {MAX_QUERY_LIFETIME} of issue")
    if now > terms.expires_at:
        raise FailedPrecondition("query.expired", "the query has expired; sign a new one")

    consent = verify_consent(verifier, consent_env, at=now)
    policy.check_parties(consent.terms, terms)
    # The consent is the enterprise's grant to this bank: a refusal from here
    # on is an access to the enterprise's data, logged in its history.
    seen.consent = consent
    grant = policy.permit(consent.terms, terms, city=city, now=now)
    return AuthorizedQuery(
        terms=terms,
        digest=verified.digest,
        payload=verified.payload,
        bank=bank,
        consent=consent,
        grant=grant,
    )
