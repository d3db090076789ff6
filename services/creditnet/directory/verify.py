"""Verifying a signed directory against the one a holder trusts (docs/directory.md).

`verify` is a pure function of (envelope, trusted directory or trust anchor,
network CA, time); `DirectoryHolder` keeps the last good directory, takes
newer ones through `verify`, persists them atomically, and answers the
questions servers ask of it: is this certificate revoked, is the directory
expired.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from creditnet.dates import utcnow
from creditnet.directory.errors import refuse
from creditnet.directory.model import Directory, Governance, spki_sha256
from creditnet.directory.sign import DIRECTORY_TYPE, MAX_ENVELOPE_BYTES, MAX_SIGNATURES, parse_envelope
from creditnet.envelope import pae
from creditnet.errors import CreditnetError
from creditnet.pki import RoleKind, TrustStore
from creditnet.v2 import envelope_pb2

__all__ = [
    "DirectoryHolder",
    "VerifiedDirectory",
    "is_expired",
    "verify",
]

_ECDSA_VERIFY = ec.ECDSA(hashes.SHA256())
MAX_SIGNATURE_BYTES = 80


@dataclass(frozen=True, slots=True)
class VerifiedDirectory:
    directory: Directory
    # The exact payload bytes that were verified, and their SHA-256.
    payload: bytes
    digest: bytes
    # The envelope as received, so a holder can serve and persist it as is.
    envelope: envelope_pb2.SignedEnvelope

    @property
    def version(self) -> int:
        return self.directory.version


@dataclass(frozen=True, slots=True)
class _Signer:
    name: str
    spki: bytes


def _valid_signers(
    env: envelope_pb2.SignedEnvelope,
    trust: TrustStore,
    at: dt.datetime,
    revoked_by: Sequence[Directory],
) -> tuple[list[_Signer], list[str]]:
    """The distinct governance keys whose signatures verify, and why each other one does not count."""
    message = pae(env.payload_type, env.payload)
    good: dict[bytes, _Signer] = {}
    why_not: list[str] = []
    for i, sig in enumerate(env.signatures):
        if not sig.signature or len(sig.signature) > MAX_SIGNATURE_BYTES:
            why_not.append(f"signature {i} is malformed")
            continue
        try:
            cert = trust.verify_chain(list(sig.certificate_chain), at)
        except CreditnetError as exc:
            why_not.append(f"signature {i}: {exc.rule}")
            continue
        if cert.role.kind is not RoleKind.GOVERNANCE:
            why_not.append(f"signature {i}: {cert.role.uri} is not a governance key")
            continue
        spki = spki_sha256(cert.public_key)
        serial = x509.load_der_x509_certificate(sig.certificate_chain[0]).serial_number
        if any(d.is_revoked(serial=serial, spki=spki) for d in revoked_by):
            why_not.append(f"signature {i}: {cert.role.uri}'s certificate is revoked")
            continue
        try:
            cert.public_key.verify(sig.signature, message, _ECDSA_VERIFY)
        except InvalidSignature:
            why_not.append(f"signature {i}: does not verify")
            continue
        # A key counts once however many times it signs.
        good.setdefault(spki, _Signer(cert.role.subject, spki))
    return list(good.values()), why_not


def _count(governance: Governance, signers: Iterable[_Signer]) -> int:
    listed = {(k.name, k.spki_sha256) for k in governance.keys}
    return sum(1 for s in signers if (s.name, s.spki) in listed)


def _require(
    rule: str, governance: Governance, signers: list[_Signer], why_not: list[str], whose: str
) -> None:
    have = _count(governance, signers)
    if have < governance.threshold:
        detail = f"; not counted: {', '.join(why_not[:8])}" if why_not else ""
        raise refuse(
            rule,
            f"{have} valid signature(s) by {whose} governance keys, {governance.threshold} required{detail}",
        )


def verify(
    envelope: envelope_pb2.SignedEnvelope | bytes,
    *,
    trust: TrustStore,
    trusted: VerifiedDirectory | None = None,
    anchor_sha256: bytes | None = None,
    at: dt.datetime | None = None,
) -> VerifiedDirectory:
    """Verify a candidate directory; return it verified, or raise the first rule it breaks.

    With `trusted`, the candidate must be newer and signed under the trusted
    governance (and under its own, if it rotates the keys). Without it, the
    candidate is a first directory: its payload's SHA-256 must equal
    `anchor_sha256` and k of its own keys must have signed it.
    """
    now = at or utcnow()
    env = parse_envelope(envelope) if isinstance(envelope, bytes) else envelope
    if env.ByteSize() > MAX_ENVELOPE_BYTES:
        raise refuse("directory.malformed", "the signed directory is too large")
    if env.payload_type != DIRECTORY_TYPE:
        raise refuse("directory.type", f"payload type is {env.payload_type[:80]!r}, not {DIRECTORY_TYPE}")
    if len(env.signatures) > MAX_SIGNATURES:
        raise refuse("directory.malformed", f"more than {MAX_SIGNATURES} signatures")
    payload = bytes(env.payload)
    candidate = Directory.from_payload(payload)
    digest = hashlib.sha256(payload).digest()
    result = VerifiedDirectory(candidate, payload, digest, env)

    if trusted is None:
        if anchor_sha256 is None or not hmac.compare_digest(digest, anchor_sha256):
            raise refuse("directory.anchor", "the directory's SHA-256 is not the pinned trust anchor")
    else:
        old = trusted.directory
        if candidate.network != old.network:
            raise refuse(
                "directory.network", f"directory of network {candidate.network!r}, not {old.network!r}"
            )
        if candidate.version < old.version:
            raise refuse(
                "directory.rollback", f"version {candidate.version} is older than trusted {old.version}"
            )
        if candidate.version == old.version:
            if digest == trusted.digest:
                return trusted
            raise refuse("directory.fork", f"a different directory with the trusted version {old.version}")
        if candidate.issued_at < old.issued_at:
            raise refuse("directory.rollback", "issued before the trusted directory")

    skew = candidate.policy.clock_skew
    if candidate.issued_at > now + skew:
        raise refuse("directory.future", "issued later than now plus the policy's clock skew")
    # A first directory may be old: it is only a root of trust to update from.
    if trusted is not None and now > candidate.expires_at:
        raise refuse("directory.expired", f"issued {candidate.issued_at.isoformat()}, older than its max_age")

    revoked_by = [candidate] if trusted is None else [trusted.directory, candidate]
    signers, why_not = _valid_signers(env, trust, now, revoked_by)
    if trusted is None:
        _require("directory.threshold", candidate.governance, signers, why_not, "its own")
    else:
        old_gov = trusted.directory.governance
        if candidate.governance.identity() != old_gov.identity():
            _require("directory.rotation", old_gov, signers, why_not, "the trusted")
            _require("directory.threshold", candidate.governance, signers, why_not, "the new")
        else:
            _require("directory.threshold", old_gov, signers, why_not, "the trusted")
    return result


def is_expired(directory: Directory, at: dt.datetime | None = None) -> bool:
    return (at or utcnow()) > directory.expires_at


class DirectoryHolder:
    """The directory a node, aggregator or client trusts now, kept in one file.

    The file holds the last accepted signed envelope (protobuf). On start it
    is re-verified against its own governance keys; after that, only `offer`
    changes it, and a refused candidate leaves it untouched.
    """

    def __init__(self, path: Path, trust: TrustStore) -> None:
        self.path = path
        self.trust = trust
        self._lock = threading.Lock()
        self._current: VerifiedDirectory | None = None
        if path.exists():
            data = path.read_bytes()
            env = parse_envelope(data)
            # Local state: trusted like the node's own key files, but its
            # signatures must still hold (a truncated or edited file is refused).
            # Checked as of its issue time, so that a governance certificate
            # that expired since does not strand a restarting server.
            digest = hashlib.sha256(env.payload).digest()
            issued = Directory.from_payload(bytes(env.payload)).issued_at
            self._current = verify(env, trust=trust, anchor_sha256=digest, at=issued)

    @property
    def current(self) -> VerifiedDirectory | None:
        return self._current

    def bootstrap(
        self, envelope: envelope_pb2.SignedEnvelope | bytes, anchor_sha256: bytes
    ) -> VerifiedDirectory:
        """Take a first directory pinned by its SHA-256; refused if one is already held."""
        with self._lock:
            if self._current is not None:
                return self._offer_locked(envelope, None)
            result = verify(envelope, trust=self.trust, anchor_sha256=anchor_sha256)
            self._persist(result)
            self._current = result
            return result

    def offer(self, envelope: envelope_pb2.SignedEnvelope | bytes, at: dt.datetime | None = None) -> bool:
        """Take a newer directory if it verifies; True if the held directory changed."""
        with self._lock:
            before = self._current
            return self._offer_locked(envelope, at) is not before

    def offer_chain(
        self, envelopes: Sequence[envelope_pb2.SignedEnvelope | bytes], at: dt.datetime | None = None
    ) -> int:
        """Take directories in order (e.g. across a key rotation); stops at the first refusal.

        Returns the version held afterwards; each accepted step is kept even
        if a later one is refused.
        """
        for env in envelopes:
            self.offer(env, at)
        return self.require().version

    def _offer_locked(
        self, envelope: envelope_pb2.SignedEnvelope | bytes, at: dt.datetime | None
    ) -> VerifiedDirectory:
        if self._current is None:
            raise refuse(
                "directory.missing", "no trusted directory yet: bootstrap from the pinned anchor first"
            )
        result = verify(envelope, trust=self.trust, trusted=self._current, at=at)
        if result is not self._current:
            self._persist(result)
            self._current = result
        return result

    def require(self) -> VerifiedDirectory:
        current = self._current
        if current is None:
            raise refuse("directory.missing", "no trusted directory is held")
        return current

    def require_fresh(self, at: dt.datetime | None = None) -> Directory:
        """The held directory, or UNAVAILABLE directory.expired when it is too old to serve by."""
        d = self.require().directory
        if is_expired(d, at):
            raise refuse(
                "directory.expired",
                f"the newest network directory (version {d.version}) expired at {d.expires_at.isoformat()}",
            )
        return d

    def is_expired(self, at: dt.datetime | None = None) -> bool:
        current = self._current
        return current is None or is_expired(current.directory, at)

    def is_revoked(self, *, serial: int | None = None, spki: bytes | None = None) -> bool:
        return self.require().directory.is_revoked(serial=serial, spki=spki)

    def is_certificate_revoked(self, cert: x509.Certificate) -> bool:
        return self.require().directory.is_certificate_revoked(cert)

    def _persist(self, result: VerifiedDirectory) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Named for this process: the worker processes of one aggregator hold one file.
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(result.envelope.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
