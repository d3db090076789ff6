"""Signed envelopes: the exact PAE, signing, every verification refusal, the cache and files."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from creditnet.dates import utcnow
from creditnet.envelope import (
    ANSWER_TYPE,
    CONSENT_TYPE,
    MAX_PAYLOAD_BYTES,
    MAX_SIGNATURE_BYTES,
    PAYLOAD_TYPES,
    QUERY_TYPE,
    REVOCATION_TYPE,
    EnvelopeVerifier,
    load_envelope,
    pae,
    save_envelope,
    sign,
)
from creditnet.errors import CreditnetError, InvalidArgument
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import envelope_pb2

NOW = utcnow().replace(microsecond=0)
# Certificates are issued as of NOW, however long after import a test runs.
ISSUED = NOW - dt.timedelta(minutes=5)


def issued(ca: CertificateAuthority, role: Role, **kw: object) -> Identity:
    return issue_identity(ca, role, not_before=ISSUED, **kw)


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
PAYLOAD = b"\x0a\x24consent-or-query bytes, never re-serialised\x00\xff"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("unit-test CA", not_before=ISSUED)


@pytest.fixture(scope="module")
def bank(ca: CertificateAuthority) -> Identity:
    return issued(ca, Role.bank("B0001"))


@pytest.fixture(scope="module")
def verifier(ca: CertificateAuthority) -> EnvelopeVerifier:
    return EnvelopeVerifier(TrustStore(ca.cert))


def _copy(env: envelope_pb2.SignedEnvelope) -> envelope_pb2.SignedEnvelope:
    out = envelope_pb2.SignedEnvelope()
    out.CopyFrom(env)
    return out


def _refusal(
    verifier: EnvelopeVerifier,
    env: envelope_pb2.SignedEnvelope,
    expected_type: str = CONSENT_TYPE,
    what: str = "consent",
    at: dt.datetime = NOW,
    cache: bool = False,
) -> CreditnetError:
    with pytest.raises(CreditnetError) as err:
        verifier.verify(env, expected_type, what=what, at=at, cache=cache)
    return err.value


# --- PAE -------------------------------------------------------------------------


def test_pae_is_dsse_v1() -> None:
    # The example of the DSSE specification (protocol.md).
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_of_an_empty_body_and_of_binary_bytes() -> None:
    assert pae(QUERY_TYPE, b"") == b"DSSEv1 43 application/vnd.creditnet.query.v2+protobuf 0 "
    body = bytes(range(256))
    assert pae("t", body) == b"DSSEv1 1 t 256 " + body


def test_pae_lengths_count_utf8_bytes_not_characters() -> None:
    assert pae("合肥", b"\x00") == b"DSSEv1 6 " + "合肥".encode() + b" 1 \x00"


@pytest.mark.parametrize("payload_type", sorted(PAYLOAD_TYPES))
def test_payload_types_are_distinct_in_the_pae(payload_type: str) -> None:
    others = PAYLOAD_TYPES - {payload_type}
    assert all(pae(payload_type, PAYLOAD) != pae(o, PAYLOAD) for o in others)


# --- signing and verifying -------------------------------------------------------


def test_sign_then_verify(bank: Identity, verifier: EnvelopeVerifier) -> None:
    env = sign(QUERY_TYPE, PAYLOAD, bank)
    assert env.payload_type == QUERY_TYPE and env.payload == PAYLOAD
    assert list(env.signatures[0].certificate_chain) == list(bank.chain_der)
    got = verifier.verify(env, QUERY_TYPE, what="query", at=NOW)
    assert got.payload == PAYLOAD
    assert got.payload_type == QUERY_TYPE
    assert got.signer.role == bank.role
    assert got.digest == hashlib.sha256(PAYLOAD).digest()


def test_the_signature_is_der_ecdsa_p256_sha256_over_the_pae(bank: Identity) -> None:
    env = sign(ANSWER_TYPE, PAYLOAD, bank)
    sig = env.signatures[0].signature
    assert sig[0] == 0x30 and len(sig) == sig[1] + 2  # a DER SEQUENCE
    bank.key.public_key().verify(sig, pae(ANSWER_TYPE, PAYLOAD), ec.ECDSA(hashes.SHA256()))


def test_signing_is_deterministic(bank: Identity) -> None:
    assert sign(CONSENT_TYPE, PAYLOAD, bank) == sign(CONSENT_TYPE, PAYLOAD, bank)
    assert sign(CONSENT_TYPE, PAYLOAD, bank) != sign(CONSENT_TYPE, PAYLOAD + b"x", bank)


def test_any_valid_signature_verifies_not_only_the_deterministic_one(
    bank: Identity, verifier: EnvelopeVerifier
) -> None:
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    randomised = bank.key.sign(pae(CONSENT_TYPE, PAYLOAD), ec.ECDSA(hashes.SHA256()))
    assert randomised != env.signatures[0].signature
    env.signatures[0].signature = randomised
    assert verifier.verify(env, CONSENT_TYPE, what="consent", at=NOW).payload == PAYLOAD


def test_a_re_encoded_signature_names_the_same_object(bank: Identity, verifier: EnvelopeVerifier) -> None:
    """(r, n - s) verifies too; objects are named by payload digest, never by envelope bytes."""
    env = sign(QUERY_TYPE, PAYLOAD, bank)
    r, s = decode_dss_signature(env.signatures[0].signature)
    twin = _copy(env)
    twin.signatures[0].signature = encode_dss_signature(r, P256_ORDER - s)
    assert twin.SerializeToString() != env.SerializeToString()
    first = verifier.verify(env, QUERY_TYPE, what="query", at=NOW)
    assert verifier.verify(twin, QUERY_TYPE, what="query", at=NOW).digest == first.digest


def test_unknown_payload_types_cannot_be_signed(bank: Identity) -> None:
    with pytest.raises(ValueError, match="unknown payload type"):
        sign("application/json", PAYLOAD, bank)


# --- refusals --------------------------------------------------------------------


def test_an_envelope_of_another_type_is_refused_before_anything_else(
    bank: Identity, verifier: EnvelopeVerifier
) -> None:
    env = sign(REVOCATION_TYPE, PAYLOAD, bank)
    env.signatures[0].signature = b""  # would be refused too, but later
    err = _refusal(verifier, env, CONSENT_TYPE, "consent")
    assert (err.rule, err.code.name) == ("consent.type", "INVALID_ARGUMENT")


def test_a_signature_does_not_carry_over_to_another_type(bank: Identity, verifier: EnvelopeVerifier) -> None:
    """Type confusion: a consent's signature relabelled as a query."""
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    env.payload_type = QUERY_TYPE
    err = _refusal(verifier, env, QUERY_TYPE, "query")
    assert (err.rule, err.code.name) == ("query.signature", "UNAUTHENTICATED")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_flipped_payload_bit_is_refused(
    bank: Identity, verifier: EnvelopeVerifier, data: st.DataObject
) -> None:
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    bit = data.draw(st.integers(0, len(PAYLOAD) * 8 - 1))
    payload = bytearray(PAYLOAD)
    payload[bit // 8] ^= 1 << (bit % 8)
    env.payload = bytes(payload)
    assert _refusal(verifier, env).rule == "consent.signature"


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_flipped_signature_bit_is_refused(
    bank: Identity, verifier: EnvelopeVerifier, data: st.DataObject
) -> None:
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    sig = bytearray(env.signatures[0].signature)
    bit = data.draw(st.integers(0, len(sig) * 8 - 1))
    sig[bit // 8] ^= 1 << (bit % 8)
    env.signatures[0].signature = bytes(sig)
    assert _refusal(verifier, env).rule == "consent.signature"


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x30\x00", b"\x30" * (MAX_SIGNATURE_BYTES + 1)],
    ids=["empty", "empty-sequence", "oversized"],
)
def test_missing_or_malformed_signatures_are_refused(
    bank: Identity, verifier: EnvelopeVerifier, signature: bytes
) -> None:
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    env.signatures[0].signature = signature
    err = _refusal(verifier, env)
    assert (err.rule, err.code.name) == ("consent.signature", "UNAUTHENTICATED")


def test_signature_bounds_are_checked_before_the_certificate_chain(
    bank: Identity, verifier: EnvelopeVerifier
) -> None:
    for signature in (b"", b"\x30" * (MAX_SIGNATURE_BYTES + 1)):
        env = envelope_pb2.SignedEnvelope(payload_type=CONSENT_TYPE, payload=PAYLOAD)
        env.signatures.add(signature=signature, certificate_chain=[b"not a certificate"])
        assert _refusal(verifier, env).rule == "consent.signature"


def test_a_signature_by_another_key_with_the_banks_certificate_is_refused(
    ca: CertificateAuthority, bank: Identity, verifier: EnvelopeVerifier
) -> None:
    other = issued(ca, Role.bank("B0002"))
    env = sign(CONSENT_TYPE, PAYLOAD, other)
    env.signatures[0].ClearField("certificate_chain")
    env.signatures[0].certificate_chain.extend(bank.chain_der)
    assert _refusal(verifier, env).rule == "consent.signature"


@pytest.mark.parametrize("count", [0, 2])
def test_exactly_one_signature_is_required(bank: Identity, verifier: EnvelopeVerifier, count: int) -> None:
    one = sign(CONSENT_TYPE, PAYLOAD, bank)
    env = envelope_pb2.SignedEnvelope(payload_type=CONSENT_TYPE, payload=PAYLOAD)
    for _ in range(count):
        env.signatures.add().CopyFrom(one.signatures[0])
    err = _refusal(verifier, env)
    assert (err.rule, err.code.name) == ("consent.signature", "UNAUTHENTICATED")


def test_an_empty_payload_is_refused(bank: Identity, verifier: EnvelopeVerifier) -> None:
    err = _refusal(verifier, sign(CONSENT_TYPE, b"", bank))
    assert (err.rule, err.code.name) == ("consent.empty", "INVALID_ARGUMENT")


def test_an_oversized_payload_is_refused_before_any_signature_work(
    bank: Identity, verifier: EnvelopeVerifier
) -> None:
    at_limit = sign(CONSENT_TYPE, b"x" * MAX_PAYLOAD_BYTES, bank)
    assert verifier.verify(at_limit, CONSENT_TYPE, what="consent", at=NOW)
    env = envelope_pb2.SignedEnvelope(payload_type=CONSENT_TYPE, payload=b"x" * (MAX_PAYLOAD_BYTES + 1))
    env.signatures.add(signature=b"\x30\x00")
    err = _refusal(verifier, env)
    assert (err.rule, err.code.name) == ("consent.size", "INVALID_ARGUMENT")


def test_certificate_chain_refusals_name_the_envelope(
    ca: CertificateAuthority, bank: Identity, verifier: EnvelopeVerifier
) -> None:
    def with_chain(chain: list[bytes]) -> envelope_pb2.SignedEnvelope:
        env = sign(QUERY_TYPE, PAYLOAD, bank)
        env.signatures[0].ClearField("certificate_chain")
        env.signatures[0].certificate_chain.extend(chain)
        return env

    leaf = bank.chain_der[0]
    foreign = issued(CertificateAuthority.create("other", not_before=ISSUED), Role.bank("B0001"))
    cases = {
        "query.cert.chain": [with_chain([]), with_chain([leaf] * 5)],
        "query.cert.malformed": [with_chain([b"\x30\x00"])],
        "query.cert.untrusted": [sign(QUERY_TYPE, PAYLOAD, foreign)],
    }
    for rule, envs in cases.items():
        for env in envs:
            err = _refusal(verifier, env, QUERY_TYPE, "query")
            assert (err.rule, err.code.name) == (rule, "UNAUTHENTICATED")


def test_an_expired_signer_is_refused(ca: CertificateAuthority, verifier: EnvelopeVerifier) -> None:
    old = issue_identity(
        ca, Role.bank("B0001"), not_before=NOW - dt.timedelta(days=2), validity=dt.timedelta(days=1)
    )
    err = _refusal(verifier, sign(ANSWER_TYPE, PAYLOAD, old), ANSWER_TYPE, "answer")
    assert (err.rule, err.code.name) == ("answer.cert.expired", "UNAUTHENTICATED")


# --- the cache -------------------------------------------------------------------


def test_a_cached_envelope_is_verified_once(ca: CertificateAuthority, bank: Identity) -> None:
    verifier = EnvelopeVerifier(TrustStore(ca.cert))
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    first = verifier.verify(env, CONSENT_TYPE, what="consent", at=NOW, cache=True)
    assert verifier.verify(_copy(env), CONSENT_TYPE, what="consent", at=NOW, cache=True) is first
    # Without cache=True nothing is looked up.
    assert verifier.verify(env, CONSENT_TYPE, what="consent", at=NOW) is not first


def test_a_cached_envelope_does_not_vouch_for_an_altered_copy(
    ca: CertificateAuthority, bank: Identity
) -> None:
    verifier = EnvelopeVerifier(TrustStore(ca.cert))
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    verifier.verify(env, CONSENT_TYPE, what="consent", at=NOW, cache=True)
    altered = _copy(env)
    altered.payload = PAYLOAD + b"\x00"
    assert _refusal(verifier, altered, cache=True).rule == "consent.signature"
    relabelled = _copy(env)
    relabelled.payload_type = QUERY_TYPE
    assert _refusal(verifier, relabelled, QUERY_TYPE, "query", cache=True).rule == "query.signature"


def test_a_cache_hit_still_refuses_a_signer_that_expired_since(ca: CertificateAuthority) -> None:
    verifier = EnvelopeVerifier(TrustStore(ca.cert))
    short = issue_identity(
        ca, Role.bank("B0001"), not_before=NOW - dt.timedelta(hours=1), validity=dt.timedelta(hours=2)
    )
    env = sign(CONSENT_TYPE, PAYLOAD, short)
    verifier.verify(env, CONSENT_TYPE, what="consent", at=NOW, cache=True)
    err = _refusal(verifier, env, at=NOW + dt.timedelta(hours=2), cache=True)
    assert (err.rule, err.code.name) == ("consent.cert.expired", "UNAUTHENTICATED")


def test_the_envelope_cache_is_bounded(ca: CertificateAuthority, bank: Identity) -> None:
    verifier = EnvelopeVerifier(TrustStore(ca.cert), cache_size=2)
    envs = [sign(CONSENT_TYPE, PAYLOAD + bytes([i]), bank) for i in range(3)]
    first = verifier.verify(envs[0], CONSENT_TYPE, what="consent", at=NOW, cache=True)
    for env in envs[1:]:
        verifier.verify(env, CONSENT_TYPE, what="consent", at=NOW, cache=True)
    again = verifier.verify(envs[0], CONSENT_TYPE, what="consent", at=NOW, cache=True)
    assert again == first and again is not first


# --- files -----------------------------------------------------------------------


def test_envelope_json_file_round_trips(tmp_path: Path, bank: Identity, verifier: EnvelopeVerifier) -> None:
    env = sign(CONSENT_TYPE, PAYLOAD, bank)
    path = tmp_path / "sub" / "acme.consent.json"
    save_envelope(env, path)
    doc = json.loads(path.read_text())
    # The protobuf JSON mapping with proto field names; bytes in standard base64.
    assert set(doc) == {"payload_type", "payload", "signatures"}
    assert base64.b64decode(doc["payload"]) == PAYLOAD
    assert base64.b64decode(doc["signatures"][0]["certificate_chain"][0]) == bank.chain_der[0]
    loaded = load_envelope(path)
    assert loaded == env
    assert verifier.verify(loaded, CONSENT_TYPE, what="consent", at=NOW).payload == PAYLOAD


def test_binary_envelope_files_load(tmp_path: Path, bank: Identity) -> None:
    env = sign(REVOCATION_TYPE, PAYLOAD, bank)
    (tmp_path / "r.bin").write_bytes(env.SerializeToString())
    assert load_envelope(tmp_path / "r.bin") == env


def test_bad_envelope_files_are_refused(tmp_path: Path, bank: Identity) -> None:
    not_ours = sign(CONSENT_TYPE, PAYLOAD, bank)
    not_ours.payload_type = "application/json"
    (tmp_path / "foreign.bin").write_bytes(not_ours.SerializeToString())
    (tmp_path / "garbage.json").write_text('{"payload": "not base64!"}')
    (tmp_path / "garbage.bin").write_bytes(b"\xff\xff\xff")
    (tmp_path / "latin1.json").write_bytes(b'{"payload_type": "\xe9"}')
    for name in ("foreign.bin", "garbage.json", "garbage.bin", "latin1.json"):
        with pytest.raises(InvalidArgument) as err:
            load_envelope(tmp_path / name)
        assert err.value.rule == "file.malformed", name
    with pytest.raises(InvalidArgument) as missing:
        load_envelope(tmp_path / "missing.json")
    assert missing.value.rule == "file.unreadable"


def test_verification_never_reserialises_the_payload(bank: Identity, verifier: EnvelopeVerifier) -> None:
    """Unknown fields and non-canonical encodings survive: the signed bytes are what count."""
    odd = b"\x08\x96\x01" + b"\xfa\x07\x03abc"  # a varint field and an unknown field 127
    env = sign(QUERY_TYPE, odd, bank)
    assert verifier.verify(env, QUERY_TYPE, what="query", at=NOW).payload == odd
