"""Who signs what on the credit chain, and how verifiers learn the keys.

Every city node (and the aggregator) holds one Ed25519 *log key*, certified
by the network CA with the role ``creditnet://logkey/<name>``. The same key
signs, under two C2SP key names that cannot be confused (the signature type
is part of each key ID):

* the node's own checkpoints, as log ``creditnet.yrd/log/<name>`` (type 0x01);
* its witness cosignatures of other logs, as ``creditnet.yrd/witness/<name>``
  (cosignature/v1, type 0x04).

A verifier needs only the network CA: key certificates travel with
checkpoints and receipts and are checked against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from creditnet.chain.note import ALG_COSIGNATURE_V1, ALG_ED25519, Signer, VerifierKey
from creditnet.errors import InvalidArgument, Unauthenticated
from creditnet.pki import (
    CertificateAuthority,
    Role,
    TrustStore,
    cert_to_pem,
    write_private,
    write_public,
)

__all__ = [
    "NATIONAL",
    "NETWORK",
    "NETWORK_ORIGIN",
    "KnownKey",
    "LogKey",
    "known_key",
    "known_keys",
    "log_origin",
    "name_of_origin",
    "witness_name",
]

NETWORK = "creditnet.yrd"
NETWORK_ORIGIN = f"{NETWORK}/network"
NATIONAL = "national"


def log_origin(name: str) -> str:
    return f"{NETWORK}/log/{name}"


def witness_name(name: str) -> str:
    return f"{NETWORK}/witness/{name}"


def name_of_origin(origin: str) -> str:
    prefix = f"{NETWORK}/log/"
    if not origin.startswith(prefix):
        raise InvalidArgument("chain.origin", f"{origin!r} is not a creditnet log origin")
    return origin.removeprefix(prefix)


@dataclass(frozen=True, slots=True)
class LogKey:
    """A participant's log key with its certificate."""

    name: str
    private_key: ed25519.Ed25519PrivateKey
    certificate_der: bytes

    @property
    def origin(self) -> str:
        return log_origin(self.name)

    @property
    def log_signer(self) -> Signer:
        return Signer(log_origin(self.name), self.private_key, ALG_ED25519)

    @property
    def witness_signer(self) -> Signer:
        return Signer(witness_name(self.name), self.private_key, ALG_COSIGNATURE_V1)

    @classmethod
    def issue(cls, ca: CertificateAuthority, name: str) -> LogKey:
        key = ed25519.Ed25519PrivateKey.generate()
        cert = ca.issue(Role.logkey(name), key.public_key())
        return cls(name, key, cert.public_bytes(serialization.Encoding.DER))

    def save(self, cert_path: Path, key_path: Path) -> None:
        cert = x509.load_der_x509_certificate(self.certificate_der)
        write_public(cert_path, cert_to_pem(cert))
        write_private(
            key_path,
            self.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> LogKey:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise InvalidArgument("chain.key", f"cannot read the log key {key_path}: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise InvalidArgument("chain.key", f"{key_path} is not an Ed25519 key")
        from creditnet.pki import role_of

        role = role_of(cert)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        cert_pub = cert.public_key()
        if (
            not isinstance(cert_pub, ed25519.Ed25519PublicKey)
            or cert_pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) != raw
        ):
            raise InvalidArgument("chain.key", "the log key does not belong to its certificate")
        return cls(role.subject, key, cert.public_bytes(serialization.Encoding.DER))


@dataclass(frozen=True, slots=True)
class KnownKey:
    """A verified log-key certificate, as the two note keys it stands for."""

    name: str
    log: VerifierKey
    witness: VerifierKey


def known_key(trust: TrustStore, der: bytes) -> KnownKey:
    verified = trust.verify_log_key(der)
    return KnownKey(
        name=verified.name,
        log=VerifierKey(log_origin(verified.name), ALG_ED25519, verified.public_key),
        witness=VerifierKey(witness_name(verified.name), ALG_COSIGNATURE_V1, verified.public_key),
    )


def known_keys(trust: TrustStore, ders: Iterable[bytes]) -> dict[str, KnownKey]:
    out: dict[str, KnownKey] = {}
    for der in ders:
        try:
            k = known_key(trust, der)
        except Unauthenticated:
            continue  # an unverifiable certificate simply contributes no key
        out[k.name] = k
    return out
