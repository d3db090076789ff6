"""The credit-chain test vectors of docs/chain.md, generated deterministically.

Written with the other vectors by ``python -m creditnet_devkit.vectors``. Log keys
are Ed25519 keys whose 32-byte seed is SHA-256 of the same label prefix as
the P-256 keys; Ed25519 signatures (RFC 8032) are deterministic, so every
checkpoint, cosignature and network note here is exact, not verify-only.

Everything is made by the code the network runs: entries are serialised as
the ledger does, trees, proofs and roots come from `chain.tree`, notes from
`chain.note` and `chain.checkpoint` with the key names of `chain.keys`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from creditnet import pilot
from creditnet.chain.checkpoint import Checkpoint, cosign
from creditnet.chain.keys import NATIONAL, NETWORK_ORIGIN, LogKey, log_origin, witness_name
from creditnet.chain.merkle import EMPTY_ROOT, leaf_hash
from creditnet.chain.note import (
    ALG_ED25519,
    Note,
    NoteSignature,
    Signer,
    cosignature_message,
)
from creditnet.chain.receipts import COMMITMENT_CONTEXT, enterprise_commitment
from creditnet.chain.tree import MemoryHashStore, MerkleTree
from creditnet.dates import ts_to_proto
from creditnet.domain import Category, Purpose
from creditnet.envelope import digest
from creditnet.pki import Role
from creditnet.v2 import aggregator_pb2, chain_pb2
from creditnet_devkit.vectors import core

__all__ = [
    "Chain",
    "ChainNegative",
    "LogKeys",
    "VectorLogKey",
    "derive_seed",
    "hefei_entries",
    "log_keys_json",
    "make_chain",
    "make_chain_negatives",
    "make_log_keys",
    "nanjing_entries",
    "network_note",
    "network_response",
    "render",
    "serialise",
    "signed_checkpoint",
    "tree_of",
]

FORMAT_VERSION: Final = 1
_DOC: Final = "docs/chain.md#test-vectors"
_KEY_LABEL_PREFIX: Final = b"creditnet test vector key v1: "
QUORUM: Final = 3
LOG_CERT_SERIALS: Final = {"340100": 0x3001, "320100": 0x3002, "310000": 0x3003, NATIONAL: 0x3004}
FOREIGN_SERIAL: Final = 0x4001
# Cosignature timestamps: POSIX seconds, a little before the verification instant.
_T0: Final = 1748764000


def derive_seed(label: str) -> bytes:
    """The Ed25519 seed of a label: SHA-256(prefix || label)."""
    return hashlib.sha256(_KEY_LABEL_PREFIX + label.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class VectorLogKey:
    label: str
    issuer: str
    serial: int
    key: LogKey

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.key.certificate_der)


def _log_key(label: str, name: str, issuer: core.FixedCA, serial: int) -> VectorLogKey:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(derive_seed(label))
    template = issuer.ca.issue(
        Role.logkey(name),
        private.public_key(),
        not_before=core.CERT_NOT_BEFORE,
        validity=core.CERT_NOT_AFTER - core.CERT_NOT_BEFORE,
    )
    cert = core.restamp(
        template,
        public_key=private.public_key(),
        issuer_key=issuer.ca.key,
        serial=serial,
        not_before=core.CERT_NOT_BEFORE,
        not_after=core.CERT_NOT_AFTER,
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return VectorLogKey(label, issuer.label, serial, LogKey(name, private, der))


@dataclass(frozen=True, slots=True)
class LogKeys:
    by_name: dict[str, VectorLogKey]
    foreign_hefei: VectorLogKey

    def __getitem__(self, name: str) -> VectorLogKey:
        return self.by_name[name]

    @property
    def all(self) -> list[VectorLogKey]:
        return [*self.by_name.values(), self.foreign_hefei]

    def ders(self, *names: str) -> list[bytes]:
        return [self.by_name[n].key.certificate_der for n in names]


def make_log_keys(cast: core.Cast) -> LogKeys:
    keys = {n: _log_key(f"logkey-{n}", n, cast.ca, s) for n, s in LOG_CERT_SERIALS.items()}
    foreign = _log_key("logkey-340100-foreign", "340100", cast.foreign_ca, FOREIGN_SERIAL)
    return LogKeys(keys, foreign)


# --- the logs -------------------------------------------------------------------------

SALT: Final = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def hefei_entries(envs: core.Envelopes) -> list[chain_pb2.LedgerEntry]:
    """Seven entries of the Hefei log, one of each kind and then some."""
    uscc = core.ENTERPRISE_USCC
    at = core.VERIFY_AT

    def query(
        kind: chain_pb2.EntryKind.ValueType,
        time: dt.datetime,
        query_id: str = core.QUERY_ID,
        categories: Sequence[Category] = (Category.TAX,),
        salt: bytes = SALT,
    ) -> chain_pb2.LedgerEntry:
        # The fields the node logs for a query (node/service.py).
        return chain_pb2.LedgerEntry(
            kind=kind,
            time=ts_to_proto(time),
            city=pilot.HEFEI.proto,
            enterprise_commitment=enterprise_commitment(uscc, salt),
            query_id=query_id,
            query_digest=digest(envs.query.payload),
            bank_code=core.BANK_CODE,
            purpose=Purpose.LOAN_APPLICATION.proto,
            categories=[c.proto for c in categories],
            consent_id=core.CONSENT_ID,
            consent_digest=digest(envs.consent.payload),
        )

    refused = query(
        chain_pb2.ENTRY_KIND_QUERY_REFUSED,
        at - dt.timedelta(minutes=5),
        "7d1f0a52-3b8e-4c6d-9e2f-1a0b3c4d5e6f",
        salt=bytes(16),
    )
    # A refusal is logged from the signed query alone (node/service.py): no consent id.
    refused.ClearField("consent_id")
    refused.refusal = "PERMISSION_DENIED consent.city_not_covered"
    answered = query(chain_pb2.ENTRY_KIND_QUERY_ANSWERED, at)
    answered.disclosed_digest = digest(envs.answer.payload)
    answered.records_disclosed = 1
    expired = query(
        chain_pb2.ENTRY_KIND_QUERY_REFUSED,
        at + dt.timedelta(minutes=3),
        "a3c5e7f9-1b2d-4f6a-8c0e-2d4f6a8c0e1b",
    )
    expired.ClearField("consent_id")
    expired.refusal = "FAILED_PRECONDITION consent.expired"
    empty = query(
        chain_pb2.ENTRY_KIND_QUERY_ANSWERED,
        at + dt.timedelta(minutes=4),
        "c9e1a3b5-7d2f-4e6a-b8c0-d2e4f6a8b0c2",
        categories=(),
    )
    empty.disclosed_digest = hashlib.sha256(b"another answer").digest()
    return [
        chain_pb2.LedgerEntry(
            kind=chain_pb2.ENTRY_KIND_RECORDS_SUBMITTED,
            time=ts_to_proto(at - dt.timedelta(days=30)),
            city=pilot.HEFEI.proto,
            provider_id="provider:340100-tax",
            batch_digest=hashlib.sha256(b"batch one").digest(),
            batch_records=1,
        ),
        refused,
        answered,
        chain_pb2.LedgerEntry(
            kind=chain_pb2.ENTRY_KIND_CONSENT_REVOKED,
            time=ts_to_proto(at + dt.timedelta(minutes=1)),
            city=pilot.HEFEI.proto,
            enterprise_commitment=enterprise_commitment(uscc, SALT[::-1]),
            consent_id=core.CONSENT_ID,
            consent_digest=digest(envs.consent.payload),
        ),
        chain_pb2.LedgerEntry(
            kind=chain_pb2.ENTRY_KIND_RECORDS_SUBMITTED,
            time=ts_to_proto(at + dt.timedelta(minutes=2)),
            city=pilot.HEFEI.proto,
            provider_id="provider:340100-grid",
            batch_digest=hashlib.sha256(b"batch two").digest(),
            batch_records=250,
        ),
        expired,
        empty,
    ]


def nanjing_entries() -> list[chain_pb2.LedgerEntry]:
    at = core.VERIFY_AT
    return [
        chain_pb2.LedgerEntry(
            kind=chain_pb2.ENTRY_KIND_RECORDS_SUBMITTED,
            time=ts_to_proto(at - dt.timedelta(hours=i + 1)),
            city=pilot.NANJING.proto,
            provider_id=f"provider:320100-{i}",
            batch_digest=hashlib.sha256(b"320100 batch %d" % i).digest(),
            batch_records=i + 1,
        )
        for i in range(2)
    ]


def serialise(entries: Sequence[chain_pb2.LedgerEntry]) -> list[bytes]:
    # Exactly as the ledger writes its leaves.
    return [e.SerializeToString(deterministic=True) for e in entries]


def tree_of(leaves: Sequence[bytes]) -> MerkleTree:
    tree = MerkleTree(MemoryHashStore())
    if leaves:
        tree.append_many(list(leaves))
    return tree


def signed_checkpoint(
    keys: LogKeys, log: str, size: int, root: bytes, witnesses: Sequence[str], at: int
) -> tuple[Checkpoint, str]:
    cp = Checkpoint(log_origin(log), size, root)
    signed = cp.sign(keys[log].key.log_signer)
    cosigs = [cosign(cp, keys[w].key.witness_signer, at + i) for i, w in enumerate(witnesses)]
    return cp, signed.with_cosignatures(cosigs).encode()


PILOT_CODES: tuple[str, ...] = tuple(c.code for c in pilot.CITIES)


def network_note(
    keys: LogKeys,
    sequence: int,
    previous: str,
    cities: dict[str, tuple[int, bytes]],
    members: Sequence[str] = PILOT_CODES,
) -> str:
    """As the aggregator signs it (aggregator/head.py)."""
    lines = [
        NETWORK_ORIGIN,
        str(sequence),
        base64.b64encode(hashlib.sha256(previous.encode()).digest()).decode(),
    ]
    for code in members:
        size, root = cities.get(code, (0, EMPTY_ROOT))
        lines.append(f"{code} {size} {base64.b64encode(root).decode()}")
    signer = Signer(NETWORK_ORIGIN, keys[NATIONAL].key.private_key, ALG_ED25519)
    text = "".join(f"{line}\n" for line in lines)
    return Note(text, (signer.sign(text.encode()),)).encode()


def network_response(
    note: str, city_notes: Sequence[str], certificates: Sequence[bytes]
) -> aggregator_pb2.GetNetworkCheckpointResponse:
    return aggregator_pb2.GetNetworkCheckpointResponse(
        checkpoint=note, city_checkpoints=list(city_notes), key_certificates=list(dict.fromkeys(certificates))
    )


@dataclass(frozen=True, slots=True)
class Chain:
    """Every valid object of the chain vectors."""

    keys: LogKeys
    entries: list[chain_pb2.LedgerEntry]
    leaves: list[bytes]
    tree: MerkleTree
    hefei_4: tuple[Checkpoint, str]
    hefei_7: tuple[Checkpoint, str]
    nanjing_2: tuple[Checkpoint, str]
    receipt: chain_pb2.Receipt
    network_1: aggregator_pb2.GetNetworkCheckpointResponse
    network_2: aggregator_pb2.GetNetworkCheckpointResponse

    @property
    def hefei_certificates(self) -> list[bytes]:
        return self.keys.ders("340100", "320100", "310000", NATIONAL)


HEFEI_WITNESSES: Final = ("320100", "310000", NATIONAL)
NANJING_WITNESSES: Final = ("340100", "310000", NATIONAL)
RECEIPT_INDEX: Final = 2


def make_chain(cast: core.Cast, envs: core.Envelopes) -> Chain:
    keys = make_log_keys(cast)
    entries = hefei_entries(envs)
    leaves = serialise(entries)
    tree = tree_of(leaves)
    hefei_4 = signed_checkpoint(keys, "340100", 4, tree.root(4), HEFEI_WITNESSES, _T0)
    hefei_7 = signed_checkpoint(keys, "340100", 7, tree.root(7), HEFEI_WITNESSES, _T0 + 600)
    nanjing_tree = tree_of(serialise(nanjing_entries()))
    nanjing_2 = signed_checkpoint(keys, "320100", 2, nanjing_tree.root(2), NANJING_WITNESSES, _T0 + 610)
    certs = keys.ders("340100", "320100", "310000", NATIONAL)
    receipt = chain_pb2.Receipt(
        index=RECEIPT_INDEX,
        entry=leaves[RECEIPT_INDEX],
        tree_size=7,
        inclusion_proof=tree.inclusion_proof(RECEIPT_INDEX, 7),
        checkpoint=hefei_7[1],
        key_certificates=certs,
    )
    national = keys.ders(NATIONAL)
    note_1 = network_note(keys, 1, "", {"340100": (4, hefei_4[0].root_hash)})
    network_1 = network_response(note_1, [hefei_4[1]], [*national, *certs])
    cities_2 = {"340100": (7, hefei_7[0].root_hash), "320100": (2, nanjing_2[0].root_hash)}
    note_2 = network_note(keys, 2, note_1, cities_2)
    # City order: hefei comes after nanjing.
    network_2 = network_response(
        note_2, [nanjing_2[1], hefei_7[1]], [*national, *keys.ders("320100"), *certs]
    )
    return Chain(keys, entries, leaves, tree, hefei_4, hefei_7, nanjing_2, receipt, network_1, network_2)


# --- negative vectors ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainNegative:
    name: str
    description: str
    # checkpoint | receipt | inclusion | consistency | commitment | network
    check: str
    inputs: dict[str, Any]
    reason: str


def _hexes(items: Sequence[bytes]) -> list[str]:
    return [i.hex() for i in items]


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _checkpoint_case(
    name: str, description: str, note: str, certificates: Sequence[bytes], reason: str, log: str = "340100"
) -> ChainNegative:
    inputs = {"log": log, "quorum": QUORUM, "note": note, "key_certificates_hex": _hexes(certificates)}
    return ChainNegative(name, description, "checkpoint", inputs, reason)


def _receipt_case(name: str, description: str, receipt: chain_pb2.Receipt, reason: str) -> ChainNegative:
    inputs = {
        "log": "340100",
        "quorum": QUORUM,
        "receipt_hex": receipt.SerializeToString(deterministic=True).hex(),
    }
    return ChainNegative(name, description, "receipt", inputs, reason)


def _network_case(
    name: str, description: str, response: aggregator_pb2.GetNetworkCheckpointResponse, reason: str
) -> ChainNegative:
    inputs = {"quorum": QUORUM, "response_hex": response.SerializeToString(deterministic=True).hex()}
    return ChainNegative(name, description, "network", inputs, reason)


def make_chain_negatives(chain: Chain) -> list[ChainNegative]:
    keys = chain.keys
    certs = chain.hefei_certificates
    cp7, note7 = chain.hefei_7
    text7 = cp7.to_note_text()
    parsed7 = Note.parse(note7)
    log_line = parsed7.signatures[0]
    cosig_lines = parsed7.signatures[1:]

    def note_with(*sigs: NoteSignature, text: str = text7) -> str:
        return Note(text, tuple(sigs)).encode()

    flipped_sig = NoteSignature(log_line.name, log_line.key_id, _flip_last(log_line.signature))
    changed_ts = cosig_lines[0]
    moved = NoteSignature(
        changed_ts.name,
        changed_ts.key_id,
        (int.from_bytes(changed_ts.signature[:8], "big") + 1).to_bytes(8, "big") + changed_ts.signature[8:],
    )
    # "007": signed by the log and every witness, but not canonical.
    padded = text7.replace("\n7\n", "\n007\n")
    padded_sigs = [keys["340100"].key.log_signer.sign(padded.encode())] + [
        keys[w].key.witness_signer.sign(padded.encode(), timestamp=_T0) for w in HEFEI_WITNESSES
    ]
    own = cosign(cp7, keys["340100"].key.witness_signer, _T0).to_note_signature()
    foreign_signed = cp7.sign(keys.foreign_hefei.key.log_signer)
    foreign_note = foreign_signed.with_cosignatures(
        [cosign(cp7, keys[w].key.witness_signer, _T0) for w in HEFEI_WITNESSES]
    ).encode()
    # Type confusion 1: Hefei's cosignature of Nanjing's checkpoint is an Ed25519
    # signature of "cosignature/v1\ntime T\n" || Nanjing's text. Under Hefei's
    # log key name (type 0x01) it is a valid signature of a note with that text,
    # which the origin check then refuses: the text is no checkpoint.
    cp_n, note_n = chain.nanjing_2
    hefei_cosig = next(s for s in Note.parse(note_n).signatures if s.name == witness_name("340100"))
    ts = int.from_bytes(hefei_cosig.signature[:8], "big")
    confused_text = cosignature_message(ts, cp_n.to_note_text().encode()).decode()
    as_log = NoteSignature(
        log_origin("340100"), keys["340100"].key.log_signer.key_id, hefei_cosig.signature[8:]
    )
    # Type confusion 2: a plain (type 0x01) signature of Nanjing's checkpoint
    # text by Hefei's key, dressed as Hefei's cosignature of it.
    plain = keys["340100"].key.log_signer.sign(cp_n.to_note_text().encode()).signature
    dressed = NoteSignature(
        witness_name("340100"), keys["340100"].key.witness_signer.key_id, ts.to_bytes(8, "big") + plain
    )
    nanjing_sigs = [s for s in Note.parse(note_n).signatures if s.name != witness_name("340100")]

    def receipt_with(**changes: Any) -> chain_pb2.Receipt:
        r = chain_pb2.Receipt()
        r.CopyFrom(chain.receipt)
        for k, v in changes.items():
            if isinstance(v, list):
                getattr(r, k)[:] = v
            else:
                setattr(r, k, v)
        return r

    proof = list(chain.receipt.inclusion_proof)
    n1, n2 = chain.network_1, chain.network_2
    net_note_1 = n1.checkpoint
    wrong_root = network_note(
        keys,
        2,
        net_note_1,
        {"340100": (7, hashlib.sha256(b"x").digest()), "320100": (2, chain.nanjing_2[0].root_hash)},
    )
    city_signed = Note(
        Note.parse(n2.checkpoint).text,
        (
            Signer(NETWORK_ORIGIN, keys["340100"].key.private_key, ALG_ED25519).sign(
                Note.parse(n2.checkpoint).text.encode()
            ),
        ),
    ).encode()
    consistency = chain.tree.consistency_proof(4, 7)
    return [
        _checkpoint_case(
            "checkpoint-signature-bit-flipped",
            "The cosigned Hefei checkpoint at size 7 with the last bit of the log's signature flipped.",
            note_with(flipped_sig, *cosig_lines),
            certs,
            "checkpoint.signature",
        ),
        _checkpoint_case(
            "checkpoint-size-changed",
            "The cosigned Hefei checkpoint with its size line changed from 7 to 8, signatures kept.",
            note7.replace("\n7\n", "\n8\n", 1),
            certs,
            "checkpoint.signature",
        ),
        _checkpoint_case(
            "checkpoint-of-another-log",
            "Nanjing's cosigned checkpoint checked as Hefei's: it carries no signature by Hefei's log key.",
            note_n,
            [*certs, *keys.ders("320100")],
            "checkpoint.signature",
        ),
        _checkpoint_case(
            "checkpoint-size-not-canonical",
            "A Hefei checkpoint whose size line is '007', signed by the log and all three witnesses.",
            Note(padded, tuple(padded_sigs)).encode(),
            certs,
            "checkpoint.malformed",
        ),
        _checkpoint_case(
            "cosignature-as-checkpoint",
            "Hefei's cosignature/v1 signature of Nanjing's checkpoint, presented as Hefei's log signature "
            "of the note text it covers ('cosignature/v1\\ntime <t>\\n' || Nanjing's checkpoint). The "
            "Ed25519 signature verifies over that text, but the text is not a checkpoint of any log: "
            "its second line is 'time <t>', not a tree size.",
            note_with(as_log, text=confused_text),
            certs,
            "checkpoint.malformed",
        ),
        _checkpoint_case(
            "checkpoint-signature-as-cosignature",
            "Nanjing's checkpoint with Hefei's cosignature replaced by Hefei's plain (type 0x01) Ed25519 "
            "signature of the same text, under Hefei's witness name and key ID with the same timestamp: "
            "a cosignature/v1 signs 'cosignature/v1\\ntime <t>\\n' || text, never the text alone.",
            Note(Note.parse(note_n).text, (*nanjing_sigs, dressed)).encode(),
            [*keys.ders("320100", "340100", "310000", NATIONAL)],
            "checkpoint.cosignature",
            log="320100",
        ),
        _checkpoint_case(
            "cosignature-timestamp-changed",
            "The cosigned Hefei checkpoint with the first witness's timestamp increased by one second.",
            note_with(log_line, moved, *cosig_lines[1:]),
            certs,
            "checkpoint.cosignature",
        ),
        _checkpoint_case(
            "two-cosignatures",
            "The Hefei checkpoint with only two of its three witness cosignatures (the quorum is 3).",
            note_with(log_line, *cosig_lines[:2]),
            certs,
            "checkpoint.quorum",
        ),
        _checkpoint_case(
            "cosigned-by-the-log-itself",
            "Two witnesses and Hefei's own witness key cosign Hefei's checkpoint: "
            "a log is not its own witness.",
            note_with(log_line, *cosig_lines[:2], own),
            certs,
            "checkpoint.quorum",
        ),
        _checkpoint_case(
            "same-cosignature-twice",
            "Two witnesses, one of them twice: a witness counts once.",
            note_with(log_line, *cosig_lines[:2], cosig_lines[0]),
            certs,
            "checkpoint.quorum",
        ),
        _checkpoint_case(
            "witness-certificates-missing",
            "The valid cosigned checkpoint with only the log key's certificate: no witness key is known.",
            note7,
            keys.ders("340100"),
            "checkpoint.quorum",
        ),
        _checkpoint_case(
            "log-key-from-foreign-ca",
            "A Hefei checkpoint signed by a 'creditnet://logkey/340100' key certified by a CA the network "
            "does not trust, with its certificate, cosigned by the three real witnesses.",
            foreign_note,
            [keys.foreign_hefei.key.certificate_der, *keys.ders("320100", "310000", NATIONAL)],
            "checkpoint.log_key",
        ),
        _receipt_case(
            "receipt-entry-bit-flipped",
            "The valid receipt with the last bit of its entry flipped.",
            receipt_with(entry=_flip_last(chain.receipt.entry)),
            "receipt.inclusion",
        ),
        _receipt_case(
            "receipt-index-changed",
            "The valid receipt claiming index 3 for the entry at index 2.",
            receipt_with(index=3),
            "receipt.inclusion",
        ),
        _receipt_case(
            "receipt-proof-truncated",
            "The valid receipt without the last hash of its inclusion proof.",
            receipt_with(inclusion_proof=proof[:-1]),
            "receipt.inclusion",
        ),
        _receipt_case(
            "receipt-tree-size-changed",
            "The valid receipt with tree_size 4 while its checkpoint is of size 7.",
            receipt_with(tree_size=4),
            "receipt.tree_size",
        ),
        _receipt_case(
            "receipt-checkpoint-without-quorum",
            "The valid receipt whose checkpoint keeps two cosignatures.",
            receipt_with(checkpoint=note_with(log_line, *cosig_lines[:2])),
            "checkpoint.quorum",
        ),
        ChainNegative(
            "inclusion-proof-hash-flipped",
            "The inclusion proof of entry 2 in the tree of 7 with the last bit of its first hash flipped.",
            "inclusion",
            {
                "leaf_hash_hex": leaf_hash(chain.leaves[2]).hex(),
                "index": 2,
                "tree_size": 7,
                "proof_hex": _hexes([_flip_last(proof[0]), *proof[1:]]),
                "root_hex": chain.tree.root(7).hex(),
            },
            "proof.inclusion",
        ),
        ChainNegative(
            "consistency-proof-hash-flipped",
            "The consistency proof from size 4 to 7 with the last bit of its last hash flipped.",
            "consistency",
            {
                "first_size": 4,
                "second_size": 7,
                "first_root_hex": chain.tree.root(4).hex(),
                "second_root_hex": chain.tree.root(7).hex(),
                "proof_hex": _hexes([*consistency[:-1], _flip_last(consistency[-1])]),
            },
            "proof.consistency",
        ),
        ChainNegative(
            "commitment-with-another-salt",
            "Entry 2's commitment checked against the enterprise's USCC with the salt reversed.",
            "commitment",
            {"entry_index": 2, "uscc": core.ENTERPRISE_USCC, "salt_hex": SALT[::-1].hex()},
            "commitment.mismatch",
        ),
        ChainNegative(
            "commitment-without-the-separator",
            "SHA-256('creditnet/enterprise/v1' || USCC || salt), without the 0x00 after the context, "
            "is not the commitment of entry 2.",
            "commitment",
            {
                "entry_index": 2,
                "uscc": core.ENTERPRISE_USCC,
                "salt_hex": SALT.hex(),
                "commitment_hex": hashlib.sha256(
                    COMMITMENT_CONTEXT.rstrip(b"\x00") + core.ENTERPRISE_USCC.encode() + SALT
                ).hexdigest(),
            },
            "commitment.mismatch",
        ),
        _network_case(
            "network-signed-by-a-city-key",
            "The second network checkpoint signed under the name 'creditnet.yrd/network' by Hefei's log key.",
            network_response(city_signed, n2.city_checkpoints, n2.key_certificates),
            "network.signature",
        ),
        _network_case(
            "network-names-another-root",
            "A second network checkpoint, signed by the national key, naming another root for Hefei at "
            "size 7 than the cosigned checkpoint it carries.",
            network_response(wrong_root, n2.city_checkpoints, n2.key_certificates),
            "network.city_mismatch",
        ),
        _network_case(
            "network-city-checkpoint-left-out",
            "The second network response without Nanjing's checkpoint, which its note names at size 2.",
            network_response(n2.checkpoint, n2.city_checkpoints[1:], n2.key_certificates),
            "network.missing",
        ),
        _network_case(
            "network-without-witness-certificates",
            "The first network response carrying only the national key's certificate: "
            "Hefei's checkpoint cannot be verified.",
            network_response(n1.checkpoint, n1.city_checkpoints, keys.ders(NATIONAL)),
            "network.city_checkpoint",
        ),
    ]


# --- rendering -------------------------------------------------------------------------


def _raw_public(key: VectorLogKey) -> bytes:
    return key.key.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _note_key(signer: Signer) -> dict[str, Any]:
    return {
        "name": signer.name,
        "type": signer.alg,
        "key_id_hex": f"{signer.key_id:08x}",
        "vkey": signer.verifier.encode(),
    }


def log_keys_json(keys: LogKeys) -> list[dict[str, Any]]:
    """The log keys' entries of keys.json."""
    out = []
    for k in keys.all:
        name = k.key.name
        first = (
            Signer(NETWORK_ORIGIN, k.key.private_key, ALG_ED25519) if name == NATIONAL else k.key.log_signer
        )
        cert = k.certificate
        out.append(
            {
                "label": k.label,
                "issuer": k.issuer,
                "role_uri": f"creditnet://logkey/{name}",
                "serial": k.serial,
                "not_before": core.time_text(cert.not_valid_before_utc),
                "not_after": core.time_text(cert.not_valid_after_utc),
                "seed_hex": derive_seed(k.label).hex(),
                "public_key_hex": _raw_public(k).hex(),
                "private_key_pem": k.key.private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
                "note_keys": [_note_key(first), _note_key(k.key.witness_signer)],
                "certificate_der_hex": k.key.certificate_der.hex(),
                "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            }
        )
    return out


def _labels(keys: LogKeys) -> dict[bytes, str]:
    return {k.key.certificate_der: k.label for k in keys.all}


def _checkpoint_json(name: str, keys: LogKeys, cp: Checkpoint, note: str, certs: Sequence[bytes]) -> Any:
    parsed = Note.parse(note)
    text = cp.to_note_text()
    by_name = {k.key.log_signer.name: k for k in keys.all if k.issuer == "ca"} | {
        k.key.witness_signer.name: k for k in keys.all if k.issuer == "ca"
    }
    log_sig, *cosigs = parsed.signatures
    labels = _labels(keys)
    return {
        "name": name,
        "origin": cp.origin,
        "size": cp.size,
        "root_hex": cp.root_hash.hex(),
        "text": text,
        "log_signature": {
            "signer": by_name[log_sig.name].label,
            "key_name": log_sig.name,
            "key_id_hex": f"{log_sig.key_id:08x}",
            "signed_hex": text.encode().hex(),
            "signature_hex": log_sig.signature.hex(),
            "line": log_sig.encode(),
        },
        "cosignatures": [
            {
                "signer": by_name[c.name].label,
                "key_name": c.name,
                "key_id_hex": f"{c.key_id:08x}",
                "timestamp": c.timestamp,
                "signed_hex": cosignature_message(c.timestamp, text.encode()).hex(),
                "signature_hex": c.signature[8:].hex(),
                "line": c.encode(),
            }
            for c in cosigs
        ],
        "note": note,
        "key_certificates": [labels[d] for d in certs],
        "quorum": QUORUM,
    }


def _entry_json(index: int, entry: chain_pb2.LedgerEntry, leaf: bytes) -> Any:
    return {
        "index": index,
        "kind": chain_pb2.EntryKind.Name(entry.kind),
        "entry_hex": leaf.hex(),
        "entry_json": core.message_json(entry),
        "leaf_hash_hex": leaf_hash(leaf).hex(),
    }


def _network_json(keys: LogKeys, resp: aggregator_pb2.GetNetworkCheckpointResponse, previous: str) -> Any:
    parsed = Note.parse(resp.checkpoint)
    labels = _labels(keys)
    return {
        "sequence": int(parsed.text.split("\n")[1]),
        "previous_note_sha256_hex": hashlib.sha256(previous.encode()).hexdigest(),
        "text": parsed.text,
        "signature_line": parsed.signatures[0].encode(),
        "note": resp.checkpoint,
        "city_checkpoints": [Note.parse(n).text.split("\n")[0] for n in resp.city_checkpoints],
        "key_certificates": [labels[d] for d in resp.key_certificates],
        "response_hex": resp.SerializeToString(deterministic=True).hex(),
    }


def render(chain: Chain, negatives: Sequence[ChainNegative]) -> dict[str, Any]:
    """File name -> JSON document."""
    tree = chain.tree
    uscc = core.ENTERPRISE_USCC
    preimage = COMMITMENT_CONTEXT + uscc.encode() + SALT
    n = len(chain.leaves)
    doc = {
        "format_version": FORMAT_VERSION,
        "description": (
            "Valid credit-chain objects: ledger entries and their leaf hashes, the RFC 9162 tree over "
            "them (roots, inclusion and consistency proofs), C2SP checkpoints with their Ed25519 log "
            "signatures and cosignature/v1 cosignatures, a receipt, the enterprise commitment and two "
            "chained network checkpoints. Every signature is Ed25519 (deterministic): re-signing "
            "signed_hex with the signer's seed reproduces signature_hex. Key certificates are named by "
            "their label in keys.json (log_keys)."
        ),
        "see": _DOC,
        "verify_at": core.time_text(core.VERIFY_AT),
        "empty_tree_root_hex": EMPTY_ROOT.hex(),
        "enterprise_commitment": {
            "uscc": uscc,
            "salt_hex": SALT.hex(),
            "preimage_hex": preimage.hex(),
            "commitment_hex": enterprise_commitment(uscc, SALT).hex(),
            "in_entries": [
                i
                for i, e in enumerate(chain.entries)
                if e.enterprise_commitment == enterprise_commitment(uscc, SALT)
            ],
        },
        "entries": [
            _entry_json(i, e, leaf)
            for i, (e, leaf) in enumerate(zip(chain.entries, chain.leaves, strict=True))
        ],
        "roots": [{"size": s, "root_hex": tree.root(s).hex()} for s in range(n + 1)],
        "inclusion_proofs": [
            {
                "index": i,
                "tree_size": s,
                "leaf_hash_hex": leaf_hash(chain.leaves[i]).hex(),
                "proof_hex": _hexes(tree.inclusion_proof(i, s)),
                "root_hex": tree.root(s).hex(),
            }
            for i, s in ((0, 1), (0, 2), (3, 4), (2, 7), (4, 7), (6, 7))
        ],
        "consistency_proofs": [
            {
                "first_size": a,
                "second_size": b,
                "first_root_hex": tree.root(a).hex(),
                "second_root_hex": tree.root(b).hex(),
                "proof_hex": _hexes(tree.consistency_proof(a, b)),
            }
            for a, b in ((0, 7), (1, 7), (3, 7), (4, 7), (6, 7), (7, 7), (2, 5))
        ],
        "checkpoints": [
            _checkpoint_json("340100-4", chain.keys, *chain.hefei_4, chain.hefei_certificates),
            _checkpoint_json("340100-7", chain.keys, *chain.hefei_7, chain.hefei_certificates),
            _checkpoint_json(
                "320100-2",
                chain.keys,
                *chain.nanjing_2,
                chain.keys.ders("320100", "340100", "310000", NATIONAL),
            ),
        ],
        "receipt": {
            "log": "340100",
            "quorum": QUORUM,
            "index": chain.receipt.index,
            "receipt_hex": chain.receipt.SerializeToString(deterministic=True).hex(),
            "receipt_json": core.message_json(chain.receipt),
            "uscc": uscc,
            "salt_hex": SALT.hex(),
        },
        "network_checkpoints": [
            _network_json(chain.keys, chain.network_1, ""),
            _network_json(chain.keys, chain.network_2, chain.network_1.checkpoint),
        ],
    }
    negative = {
        "format_version": FORMAT_VERSION,
        "description": (
            "Credit-chain objects a verifier must refuse, each with the check to run and the reason "
            "(the step of docs/chain.md that fails). Key certificates are DER hex."
        ),
        "see": _DOC,
        "verify_at": core.time_text(core.VERIFY_AT),
        "vectors": [
            {
                "name": v.name,
                "description": v.description,
                "check": v.check,
                **v.inputs,
                "expect": {"reason": v.reason},
            }
            for v in negatives
        ],
    }
    return {"chain.json": doc, "chain-negative.json": negative}
