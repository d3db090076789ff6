"""An enterprise's consent and its revocation: their terms, signatures and form.

A consent names one bank, one purpose, the categories and cities it opens,
the period of data it covers, when it may be used and how often. It is
signed by the enterprise itself (its certificate binds its USCC), so neither
the bank nor the aggregator can write or widen one. Whether a consent lets
a query be answered, and what it then grants, is `creditnet.policy`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from creditnet import uscc as uscc_mod
from creditnet.dates import date_from_proto, date_to_proto, ts_from_proto, ts_to_proto, utcnow
from creditnet.domain import MAX_SCOPE_CITIES, Category, City, Purpose, distinct_from_proto
from creditnet.envelope import (
    CONSENT_TYPE,
    REVOCATION_TYPE,
    EnvelopeVerifier,
    Verified,
    digest,
    sign,
)
from creditnet.errors import InvalidArgument, PermissionDenied
from creditnet.pki import Identity, RoleKind
from creditnet.v2 import consent_pb2, envelope_pb2

__all__ = [
    "MAX_CONSENT_VALIDITY",
    "ConsentTerms",
    "VerifiedConsent",
    "VerifiedRevocation",
    "grant",
    "revoke",
    "verify_consent",
    "verify_revocation",
]

MAX_CONSENT_VALIDITY = dt.timedelta(days=3 * 366)


@dataclass(frozen=True, slots=True)
class ConsentTerms:
    enterprise_uscc: str
    bank_code: str
    purpose: Purpose
    categories: tuple[Category, ...]
    data_from: dt.date
    data_to: dt.date
    not_before: dt.datetime
    not_after: dt.datetime
    # Empty means every pilot city.
    cities: tuple[City, ...] = ()
    max_uses: int = 0
    consent_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    issued_at: dt.datetime = field(default_factory=utcnow)

    def validate(self) -> ConsentTerms:
        """Raise InvalidArgument (rule ``consent.malformed``) if the terms make no sense."""

        def bad(msg: str) -> InvalidArgument:
            return InvalidArgument("consent.malformed", msg)

        try:
            uscc_mod.canonical(self.enterprise_uscc)
        except ValueError as exc:
            raise bad(f"enterprise_uscc is invalid: {exc}") from None
        if not self.bank_code:
            raise bad("bank_code is empty")
        if not self.categories:
            raise bad("a consent must name at least one category")
        if self.data_from > self.data_to:
            raise bad("data_from is after data_to")
        if self.not_before >= self.not_after:
            raise bad("not_before must be before not_after")
        if self.not_after - self.not_before > MAX_CONSENT_VALIDITY:
            raise bad("a consent may be valid for at most three years")
        if self.max_uses < 0:
            raise bad("max_uses must be ≥ 0")
        if not self.consent_id or len(self.consent_id) > 64:
            raise bad("consent_id must be 1-64 characters")
        return self

    def to_proto(self) -> consent_pb2.Consent:
        return consent_pb2.Consent(
            consent_id=self.consent_id,
            enterprise_uscc=self.enterprise_uscc,
            bank_code=self.bank_code,
            purpose=self.purpose.proto,
            categories=[c.proto for c in self.categories],
            cities=[c.proto for c in self.cities],
            data_from=date_to_proto(self.data_from),
            data_to=date_to_proto(self.data_to),
            not_before=ts_to_proto(self.not_before),
            not_after=ts_to_proto(self.not_after),
            max_uses=self.max_uses,
            issued_at=ts_to_proto(self.issued_at),
        )

    @classmethod
    def from_proto(cls, msg: consent_pb2.Consent) -> ConsentTerms:
        try:
            terms = cls(
                consent_id=msg.consent_id,
                enterprise_uscc=msg.enterprise_uscc,
                bank_code=msg.bank_code,
                purpose=Purpose.from_proto(msg.purpose),
                categories=distinct_from_proto(
                    Category.from_proto, msg.categories, len(Category), "categories"
                ),
                cities=distinct_from_proto(City.from_proto, msg.cities, MAX_SCOPE_CITIES, "cities"),
                data_from=date_from_proto(msg.data_from),
                data_to=date_from_proto(msg.data_to),
                not_before=ts_from_proto(msg.not_before),
                not_after=ts_from_proto(msg.not_after),
                max_uses=msg.max_uses,
                issued_at=ts_from_proto(msg.issued_at),
            )
        except ValueError as exc:
            raise InvalidArgument("consent.malformed", f"consent fields are invalid: {exc}") from None
        return terms.validate()


@dataclass(frozen=True, slots=True)
class VerifiedConsent:
    terms: ConsentTerms
    digest: bytes
    envelope: envelope_pb2.SignedEnvelope


def grant(enterprise: Identity, terms: ConsentTerms) -> envelope_pb2.SignedEnvelope:
    """Sign `terms` as the enterprise; the enterprise must be the one named."""
    terms.validate()
    if enterprise.role.kind is not RoleKind.ENTERPRISE or enterprise.role.subject != terms.enterprise_uscc:
        raise PermissionDenied(
            "consent.signer",
            "only the enterprise named in a consent can sign it; use its own certificate",
        )
    return sign(CONSENT_TYPE, terms.to_proto().SerializeToString(deterministic=True), enterprise)


def verify_consent(
    verifier: EnvelopeVerifier, env: envelope_pb2.SignedEnvelope, *, at: dt.datetime | None = None
) -> VerifiedConsent:
    """Signature, signer and well-formedness; not whether it lets a query be answered (`policy.permit`)."""
    verified = verifier.verify(env, CONSENT_TYPE, what="consent", at=at, cache=True)
    terms = _parse_consent(verified)
    signer = verified.signer.role
    if signer.kind is not RoleKind.ENTERPRISE:
        raise PermissionDenied("consent.signer", "consent is not signed by an enterprise certificate")
    if signer.subject != terms.enterprise_uscc:
        raise PermissionDenied("consent.signer", "consent is signed by a different enterprise than it names")
    return VerifiedConsent(terms=terms, digest=verified.digest, envelope=env)


def _parse_consent(verified: Verified) -> ConsentTerms:
    msg = consent_pb2.Consent()
    try:
        msg.ParseFromString(verified.payload)
    except DecodeError:
        raise InvalidArgument("consent.malformed", "consent payload is not a valid Consent message") from None
    return ConsentTerms.from_proto(msg)


# --- revocation -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedRevocation:
    consent_id: str
    enterprise_uscc: str
    consent_digest: bytes
    revoked_at: dt.datetime
    reason: str
    envelope: envelope_pb2.SignedEnvelope


def revoke(
    enterprise: Identity,
    consent_env: envelope_pb2.SignedEnvelope,
    *,
    reason: str = "",
    now: dt.datetime | None = None,
) -> envelope_pb2.SignedEnvelope:
    msg = consent_pb2.Consent()
    msg.ParseFromString(consent_env.payload)
    if enterprise.role.kind is not RoleKind.ENTERPRISE or enterprise.role.subject != msg.enterprise_uscc:
        raise PermissionDenied(
            "revocation.signer", "only the enterprise that granted a consent can revoke it"
        )
    rev = consent_pb2.ConsentRevocation(
        consent_id=msg.consent_id,
        enterprise_uscc=msg.enterprise_uscc,
        consent_digest=digest(consent_env.payload),
        revoked_at=ts_to_proto(now or utcnow()),
        reason=reason[:500],
    )
    return sign(REVOCATION_TYPE, rev.SerializeToString(deterministic=True), enterprise)


def verify_revocation(
    verifier: EnvelopeVerifier,
    env: envelope_pb2.SignedEnvelope,
    consent_env: envelope_pb2.SignedEnvelope,
    *,
    at: dt.datetime | None = None,
) -> VerifiedRevocation:
    """The revocation's signature, and that it revokes a consent of the signer's own.

    The consent itself must come along: a digest alone would let any
    enterprise revoke another's consent by naming its digest.
    """
    verified = verifier.verify(env, REVOCATION_TYPE, what="revocation", at=at)
    msg = consent_pb2.ConsentRevocation()
    try:
        msg.ParseFromString(verified.payload)
    except DecodeError:
        raise InvalidArgument("revocation.malformed", "payload is not a ConsentRevocation") from None
    if len(msg.consent_digest) != 32:
        raise InvalidArgument("revocation.malformed", "consent_digest must be 32 bytes (SHA-256)")
    signer = verified.signer.role
    if signer.kind is not RoleKind.ENTERPRISE or signer.subject != msg.enterprise_uscc:
        raise PermissionDenied("revocation.signer", "revocation is not signed by the enterprise it names")
    if digest(consent_env.payload) != msg.consent_digest:
        raise InvalidArgument(
            "revocation.consent_mismatch", "the consent sent is not the one the revocation names"
        )
    consent = verify_consent(verifier, consent_env, at=at)
    if consent.terms.enterprise_uscc != msg.enterprise_uscc or consent.terms.consent_id != msg.consent_id:
        raise PermissionDenied("revocation.signer", "an enterprise can only revoke its own consents")
    return VerifiedRevocation(
        consent_id=msg.consent_id,
        enterprise_uscc=msg.enterprise_uscc,
        consent_digest=bytes(msg.consent_digest),
        revoked_at=ts_from_proto(msg.revoked_at),
        reason=msg.reason,
        envelope=env,
    )
