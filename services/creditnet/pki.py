"""The network's own PKI: one CA, and certificates whose role is bound in.

Every participant holds an ECDSA P-256 key and a certificate from the network
CA. The role travels in the certificate as exactly one URI subject-alternative
name, for example::

    creditnet://node/340100
    creditnet://aggregator/national
    creditnet://bank/B0001H231000001
    creditnet://enterprise/91340100MA2N0U3E6J
    creditnet://provider/340100/state-grid-340100?categories=utility
    creditnet://operator/340100
    creditnet://governance/alice

Servers also carry a DNS name of their own (``340100.node.creditnet``,
``aggregator.creditnet``) that clients pin with the TLS target name, so that a
TLS connection to "the Hefei node" only succeeds with the Hefei node's
certificate, whatever address it listens on.

Chains are validated by ``cryptography.x509.verification`` (the maintained
RFC 5280 verifier), never by hand; results are cached by the digest of the
exact chain bytes so a hot path pays for each certificate once.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import ipaddress
import os
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from creditnet.dates import utcnow
from creditnet.domain import Category, City
from creditnet.errors import InvalidArgument, Unauthenticated

__all__ = [
    "AGGREGATOR_SERVER_NAME",
    "LEAF_VALIDITY",
    "MAX_CHAIN_LENGTH",
    "CertificateAuthority",
    "Identity",
    "RevocationCheck",
    "Role",
    "RoleKind",
    "TrustStore",
    "VerifiedCert",
    "VerifiedLogKey",
    "cert_to_pem",
    "generate_key",
    "issue_identity",
    "key_to_pem",
    "load_cert",
    "load_key",
    "make_csr",
    "node_server_name",
    "role_of",
    "write_private",
    "write_public",
]

SCHEME = "creditnet"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=397)
# Certificates and chains from the wire are bounded before any parsing.
MAX_CERT_BYTES = 8 * 1024
MAX_CHAIN_LENGTH = 4


class RoleKind(enum.Enum):
    NODE = "node"
    AGGREGATOR = "aggregator"
    BANK = "bank"
    ENTERPRISE = "enterprise"
    PROVIDER = "provider"
    OPERATOR = "operator"
    # An Ed25519 key that signs credit-chain checkpoints and witness
    # cosignatures (C2SP notes); subject is a city or "national".
    LOGKEY = "logkey"
    # A P-256 key that co-signs the network directory (k of n); subject is
    # the key's name in the directory's governance list.
    GOVERNANCE = "governance"


@dataclass(frozen=True, slots=True)
class Role:
    """What a certificate allows its holder to be."""

    kind: RoleKind
    # NODE, OPERATOR, PROVIDER: the city. Others: None.
    city: City | None = None
    # BANK: institution code; ENTERPRISE: USCC; PROVIDER: provider id;
    # AGGREGATOR: its name.
    subject: str = ""
    # PROVIDER only: the categories it may submit.
    categories: tuple[Category, ...] = field(default=())

    @classmethod
    def node(cls, city: City) -> Role:
        return cls(RoleKind.NODE, city=city)

    @classmethod
    def operator(cls, city: City) -> Role:
        return cls(RoleKind.OPERATOR, city=city)

    @classmethod
    def aggregator(cls, name: str = "national") -> Role:
        return cls(RoleKind.AGGREGATOR, subject=_check_token(name, "aggregator name"))

    @classmethod
    def logkey(cls, name: str) -> Role:
        return cls(RoleKind.LOGKEY, subject=_check_token(name, "log key name"))

    @classmethod
    def governance(cls, name: str) -> Role:
        return cls(RoleKind.GOVERNANCE, subject=_check_token(name, "governance key name"))

    @classmethod
    def bank(cls, code: str) -> Role:
        return cls(RoleKind.BANK, subject=_check_token(code, "bank institution code"))

    @classmethod
    def enterprise(cls, uscc: str) -> Role:
        from creditnet import uscc as uscc_mod

        return cls(RoleKind.ENTERPRISE, subject=uscc_mod.validate(uscc))

    @classmethod
    def provider(cls, city: City, provider_id: str, categories: Sequence[Category]) -> Role:
        if not categories:
            raise InvalidArgument("pki.role", "a data provider needs at least one category")
        ordered = tuple(c for c in Category if c in set(categories))
        return cls(
            RoleKind.PROVIDER,
            city=city,
            subject=_check_token(provider_id, "provider id"),
            categories=ordered,
        )

    @property
    def uri(self) -> str:
        match self.kind:
            case RoleKind.NODE | RoleKind.OPERATOR:
                assert self.city is not None
                return f"{SCHEME}://{self.kind.value}/{self.city.value}"
            case RoleKind.PROVIDER:
                assert self.city is not None
                cats = ",".join(c.value for c in self.categories)
                return f"{SCHEME}://provider/{self.city.value}/{self.subject}?categories={cats}"
            case _:
                return f"{SCHEME}://{self.kind.value}/{self.subject}"

    @property
    def server_name(self) -> str | None:
        """The DNS name a server with this role is reached by (TLS target name)."""
        if self.kind is RoleKind.NODE and self.city is not None:
            return node_server_name(self.city)
        if self.kind is RoleKind.AGGREGATOR:
            return AGGREGATOR_SERVER_NAME
        return None

    @classmethod
    def parse_uri(cls, uri: str) -> Role:
        """The role a URI names; ValueError unless it is exactly as `uri` writes it."""
        try:
            role = cls._parse_uri(uri)
        except InvalidArgument as exc:
            raise ValueError(f"malformed role URI {uri!r}: {exc.message}") from None
        # One spelling per role: a certificate cannot smuggle extra parts.
        if role.uri != uri:
            raise ValueError(f"role URI {uri!r} is not in canonical form ({role.uri!r})")
        return role

    @classmethod
    def _parse_uri(cls, uri: str) -> Role:
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme != SCHEME:
            raise ValueError(f"not a creditnet role URI: {uri!r}")
        try:
            kind = RoleKind(parsed.netloc)
        except ValueError:
            raise ValueError(f"unknown role {parsed.netloc!r} in {uri!r}") from None
        parts = [p for p in parsed.path.split("/") if p]
        if kind in (RoleKind.NODE, RoleKind.OPERATOR) and len(parts) == 1:
            return cls(kind, city=City.parse(parts[0]))
        if kind is RoleKind.PROVIDER and len(parts) == 2:
            query = urllib.parse.parse_qs(parsed.query)
            cats = Category.parse_many(",".join(query.get("categories", [])))
            return cls.provider(City.parse(parts[0]), parts[1], cats)
        if kind is RoleKind.BANK and len(parts) == 1:
            return cls.bank(parts[0])
        if kind is RoleKind.AGGREGATOR and len(parts) == 1:
            return cls.aggregator(parts[0])
        if kind is RoleKind.ENTERPRISE and len(parts) == 1:
            return cls.enterprise(parts[0])
        if kind is RoleKind.LOGKEY and len(parts) == 1:
            return cls.logkey(parts[0])
        if kind is RoleKind.GOVERNANCE and len(parts) == 1:
            return cls.governance(parts[0])
        raise ValueError(f"malformed role URI {uri!r}")

    def __str__(self) -> str:
        return self.uri


AGGREGATOR_SERVER_NAME = "aggregator.creditnet"


def node_server_name(city: City) -> str:
    return f"{city.value}.node.creditnet"


def _check_token(value: str, what: str) -> str:
    value = value.strip()
    ok = value and len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_.") for c in value)
    if not ok:
        raise InvalidArgument("pki.role", f"{what} must be 1-64 ASCII letters, digits, '-', '_' or '.'")
    return value


def role_of(cert: x509.Certificate) -> Role:
    """The single creditnet role bound into a certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Unauthenticated("cert.role", "certificate has no subject alternative names") from None
    uris = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SCHEME + "://")
    ]
    if len(uris) != 1:
        raise Unauthenticated("cert.role", "certificate must name exactly one creditnet role")
    try:
        return Role.parse_uri(uris[0])
    except ValueError as exc:
        raise Unauthenticated("cert.role", f"certificate role is malformed: {exc}") from None


