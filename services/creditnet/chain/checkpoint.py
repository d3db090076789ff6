"""C2SP transparency-log checkpoints and their witness cosignatures.

A checkpoint (c2sp.org/tlog-checkpoint) is the note text::

    <origin>
    <tree size in decimal, no leading zeros>
    <base64 of the 32-byte RFC 9162 root hash>
    [extension lines, each non-empty]

signed as a :mod:`~creditnet.chain.note` by the log's Ed25519 key (type 0x01;
the key name should equal the origin, e.g. ``creditnet.example/yrd/340100``).
Witnesses (the other city nodes) add cosignature/v1 lines (type 0x04,
c2sp.org/tlog-cosignature) after checking consistency with what they saw
before; a client trusts a checkpoint once the log's signature and k of n known
witnesses' cosignatures verify (:func:`verify_cosigned`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from creditnet.chain.merkle import HASH_SIZE
from creditnet.chain.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    MAX_TIMESTAMP,
    Note,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    Signer,
    VerifierKey,
    open_note,
)
from creditnet.errors import Error

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Cosignature",
    "CosignedCheckpoint",
    "QuorumError",
    "SignedCheckpoint",
    "cosign",
    "open_checkpoint",
    "verify_cosignature",
    "verify_cosigned",
]

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_MAX_SIZE = 2**64 - 1


class CheckpointError(Error, ValueError):
    """A malformed checkpoint, or one that is not the checkpoint expected."""


class QuorumError(NoteVerificationError):
    """Fewer trusted witnesses cosigned a checkpoint than the policy requires."""


def _check_line(line: str, what: str) -> None:
    if not line:
        raise CheckpointError(f"checkpoint {what} must not be empty")
    for ch in line:
        if ord(ch) < 0x20:
            raise CheckpointError(f"checkpoint {what} must not contain {ch!r}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if not 0 <= self.size <= _MAX_SIZE:
            raise CheckpointError(f"tree size {self.size} is not a 64-bit unsigned integer")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes, got {len(self.root_hash)}")
        object.__setattr__(self, "root_hash", bytes(self.root_hash))
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for ext in self.extensions:
            _check_line(ext, "extension line")

    def to_note_text(self) -> str:
        root = base64.b64encode(self.root_hash).decode()
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (final newline included, no signatures)."""
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint needs an origin, a tree size and a root hash line")
        origin, size_line, root_line, *extensions = lines
        if not _DECIMAL.fullmatch(size_line):
            raise CheckpointError(f"tree size {size_line!r} must be a decimal number without leading zeros")
        try:
            root = base64.b64decode(root_line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise CheckpointError(f"root hash {root_line!r} is not valid base64") from exc
        if len(root) == HASH_SIZE and base64.b64encode(root).decode() != root_line:
            raise CheckpointError(f"root hash {root_line!r} is not canonical base64")
        return cls(origin, int(size_line), root, tuple(extensions))

    def sign(self, signer: Signer) -> SignedCheckpoint:
        """Sign this checkpoint as the log (an Ed25519, type 0x01, key)."""
        if signer.alg != ALG_ED25519:
            raise CheckpointError("a log signs checkpoints with an Ed25519 (type 0x01) key")
        text = self.to_note_text()
        sig = signer.sign(text.encode())
        return SignedCheckpoint(self, Note(text, (sig,)))


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A witness's timestamped cosignature/v1 of a checkpoint."""

    name: str
    key_id: int
    timestamp: int
    signature: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.timestamp <= MAX_TIMESTAMP:
            raise NoteError(f"cosignature timestamp {self.timestamp} is outside 0..2^63-1")
        if len(self.signature) != 64:
            raise NoteError(f"Ed25519 signature must be 64 bytes, got {len(self.signature)}")
        # Validates the name and key ID the same way a parsed line is.
        self.to_note_signature()

    @classmethod
    def from_note_signature(cls, sig: NoteSignature) -> Cosignature:
        return cls(sig.name, sig.key_id, sig.timestamp, sig.signature[8:])

    @classmethod
    def parse_line(cls, line: str) -> Cosignature:
        return cls.from_note_signature(NoteSignature.parse_line(line))

    def to_note_signature(self) -> NoteSignature:
        return NoteSignature(self.name, self.key_id, self.timestamp.to_bytes(8, "big") + self.signature)

    def encode(self) -> str:
        """The note signature line, newline included."""
        return self.to_note_signature().encode()


def cosign(checkpoint: Checkpoint, signer: Signer, timestamp: int | None = None) -> Cosignature:
    """Cosign ``checkpoint`` as a witness (type 0x04 key) at ``timestamp`` (default: now)."""
    if signer.alg != ALG_COSIGNATURE_V1:
        raise CheckpointError("witnesses cosign with a cosignature/v1 (type 0x04) key")
    sig = signer.sign(checkpoint.to_note_text().encode(), timestamp=timestamp)
    return Cosignature.from_note_signature(sig)


def verify_cosignature(checkpoint: Checkpoint, cosig: Cosignature, key: VerifierKey) -> None:
    """Check one cosignature against a witness key; raises :class:`NoteVerificationError`."""
    if key.alg != ALG_COSIGNATURE_V1:
        raise NoteError(f"witness key {key.name} must be a cosignature/v1 (type 0x04) key")
    if (cosig.name, cosig.key_id) != (key.name, key.key_id):
        raise NoteVerificationError(
            f"cosignature by {cosig.name}+{cosig.key_id:08x} is not by witness key "
            f"{key.name}+{key.key_id:08x}"
        )
    sig = cosig.to_note_signature()
    if not key.verify(checkpoint.to_note_text().encode(), sig.signature):
        raise NoteVerificationError(f"cosignature by {key.name} does not verify")


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint with its note: the log's signature plus any cosignature lines."""

    checkpoint: Checkpoint
    note: Note

    def encode(self) -> str:
        return self.note.encode()

    def with_cosignatures(self, cosigs: Iterable[Cosignature]) -> SignedCheckpoint:
        """Add cosignature lines, replacing any earlier one by the same witness key."""
        new = [c.to_note_signature() for c in cosigs]
        replaced = {(s.name, s.key_id) for s in new}
        kept = [s for s in self.note.signatures if (s.name, s.key_id) not in replaced]
        return SignedCheckpoint(self.checkpoint, Note(self.note.text, (*kept, *new)))


def open_checkpoint(
    data: bytes | str, log_keys: Iterable[VerifierKey], *, origin: str | None = None
) -> SignedCheckpoint:
    """Parse a signed checkpoint and verify the log's signature.

    ``log_keys`` are the trusted keys of the log (type 0x01); if ``origin`` is
    given the checkpoint must be for that log. Other signature lines (e.g.
    cosignatures) are kept but not checked here.
    """
    keys = list(log_keys)
    for key in keys:
        if key.alg != ALG_ED25519:
            raise NoteError(f"log key {key.name} must be an Ed25519 (type 0x01) key")
    note = Note.parse(data)
    open_note(note, keys)
    checkpoint = Checkpoint.parse(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return SignedCheckpoint(checkpoint, note)


@dataclass(frozen=True, slots=True)
class CosignedCheckpoint:
    """A checkpoint whose log signature and witness quorum verified."""

    checkpoint: Checkpoint
    note: Note
    cosignatures: tuple[Cosignature, ...]

    @property
    def witnesses(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cosignatures)


def verify_cosigned(
    data: bytes | str,
    log_keys: Iterable[VerifierKey],
    witness_keys: Sequence[VerifierKey],
    threshold: int,
    *,
    origin: str | None = None,
) -> CosignedCheckpoint:
    """Verify a checkpoint signed by the log and cosigned by ``threshold`` of ``witness_keys``.

    Any signature line by a trusted log or witness key that fails to verify
    rejects the checkpoint; lines by unknown keys are ignored. Raises
    :class:`QuorumError` when fewer than ``threshold`` distinct witnesses cosigned.
    """
    wkeys = list(witness_keys)
    for key in wkeys:
        if key.alg != ALG_COSIGNATURE_V1:
            raise NoteError(f"witness key {key.name} must be a cosignature/v1 (type 0x04) key")
    distinct = {(k.name, k.key_id) for k in wkeys}
    if not 0 <= threshold <= len(distinct):
        raise ValueError(
            f"threshold {threshold} must be between 0 and the number of witness keys ({len(distinct)})"
        )
    signed = open_checkpoint(data, log_keys, origin=origin)
    by_ident: dict[tuple[str, int], VerifierKey] = {}
    for key in wkeys:
        if by_ident.setdefault((key.name, key.key_id), key) != key:
            raise NoteError(f"two different witness keys share name and ID {key.name}+{key.key_id:08x}")
    text = signed.note.text_bytes()
    cosigs: list[Cosignature] = []
    seen: set[tuple[str, int]] = set()
    for sig in signed.note.signatures:
        ident = (sig.name, sig.key_id)
        wkey = by_ident.get(ident)
        if wkey is None or ident in seen:
            continue
        seen.add(ident)
        if not wkey.verify(text, sig.signature):
            raise NoteVerificationError(
                f"cosignature by trusted witness {sig.name}+{sig.key_id:08x} does not verify"
            )
        cosigs.append(Cosignature.from_note_signature(sig))
    if len(cosigs) < threshold:
        got = ", ".join(c.name for c in cosigs) or "none"
        raise QuorumError(
            f"checkpoint of {signed.checkpoint.origin} at size {signed.checkpoint.size} has "
            f"{len(cosigs)} valid witness cosignatures ({got}); {threshold} are required"
        )
    return CosignedCheckpoint(signed.checkpoint, signed.note, tuple(cosigs))
