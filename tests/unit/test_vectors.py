"""The published test vectors: reproducible byte for byte, and each one does what it says.

The checks read the JSON files the way a client in another language would
(hex and base64 in, bytes out) and verify with the reference implementation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PrivateKey
from google.protobuf import json_format

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.consent import verify_consent, verify_revocation
from creditnet.domain import Category, City
from creditnet.envelope import (
    ANSWER_TYPE,
    CONSENT_TYPE,
    QUERY_TYPE,
    REVOCATION_TYPE,
    EnvelopeVerifier,
    digest,
    pae,
    sign,
)
from creditnet.errors import CreditnetError
from creditnet.pki import Role, TrustStore, role_of
from creditnet.policy import check_window
from creditnet.sealing import DEFAULT_SUITE, AnswerSuite, PrivateKey, parse_answer_key, seal, seal_info
from creditnet.v2 import aggregator_pb2, envelope_pb2, query_pb2, records_pb2
from creditnet_bank.verify import Section, SectionStatus, verify_section
from creditnet_devkit.vectors import cli, core
from creditnet_devkit.vectors import sealed as sealed_vectors

DIR = cli.default_directory()
# The first part of a rule id names what was being verified.
WHAT = {CONSENT_TYPE: "consent", REVOCATION_TYPE: "revocation", QUERY_TYPE: "query", ANSWER_TYPE: "answer"}


def _load(name: str) -> Any:
    return json.loads((DIR / name).read_text(encoding="utf-8"))


KEYS = _load("keys.json")
PAE = _load("pae.json")
POSITIVE = _load("envelopes.json")
NEGATIVE = _load("negative.json")


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _envelope(vector: Any) -> envelope_pb2.SignedEnvelope:
    env = envelope_pb2.SignedEnvelope()
    env.ParseFromString(bytes.fromhex(vector["envelope_hex"]))
    return env


def _cert(label: str) -> x509.Certificate:
    entries = KEYS["certificate_authorities"] + KEYS["participants"]
    entry = next(e for e in entries if e["label"] == label)
    return x509.load_der_x509_certificate(bytes.fromhex(entry["certificate_der_hex"]))


@pytest.fixture(scope="module")
def verifier() -> EnvelopeVerifier:
    return EnvelopeVerifier(TrustStore(_cert(KEYS["trust_anchor"])))


def _by_name(doc: Any) -> dict[str, Any]:
    return {v["name"]: v for v in doc["vectors"]}


# --- reproducibility ---------------------------------------------------------------


def test_regenerating_gives_the_published_files_byte_for_byte() -> None:
    files = cli.generate()
    assert sorted(files) == sorted(p.name for p in DIR.glob("*.json"))
    for name, data in files.items():
        assert (DIR / name).read_bytes() == data, f"{name} is stale: run python -m creditnet_devkit.vectors"


def test_the_command_writes_and_checks(tmp_path: Path) -> None:
    assert cli.main([str(tmp_path)]) == 0
    assert cli.main(["--check", str(tmp_path)]) == 0
    target = tmp_path / "negative.json"
    target.write_bytes(target.read_bytes().replace(b"query.expired", b"query.expires"))
    assert cli.main(["--check", str(tmp_path)]) == 1
    (tmp_path / "pae.json").unlink()
    assert cli.main(["--check", str(tmp_path)]) == 1


# --- keys and certificates ----------------------------------------------------------


@pytest.mark.parametrize(
    "entry", KEYS["certificate_authorities"] + KEYS["participants"], ids=lambda e: e["label"]
)
def test_keys_derive_from_their_labels_and_match_their_certificates(entry: Any) -> None:
    label_hash = hashlib.sha256(b"creditnet test vector key v1: " + entry["label"].encode()).digest()
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    scalar = int.from_bytes(label_hash, "big") % (order - 1) + 1
    assert entry["private_scalar_hex"] == f"{scalar:064x}"
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    pem_key = serialization.load_pem_private_key(entry["private_key_pem"].encode(), password=None)
    assert isinstance(pem_key, ec.EllipticCurvePrivateKey)
    assert pem_key.private_numbers() == key.private_numbers()
    cert = x509.load_der_x509_certificate(bytes.fromhex(entry["certificate_der_hex"]))
    assert cert == x509.load_pem_x509_certificate(entry["certificate_pem"].encode())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert entry["public_key_uncompressed_hex"] == point.hex()
    pub = cert.public_key()
    assert (
        isinstance(pub, ec.EllipticCurvePublicKey)
        and pub.public_numbers() == key.public_key().public_numbers()
    )
    assert cert.serial_number == entry["serial"]
    assert cert.not_valid_before_utc == _time(entry["not_before"])
    assert cert.not_valid_after_utc == _time(entry["not_after"])
    issuer = _cert(entry["issuer"])
    issuer_key = issuer.public_key()
    assert isinstance(issuer_key, ec.EllipticCurvePublicKey)
    issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    if entry["role_uri"] is not None:
        assert role_of(cert) == Role.parse_uri(entry["role_uri"])


@pytest.mark.parametrize("label", ["enterprise", "bank", "node-340100"])
def test_participant_certificates_chain_to_the_trust_anchor(label: str) -> None:
    trust = TrustStore(_cert(KEYS["trust_anchor"]))
    der = _cert(label).public_bytes(serialization.Encoding.DER)
    assert trust.verify_chain([der], core.VERIFY_AT).role == role_of(_cert(label))


def test_the_node_certificate_carries_its_pinned_server_name() -> None:
    entry = next(e for e in KEYS["participants"] if e["label"] == "node-340100")
    assert entry["role_uri"] == "creditnet://node/340100"
    assert entry["dns_names"][0] == "340100.node.creditnet"


# --- PAE ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", PAE["vectors"], ids=lambda v: v["payload_type"])
def test_pae_vectors(vector: Any) -> None:
    body = bytes.fromhex(vector["payload_hex"])
    t = vector["payload_type"].encode()
    expected = b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(body)).encode() + b" " + body
    assert bytes.fromhex(vector["pae_hex"]) == expected == pae(vector["payload_type"], body)


def test_the_dsse_specification_example_is_among_the_pae_vectors() -> None:
    dsse = next(v for v in PAE["vectors"] if v["payload_type"] == "http://example.com/HelloWorld")
    assert bytes.fromhex(dsse["pae_hex"]) == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


# --- positive vectors ------------------------------------------------------------------


@pytest.mark.parametrize("vector", POSITIVE["vectors"], ids=lambda v: v["name"])
def test_positive_vectors_verify(vector: Any, verifier: EnvelopeVerifier) -> None:
    env = _envelope(vector)
    # The JSON form is the same envelope (protobuf JSON mapping, base64 bytes).
    from_json = json_format.ParseDict(vector["envelope_json"], envelope_pb2.SignedEnvelope())
    assert from_json == env
    assert env.payload_type == vector["payload_type"]
    assert env.payload.hex() == vector["payload_hex"]
    assert hashlib.sha256(env.payload).hexdigest() == vector["payload_sha256_hex"]
    signing_input = bytes.fromhex(vector["pae_hex"])
    assert signing_input == pae(env.payload_type, env.payload)
    assert hashlib.sha256(signing_input).hexdigest() == vector["pae_sha256_hex"]
    sig = env.signatures[0]
    assert len(env.signatures) == 1 and sig.signature.hex() == vector["signatures"][0]["signature_hex"]
    # Plain ECDSA P-256 / SHA-256 over the PAE with the leaf's key...
    leaf_key = x509.load_der_x509_certificate(sig.certificate_chain[0]).public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    leaf_key.verify(sig.signature, signing_input, ec.ECDSA(hashes.SHA256()))
    # ... and the reference verifier at the vector's time.
    got = verifier.verify(env, vector["payload_type"], what=vector["name"], at=_time(vector["verify_at"]))
    assert got.payload == env.payload
    signer = vector["signatures"][0]["certificate_chain"][0]
    assert got.signer.role == role_of(_cert(signer))
    # The payload is the message the JSON rendering shows.
    assert vector["payload_message"].startswith("creditnet.v2.")


@pytest.mark.parametrize("vector", POSITIVE["vectors"], ids=lambda v: v["name"])
def test_positive_signatures_are_rfc6979_deterministic(vector: Any) -> None:
    """Re-signing the PAE with the published key gives the published signature."""
    signer = vector["signatures"][0]["certificate_chain"][0]
    key = core.derive_key(signer)
    again = key.sign(bytes.fromhex(vector["pae_hex"]), ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    assert again.hex() == vector["signatures"][0]["signature_hex"]


def test_the_query_vector_passes_every_node_rule(verifier: EnvelopeVerifier) -> None:
    vector = _by_name(POSITIVE)["query"]
    aq = query_mod.authorize(verifier, _envelope(vector), city=pilot.HEFEI, now=_time(vector["verify_at"]))
    consent_vector = _by_name(POSITIVE)["consent"]
    assert aq.consent.digest.hex() == consent_vector["payload_sha256_hex"]
    assert aq.terms.query_id == vector["payload_json"]["query_id"]


def test_the_consent_vector_is_in_its_window(verifier: EnvelopeVerifier) -> None:
    vector = _by_name(POSITIVE)["consent"]
    at = _time(vector["verify_at"])
    check_window(verify_consent(verifier, _envelope(vector), at=at).terms, at)


def test_the_revocation_vector_names_the_consent_vector(verifier: EnvelopeVerifier) -> None:
    vector = _by_name(POSITIVE)["revocation"]
    consent_env = _envelope(_by_name(POSITIVE)["consent"])
    rev = verify_revocation(verifier, _envelope(vector), consent_env, at=_time(vector["verify_at"]))
    assert rev.consent_digest.hex() == _by_name(POSITIVE)["consent"]["payload_sha256_hex"]


def _passes_the_answer_checks(section: Section) -> bool:
    """Refused only for want of a credit-chain receipt, checked after every answer check.

    The vectors carry no receipt (receipts need a live, witnessed log), so a
    genuine answer reaches exactly that last check and no further.
    """
    return section.status is SectionStatus.INVALID and section.reason.endswith(
        "the answer carries no credit-chain receipt"
    )


def test_the_answer_vector_passes_the_banks_checks_but_needs_a_receipt(verifier: EnvelopeVerifier) -> None:
    query_env = _envelope(_by_name(POSITIVE)["query"])
    query = query_pb2.CreditQuery()
    query.ParseFromString(query_env.payload)
    answer = _envelope(_by_name(POSITIVE)["answer"])
    section = _sealed_section(answer, query_env)
    got = _verify(verifier, section, query_env, query)
    assert _passes_the_answer_checks(got), got.reason
    # The same sealed answer claimed for another city does not even open.
    section.city = pilot.NANJING.proto
    other = _verify(verifier, section, query_env, query)
    assert other.status is SectionStatus.INVALID and "does not open" in other.reason
    # Sealed afresh for that city (the key is public), the node's signature gives it away.
    resealed = _verify(verifier, _sealed_section(answer, query_env, pilot.NANJING), query_env, query)
    assert resealed.status is SectionStatus.INVALID and "not by the 320100 node" in resealed.reason


def _sealed_section(
    answer: envelope_pb2.SignedEnvelope, query_env: envelope_pb2.SignedEnvelope, city: City = pilot.HEFEI
) -> aggregator_pb2.CitySection:
    """A section with `answer` sealed to the vector query's key as `city`'s answer to it."""
    key = parse_answer_key(query_pb2.CreditQuery.FromString(query_env.payload))
    sealed = seal(key, answer, digest(query_env.payload), city, discloses=True)
    return aggregator_pb2.CitySection(
        city=city.proto, status=aggregator_pb2.SECTION_STATUS_OK, sealed_answer=sealed
    )


def _verify(
    verifier: EnvelopeVerifier,
    section: aggregator_pb2.CitySection,
    query_env: envelope_pb2.SignedEnvelope,
    query: query_pb2.CreditQuery,
) -> Section:
    return verify_section(verifier, section, query_env, query, answer_key=sealed_vectors.answer_key())


# --- negative vectors -------------------------------------------------------------------


@pytest.mark.parametrize("vector", NEGATIVE["vectors"], ids=lambda v: v["name"])
def test_negative_vectors_fail_with_the_documented_rule(vector: Any, verifier: EnvelopeVerifier) -> None:
    env = _envelope(vector)
    assert json_format.ParseDict(vector["envelope_json"], envelope_pb2.SignedEnvelope()) == env
    at = _time(vector["verify_at"])
    with pytest.raises(CreditnetError) as err:
        match vector["check"]:
            case "envelope":
                what = WHAT[vector["expected_type"]]
                verifier.verify(env, vector["expected_type"], what=what, at=at)
            case "consent":
                check_window(verify_consent(verifier, env, at=at).terms, at)
            case "query":
                query_mod.authorize(verifier, env, city=City.parse(vector["node_city"]), now=at)
            case other:
                raise AssertionError(f"unknown check {other!r}")
    assert {"rule": err.value.rule, "code": err.value.code.name} == vector["expect"]


def test_negative_vectors_cover_every_answer_key_refusal() -> None:
    """Rule 12a's three rule ids, each with a vector, and the key's malformed forms each once."""
    rules = {
        v["expect"]["rule"] for v in NEGATIVE["vectors"] if v["expect"]["rule"].startswith("query.answer_key")
    }
    assert rules == {"query.answer_key_missing", "query.answer_key_suite", "query.answer_key"}
    names = set(_by_name(NEGATIVE))
    assert {
        "query-answer-key-too-long",
        "query-answer-key-of-the-other-suite",
        "query-answer-key-mlkem-out-of-range",
        "query-answer-key-x25519-low-order",
    } <= names


def test_answer_key_vectors_change_only_the_answer_key() -> None:
    positive = query_pb2.CreditQuery.FromString(bytes.fromhex(_by_name(POSITIVE)["query"]["payload_hex"]))
    for vector in NEGATIVE["vectors"]:
        if not vector["name"].startswith("query-answer-key"):
            continue
        changed = query_pb2.CreditQuery.FromString(_envelope(vector).payload)
        assert changed.answer_key != positive.answer_key, vector["name"]
        changed.answer_key.CopyFrom(positive.answer_key)
        assert changed == positive, vector["name"]


def test_negative_vectors_differ_from_a_positive_one_in_one_respect() -> None:
    """Each negative is built from the positive consent or query, so the refusal is about that one change."""
    positive = _by_name(POSITIVE)
    consent_payload = bytes.fromhex(positive["consent"]["payload_hex"])
    negative = _by_name(NEGATIVE)
    swapped = _envelope(negative["payload-type-swapped"])
    assert swapped.payload == consent_payload and swapped.payload_type != CONSENT_TYPE
    assert swapped.signatures == _envelope(positive["consent"]).signatures
    flipped = _envelope(negative["payload-bit-flipped"]).payload
    assert len(flipped) == len(consent_payload)
    diff = int.from_bytes(flipped, "big") ^ int.from_bytes(consent_payload, "big")
    assert diff.bit_count() == 1
    for name in (
        "consent-signed-by-bank",
        "consent-certificate-from-foreign-ca",
        "consent-certificate-expired",
    ):
        assert _envelope(negative[name]).payload == consent_payload


# --- what the bank refuses in an answer ------------------------------------------------


def _answer_msg() -> query_pb2.CityAnswer:
    msg = query_pb2.CityAnswer()
    msg.ParseFromString(bytes.fromhex(_by_name(POSITIVE)["answer"]["payload_hex"]))
    return msg


def _resigned(msg: query_pb2.CityAnswer, signer: str = "node") -> envelope_pb2.SignedEnvelope:
    cast = core.make_cast()
    identity = {"node": cast.node, "bank": cast.bank}[signer].identity
    return sign(ANSWER_TYPE, msg.SerializeToString(), identity)


def _bad_answers() -> dict[str, tuple[envelope_pb2.SignedEnvelope, str]]:
    genuine = _envelope(_by_name(POSITIVE)["answer"])
    tampered = envelope_pb2.SignedEnvelope()
    tampered.CopyFrom(genuine)
    tampered.payload = tampered.payload[:-1] + bytes([tampered.payload[-1] ^ 1])

    other_query = _answer_msg()
    other_query.query_digest = hashlib.sha256(b"another query").digest()
    other_id = _answer_msg()
    other_id.query_id = "00000000-0000-4000-8000-000000000000"
    other_enterprise = _answer_msg()
    other_enterprise.enterprise_uscc = "91310000MA1FL8XQ37"
    unasked = _answer_msg()
    unasked.categories.append(Category.LOAN.proto)
    # Records their provider did sign, each outside what the answer may disclose.
    batch = core.provenance_batch(core.make_cast())
    outside_categories = _answer_msg()
    outside_categories.proven_records[0].CopyFrom(batch.proven(3))  # a utility record
    outside_period = _answer_msg()
    outside_period.proven_records[0].CopyFrom(batch.proven(1))  # dated 2021
    record_of_another = _answer_msg()
    record_of_another.proven_records[0].CopyFrom(batch.proven(2))
    unsigned = _answer_msg()
    altered = records_pb2.CreditRecord.FromString(unsigned.proven_records[0].record)
    altered.tax.arrears_fen = 1
    unsigned.proven_records[0].record = altered.SerializeToString()
    return {
        "tampered payload": (tampered, "signature does not verify"),
        "signed by the bank": (_resigned(_answer_msg(), "bank"), "not by the 340100 node"),
        "for another query digest": (_resigned(other_query), "different query"),
        "for another query id": (_resigned(other_id), "different query"),
        "about another enterprise": (_resigned(other_enterprise), "different enterprise"),
        "categories not asked for": (_resigned(unasked), "not asked for"),
        "record outside the disclosed categories": (_resigned(outside_categories), "disclosed categories"),
        "record outside the consented period": (_resigned(outside_period), "consented period"),
        "record about another enterprise": (_resigned(record_of_another), "different enterprise"),
        "record its provider did not sign": (
            _resigned(unsigned),
            "record 0: not in its provider's signed batch",
        ),
    }


def test_the_bank_refuses_answers_that_do_not_match_its_query(verifier: EnvelopeVerifier) -> None:
    query_env = _envelope(_by_name(POSITIVE)["query"])
    query = query_pb2.CreditQuery()
    query.ParseFromString(query_env.payload)
    # The control: the genuine answer, re-signed unchanged, passes.
    control = _sealed_section(_resigned(_answer_msg()), query_env)
    assert _passes_the_answer_checks(_verify(verifier, control, query_env, query))
    for name, (answer, reason) in _bad_answers().items():
        section = _sealed_section(answer, query_env)
        got = _verify(verifier, section, query_env, query)
        assert got.status is SectionStatus.INVALID, name
        assert reason in got.reason, (name, got.reason)
        assert not got.records and got.profile is None, name


# --- sealed answers (sealed.json) ----------------------------------------------------

SEALED = _load("sealed.json")


def _recipient(vector: Any) -> PrivateKey:
    material = vector["recipient"]
    x = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(material["x25519_private_key"]))
    if "mlkem768_seed" not in material:
        return x
    m = mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(material["mlkem768_seed"]))
    return MLKEM768X25519PrivateKey(m, x)


def _suite(vector: Any) -> AnswerSuite:
    return AnswerSuite.from_proto(query_pb2.HpkeSuite.Value(vector["suite"]))


def test_sealed_vectors_cover_both_suites() -> None:
    assert {_suite(v) for v in SEALED["vectors"]} == set(AnswerSuite)


@pytest.mark.parametrize("vector", SEALED["vectors"], ids=lambda v: v["name"])
def test_sealed_vectors_open_to_the_signed_answer(vector: Any, verifier: EnvelopeVerifier) -> None:
    suite = _suite(vector)
    query_env = json_format.ParseDict(vector["query_envelope_json"], envelope_pb2.SignedEnvelope())
    assert digest(query_env.payload).hex() == vector["query_digest"]
    query = query_pb2.CreditQuery.FromString(query_env.payload)
    # The query's signed key is the recipient's public key.
    assert query.answer_key.suite == suite.proto
    assert query.answer_key.public_key.hex() == vector["recipient"]["public_key"]
    info = bytes.fromhex(vector["info"])
    assert info == seal_info(suite, bytes.fromhex(vector["query_digest"]), City(vector["city"]))
    ciphertext = bytes.fromhex(vector["ciphertext"])
    assert len(ciphertext) > vector["enc_length"] == suite.hpke_enc_length
    # Plain RFC 9180: the HPKE suite, the private key and info, nothing of creditnet.
    plaintext = suite.hpke.decrypt(ciphertext, _recipient(vector), info=info)
    assert plaintext.hex() == vector["plaintext"]
    answer = envelope_pb2.SignedEnvelope.FromString(plaintext)
    assert digest(answer.payload).hex() == vector["answer_payload_digest"]
    if suite is DEFAULT_SUITE:
        assert query_env == _envelope(_by_name(POSITIVE)["query"])
        assert answer == _envelope(_by_name(POSITIVE)["answer"])
    # And through the bank's verification: all but the receipt passes.
    section = aggregator_pb2.CitySection(
        city=vector["city"],
        status=aggregator_pb2.SECTION_STATUS_OK,
        sealed_answer=query_pb2.SealedAnswer(suite=suite.proto, ciphertext=ciphertext),
    )
    got = verify_section(verifier, section, query_env, query, answer_key=sealed_vectors.answer_key(suite))
    assert _passes_the_answer_checks(got), got.reason


@pytest.mark.parametrize("negative", SEALED["negative"], ids=lambda v: v["name"])
def test_sealed_negative_vectors_do_not_open(negative: Any) -> None:
    vector = next(v for v in SEALED["vectors"] if v["name"] == negative["vector"])
    suite = _suite(vector)
    with pytest.raises(InvalidTag):
        suite.hpke.decrypt(
            bytes.fromhex(vector["ciphertext"]), _recipient(vector), info=bytes.fromhex(negative["info"])
        )
