"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 and cosignature/v1 keys.

A signed note is UTF-8 text ending in a newline, a blank line, and one or more
signature lines ``— <key name> base64(key ID || signature)``. The key ID is
``SHA-256(name || 0x0A || type || public key)[:4]`` read as a big-endian uint32.
Two signature types are supported:

* ``0x01`` Ed25519 over the note text (logs sign their checkpoints with it);
* ``0x04`` timestamped Ed25519 witness cosignatures (c2sp.org/tlog-cosignature):
  the signature is ``u64 timestamp || Ed25519(msg)`` with
  ``msg = "cosignature/v1\\ntime <timestamp>\\n" || note text``.

Keys travel as *vkeys* ``<name>+<8 hex key ID>+base64(type || public key)`` and,
for signers, ``PRIVATE+KEY+<name>+<8 hex key ID>+base64(type || seed)`` (the
formats of golang.org/x/mod/sumdb/note).

:func:`open_note` follows the verification rules of the spec: signatures from
unknown keys (name and key ID not both matching a trusted key) are kept aside
unverified, repeated signatures are dropped, a signature from a trusted key
that does not verify rejects the whole note, and a note with no verified
signature from a trusted key is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from creditnet.errors import Error

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "MAX_TIMESTAMP",
    "Note",
    "NoteError",
    "NoteSignature",
    "NoteVerificationError",
    "OpenedNote",
    "Signer",
    "VerifierKey",
    "cosignature_message",
    "key_id",
    "open_note",
    "sign_note",
    "validate_key_name",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_ALGS = {ALG_ED25519: "Ed25519", ALG_COSIGNATURE_V1: "cosignature/v1 Ed25519"}

#: More signatures than this make a note malformed (the spec asks for at least 16).
MAX_SIGNATURES = 100
#: Cosignature timestamps must fit in a signed 64-bit integer (tlog-cosignature).
MAX_TIMESTAMP = 2**63 - 1

_SIG_PREFIX = "— "  # em dash U+2014, space
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_ED25519_SIG = 64
_TIMESTAMP = 8


class NoteError(Error, ValueError):
    """A malformed note, key, key name or signature."""


class NoteVerificationError(NoteError):
    """A note that parses but is not signed as required by the trusted keys."""


