"""The credit-chain test vectors (docs/chain.md): each valid one verifies, each negative one fails
for its documented reason, read from the JSON the way a client in another language would and
checked with the reference verification code. (That the files are what the generator writes is
`test_vectors.py::test_regenerating_gives_the_published_files_byte_for_byte`.)"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import json_format

from creditnet.chain.checkpoint import Checkpoint
from creditnet.chain.merkle import (
    EMPTY_ROOT,
    ProofError,
    leaf_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from creditnet.chain.network import NetworkCheckpointError, verify_network_response
from creditnet.chain.note import NoteSignature, Signer, VerifierKey, cosignature_message, key_id
from creditnet.chain.receipts import ReceiptError, check_commitment, verify_checkpoint, verify_receipt
from creditnet.errors import Unauthenticated
from creditnet.pki import TrustStore, role_of
from creditnet.v2 import aggregator_pb2, chain_pb2
from creditnet_devkit.vectors.cli import default_directory

DIR = default_directory()
ROOT = DIR.parents[2]


def _load(name: str) -> Any:
    return json.loads((DIR / name).read_text(encoding="utf-8"))


KEYS = _load("keys.json")
CHAIN = _load("chain.json")
NEGATIVE = _load("chain-negative.json")
LOG_KEYS = {k["label"]: k for k in KEYS["log_keys"]}
VERIFY_AT = dt.datetime.strptime(CHAIN["verify_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _anchor() -> x509.Certificate:
    entry = next(e for e in KEYS["certificate_authorities"] if e["label"] == KEYS["trust_anchor"])
    return x509.load_der_x509_certificate(bytes.fromhex(entry["certificate_der_hex"]))


@pytest.fixture(scope="module")
def trust() -> TrustStore:
    return TrustStore(_anchor())


def _certs(labels: list[str]) -> list[bytes]:
    return [bytes.fromhex(LOG_KEYS[label]["certificate_der_hex"]) for label in labels]


def _hashes(items: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in items]


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", KEYS["log_keys"], ids=lambda e: e["label"])
def test_log_keys_derive_from_their_labels_and_match_their_certificates(entry: Any) -> None:
    seed = hashlib.sha256(b"creditnet test vector key v1: " + entry["label"].encode()).digest()
    assert entry["seed_hex"] == seed.hex()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert entry["public_key_hex"] == public.hex()
    pem = serialization.load_pem_private_key(entry["private_key_pem"].encode(), password=None)
    assert isinstance(pem, ed25519.Ed25519PrivateKey)
    assert pem.private_bytes_raw() == seed
    cert = x509.load_der_x509_certificate(bytes.fromhex(entry["certificate_der_hex"]))
    assert cert == x509.load_pem_x509_certificate(entry["certificate_pem"].encode())
    cert_key = cert.public_key()
    assert isinstance(cert_key, ed25519.Ed25519PublicKey) and cert_key.public_bytes_raw() == public
    assert role_of(cert).uri == entry["role_uri"]
    log, witness = entry["note_keys"]
    assert (log["type"], witness["type"]) == (0x01, 0x04)
    name = entry["role_uri"].removeprefix("creditnet://logkey/")
    expected_log = "creditnet.yrd/network" if name == "national" else f"creditnet.yrd/log/{name}"
    assert (log["name"], witness["name"]) == (expected_log, f"creditnet.yrd/witness/{name}")
    for note_key in (log, witness):
        # key ID = SHA-256(name || 0x0A || type || public key)[:4]
        ident = hashlib.sha256(note_key["name"].encode() + b"\n" + bytes([note_key["type"]]) + public)
        assert note_key["key_id_hex"] == ident.digest()[:4].hex()
        assert key_id(note_key["name"], note_key["type"], public) == int(note_key["key_id_hex"], 16)
        material = base64.b64encode(bytes([note_key["type"]]) + public).decode()
        assert note_key["vkey"] == f"{note_key['name']}+{note_key['key_id_hex']}+{material}"
        assert VerifierKey.parse(note_key["vkey"]).public_key == public


def test_log_key_certificates_validate_only_under_the_trust_anchor(trust: TrustStore) -> None:
    for label, entry in LOG_KEYS.items():
        der = bytes.fromhex(entry["certificate_der_hex"])
        if entry["issuer"] == KEYS["trust_anchor"]:
            assert trust.verify_log_key(der, VERIFY_AT).public_key.hex() == entry["public_key_hex"]
        else:
            with pytest.raises(Unauthenticated) as err:
                trust.verify_log_key(der, VERIFY_AT)
            assert err.value.rule == "cert.untrusted"
            assert label == "logkey-340100-foreign"


# --- entries, tree, proofs, commitment ----------------------------------------------------


@pytest.mark.parametrize("vector", CHAIN["entries"], ids=lambda v: str(v["index"]))
def test_entries_parse_and_hash_to_their_leaf(vector: Any) -> None:
    raw = bytes.fromhex(vector["entry_hex"])
    entry = chain_pb2.LedgerEntry.FromString(raw)
    assert chain_pb2.EntryKind.Name(entry.kind) == vector["kind"]
    assert json_format.MessageToDict(entry, preserving_proto_field_name=True) == vector["entry_json"]
    assert hashlib.sha256(b"\x00" + raw).hexdigest() == vector["leaf_hash_hex"] == leaf_hash(raw).hex()


def test_roots_of_every_size_and_of_the_empty_log() -> None:
    leaves = _hashes([e["leaf_hash_hex"] for e in CHAIN["entries"]])
    assert CHAIN["empty_tree_root_hex"] == hashlib.sha256(b"").hexdigest() == EMPTY_ROOT.hex()
    assert CHAIN["roots"][0] == {"size": 0, "root_hex": EMPTY_ROOT.hex()}
    for root in CHAIN["roots"]:
        assert root_from_leaves(leaves[: root["size"]]).hex() == root["root_hex"]


@pytest.mark.parametrize("vector", CHAIN["inclusion_proofs"], ids=lambda v: f"{v['index']}-{v['tree_size']}")
def test_inclusion_proofs_verify(vector: Any) -> None:
    verify_inclusion(
        bytes.fromhex(vector["leaf_hash_hex"]),
        vector["index"],
        vector["tree_size"],
        _hashes(vector["proof_hex"]),
        bytes.fromhex(vector["root_hex"]),
    )


@pytest.mark.parametrize(
    "vector", CHAIN["consistency_proofs"], ids=lambda v: f"{v['first_size']}-{v['second_size']}"
)
def test_consistency_proofs_verify(vector: Any) -> None:
    verify_consistency(
        vector["first_size"],
        vector["second_size"],
        _hashes(vector["proof_hex"]),
        bytes.fromhex(vector["first_root_hex"]),
        bytes.fromhex(vector["second_root_hex"]),
    )


def test_the_enterprise_commitment_is_the_hash_of_context_zero_uscc_salt() -> None:
    c = CHAIN["enterprise_commitment"]
    preimage = b"creditnet/enterprise/v1\x00" + c["uscc"].encode() + bytes.fromhex(c["salt_hex"])
    assert c["preimage_hex"] == preimage.hex()
    assert c["commitment_hex"] == hashlib.sha256(preimage).hexdigest()
    assert c["in_entries"]
    for i, vector in enumerate(CHAIN["entries"]):
        entry = chain_pb2.LedgerEntry.FromString(bytes.fromhex(vector["entry_hex"]))
        matches = check_commitment(entry, c["uscc"], bytes.fromhex(c["salt_hex"]))
        assert matches == (i in c["in_entries"])


# --- checkpoints, cosignatures, receipts, network ------------------------------------------


def _seed(label: str) -> bytes:
    return bytes.fromhex(LOG_KEYS[label]["seed_hex"])


@pytest.mark.parametrize("vector", CHAIN["checkpoints"], ids=lambda v: v["name"])
def test_checkpoints_and_cosignatures_verify_and_are_exactly_reproducible(
    vector: Any, trust: TrustStore
) -> None:
    text = vector["text"]
    cp = Checkpoint.parse(text)
    assert (cp.origin, cp.size, cp.root_hash.hex()) == (vector["origin"], vector["size"], vector["root_hex"])
    assert text == f"{cp.origin}\n{cp.size}\n{base64.b64encode(cp.root_hash).decode()}\n"
    log = vector["log_signature"]
    assert log["key_name"] == cp.origin  # a log's key name is its origin
    assert bytes.fromhex(log["signed_hex"]) == text.encode()
    signer = Signer.from_seed(log["key_name"], _seed(log["signer"]), 0x01)
    assert f"{signer.key_id:08x}" == log["key_id_hex"]
    assert signer.sign(text.encode()).signature.hex() == log["signature_hex"]  # Ed25519 is deterministic
    line = NoteSignature(log["key_name"], signer.key_id, bytes.fromhex(log["signature_hex"])).encode()
    assert line == log["line"]
    lines = [log["line"]]
    for c in vector["cosignatures"]:
        message = b"cosignature/v1\ntime %d\n" % c["timestamp"] + text.encode()
        assert bytes.fromhex(c["signed_hex"]) == message == cosignature_message(c["timestamp"], text.encode())
        witness = Signer.from_seed(c["key_name"], _seed(c["signer"]), 0x04)
        assert f"{witness.key_id:08x}" == c["key_id_hex"]
        sig = witness.sign(text.encode(), timestamp=c["timestamp"])
        assert sig.signature.hex() == c["timestamp"].to_bytes(8, "big").hex() + c["signature_hex"]
        assert sig.encode() == c["line"]
        lines.append(c["line"])
    assert vector["note"] == text + "\n" + "".join(lines)
    name = cp.origin.removeprefix("creditnet.yrd/log/")
    got = verify_checkpoint(trust, vector["note"], _certs(vector["key_certificates"]), name, vector["quorum"])
    assert len(got.cosignatures) == len(vector["cosignatures"]) >= vector["quorum"]


def test_the_receipt_verifies_and_names_the_enterprise(trust: TrustStore) -> None:
    r = CHAIN["receipt"]
    receipt = chain_pb2.Receipt.FromString(bytes.fromhex(r["receipt_hex"]))
    assert json_format.MessageToDict(receipt, preserving_proto_field_name=True) == r["receipt_json"]
    got = verify_receipt(trust, receipt, r["log"], r["quorum"])
    assert got.index == r["index"]
    assert receipt.entry.hex() == CHAIN["entries"][r["index"]]["entry_hex"]
    assert check_commitment(got.entry, r["uscc"], bytes.fromhex(r["salt_hex"]))


def test_network_checkpoints_verify_from_the_response_alone_and_chain(trust: TrustStore) -> None:
    first, second = CHAIN["network_checkpoints"]
    assert first["previous_note_sha256_hex"] == hashlib.sha256(b"").hexdigest()
    # The hash covers the whole previous note: text, blank line and signature lines, as UTF-8.
    assert second["previous_note_sha256_hex"] == hashlib.sha256(first["note"].encode()).hexdigest()
    for vector in (first, second):
        resp = aggregator_pb2.GetNetworkCheckpointResponse.FromString(bytes.fromhex(vector["response_hex"]))
        assert resp.checkpoint == vector["note"] == vector["text"] + "\n" + vector["signature_line"]
        assert list(resp.key_certificates) == _certs(vector["key_certificates"])
        got = verify_network_response(trust, resp, CHAIN["receipt"]["quorum"])
        assert got.network.sequence == vector["sequence"]
        assert got.network.previous.hex() == vector["previous_note_sha256_hex"]
        assert [cp.checkpoint.origin for cp in got.cities.values()] == vector["city_checkpoints"]


# --- negative vectors ---------------------------------------------------------------------

# What the reference code says, for each reason of docs/chain.md.
MESSAGES = {
    "checkpoint.log_key": r"^no valid log-key certificate for",
    "checkpoint.quorum": r"cosignatures needed|valid witness cosignatures .*are required",
    "checkpoint.signature": r"^checkpoint does not verify: (signature by trusted key \S+ does not verify"
    r"|note has no valid signature by a trusted key)",
    "checkpoint.cosignature": r"^checkpoint does not verify: cosignature by trusted witness \S+ "
    r"does not verify",
    "checkpoint.malformed": r"^checkpoint does not verify: (tree size|root hash|checkpoint (needs|is for))",
    "receipt.tree_size": r"^the proof is for another tree size",
    "receipt.inclusion": r"^the entry is not in the checkpoint",
    "network.signature": r"^(the network checkpoint does not verify"
    r"|no valid log-key certificate for national)",
    "network.city_checkpoint": r"^the checkpoint of \w+ does not verify",
    "network.city_mismatch": r"^the network checkpoint does not name",
    "network.missing": r"^the cosigned checkpoint of \w+ is missing",
}


def _checkpoint(v: Any, trust: TrustStore) -> None:
    certs = _hashes(v["key_certificates_hex"])
    verify_checkpoint(trust, v["note"], certs, v["log"], v["quorum"])


def _receipt(v: Any, trust: TrustStore) -> None:
    verify_receipt(
        trust, chain_pb2.Receipt.FromString(bytes.fromhex(v["receipt_hex"])), v["log"], v["quorum"]
    )


def _network(v: Any, trust: TrustStore) -> None:
    resp = aggregator_pb2.GetNetworkCheckpointResponse.FromString(bytes.fromhex(v["response_hex"]))
    verify_network_response(trust, resp, v["quorum"])


CHECKS: dict[str, Callable[[Any, TrustStore], None]] = {
    "checkpoint": _checkpoint,
    "receipt": _receipt,
    "network": _network,
}


def reason_of(v: Any, trust: TrustStore) -> str:
    """Run the vector's check with the reference code; the documented reason it fails for."""
    if v["check"] == "inclusion":
        args = (bytes.fromhex(v["leaf_hash_hex"]), v["index"], v["tree_size"])
        try:
            verify_inclusion(*args, _hashes(v["proof_hex"]), bytes.fromhex(v["root_hex"]))
        except ProofError:
            return "proof.inclusion"
        return "valid"
    if v["check"] == "consistency":
        roots = bytes.fromhex(v["first_root_hex"]), bytes.fromhex(v["second_root_hex"])
        try:
            verify_consistency(v["first_size"], v["second_size"], _hashes(v["proof_hex"]), *roots)
        except ProofError:
            return "proof.consistency"
        return "valid"
    if v["check"] == "commitment":
        entry = chain_pb2.LedgerEntry.FromString(
            bytes.fromhex(CHAIN["entries"][v["entry_index"]]["entry_hex"])
        )
        if "commitment_hex" in v:
            return (
                "valid" if entry.enterprise_commitment.hex() == v["commitment_hex"] else "commitment.mismatch"
            )
        return (
            "valid"
            if check_commitment(entry, v["uscc"], bytes.fromhex(v["salt_hex"]))
            else "commitment.mismatch"
        )
    try:
        CHECKS[v["check"]](v, trust)
    except (ReceiptError, NetworkCheckpointError) as exc:
        prefix = "network." if v["check"] == "network" else ""
        found = [
            r for r, pattern in MESSAGES.items() if r.startswith(prefix) and re.search(pattern, str(exc))
        ]
        assert len(found) == 1, f"{exc} matches {found}"
        return found[0]
    return "valid"


