"""Signed envelopes: sign and verify exact payload bytes, bound to a type.

The signing input is the DSSE v1 pre-authentication encoding::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where LEN is the length in bytes as ASCII decimal without leading zeros and
SP is one space (0x20). Binding the type into what is signed means a consent
signature can never be replayed as a query signature. Verification works on
the payload bytes exactly as received; they are parsed only after the
signature checks out, and never re-serialised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from creditnet.errors import InvalidArgument, Unauthenticated
from creditnet.pki import Identity, TrustStore, VerifiedCert
from creditnet.v2 import envelope_pb2

__all__ = [
    "ANSWER_TYPE",
    "CONSENT_TYPE",
    "HISTORY_REQUEST_TYPE",
    "MAX_PAYLOAD_BYTES",
    "MAX_SIGNATURE_BYTES",
    "MEMBERSHIP_FILTER_TYPE",
    "PAYLOAD_TYPES",
    "QUERY_TYPE",
    "RECORD_BATCH_TYPE",
    "REVOCATION_TYPE",
    "EnvelopeVerifier",
    "Verified",
    "digest",
    "load_envelope",
    "pae",
    "save_envelope",
    "sign",
]

CONSENT_TYPE: Final = "application/vnd.creditnet.consent.v2+protobuf"
REVOCATION_TYPE: Final = "application/vnd.creditnet.revocation.v2+protobuf"
QUERY_TYPE: Final = "application/vnd.creditnet.query.v2+protobuf"
ANSWER_TYPE: Final = "application/vnd.creditnet.answer.v2+protobuf"
HISTORY_REQUEST_TYPE: Final = "application/vnd.creditnet.history-request.v2+protobuf"
MEMBERSHIP_FILTER_TYPE: Final = "application/vnd.creditnet.membership-filter.v2+protobuf"
RECORD_BATCH_TYPE: Final = "application/vnd.creditnet.record-batch.v2+protobuf"
PAYLOAD_TYPES: Final = frozenset(
    {
        CONSENT_TYPE,
        REVOCATION_TYPE,
        QUERY_TYPE,
        ANSWER_TYPE,
        HISTORY_REQUEST_TYPE,
        MEMBERSHIP_FILTER_TYPE,
        RECORD_BATCH_TYPE,
    }
)

MAX_PAYLOAD_BYTES: Final = 1 << 20
MAX_SIGNATURE_BYTES: Final = 80

_ECDSA_SIGN = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_ECDSA_VERIFY = ec.ECDSA(hashes.SHA256())


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def digest(payload: bytes) -> bytes:
    """SHA-256 of payload bytes: how queries, consents and answers are named."""
    return hashlib.sha256(payload).digest()


def sign(payload_type: str, payload: bytes, signer: Identity) -> envelope_pb2.SignedEnvelope:
    if payload_type not in PAYLOAD_TYPES:
        raise ValueError(f"unknown payload type {payload_type!r}")
    # RFC 6979 deterministic ECDSA: the same key and input always give the
    # same signature, which makes the published test vectors exact.
    sig = signer.key.sign(pae(payload_type, payload), _ECDSA_SIGN)
    return envelope_pb2.SignedEnvelope(
        payload_type=payload_type,
        payload=payload,
        signatures=[envelope_pb2.Signature(signature=sig, certificate_chain=list(signer.chain_der))],
    )


@dataclass(frozen=True, slots=True)
class Verified:
    payload: bytes
    payload_type: str
    signer: VerifiedCert
    digest: bytes


class EnvelopeVerifier:
    """Checks envelopes against the network CA.

    Successful verifications are cached by the digest of everything that was
    checked (type, payload, signature, chain), so a consent that comes back
    with every query is verified cryptographically once. The certificate
    validity window is still checked at every use.
    """

    def __init__(self, trust: TrustStore, *, cache_size: int = 8192) -> None:
        self.trust = trust
        self._cache: dict[bytes, Verified] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def verify(
        self,
        env: envelope_pb2.SignedEnvelope,
        expected_type: str,
        *,
        what: str,
        at: dt.datetime | None = None,
        cache: bool = False,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> Verified:
        """Verify `env` as a `what` ("query", "consent", ...) of `expected_type`.

        Raises InvalidArgument for a malformed envelope and Unauthenticated
        when the signature or the signer's certificate does not verify.
        """
        if env.payload_type != expected_type:
            raise InvalidArgument(
                f"{what}.type",
                f"{what} envelope has payload type {env.payload_type[:80]!r}, expected {expected_type!r}",
            )
        if not env.payload:
            raise InvalidArgument(f"{what}.empty", f"{what} envelope has no payload")
        if len(env.payload) > max_payload:
            raise InvalidArgument(f"{what}.size", f"{what} payload is larger than {max_payload} bytes")
        if len(env.signatures) != 1:
            raise Unauthenticated(f"{what}.signature", f"{what} envelope must carry exactly one signature")
        sig = env.signatures[0]
        if not sig.signature or len(sig.signature) > MAX_SIGNATURE_BYTES:
            raise Unauthenticated(f"{what}.signature", f"{what} signature is missing or malformed")
        key = b""
        if cache:
            h = hashlib.sha256()
            for part in (
                env.payload_type.encode(),
                env.payload,
                sig.signature,
                *sig.certificate_chain,
            ):
                h.update(len(part).to_bytes(8, "big"))
                h.update(part)
            key = h.digest()
            hit = self._cache.get(key)
            if hit is not None:
                # Re-checks the certificate's validity window for this use.
                self._signer(sig, what, at)
                return hit
        signer = self._signer(sig, what, at)
        try:
            signer.public_key.verify(sig.signature, pae(env.payload_type, env.payload), _ECDSA_VERIFY)
        except InvalidSignature:
            raise Unauthenticated(f"{what}.signature", f"{what} signature does not verify") from None
        result = Verified(
            payload=env.payload,
            payload_type=env.payload_type,
            signer=signer,
            digest=digest(env.payload),
        )
        if cache:
            with self._lock:
                if len(self._cache) >= self._cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = result
        return result

    def _signer(self, sig: envelope_pb2.Signature, what: str, at: dt.datetime | None) -> VerifiedCert:
        # A refusal names the same rule whether or not the envelope was cached.
        try:
            return self.trust.verify_chain(list(sig.certificate_chain), at)
        except Unauthenticated as exc:
            raise Unauthenticated(f"{what}.{exc.rule}", f"{what} signer: {exc.message}") from None


# --- files -------------------------------------------------------------------


def save_envelope(env: envelope_pb2.SignedEnvelope, path: Path) -> None:
    """Write an envelope as JSON (protobuf JSON mapping; payload in base64)."""
    text = json_format.MessageToJson(env, preserving_proto_field_name=True, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def load_envelope(path: Path) -> envelope_pb2.SignedEnvelope:
    """Read an envelope file (JSON, or binary protobuf)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument("file.unreadable", f"cannot read {path}: {exc.strerror}") from None
    env = envelope_pb2.SignedEnvelope()
    try:
        if data.lstrip()[:1] == b"{":
            json_format.Parse(data.decode("utf-8"), env)
        else:
            env.ParseFromString(data)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError):
        raise InvalidArgument("file.malformed", f"{path} is not a signed envelope file") from None
    if env.payload_type not in PAYLOAD_TYPES:
        raise InvalidArgument("file.malformed", f"{path} is not a creditnet signed envelope")
    return env
