"""The published test vectors of docs/protocol.md, generated deterministically.

The fixed cast every vector file signs with, and the envelope vectors;
``python -m creditnet_devkit.vectors [DIRECTORY]`` writes them with the
others into docs/test-vectors/ (``--check`` compares instead). Every input is
fixed: private keys are derived from labels, certificates carry fixed serial
numbers and validity times, payloads fixed fields and times, and every
signature (over certificates and over envelopes) is deterministic ECDSA
(RFC 6979). Regenerating therefore gives byte-identical files, and a client
in another language can check its PAE, its signature verification and its
refusals against them.

The envelopes are produced by the same code the network runs (`consent.grant`,
`query.build`, `consent.revoke`, `envelope.sign`); only the certificates are
re-stamped here, taking their profile from `CertificateAuthority.issue` and
replacing just the serial number, validity and (random) signature.

The private keys in the vectors are public knowledge: never trust them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf import json_format
from google.protobuf.message import Message

from creditnet import consent as consent_mod
from creditnet import pilot
from creditnet import query as query_mod
from creditnet.dates import UTC, date_to_proto, ts_to_proto
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import (
    ANSWER_TYPE,
    CONSENT_TYPE,
    QUERY_TYPE,
    REVOCATION_TYPE,
    digest,
    pae,
    sign,
)
from creditnet.pki import CertificateAuthority, Identity, Role, key_to_pem
from creditnet.sealing import DEFAULT_SUITE, AnswerSuite
from creditnet.v2 import common_pb2, consent_pb2, envelope_pb2, query_pb2, records_pb2

__all__ = [
    "BANK_CODE",
    "BATCH_SIGNED_AT",
    "CERT_NOT_AFTER",
    "CERT_NOT_BEFORE",
    "CONSENT_ID",
    "ENTERPRISE_USCC",
    "QUERY_ID",
    "VERIFY_AT",
    "Cast",
    "Envelopes",
    "FixedCA",
    "Negative",
    "Participant",
    "answer_key_cases",
    "answer_payload",
    "consent_terms",
    "derive_key",
    "generate",
    "make_ca",
    "make_cast",
    "make_envelopes",
    "make_negatives",
    "make_participant",
    "message_json",
    "provenance_batch",
    "query_envelope",
    "render",
    "restamp",
    "time_text",
]

FORMAT_VERSION: Final = 1

# The instant every vector is verified at.
VERIFY_AT: Final = dt.datetime(2025, 6, 1, 8, 0, 0, tzinfo=UTC)
CA_NOT_BEFORE: Final = dt.datetime(2024, 1, 1, tzinfo=UTC)
CERT_NOT_BEFORE: Final = dt.datetime(2025, 1, 1, tzinfo=UTC)
# Before 2050, so every validity time is a UTCTime (RFC 5280 §4.1.2.5).
CERT_NOT_AFTER: Final = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
EXPIRED_NOT_BEFORE: Final = dt.datetime(2024, 1, 1, tzinfo=UTC)
EXPIRED_NOT_AFTER: Final = dt.datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)

ENTERPRISE_USCC: Final = "91340100MA2N0U3E6T"
BANK_CODE: Final = "B0001H231000001"
CONSENT_ID: Final = "5f0c4c7e-2a7d-4b8e-9d51-3c1f2e0a6b01"
QUERY_ID: Final = "0b6e3d9a-8c44-4f2e-a1d7-6e5b9c2f4a10"

# Order of the P-256 group: scalars are reduced into [1, n-1].
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_KEY_LABEL_PREFIX: Final = b"creditnet test vector key v1: "

PAYLOAD_MESSAGES: Final = {
    CONSENT_TYPE: "creditnet.v2.Consent",
    REVOCATION_TYPE: "creditnet.v2.ConsentRevocation",
    QUERY_TYPE: "creditnet.v2.CreditQuery",
    ANSWER_TYPE: "creditnet.v2.CityAnswer",
}

_DOC: Final = "docs/protocol.md#test-vectors"
_WARNING: Final = "TEST KEYS: these private keys are published; never trust them outside tests."


def derive_key(label: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 key of a label: SHA-256(prefix || label) reduced into [1, n-1]."""
    h = int.from_bytes(hashlib.sha256(_KEY_LABEL_PREFIX + label.encode("utf-8")).digest(), "big")
    return ec.derive_private_key(h % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def restamp(
    template: x509.Certificate,
    *,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """`template`'s names and extensions with a fixed key, serial and validity, signed deterministically."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext in template.extensions:
        value: x509.ExtensionType = ext.value
        if isinstance(value, x509.SubjectKeyIdentifier):
            value = x509.SubjectKeyIdentifier.from_public_key(public_key)
        builder = builder.add_extension(value, critical=ext.critical)
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


@dataclass(frozen=True, slots=True)
class Participant:
    label: str
    identity: Identity
    issuer: str
    serial: int


@dataclass(frozen=True, slots=True)
class FixedCA:
    label: str
    ca: CertificateAuthority
    serial: int


def make_ca(label: str, name: str, serial: int) -> FixedCA:
    key = derive_key(label)
    template = CertificateAuthority.create(name).cert
    cert = restamp(
        template,
        public_key=key.public_key(),
        issuer_key=key,
        serial=serial,
        not_before=CA_NOT_BEFORE,
        not_after=CERT_NOT_AFTER,
    )
    return FixedCA(label=label, ca=CertificateAuthority(cert=cert, key=key), serial=serial)


def make_participant(
    label: str,
    issuer: FixedCA,
    role: Role,
    serial: int,
    *,
    not_before: dt.datetime = CERT_NOT_BEFORE,
    not_after: dt.datetime = CERT_NOT_AFTER,
) -> Participant:
    key = derive_key(label)
    template = issuer.ca.issue(role, key.public_key(), not_before=not_before, validity=not_after - not_before)
    cert = restamp(
        template,
        public_key=key.public_key(),
        issuer_key=issuer.ca.key,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
    )
    return Participant(label, Identity.from_objects(key, cert), issuer.label, serial)


@dataclass(frozen=True, slots=True)
class Cast:
    """Everyone who signs something in the vectors."""

    ca: FixedCA
    foreign_ca: FixedCA
    enterprise: Participant
    bank: Participant
    node: Participant
    enterprise_expired: Participant
    enterprise_foreign: Participant
    # Data providers: the signer of provenance.json's batch, and one of another city.
    provider: Participant
    provider_other_city: Participant

    @property
    def participants(self) -> tuple[Participant, ...]:
        return (
            self.enterprise,
            self.bank,
            self.node,
            self.enterprise_expired,
            self.enterprise_foreign,
            self.provider,
            self.provider_other_city,
        )


def make_cast() -> Cast:
    from creditnet_devkit.vectors import provenance as provenance_vectors

    ca = make_ca("ca", "creditnet test-vector CA", 0x01)
    foreign = make_ca("foreign-ca", "a CA the network does not trust", 0x02)
    enterprise = Role.enterprise(ENTERPRISE_USCC)
    provider, provider_other_city = provenance_vectors.provider_roles()
    return Cast(
        ca=ca,
        foreign_ca=foreign,
        enterprise=make_participant("enterprise", ca, enterprise, 0x1001),
        bank=make_participant("bank", ca, Role.bank(BANK_CODE), 0x1002),
        node=make_participant("node-340100", ca, Role.node(pilot.HEFEI), 0x1003),
        enterprise_expired=make_participant(
            "enterprise-expired",
            ca,
            enterprise,
            0x1004,
            not_before=EXPIRED_NOT_BEFORE,
            not_after=EXPIRED_NOT_AFTER,
        ),
        enterprise_foreign=make_participant("enterprise-foreign", foreign, enterprise, 0x2001),
        provider=make_participant("provider-340100-exchange", ca, provider, 0x1006),
        provider_other_city=make_participant("provider-310000-exchange", ca, provider_other_city, 0x1007),
    )


# --- the signed objects ------------------------------------------------------


def consent_terms() -> consent_mod.ConsentTerms:
    return consent_mod.ConsentTerms(
        consent_id=CONSENT_ID,
        enterprise_uscc=ENTERPRISE_USCC,
        bank_code=BANK_CODE,
        purpose=Purpose.LOAN_APPLICATION,
        categories=(Category.UTILITY, Category.TAX, Category.LOAN),
        cities=(pilot.HEFEI, pilot.SHANGHAI),
        data_from=dt.date(2022, 1, 1),
        data_to=dt.date(2025, 5, 31),
        not_before=dt.datetime(2025, 5, 1, tzinfo=UTC),
        not_after=dt.datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC),
        max_uses=10,
        issued_at=dt.datetime(2025, 5, 1, tzinfo=UTC),
    )


def query_envelope(
    bank: Identity, consent_env: envelope_pb2.SignedEnvelope, *, suite: AnswerSuite = DEFAULT_SUITE
) -> envelope_pb2.SignedEnvelope:
    from creditnet_devkit.vectors import sealed

    return query_mod.build(
        bank,
        consent_env,
        enterprise_uscc=ENTERPRISE_USCC,
        purpose=Purpose.LOAN_APPLICATION,
        categories=(Category.TAX,),
        cities=(pilot.HEFEI,),
        lifetime=dt.timedelta(minutes=2),
        now=VERIFY_AT - dt.timedelta(seconds=30),
        query_id=QUERY_ID,
        answer_key=sealed.answer_key(suite),
    )


# When the provider signed the batch the answer discloses a record of.
BATCH_SIGNED_AT: Final = dt.datetime(2025, 5, 2, 9, 0, 0, tzinfo=UTC)


def provenance_batch(cast: Cast) -> Any:
    from creditnet_devkit.vectors import provenance as provenance_vectors

    return provenance_vectors.make_batch(cast, ENTERPRISE_USCC, BATCH_SIGNED_AT)


def answer_payload(query_env: envelope_pb2.SignedEnvelope, cast: Cast) -> bytes:
    terms = consent_terms()
    batch = provenance_batch(cast)
    answer = query_pb2.CityAnswer(
        query_id=QUERY_ID,
        query_digest=digest(query_env.payload),
        city=pilot.HEFEI.proto,
        enterprise_uscc=ENTERPRISE_USCC,
        as_of=ts_to_proto(VERIFY_AT),
        categories=[Category.TAX.proto],
        data_from=date_to_proto(terms.data_from),
        data_to=date_to_proto(terms.data_to),
        profile=records_pb2.EnterpriseProfile(
            uscc=ENTERPRISE_USCC,
            name="合肥示例科技有限公司",
            industry="software",
            home_city=pilot.HEFEI.proto,
            registered_capital_fen=500_000_000,
            founded=common_pb2.Date(year=2016, month=3, day=8),
        ),
        batches=[batch.envelope],
        proven_records=[batch.proven(0)],
    )
    return answer.SerializeToString(deterministic=True)


@dataclass(frozen=True, slots=True)
class Envelopes:
    consent: envelope_pb2.SignedEnvelope
    revocation: envelope_pb2.SignedEnvelope
    query: envelope_pb2.SignedEnvelope
    answer: envelope_pb2.SignedEnvelope


def make_envelopes(cast: Cast) -> Envelopes:
    consent_env = consent_mod.grant(cast.enterprise.identity, consent_terms())
    query_env = query_envelope(cast.bank.identity, consent_env)
    return Envelopes(
        consent=consent_env,
        revocation=consent_mod.revoke(
            cast.enterprise.identity,
            consent_env,
            reason="the loan application was withdrawn",
            now=VERIFY_AT - dt.timedelta(hours=1),
        ),
        query=query_env,
        answer=sign(ANSWER_TYPE, answer_payload(query_env, cast), cast.node.identity),
    )


# --- negative vectors ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Negative:
    name: str
    description: str
    envelope: envelope_pb2.SignedEnvelope
    # "envelope": EnvelopeVerifier.verify(expected_type, what); "consent":
    # verify_consent then policy.check_window; "query": query.authorize(city).
    check: str
    expected_type: str
    what: str
    rule: str
    code: str
    at: dt.datetime = VERIFY_AT
    node_city: City | None = None


def _copy(env: envelope_pb2.SignedEnvelope) -> envelope_pb2.SignedEnvelope:
    out = envelope_pb2.SignedEnvelope()
    out.CopyFrom(env)
    return out


def make_negatives(cast: Cast, envs: Envelopes) -> list[Negative]:
    consent_payload = envs.consent.payload

    swapped = _copy(envs.consent)
    swapped.payload_type = QUERY_TYPE

    flipped = _copy(envs.consent)
    flipped.payload = consent_payload[:-1] + bytes([consent_payload[-1] ^ 0x01])

    bad_sig = _copy(envs.consent)
    sig = bytearray(bad_sig.signatures[0].signature)
    sig[-1] ^= 0x01
    bad_sig.signatures[0].signature = bytes(sig)

    two_sigs = _copy(envs.consent)
    two_sigs.signatures.add().CopyFrom(envs.consent.signatures[0])

    query_msg = query_pb2.CreditQuery()
    query_msg.ParseFromString(envs.query.payload)

    def consent_case(
        name: str, description: str, env: envelope_pb2.SignedEnvelope, rule: str, code: str
    ) -> Negative:
        return Negative(name, description, env, "consent", CONSENT_TYPE, "consent", rule, code)

    def query_case(
        name: str, description: str, change: Callable[[query_pb2.CreditQuery], object], rule: str, code: str
    ) -> Negative:
        msg = query_pb2.CreditQuery()
        msg.CopyFrom(query_msg)
        change(msg)
        env = sign(QUERY_TYPE, msg.SerializeToString(deterministic=True), cast.bank.identity)
        return Negative(
            name, description, env, "query", QUERY_TYPE, "query", rule, code, node_city=pilot.HEFEI
        )

    return [
        Negative(
            "payload-type-swapped",
            "The enterprise's valid consent envelope with payload_type changed to the query type. "
            "The type is part of the signed PAE, so the signature no longer verifies.",
            swapped,
            "envelope",
            QUERY_TYPE,
            "query",
            "query.signature",
            "UNAUTHENTICATED",
        ),
        consent_case(
            "payload-bit-flipped",
            "The consent envelope with the lowest bit of the last payload byte flipped.",
            flipped,
            "consent.signature",
            "UNAUTHENTICATED",
        ),
        consent_case(
            "signature-bit-flipped",
            "The consent envelope with the lowest bit of the last signature byte flipped.",
            bad_sig,
            "consent.signature",
            "UNAUTHENTICATED",
        ),
        consent_case(
            "two-signatures",
            "The consent envelope carrying its (valid) signature twice: version 1 allows exactly one.",
            two_sigs,
            "consent.signature",
            "UNAUTHENTICATED",
        ),
        consent_case(
            "consent-signed-by-bank",
            "The same consent payload signed with the bank's certificate: a valid signature "
            "by the wrong role. Only the enterprise the consent names may sign it.",
            sign(CONSENT_TYPE, consent_payload, cast.bank.identity),
            "consent.signer",
            "PERMISSION_DENIED",
        ),
        consent_case(
            "consent-certificate-from-foreign-ca",
            "The same consent payload signed by a certificate for the same enterprise, "
            "issued by a CA the network does not trust.",
            sign(CONSENT_TYPE, consent_payload, cast.enterprise_foreign.identity),
            "consent.cert.untrusted",
            "UNAUTHENTICATED",
        ),
        consent_case(
            "consent-certificate-expired",
            "The same consent payload signed by the enterprise's certificate that expired "
            "at the end of 2024.",
            sign(CONSENT_TYPE, consent_payload, cast.enterprise_expired.identity),
            "consent.cert.expired",
            "UNAUTHENTICATED",
        ),
        Negative(
            "query-signed-by-enterprise",
            "The query payload signed with the enterprise's certificate: only banks sign queries.",
            sign(QUERY_TYPE, envs.query.payload, cast.enterprise.identity),
            "query",
            QUERY_TYPE,
            "query",
            "query.signer_role",
            "PERMISSION_DENIED",
            node_city=pilot.HEFEI,
        ),
        Negative(
            "query-expired",
            "The valid query, checked ten minutes after it was issued (it lives two minutes).",
            envs.query,
            "query",
            QUERY_TYPE,
            "query",
            "query.expired",
            "FAILED_PRECONDITION",
            at=VERIFY_AT + dt.timedelta(minutes=10),
            node_city=pilot.HEFEI,
        ),
        query_case(
            "query-id-not-canonical",
            "The valid query's terms with query_id in upper case, signed by the bank: ids have one "
            "spelling (lower-case 8-4-4-4-12), or a second spelling would be answered again.",
            lambda m: setattr(m, "query_id", m.query_id.upper()),
            "query.malformed",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-uscc-not-canonical",
            "The valid query's terms with enterprise_uscc in lower case, signed by the bank: USCCs "
            "travel in canonical form only.",
            lambda m: setattr(m, "enterprise_uscc", m.enterprise_uscc.lower()),
            "query.uscc",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-category-repeated",
            "The valid query's terms with its category listed twice, signed by the bank.",
            lambda m: m.categories.append(m.categories[0]),
            "query.malformed",
            "INVALID_ARGUMENT",
        ),
        *answer_key_cases(query_case),
        Negative(
            "query-city-not-in-scope",
            "The valid query (it asks Hefei only) checked by the Nanjing node.",
            envs.query,
            "query",
            QUERY_TYPE,
            "query",
            "query.city_not_in_scope",
            "PERMISSION_DENIED",
            node_city=pilot.NANJING,
        ),
    ]


def answer_key_cases(
    query_case: Callable[[str, str, Callable[[query_pb2.CreditQuery], object], str, str], Negative],
) -> list[Negative]:
    """The answer-key refusals (rule 12a, docs/protocol.md "Sealed answers"): the valid query's
    terms with its answer key changed, re-signed by the bank."""

    def key(suite: int, public_key: bytes) -> Callable[[query_pb2.CreditQuery], object]:
        def change(m: query_pb2.CreditQuery) -> None:
            m.answer_key.suite = suite  # type: ignore[assignment]
            m.answer_key.public_key = public_key

        return change

    hybrid = AnswerSuite.MLKEM768_X25519.proto
    x25519_only = AnswerSuite.X25519.proto
    return [
        query_case(
            "query-answer-key-missing",
            "The valid query's terms without an answer key, signed by the bank: answers travel only "
            "sealed, so there is no query without one.",
            lambda m: m.ClearField("answer_key"),
            "query.answer_key_missing",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-answer-key-suite-unspecified",
            "The valid query's answer key with suite HPKE_SUITE_UNSPECIFIED (0).",
            lambda m: setattr(m.answer_key, "suite", 0),
            "query.answer_key_suite",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-answer-key-suite-unknown",
            "The valid query's answer key with suite 3, a value no version of the protocol defines.",
            lambda m: setattr(m.answer_key, "suite", 3),
            "query.answer_key_suite",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-answer-key-too-long",
            "The valid query's ML-KEM-768 + X25519 answer key with one byte more (1217 bytes).",
            lambda m: setattr(m.answer_key, "public_key", m.answer_key.public_key + b"\x00"),
            "query.answer_key",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-answer-key-of-the-other-suite",
            "The valid query's 1216-byte hybrid key labelled as an X25519 key (which is 32 bytes).",
            lambda m: setattr(m.answer_key, "suite", x25519_only),
            "query.answer_key",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-answer-key-mlkem-out-of-range",
            "A hybrid answer key of 1216 bytes 0xff: the ML-KEM-768 coefficients are out of range.",
            key(hybrid, b"\xff" * 1216),
            "query.answer_key",
            "INVALID_ARGUMENT",
        ),
        query_case(
            "query-answer-key-x25519-low-order",
            "An X25519 answer key that is the point 0 (32 zero bytes): a low-order point gives an "
            "all-zero shared secret.",
            key(x25519_only, bytes(32)),
            "query.answer_key",
            "INVALID_ARGUMENT",
        ),
    ]


# --- rendering -----------------------------------------------------------------


def time_text(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def message_json(msg: Message) -> Any:
    return json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))


def _payload_json(payload_type: str, payload: bytes) -> Any:
    cls: type[Message] = {
        CONSENT_TYPE: consent_pb2.Consent,
        REVOCATION_TYPE: consent_pb2.ConsentRevocation,
        QUERY_TYPE: query_pb2.CreditQuery,
        ANSWER_TYPE: query_pb2.CityAnswer,
    }[payload_type]
    msg = cls()
    msg.ParseFromString(payload)
    return message_json(msg)


def _cert_entry(label: str, issuer: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Any:
    numbers = key.private_numbers()
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        uris, dns, ips = [], [], []
    return {
        "label": label,
        "issuer": issuer,
        "role_uri": uris[0] if uris else None,
        "dns_names": dns,
        "ip_addresses": ips,
        "serial": cert.serial_number,
        "not_before": time_text(cert.not_valid_before_utc),
        "not_after": time_text(cert.not_valid_after_utc),
        "private_scalar_hex": f"{numbers.private_value:064x}",
        "public_key_uncompressed_hex": pub.hex(),
        "private_key_pem": key_to_pem(key).decode(),
        "certificate_der_hex": _der(cert).hex(),
        "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }


def _labels(cast: Cast) -> dict[bytes, str]:
    return {p.identity.chain_der[0]: p.label for p in cast.participants}


def _envelope_entry(env: envelope_pb2.SignedEnvelope, labels: dict[bytes, str]) -> Any:
    return {
        "envelope_hex": env.SerializeToString(deterministic=True).hex(),
        "envelope_json": message_json(env),
        "signatures": [
            {
                "signature_hex": s.signature.hex(),
                "certificate_chain": [labels.get(c, "unknown") for c in s.certificate_chain],
            }
            for s in env.signatures
        ],
    }


def render(
    cast: Cast,
    envs: Envelopes,
    negatives: Sequence[Negative],
    log_keys: Sequence[Any] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """File name -> exact file content; `extra` documents (the chain's) are added as they are."""
    labels = _labels(cast)
    keys = {
        "format_version": FORMAT_VERSION,
        "description": "Fixed keys and certificates of the test vectors. " + _WARNING,
        "see": _DOC,
        "key_derivation": (
            "scalar = (int(SHA-256('creditnet test vector key v1: ' || label)) mod (n - 1)) + 1, "
            "n the order of P-256"
        ),
        "trust_anchor": cast.ca.label,
        "certificate_authorities": [
            _cert_entry(f.label, f.label, f.ca.cert, f.ca.key) for f in (cast.ca, cast.foreign_ca)
        ],
        "participants": [
            _cert_entry(p.label, p.issuer, p.identity.cert, p.identity.key) for p in cast.participants
        ],
        "log_keys_derivation": "Ed25519 seed = SHA-256('creditnet test vector key v1: ' || label)",
        "log_keys": list(log_keys),
    }
    pae_cases = [
        ("http://example.com/HelloWorld", b"hello world"),
        (QUERY_TYPE, b""),
        (CONSENT_TYPE, bytes([0x0A, 0x03, 0x61, 0x62, 0x63, 0x20, 0x00])),
    ]
    pae_doc = {
        "format_version": FORMAT_VERSION,
        "description": "PAE(type, body) = 'DSSEv1' SP LEN(type) SP type SP LEN(body) SP body",
        "see": _DOC,
        "vectors": [
            {"payload_type": t, "payload_hex": body.hex(), "pae_hex": pae(t, body).hex()}
            for t, body in pae_cases
        ],
    }
    positives = []
    for name, env, description in (
        ("consent", envs.consent, "The enterprise grants the bank a consent."),
        ("query", envs.query, "The bank's query relying on that consent (embedded as field 9)."),
        ("answer", envs.answer, "The Hefei node's signed answer to that query."),
        ("revocation", envs.revocation, "The enterprise revokes the consent."),
    ):
        p = pae(env.payload_type, env.payload)
        positives.append(
            {
                "name": name,
                "description": description,
                "payload_type": env.payload_type,
                "payload_message": PAYLOAD_MESSAGES[env.payload_type],
                "payload_hex": env.payload.hex(),
                "payload_sha256_hex": digest(env.payload).hex(),
                "payload_json": _payload_json(env.payload_type, env.payload),
                "pae_hex": p.hex(),
                "pae_sha256_hex": hashlib.sha256(p).hexdigest(),
                **_envelope_entry(env, labels),
                "verify_at": time_text(VERIFY_AT),
                "expect": "valid",
            }
        )
    envelopes_doc = {
        "format_version": FORMAT_VERSION,
        "description": (
            "Valid envelopes. Each verifies at verify_at against the trust anchor of keys.json "
            "with the signature algorithm ECDSA P-256 / SHA-256 over PAE(payload_type, payload)."
        ),
        "see": _DOC,
        "vectors": positives,
    }
    negative_doc = {
        "format_version": FORMAT_VERSION,
        "description": (
            "Envelopes a verifier must refuse, with the rule id and gRPC status code of the refusal. "
            "check 'envelope': the envelope checks of expected_type; 'consent': the envelope checks, "
            "then the consent's signer, fields and time window; 'query': every stateless rule a node "
            "applies, as the node of node_city."
        ),
        "see": _DOC,
        "vectors": [
            {
                "name": n.name,
                "description": n.description,
                "check": n.check,
                "expected_type": n.expected_type,
                "node_city": n.node_city.value if n.node_city else None,
                "verify_at": time_text(n.at),
                **_envelope_entry(n.envelope, labels),
                "expect": {"rule": n.rule, "code": n.code},
            }
            for n in negatives
        ],
    }
    docs = {
        "keys.json": keys,
        "pae.json": pae_doc,
        "envelopes.json": envelopes_doc,
        "negative.json": negative_doc,
        **(extra or {}),
    }
    return {
        name: (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        for name, doc in docs.items()
    }


def generate() -> dict[str, bytes]:
    """Every file of docs/test-vectors/v2 but the directory's (`vectors.directory`), by name."""
    from creditnet_devkit.vectors import chain as chain_vectors
    from creditnet_devkit.vectors import routing, sealed

    cast = make_cast()
    # Served-for-another-city cases of routing.json need a second node.
    other_node = make_participant("node-320100", cast.ca, Role.node(pilot.NANJING), 0x1005)
    envs = make_envelopes(cast)
    chain = chain_vectors.make_chain(cast, envs)
    sealed_cases = sealed.make_cases(cast, envs.consent)
    return render(
        cast,
        envs,
        make_negatives(cast, envs),
        log_keys=chain_vectors.log_keys_json(chain.keys),
        extra={
            **chain_vectors.render(chain, chain_vectors.make_chain_negatives(chain)),
            "sealed.json": sealed.render(sealed_cases, message_json),
            "routing.json": routing.render(cast, VERIFY_AT, other_node),
            "provenance.json": _provenance(cast),
        },
    )


def _provenance(cast: Cast) -> Any:
    from creditnet_devkit.vectors import provenance as provenance_vectors

    batch = provenance_batch(cast)
    refused = provenance_vectors.refused_cases(batch, ENTERPRISE_USCC)
    return provenance_vectors.render(batch, refused, message_json, time_text(VERIFY_AT))