@pytest.mark.parametrize("vector", NEGATIVE["vectors"], ids=lambda v: v["name"])
def test_chain_negative_vectors_fail_for_the_documented_reason(vector: Any, trust: TrustStore) -> None:
    assert reason_of(vector, trust) == vector["expect"]["reason"]


def test_the_checks_pass_the_valid_objects_the_negatives_are_made_from(trust: TrustStore) -> None:
    hefei_7 = next(c for c in CHAIN["checkpoints"] if c["name"] == "340100-7")
    certs = [LOG_KEYS[label]["certificate_der_hex"] for label in hefei_7["key_certificates"]]
    valid = [
        {
            "check": "checkpoint",
            "log": "340100",
            "quorum": 3,
            "note": hefei_7["note"],
            "key_certificates_hex": certs,
        },
        {"check": "receipt", "log": "340100", "quorum": 3, "receipt_hex": CHAIN["receipt"]["receipt_hex"]},
        {"check": "network", "quorum": 3, "response_hex": CHAIN["network_checkpoints"][1]["response_hex"]},
        {
            "check": "commitment",
            "entry_index": 2,
            "uscc": CHAIN["receipt"]["uscc"],
            "salt_hex": CHAIN["receipt"]["salt_hex"],
        },
    ]
    for v in valid:
        assert reason_of(v, trust) == "valid", v["check"]


def test_every_reason_is_documented_and_used() -> None:
    doc = (ROOT / "docs" / "chain.md").read_text(encoding="utf-8")
    reasons = {*MESSAGES, "proof.inclusion", "proof.consistency", "commitment.mismatch"}
    assert {v["expect"]["reason"] for v in NEGATIVE["vectors"]} == reasons
    for reason in reasons:
        assert f"`{reason}`" in doc, reason
    for v in NEGATIVE["vectors"]:
        assert f"`{v['name']}`" in doc, v["name"]
