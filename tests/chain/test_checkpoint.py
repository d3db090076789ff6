"""C2SP checkpoints, witness cosignatures and k-of-n verification.

The example checkpoint and cosignature line come from C2SP tlog-checkpoint.md
and tlog-cosignature.md (vectors/signed_note.json).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from creditnet.chain.checkpoint import (
    Checkpoint,
    CheckpointError,
    Cosignature,
    QuorumError,
    SignedCheckpoint,
    cosign,
    open_checkpoint,
    verify_cosignature,
    verify_cosigned,
)
from creditnet.chain.merkle import EMPTY_ROOT, ProofError, leaf_hash, verify_consistency
from creditnet.chain.note import (
    ALG_COSIGNATURE_V1,
    Note,
    NoteError,
    NoteVerificationError,
    Signer,
)
from creditnet.chain.tree import MemoryHashStore, MerkleTree

V: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "signed_note.json").read_text())
ORIGIN = "creditnet.example/yrd/340100"
LOG = Signer.generate(ORIGIN)
WITNESSES = [
    Signer.generate(f"creditnet.example/yrd/{city}", ALG_COSIGNATURE_V1)
    for city in ("310000", "320100", "330100", "330400")
]
WITNESS_KEYS = [w.verifier for w in WITNESSES]
ROOT = leaf_hash(b"some root")


def signed(size: int = 42, root: bytes = ROOT) -> SignedCheckpoint:
    return Checkpoint(ORIGIN, size, root).sign(LOG)


def cosigned(cp: SignedCheckpoint, witnesses: list[Signer], t: int = 1_750_000_000) -> str:
    return cp.with_cosignatures(cosign(cp.checkpoint, w, t + i) for i, w in enumerate(witnesses)).encode()


# --------------------------------------------------------------- format


def test_spec_example_checkpoint() -> None:
    cp = Checkpoint.parse(V["spec_checkpoint_text"])
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.to_note_text() == V["spec_checkpoint_text"]

    note = Note.parse(V["spec_checkpoint_text"] + "\n" + V["spec_log_sig_line"] + V["spec_cosig_line"])
    assert [s.name for s in note.signatures] == ["example.com/behind-the-sofa", "witness.example.com/w1"]
    cosig = Cosignature.parse_line(V["spec_cosig_line"])
    assert cosig.name == "witness.example.com/w1"
    assert cosig.timestamp == V["spec_cosig_timestamp"]
    assert cosig.encode() == V["spec_cosig_line"]
    # The log's key is not published, so the spec note cannot verify against ours.
    with pytest.raises(NoteVerificationError):
        open_checkpoint(note.encode(), [LOG.verifier])


def test_extension_lines_round_trip() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT, ("ext one", "ext two"))
    text = cp.to_note_text()
    assert text.endswith("\next one\next two\n")
    assert Checkpoint.parse(text) == cp


def test_empty_tree_checkpoint() -> None:
    cp = Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    assert cp.to_note_text().split("\n")[1] == "0"
    assert Checkpoint.parse(cp.to_note_text()) == cp


ROOT64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{ORIGIN}\n42\n{ROOT64}", "end with a newline"),
        (f"{ORIGIN}\n42\n", "needs an origin"),
        (f"\n42\n{ROOT64}\n", "origin must not be empty"),
        (f"{ORIGIN}\n042\n{ROOT64}\n", "without leading zeros"),
        (f"{ORIGIN}\n-1\n{ROOT64}\n", "without leading zeros"),
        (f"{ORIGIN}\n+1\n{ROOT64}\n", "without leading zeros"),
        (f"{ORIGIN}\n 1\n{ROOT64}\n", "without leading zeros"),
        (f"{ORIGIN}\n\n{ROOT64}\n", "without leading zeros"),
        (f"{ORIGIN}\n{2**64}\n{ROOT64}\n", "64-bit"),
        (f"{ORIGIN}\n42\n{ROOT64[:-1]}\n", "not valid base64"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n", "32 bytes"),
        (f"{ORIGIN}\n42\n{ROOT64[:-2]}B=\n", "not canonical"),
        (f"{ORIGIN}\n42\n{ROOT64}\n\n", "extension line must not be empty"),
        (f"{ORIGIN}\x07\n42\n{ROOT64}\n", "must not contain"),
    ],
)
def test_malformed_checkpoints(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.parse(text)


def test_checkpoint_construction_checks() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, -1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT[:31])
    with pytest.raises(CheckpointError):
        Checkpoint("two\nlines", 1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT, ("",))


# --------------------------------------------------------------- log signature


def test_sign_and_open() -> None:
    cp = signed()
    opened = open_checkpoint(cp.encode(), [LOG.verifier], origin=ORIGIN)
    assert opened.checkpoint == cp.checkpoint
    assert opened.note.signatures[0].name == ORIGIN


def test_open_rejects_wrong_origin_wrong_key_and_tampering() -> None:
    note = signed().encode()
    with pytest.raises(CheckpointError, match=r"expected 'creditnet\.example/yrd/320100'"):
        open_checkpoint(note, [LOG.verifier], origin="creditnet.example/yrd/320100")
    impostor = Signer.generate(ORIGIN)
    with pytest.raises(NoteVerificationError):
        open_checkpoint(note, [impostor.verifier])
    with pytest.raises(NoteVerificationError):
        open_checkpoint(note.replace("\n42\n", "\n43\n"), [LOG.verifier])
    with pytest.raises(NoteError, match="type 0x01"):
        open_checkpoint(note, [WITNESS_KEYS[0]])


def test_only_the_right_key_types_sign() -> None:
    with pytest.raises(CheckpointError, match="type 0x01"):
        Checkpoint(ORIGIN, 1, ROOT).sign(WITNESSES[0])
    with pytest.raises(CheckpointError, match="type 0x04"):
        cosign(Checkpoint(ORIGIN, 1, ROOT), LOG)


# --------------------------------------------------------------- cosignatures


def test_single_cosignature() -> None:
    cp = Checkpoint(ORIGIN, 42, ROOT)
    cosig = cosign(cp, WITNESSES[0], 1_750_000_000)
    assert cosig.timestamp == 1_750_000_000
    verify_cosignature(cp, cosig, WITNESS_KEYS[0])
    with pytest.raises(NoteVerificationError, match="is not by witness key"):
        verify_cosignature(cp, cosig, WITNESS_KEYS[1])
    with pytest.raises(NoteVerificationError, match="does not verify"):
        verify_cosignature(Checkpoint(ORIGIN, 43, ROOT), cosig, WITNESS_KEYS[0])
    moved = Cosignature(cosig.name, cosig.key_id, cosig.timestamp + 1, cosig.signature)
    with pytest.raises(NoteVerificationError, match="does not verify"):
        verify_cosignature(cp, moved, WITNESS_KEYS[0])
    with pytest.raises(NoteError, match="type 0x04"):
        verify_cosignature(cp, cosig, LOG.verifier)
    assert Cosignature.parse_line(cosig.encode()) == cosig


def test_k_of_n_quorum() -> None:
    note = cosigned(signed(), WITNESSES[:3])
    result = verify_cosigned(note, [LOG.verifier], WITNESS_KEYS, 3, origin=ORIGIN)
    assert result.checkpoint.size == 42
    assert result.witnesses == tuple(w.name for w in WITNESSES[:3])
    assert [c.timestamp for c in result.cosignatures] == [1_750_000_000, 1_750_000_001, 1_750_000_002]
    with pytest.raises(QuorumError, match=r"3 valid witness cosignatures .*; 4 are required"):
        verify_cosigned(note, [LOG.verifier], WITNESS_KEYS, 4)
    assert verify_cosigned(signed().encode(), [LOG.verifier], WITNESS_KEYS, 0).cosignatures == ()


def test_quorum_counts_each_witness_once_and_ignores_strangers() -> None:
    cp = signed()
    stranger = Signer.generate("stranger.example/w", ALG_COSIGNATURE_V1)
    twice = cp.with_cosignatures([cosign(cp.checkpoint, WITNESSES[0], 1)])
    note = Note(
        twice.note.text,
        (
            *twice.note.signatures,
            cosign(cp.checkpoint, WITNESSES[0], 2).to_note_signature(),
            cosign(cp.checkpoint, stranger, 3).to_note_signature(),
        ),
    ).encode()
    result = verify_cosigned(note, [LOG.verifier], WITNESS_KEYS, 1)
    assert result.witnesses == (WITNESSES[0].name,)
    with pytest.raises(QuorumError):
        verify_cosigned(note, [LOG.verifier], WITNESS_KEYS, 2)


def test_with_cosignatures_replaces_a_witness_earlier_line() -> None:
    cp = signed()
    once = cp.with_cosignatures([cosign(cp.checkpoint, WITNESSES[0], 1)])
    again = once.with_cosignatures([cosign(cp.checkpoint, WITNESSES[0], 2)])
    assert len(again.note.signatures) == 2
    assert verify_cosigned(again.encode(), [LOG.verifier], WITNESS_KEYS, 1).cosignatures[0].timestamp == 2


def test_forged_or_transplanted_cosignature_rejects_the_checkpoint() -> None:
    cp = signed()
    other = signed(size=43)
    transplanted = cp.with_cosignatures([cosign(other.checkpoint, WITNESSES[1], 5)]).encode()
    with pytest.raises(NoteVerificationError, match="does not verify"):
        verify_cosigned(transplanted, [LOG.verifier], WITNESS_KEYS, 1)

    good = cosigned(cp, WITNESSES[:2])
    lines = good.split("\n")
    last = lines[-2]
    name, b64 = last[2:].split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    lines[-2] = f"— {name} {base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(NoteVerificationError, match="does not verify"):
        verify_cosigned("\n".join(lines), [LOG.verifier], WITNESS_KEYS, 1)


def test_cosigned_checkpoint_needs_the_log_signature() -> None:
    cp = signed()
    only_witnesses = Note(
        cp.note.text,
        tuple(cosign(cp.checkpoint, w, 1).to_note_signature() for w in WITNESSES),
    ).encode()
    with pytest.raises(NoteVerificationError, match="no valid signature by a trusted key"):
        verify_cosigned(only_witnesses, [LOG.verifier], WITNESS_KEYS, 4)


def test_quorum_arguments_are_checked() -> None:
    note = cosigned(signed(), WITNESSES[:1])
    with pytest.raises(ValueError, match="threshold 5"):
        verify_cosigned(note, [LOG.verifier], WITNESS_KEYS, 5)
    with pytest.raises(ValueError, match="threshold -1"):
        verify_cosigned(note, [LOG.verifier], WITNESS_KEYS, -1)
    with pytest.raises(NoteError, match="type 0x04"):
        verify_cosigned(note, [LOG.verifier], [LOG.verifier], 1)


# --------------------------------------------------------------- end to end


def test_witness_flow_over_a_growing_log() -> None:
    """The log signs two checkpoints; a witness checks consistency before cosigning."""
    tree = MerkleTree(MemoryHashStore())
    tree.append_many([b"access %d" % i for i in range(100)])
    old = Checkpoint(ORIGIN, tree.size, tree.root()).sign(LOG).encode()
    tree.append_many([b"access %d" % i for i in range(100, 250)])
    new = Checkpoint(ORIGIN, tree.size, tree.root()).sign(LOG).encode()
    proof = tree.consistency_proof(100, 250)

    # Witness side: only notes, keys and the proof.
    seen = open_checkpoint(old, [LOG.verifier], origin=ORIGIN).checkpoint
    offered = open_checkpoint(new, [LOG.verifier], origin=ORIGIN)
    verify_consistency(
        seen.size, offered.checkpoint.size, proof, seen.root_hash, offered.checkpoint.root_hash
    )
    cosig = cosign(offered.checkpoint, WITNESSES[0], 1_750_000_000)

    # Client side: the log's note plus the witness's line.
    result = verify_cosigned(offered.with_cosignatures([cosig]).encode(), [LOG.verifier], WITNESS_KEYS, 1)
    assert result.checkpoint.root_hash == tree.root(250)

    # A forked log (different history at size 100) cannot get past the witness.
    fork = MerkleTree(MemoryHashStore())
    fork.append_many([b"forged %d" % i for i in range(250)])
    with pytest.raises(ProofError):
        verify_consistency(100, 250, fork.consistency_proof(100), seen.root_hash, fork.root())