def validate_key_name(name: str) -> None:
    """Key names are non-empty and contain no Unicode spaces, no ``+`` and no control chars."""
    if not name:
        raise NoteError("key name must not be empty")
    for ch in name:
        if ch == "+" or ch.isspace() or ord(ch) < 0x20:
            raise NoteError(f"key name {name!r} must not contain {ch!r}")


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || alg || public_key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def cosignature_message(timestamp: int, text: bytes) -> bytes:
    """The message a cosignature/v1 Ed25519 signature covers (tlog-cosignature)."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise NoteError(f"{what} is not valid standard base64") from exc


def _check_alg(alg: int) -> None:
    if alg not in _ALGS:
        raise NoteError(
            f"signature type 0x{alg:02x} is not supported (0x01 Ed25519 and 0x04 cosignature/v1 are)"
        )


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A trusted public key: name, signature type and 32-byte Ed25519 key."""

    name: str
    alg: int
    public_key: bytes
    key_id: int = field(init=False, repr=False, compare=False)
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_key_name(self.name)
        _check_alg(self.alg)
        if len(self.public_key) != 32:
            raise NoteError(f"Ed25519 public key must be 32 bytes, got {len(self.public_key)}")
        object.__setattr__(self, "public_key", bytes(self.public_key))
        object.__setattr__(self, "key_id", key_id(self.name, self.alg, self.public_key))
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.public_key))

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        """Parse ``<name>+<hex key ID>+<base64(type || key)>``, checking the key ID."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise NoteError("verifier key must look like <name>+<8 hex digits>+<base64 key>")
        name, hex_id, b64 = parts
        if not _HEX8.fullmatch(hex_id):
            raise NoteError(f"verifier key ID {hex_id!r} must be 8 hexadecimal digits")
        raw = _b64decode(b64, "verifier key material")
        if not raw:
            raise NoteError("verifier key material is empty")
        key = cls(name, raw[0], raw[1:])
        if key.key_id != int(hex_id, 16):
            raise NoteError(f"verifier key ID {hex_id} does not match the key (expected {key.key_id:08x})")
        return key

    def encode(self) -> str:
        """The vkey text form."""
        material = base64.b64encode(bytes([self.alg]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{material}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (the bytes after the key ID) signs note ``text``."""
        if self.alg == ALG_COSIGNATURE_V1:
            if len(signature) != _TIMESTAMP + _ED25519_SIG:
                return False
            timestamp = int.from_bytes(signature[:_TIMESTAMP], "big")
            if timestamp > MAX_TIMESTAMP:
                return False
            message = cosignature_message(timestamp, text)
            signature = signature[_TIMESTAMP:]
        else:
            if len(signature) != _ED25519_SIG:
                return False
            message = text
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """A named Ed25519 signing key producing type 0x01 or 0x04 note signatures.

    For cosignature/v1 signers the timestamp comes from ``clock`` (POSIX
    seconds) unless :meth:`sign` is given one.
    """

    __slots__ = ("_clock", "_key", "alg", "name", "verifier")

    def __init__(
        self,
        name: str,
        private_key: Ed25519PrivateKey,
        alg: int = ALG_ED25519,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.name = name
        self.alg = alg
        self.verifier = VerifierKey(name, alg, public)
        self._key = private_key
        self._clock = clock

    @classmethod
    def generate(cls, name: str, alg: int = ALG_ED25519) -> Signer:
        return cls(name, Ed25519PrivateKey.generate(), alg)

    @classmethod
    def from_seed(cls, name: str, seed: bytes, alg: int = ALG_ED25519) -> Signer:
        if len(seed) != 32:
            raise NoteError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed), alg)

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(type || seed)>``."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise NoteError("signer key must look like PRIVATE+KEY+<name>+<8 hex>+<base64 seed>")
        _, _, name, hex_id, b64 = parts
        if not _HEX8.fullmatch(hex_id):
            raise NoteError(f"signer key ID {hex_id!r} must be 8 hexadecimal digits")
        raw = _b64decode(b64, "signer key material")
        if not raw:
            raise NoteError("signer key material is empty")
        validate_key_name(name)
        _check_alg(raw[0])
        signer = cls.from_seed(name, raw[1:], raw[0])
        if signer.verifier.key_id != int(hex_id, 16):
            raise NoteError(f"signer key ID {hex_id} does not match the key")
        return signer

    def encode(self) -> str:
        """The secret skey text form (keep it secret)."""
        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        material = base64.b64encode(bytes([self.alg]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id:08x}+{material}"

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    def sign(self, text: bytes, *, timestamp: int | None = None) -> NoteSignature:
        """Sign note ``text`` (the bytes before the blank line, final newline included)."""
        if self.alg == ALG_COSIGNATURE_V1:
            ts = int(self._clock()) if timestamp is None else timestamp
            message = cosignature_message(ts, text)  # checks the range first
            sig = ts.to_bytes(_TIMESTAMP, "big") + self._key.sign(message)
        else:
            if timestamp is not None:
                raise NoteError("only cosignature/v1 signatures carry a timestamp")
            sig = self._key.sign(text)
        return NoteSignature(self.name, self.key_id, sig)

    def __repr__(self) -> str:
        return f"Signer({self.verifier.encode()!r})"


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        validate_key_name(self.name)
        if not 0 <= self.key_id <= 0xFFFFFFFF:
            raise NoteError(f"key ID {self.key_id} is not a 32-bit unsigned integer")
        if not self.signature:
            raise NoteError("signature must not be empty")

    @classmethod
    def parse_line(cls, line: str) -> NoteSignature:
        """Parse one signature line, with or without its final newline."""
        if line.endswith("\n"):
            line = line[:-1]
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("signature line must start with an em dash and a space")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not b64:
            raise NoteError("signature line must be '— <key name> <base64 signature>'")
        validate_key_name(name)
        raw = _b64decode(b64, f"signature by {name}")
        if len(raw) < 5:
            raise NoteError(f"signature by {name} is too short to hold a key ID and a signature")
        return cls(name, int.from_bytes(raw[:4], "big"), raw[4:])

    @property
    def timestamp(self) -> int:
        """The timestamp of a cosignature/v1 signature (POSIX seconds)."""
        if len(self.signature) != _TIMESTAMP + _ED25519_SIG:
            raise NoteError(f"signature by {self.name} is not a cosignature/v1 signature")
        return int.from_bytes(self.signature[:_TIMESTAMP], "big")

    def encode(self) -> str:
        """The signature line, newline included."""
        raw = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(raw).decode()}\n"


