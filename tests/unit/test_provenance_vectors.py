"""provenance.json checked as a bank in another language would: from the bytes, hashlib and ECDSA alone.

Only generic pieces are used for the valid batch (protobuf parsing of the
published messages, SHA-256, ECDSA P-256, the RFC 9162 fold written out here);
the refused cases then go through the bank SDK, which must refuse each with
the published reason.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from creditnet.domain import City
from creditnet.envelope import EnvelopeVerifier
from creditnet.pki import TrustStore
from creditnet.v2 import envelope_pb2, provenance_pb2, query_pb2, records_pb2
from creditnet_bank.provenance import ProvenanceError, proven_records
from creditnet_devkit.vectors import core

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "test-vectors" / "v2"
DOC: Any = json.loads((VECTORS / "provenance.json").read_text("utf-8"))
KEYS: Any = json.loads((VECTORS / "keys.json").read_text("utf-8"))


def _ca() -> x509.Certificate:
    (entry,) = [c for c in KEYS["certificate_authorities"] if c["label"] == KEYS["trust_anchor"]]
    return x509.load_der_x509_certificate(bytes.fromhex(entry["certificate_der_hex"]))


def _fold(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2, written out as another implementation would."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        assert sn != 0
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    assert sn == 0
    return r


def test_the_batch_signature_verifies_over_pae_with_the_providers_certificate() -> None:
    batch = DOC["batch"]
    env = envelope_pb2.SignedEnvelope.FromString(bytes.fromhex(batch["envelope_hex"]))
    payload_type = batch["payload_type"].encode()
    assert env.payload_type == batch["payload_type"] and env.payload.hex() == batch["payload_hex"]
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(env.payload), env.payload)
    assert pae.hex() == batch["pae_hex"]
    (sig,) = env.signatures
    leaf = x509.load_der_x509_certificate(sig.certificate_chain[0])
    leaf.verify_directly_issued_by(_ca())
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(sig.signature, pae, ec.ECDSA(hashes.SHA256()))
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        "creditnet://provider/340100/340100-exchange?categories=utility,tax"
    ]


def test_every_record_hashes_and_folds_to_the_signed_root() -> None:
    env = envelope_pb2.SignedEnvelope.FromString(bytes.fromhex(DOC["batch"]["envelope_hex"]))
    manifest = provenance_pb2.RecordBatch.FromString(env.payload)
    assert manifest.root.hex() == DOC["batch"]["root_hex"]
    assert manifest.record_count == len(DOC["records"])
    for entry in DOC["records"]:
        raw = bytes.fromhex(entry["record_hex"])
        leaf = hashlib.sha256(b"\x00" + raw).digest()
        assert leaf.hex() == entry["leaf_hash_hex"]
        path = [bytes.fromhex(h) for h in entry["inclusion_path_hex"]]
        assert _fold(leaf, entry["index"], manifest.record_count, path) == manifest.root
        record = records_pb2.CreditRecord.FromString(raw)
        assert record.provider_id == manifest.provider_id and record.city == manifest.city


def test_the_answer_vector_discloses_record_0_of_the_batch_with_its_proof() -> None:
    (answer_vector,) = [
        v for v in json.loads((VECTORS / "envelopes.json").read_text())["vectors"] if v["name"] == "answer"
    ]
    answer = query_pb2.CityAnswer.FromString(bytes.fromhex(answer_vector["payload_hex"]))
    assert [b.SerializeToString(deterministic=True).hex() for b in answer.batches] == [
        DOC["batch"]["envelope_hex"]
    ]
    (proven,) = answer.proven_records
    assert proven.record.hex() == DOC["records"][0]["record_hex"] and proven.leaf_index == 0
    assert [h.hex() for h in proven.inclusion_path] == DOC["records"][0]["inclusion_path_hex"]


@pytest.fixture(scope="module")
def verifier() -> EnvelopeVerifier:
    return EnvelopeVerifier(TrustStore(_ca()))


@pytest.mark.parametrize("case", DOC["refused"], ids=[c["name"] for c in DOC["refused"]])
def test_the_bank_refuses_each_published_record_with_its_reason(
    case: Any, verifier: EnvelopeVerifier
) -> None:
    answer = query_pb2.CityAnswer(
        batches=[envelope_pb2.SignedEnvelope.FromString(bytes.fromhex(case["batch_envelope_hex"]))],
        proven_records=[provenance_pb2.ProvenRecord.FromString(bytes.fromhex(case["proven_record_hex"]))],
    )
    at = core.VERIFY_AT
    assert DOC["verify_at"] == core.time_text(at)
    with pytest.raises(ProvenanceError) as err:
        proven_records(verifier, answer, City(case["city"]))
    assert case["expect_reason_contains"] in str(err.value)


def test_the_same_batch_and_record_pass_the_bank_sdk(verifier: EnvelopeVerifier) -> None:
    env = envelope_pb2.SignedEnvelope.FromString(bytes.fromhex(DOC["batch"]["envelope_hex"]))
    entry = DOC["records"][0]
    answer = query_pb2.CityAnswer(
        batches=[env],
        proven_records=[
            provenance_pb2.ProvenRecord(
                record=bytes.fromhex(entry["record_hex"]),
                batch=0,
                leaf_index=0,
                inclusion_path=[bytes.fromhex(h) for h in entry["inclusion_path_hex"]],
            )
        ],
    )
    (record,) = proven_records(verifier, answer, City("340100"))
    assert record.SerializeToString() == bytes.fromhex(entry["record_hex"])


def test_a_record_disclosed_twice_in_one_answer_is_refused(verifier: EnvelopeVerifier) -> None:
    # Each copy checks out on its own; shown twice it would count twice in the bank's indicators.
    env = envelope_pb2.SignedEnvelope.FromString(bytes.fromhex(DOC["batch"]["envelope_hex"]))
    entry = DOC["records"][0]
    proven = provenance_pb2.ProvenRecord(
        record=bytes.fromhex(entry["record_hex"]),
        batch=0,
        leaf_index=0,
        inclusion_path=[bytes.fromhex(h) for h in entry["inclusion_path_hex"]],
    )
    assert (
        len(
            proven_records(
                verifier, query_pb2.CityAnswer(batches=[env], proven_records=[proven]), City("340100")
            )
        )
        == 1
    )
    twice = query_pb2.CityAnswer(batches=[env], proven_records=[proven, proven])
    with pytest.raises(ProvenanceError, match="record 1: disclosed twice"):
        proven_records(verifier, twice, City("340100"))