# --- keys and files ---------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise InvalidArgument("pki.key", f"cannot read private key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidArgument("pki.key", f"{path} is not an ECDSA P-256 private key")
    return key


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidArgument("pki.cert", f"cannot read certificate {path}: {exc}") from None


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- the CA -----------------------------------------------------------------


@dataclass(slots=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, name: str = "creditnet Yangtze River Delta network CA", *, not_before: dt.datetime | None = None
    ) -> CertificateAuthority:
        """A new CA, valid from `not_before` (default: five minutes ago, for clock skew)."""
        key = generate_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "creditnet"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        start = not_before or (utcnow() - dt.timedelta(minutes=5))
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        return cls(cert=load_cert(directory / "ca.pem"), key=load_key(directory / "ca.key"))

    def save(self, directory: Path) -> None:
        write_public(directory / "ca.pem", cert_to_pem(self.cert))
        write_private(directory / "ca.key", key_to_pem(self.key))

    def issue(
        self,
        role: Role,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        *,
        common_name: str | None = None,
        dns_names: Sequence[str] = (),
        validity: dt.timedelta = LEAF_VALIDITY,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        if role.kind is RoleKind.LOGKEY:
            # Checkpoint notes and cosignatures are Ed25519 by the C2SP specs.
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise InvalidArgument("pki.key", "log key certificates are issued for Ed25519 keys only")
        elif not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise InvalidArgument("pki.key", "certificates are issued for ECDSA P-256 keys only")
        start = not_before or (utcnow() - dt.timedelta(minutes=5))
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(role.uri)]
        dns = list(dns_names)
        if role.server_name:
            dns.insert(0, role.server_name)
        names += [x509.DNSName(d) for d in dict.fromkeys(dns)]
        if role.server_name:
            # Lets plain tools (grpcurl, health probes) reach a local server
            # without a target-name override.
            names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cn = common_name or role.uri
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue_from_csr(
        self, csr: x509.CertificateSigningRequest, role: Role, **kw: object
    ) -> x509.Certificate:
        """Issue for a request; the CA decides the role, never the request."""
        if not csr.is_signature_valid:
            raise InvalidArgument("pki.csr", "the certificate request's signature does not verify")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise InvalidArgument(
                "pki.key", "certificates are issued for ECDSA P-256 (or Ed25519 log) keys only"
            )
        return self.issue(role, pub, **kw)  # type: ignore[arg-type]


