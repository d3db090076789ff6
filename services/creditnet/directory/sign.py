"""Building and signing directories: the governance side.

A directory is signed as a v2 SignedEnvelope whose payload is the exact
NetworkDirectory bytes and whose payload type is DIRECTORY_TYPE, bound into
each signature by the DSSE pre-authentication encoding (creditnet.envelope.pae).
Governance keys sign one after another (`add_signature`), each over the same
bytes; nothing is re-serialised between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from creditnet.directory.errors import refuse
from creditnet.directory.model import MAX_DIRECTORY_BYTES, Directory, spki_sha256
from creditnet.envelope import pae
from creditnet.errors import InvalidArgument
from creditnet.pki import Identity, RoleKind, write_public
from creditnet.v2 import envelope_pb2

__all__ = [
    "DIRECTORY_TYPE",
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "add_signature",
    "load",
    "parse_envelope",
    "save",
    "sign",
    "unsigned",
]

DIRECTORY_TYPE: Final = "application/vnd.creditnet.directory.v2+protobuf"
MAX_SIGNATURES: Final = 64
# Envelope overhead: signatures and their certificate chains.
MAX_ENVELOPE_BYTES: Final = MAX_DIRECTORY_BYTES + MAX_SIGNATURES * 8 * 1024

_ECDSA_SIGN = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def unsigned(directory: Directory) -> envelope_pb2.SignedEnvelope:
    """An envelope for `directory` with no signature yet (content rules checked)."""
    return envelope_pb2.SignedEnvelope(payload_type=DIRECTORY_TYPE, payload=directory.to_payload())


def add_signature(env: envelope_pb2.SignedEnvelope, signer: Identity) -> envelope_pb2.SignedEnvelope:
    """Append `signer`'s signature over the envelope's exact payload bytes (in place; also returned)."""
    if env.payload_type != DIRECTORY_TYPE:
        raise refuse("directory.type", f"payload type is {env.payload_type[:80]!r}, not {DIRECTORY_TYPE}")
    if signer.role.kind is not RoleKind.GOVERNANCE:
        raise InvalidArgument("directory.signer", f"{signer.role.uri} is not a governance key")
    mine = spki_sha256(signer.key.public_key())
    for sig in env.signatures:
        if sig.certificate_chain and _leaf_spki(sig.certificate_chain[0]) == mine:
            raise InvalidArgument("directory.signer", f"{signer.role.uri} has already signed this directory")
    sig_bytes = signer.key.sign(pae(DIRECTORY_TYPE, env.payload), _ECDSA_SIGN)
    env.signatures.append(
        envelope_pb2.Signature(signature=sig_bytes, certificate_chain=list(signer.chain_der))
    )
    return env


def sign(directory: Directory, signers: list[Identity]) -> envelope_pb2.SignedEnvelope:
    env = unsigned(directory)
    for s in signers:
        add_signature(env, s)
    return env


def _leaf_spki(der: bytes) -> bytes | None:
    from cryptography import x509

    try:
        pub = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None
    return spki_sha256(pub) if isinstance(pub, ec.EllipticCurvePublicKey) else None


# --- files -------------------------------------------------------------------


def save(env: envelope_pb2.SignedEnvelope, path: Path) -> None:
    """Write a signed directory as JSON (protobuf JSON mapping; payload in base64), atomically."""
    text = json_format.MessageToJson(env, preserving_proto_field_name=True, indent=2)
    write_public(path, (text + "\n").encode("utf-8"))


def parse_envelope(data: bytes) -> envelope_pb2.SignedEnvelope:
    """A signed directory from file bytes: JSON or binary protobuf."""
    if len(data) > 2 * MAX_ENVELOPE_BYTES:
        raise refuse("directory.malformed", "the signed directory is too large")
    env = envelope_pb2.SignedEnvelope()
    try:
        if data.lstrip()[:1] == b"{":
            json_format.Parse(data.decode("utf-8"), env)
        else:
            env.ParseFromString(data)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError):
        raise refuse(
            "directory.malformed", "not a signed directory (JSON or protobuf SignedEnvelope)"
        ) from None
    return env


def load(path: Path) -> envelope_pb2.SignedEnvelope:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument("file.unreadable", f"cannot read {path}: {exc.strerror}") from None
    return parse_envelope(data)