def _check_chars(text: str, what: str) -> None:
    for ch in text:
        if ord(ch) < 0x20 and ch != "\n":
            raise NoteError(f"{what} must not contain the control character {ch!r}")


@dataclass(frozen=True, slots=True)
class Note:
    """A note's text and signature lines, as parsed; nothing here is verified yet."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        if not self.text.endswith("\n"):
            raise NoteError("note text must end with a newline")
        _check_chars(self.text, "note text")
        if not self.signatures:
            raise NoteError("a signed note needs at least one signature")
        if len(self.signatures) > MAX_SIGNATURES:
            raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")

    @classmethod
    def parse(cls, data: bytes | str) -> Note:
        """Split a signed note into text and signatures, rejecting anything malformed."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NoteError("note is not valid UTF-8") from exc
        _check_chars(data, "note")
        split = data.rfind("\n\n")
        if split < 0:
            raise NoteError("note has no blank line before its signatures")
        text, block = data[: split + 1], data[split + 2 :]
        if not block or not block.endswith("\n"):
            raise NoteError("note must end with signature lines, each ending in a newline")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
        return cls(text, tuple(NoteSignature.parse_line(line) for line in lines))

    def encode(self) -> str:
        return self.text + "\n" + "".join(s.encode() for s in self.signatures)

    def text_bytes(self) -> bytes:
        return self.text.encode()


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A note whose text was verified by at least one trusted key."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]

    def verified_by(self, key: VerifierKey) -> NoteSignature | None:
        for sig in self.verified:
            if sig.name == key.name and sig.key_id == key.key_id:
                return sig
        return None


def _index_keys(keys: Iterable[VerifierKey]) -> dict[tuple[str, int], VerifierKey]:
    known: dict[tuple[str, int], VerifierKey] = {}
    for key in keys:
        ident = (key.name, key.key_id)
        other = known.get(ident)
        if other is not None and other != key:
            raise NoteError(f"two different trusted keys share name and ID {key.name}+{key.key_id:08x}")
        known[ident] = key
    return known


def open_note(data: bytes | str | Note, keys: Iterable[VerifierKey]) -> OpenedNote:
    """Parse a signed note and verify it against ``keys``.

    Raises :class:`NoteError` for a malformed note and
    :class:`NoteVerificationError` if a trusted key's signature fails or no
    trusted key signed it.
    """
    note = data if isinstance(data, Note) else Note.parse(data)
    known = _index_keys(keys)
    text = note.text_bytes()
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for sig in note.signatures:
        ident = (sig.name, sig.key_id)
        key = known.get(ident)
        if key is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if ident in seen:
            continue
        seen.add(ident)
        if not key.verify(text, sig.signature):
            raise NoteVerificationError(
                f"signature by trusted key {sig.name}+{sig.key_id:08x} does not verify"
            )
        verified.append(sig)
    if not verified:
        raise NoteVerificationError("note has no valid signature by a trusted key")
    return OpenedNote(note.text, tuple(verified), tuple(unverified))


def sign_note(text: str, signers: Iterable[Signer], existing: Iterable[NoteSignature] = ()) -> str:
    """Sign ``text`` with every signer, keeping ``existing`` signatures of other keys.

    The new signatures follow the kept ones; an existing signature by the same
    key (name and ID) as a signer is replaced.
    """
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_chars(text, "note text")
    raw = text.encode()
    fresh = [s.sign(raw) for s in signers]
    if not fresh:
        raise NoteError("sign_note needs at least one signer")
    replaced = {(s.name, s.key_id) for s in fresh}
    kept = [s for s in existing if (s.name, s.key_id) not in replaced]
    return Note(text, (*kept, *fresh)).encode()