def make_csr(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, role: Role
) -> x509.CertificateSigningRequest:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role.uri[:64])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(role.uri)]), critical=False
        )
    )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    return builder.sign(key, hashes.SHA256())


# --- identities -------------------------------------------------------------


@dataclass(slots=True)
class Identity:
    """A participant's key and certificate, as loaded from its files."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    role: Role
    cert_pem: bytes
    key_pem: bytes
    chain_der: tuple[bytes, ...]

    @classmethod
    def from_objects(cls, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Identity:
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise InvalidArgument("pki.key", "private key does not belong to the certificate")
        return cls(
            key=key,
            cert=cert,
            role=role_of(cert),
            cert_pem=cert_to_pem(cert),
            key_pem=key_to_pem(key),
            chain_der=(cert.public_bytes(serialization.Encoding.DER),),
        )

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Identity:
        return cls.from_objects(load_key(key_path), load_cert(cert_path))

    def save(self, cert_path: Path, key_path: Path) -> None:
        write_public(cert_path, self.cert_pem)
        write_private(key_path, self.key_pem)


def issue_identity(ca: CertificateAuthority, role: Role, **kw: object) -> Identity:
    key = generate_key()
    cert = ca.issue(role, key.public_key(), **kw)  # type: ignore[arg-type]
    return Identity.from_objects(key, cert)


# --- verification -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedCert:
    role: Role
    public_key: ec.EllipticCurvePublicKey
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    # What a revocation list names a certificate by (protocol v2's directory).
    serial: int = 0
    spki_sha256: bytes = b""


# Whether a certificate, by serial and SPKI SHA-256, is revoked now (fed by the network directory).
RevocationCheck = Callable[[int, bytes], bool]


@dataclass(frozen=True, slots=True)
class VerifiedLogKey:
    name: str
    public_key: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int = 0
    spki_sha256: bytes = b""


def _check_key_usage(leaf: x509.Certificate) -> None:
    """The profile's keyUsage: present, critical, digitalSignature.

    The RFC 5280 web profile of `cryptography.x509.verification` accepts a
    leaf without keyUsage, or one for key encipherment only. Every key of the
    network signs (envelopes, TLS handshakes, notes), so a certificate that
    does not allow signing is refused, whoever issued it.
    """
    try:
        ext = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise Unauthenticated("cert.key_usage", "certificate has no keyUsage extension") from None
    if not ext.critical or not ext.value.digital_signature:
        raise Unauthenticated(
            "cert.key_usage", "certificate keyUsage must be critical and allow digitalSignature"
        )


def _spki_sha256(pub: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


class TrustStore:
    """Validates certificate chains against the network CA, with a cache.

    The cache maps the SHA-256 of the exact DER chain to what was learnt; a
    hit still checks the validity window against the time of use, so an
    expired certificate is refused even if it was valid when first seen.

    `revocation`, when set (a server holding the network directory), is
    asked at every use too, cache hit or not: a certificate revoked after it
    was first seen is refused from the next use, ``cert.revoked``.
    """

    def __init__(self, ca_cert: x509.Certificate, *, cache_size: int = 4096) -> None:
        self.ca_cert = ca_cert
        self.ca_pem = cert_to_pem(ca_cert)
        self._store = Store([ca_cert])
        self._cache: dict[bytes, VerifiedCert] = {}
        self._log_cache: dict[bytes, VerifiedLogKey] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.revocation: RevocationCheck | None = None

    @classmethod
    def load(cls, ca_path: Path) -> TrustStore:
        return cls(load_cert(ca_path))

    def verify_chain(self, chain: Sequence[bytes], at: dt.datetime | None = None) -> VerifiedCert:
        now = at or utcnow()
        if not chain:
            raise Unauthenticated("cert.chain", "no certificate was sent")
        if len(chain) > MAX_CHAIN_LENGTH or any(len(c) > MAX_CERT_BYTES for c in chain):
            raise Unauthenticated("cert.chain", "certificate chain is too long or too large")
        digest = hashlib.sha256(b"".join(len(c).to_bytes(4, "big") + c for c in chain)).digest()
        hit = self._cache.get(digest)
        if hit is None:
            hit = self._verify_uncached(chain, now)
            with self._lock:
                if len(self._cache) >= self._cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[digest] = hit
        if not (hit.not_before <= now <= hit.not_after):
            raise Unauthenticated("cert.expired", "certificate is not valid at this time; renew it")
        self.require_unrevoked(hit)
        return hit

    def require_unrevoked(self, cert: VerifiedCert | VerifiedLogKey) -> None:
        """Refuse a certificate the network directory lists as revoked (UNAUTHENTICATED cert.revoked)."""
        check = self.revocation
        if check is not None and check(cert.serial, cert.spki_sha256):
            raise Unauthenticated("cert.revoked", "this certificate has been revoked by the network")

    def _verify_uncached(self, chain: Sequence[bytes], now: dt.datetime) -> VerifiedCert:
        leaf = self._validate(chain, now)
        pub = leaf.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise Unauthenticated("cert.key", "signer key must be ECDSA P-256")
        return VerifiedCert(
            role=role_of(leaf),
            public_key=pub,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            fingerprint=hashlib.sha256(chain[0]).hexdigest(),
            serial=leaf.serial_number,
            spki_sha256=_spki_sha256(pub),
        )

    def verify_log_key(self, der: bytes, at: dt.datetime | None = None) -> VerifiedLogKey:
        """Validate a log-key certificate; returns its name and raw Ed25519 key."""
        now = at or utcnow()
        if len(der) > MAX_CERT_BYTES:
            raise Unauthenticated("cert.chain", "certificate is too large")
        key = hashlib.sha256(b"logkey" + der).digest()
        hit = self._log_cache.get(key)
        if hit is None:
            leaf = self._validate([der], now)
            role = role_of(leaf)
            pub = leaf.public_key()
            if role.kind is not RoleKind.LOGKEY or not isinstance(pub, ed25519.Ed25519PublicKey):
                raise Unauthenticated(
                    "cert.role", "not a log-key certificate (Ed25519, creditnet://logkey/...)"
                )
            hit = VerifiedLogKey(
                name=role.subject,
                public_key=pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
                not_before=leaf.not_valid_before_utc,
                not_after=leaf.not_valid_after_utc,
                serial=leaf.serial_number,
                spki_sha256=_spki_sha256(pub),
            )
            with self._lock:
                if len(self._log_cache) >= self._cache_size:
                    self._log_cache.pop(next(iter(self._log_cache)))
                self._log_cache[key] = hit
        if not (hit.not_before <= now <= hit.not_after):
            raise Unauthenticated("cert.expired", "log key certificate is not valid at this time")
        self.require_unrevoked(hit)
        return hit

    def _validate(self, chain: Sequence[bytes], now: dt.datetime) -> x509.Certificate:
        try:
            certs = [x509.load_der_x509_certificate(c) for c in chain]
        except ValueError:
            raise Unauthenticated("cert.malformed", "certificate is not valid DER X.509") from None
        # Checked before the chain so that an expired certificate is refused
        # with the same rule whether or not it is in the cache.
        if not (certs[0].not_valid_before_utc <= now <= certs[0].not_valid_after_utc):
            raise Unauthenticated("cert.expired", "certificate is not valid at this time; renew it")
        verifier = PolicyBuilder().store(self._store).time(now).build_client_verifier()
        try:
            verifier.verify(certs[0], certs[1:])
        except VerificationError as exc:
            raise Unauthenticated(
                "cert.untrusted",
                f"certificate does not chain to the network CA or is not valid now ({exc})",
            ) from None
        _check_key_usage(certs[0])
        return certs[0]

    def verify_pem(self, pem: bytes, at: dt.datetime | None = None) -> VerifiedCert:
        try:
            der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        except ValueError:
            raise Unauthenticated("cert.malformed", "peer certificate is not valid PEM X.509") from None
        return self.verify_chain([der], at)
