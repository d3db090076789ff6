"""The network directory as small typed values, apart from the generated protobuf classes.

`Directory.from_payload` parses exact payload bytes and checks every content
rule (docs/directory.md, "Content rules"), raising the rule that fails first;
`Directory.to_payload` gives the bytes the governance signs (deterministic
protobuf serialisation). A directory is only ever verified over the bytes it
arrived as; it is re-encoded only by whoever builds a new version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from creditnet import divisions
from creditnet.dates import ts_from_proto, ts_to_proto
from creditnet.directory.errors import refuse
from creditnet.errors import CreditnetError
from creditnet.pki import Role, RoleKind, role_of
from creditnet.v2 import directory_pb2

MAX_DIRECTORY_BYTES: Final = 4 << 20
MAX_MEMBERS: Final = 4096
MAX_GOVERNANCE_KEYS: Final = 32
MAX_REVOKED: Final = 100_000


def spki_sha256(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: how the directory names a key."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def serial_bytes(serial: int) -> bytes:
    """A certificate serial as the directory carries it: unsigned big-endian, minimal."""
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


@dataclass(frozen=True, slots=True)
class City:
    code: str
    name_zh: str
    name_en: str
    endpoints: tuple[str, ...]
    tls_server_name: str
    log_key_certificate: bytes
    node_spki_sha256: bytes = b""


@dataclass(frozen=True, slots=True)
class Aggregator:
    name: str
    endpoints: tuple[str, ...]
    tls_server_name: str
    log_key_certificate: bytes


@dataclass(frozen=True, slots=True)
class WitnessAssignment:
    log: str
    witnesses: tuple[str, ...]
    quorum: int


@dataclass(frozen=True, slots=True)
class Policy:
    witness_quorum: int = 3
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)
    max_message_bytes: int = 4 << 20
    bank_rate_per_second: int = 50
    bank_rate_burst: int = 100
    refresh_interval: dt.timedelta = dt.timedelta(minutes=5)
    max_age: dt.timedelta = dt.timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Revoked:
    serial: bytes
    spki_sha256: bytes
    reason: int
    revoked_at: dt.datetime


@dataclass(frozen=True, slots=True)
class GovernanceKey:
    name: str
    spki_sha256: bytes
    certificate: bytes = b""


@dataclass(frozen=True, slots=True)
class Governance:
    keys: tuple[GovernanceKey, ...]
    threshold: int

    def identity(self) -> tuple[frozenset[tuple[str, bytes]], int]:
        """What a rotation changes: the set of (name, key) and the threshold."""
        return frozenset((k.name, k.spki_sha256) for k in self.keys), self.threshold


@dataclass(frozen=True, slots=True)
class Directory:
    network: str
    version: int
    issued_at: dt.datetime
    cities: tuple[City, ...]
    aggregators: tuple[Aggregator, ...]
    witness_assignments: tuple[WitnessAssignment, ...]
    policy: Policy
    revoked: tuple[Revoked, ...]
    governance: Governance
    _revoked_serials: frozenset[bytes] = field(default=frozenset(), compare=False, repr=False)
    _revoked_spkis: frozenset[bytes] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_revoked_serials", frozenset(r.serial for r in self.revoked))
        object.__setattr__(self, "_revoked_spkis", frozenset(r.spki_sha256 for r in self.revoked))

    @property
    def expires_at(self) -> dt.datetime:
        return self.issued_at + self.policy.max_age

    def city(self, code: str) -> City | None:
        return next((c for c in self.cities if c.code == code), None)

    def witnesses_of(self, log: str) -> WitnessAssignment | None:
        """Who cosigns the log of member `log` (a city code or an aggregator name), and how many must."""
        return next((w for w in self.witness_assignments if w.log == log), None)

    def reach(self, member: str) -> tuple[tuple[str, ...], str] | None:
        """A member's endpoints and the TLS server name it is checked against; None if no member."""
        city = self.city(member)
        if city is not None:
            return city.endpoints, city.tls_server_name
        agg = next((a for a in self.aggregators if a.name == member), None)
        return (agg.endpoints, agg.tls_server_name) if agg is not None else None

    def is_revoked(self, *, serial: int | None = None, spki: bytes | None = None) -> bool:
        return (serial is not None and serial_bytes(serial) in self._revoked_serials) or (
            spki is not None and spki in self._revoked_spkis
        )

    def is_certificate_revoked(self, cert: x509.Certificate) -> bool:
        pub = cert.public_key()
        spki = (
            spki_sha256(pub)
            if isinstance(pub, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
            else None
        )
        return self.is_revoked(serial=cert.serial_number, spki=spki)

    # --- protobuf ------------------------------------------------------------

    def to_proto(self) -> directory_pb2.NetworkDirectory:
        p = self.policy
        return directory_pb2.NetworkDirectory(
            network=self.network,
            version=self.version,
            issued_at=ts_to_proto(self.issued_at),
            cities=[
                directory_pb2.CityMember(
                    code=c.code,
                    name_zh=c.name_zh,
                    name_en=c.name_en,
                    endpoints=list(c.endpoints),
                    tls_server_name=c.tls_server_name,
                    log_key_certificate=c.log_key_certificate,
                    node_spki_sha256=c.node_spki_sha256,
                )
                for c in self.cities
            ],
            aggregators=[
                directory_pb2.AggregatorMember(
                    name=a.name,
                    endpoints=list(a.endpoints),
                    tls_server_name=a.tls_server_name,
                    log_key_certificate=a.log_key_certificate,
                )
                for a in self.aggregators
            ],
            witness_assignments=[
                directory_pb2.WitnessAssignment(log=w.log, witnesses=list(w.witnesses), quorum=w.quorum)
                for w in self.witness_assignments
            ],
            policy=directory_pb2.NetworkPolicy(
                witness_quorum=p.witness_quorum,
                clock_skew=_duration(p.clock_skew),
                max_message_bytes=p.max_message_bytes,
                bank_rate_per_second=p.bank_rate_per_second,
                bank_rate_burst=p.bank_rate_burst,
                refresh_interval=_duration(p.refresh_interval),
                max_age=_duration(p.max_age),
            ),
            revoked_certificates=[
                directory_pb2.RevokedCertificate(
                    serial=r.serial,
                    spki_sha256=r.spki_sha256,
                    reason=r.reason,  # type: ignore[arg-type]
                    revoked_at=ts_to_proto(r.revoked_at),
                )
                for r in self.revoked
            ],
            governance=directory_pb2.Governance(
                keys=[
                    directory_pb2.GovernanceKey(
                        name=k.name, spki_sha256=k.spki_sha256, certificate=k.certificate
                    )
                    for k in self.governance.keys
                ],
                threshold=self.governance.threshold,
            ),
        )

    def to_payload(self) -> bytes:
        """The bytes to sign. Checks the content rules first: nothing invalid gets signed."""
        payload = self.to_proto().SerializeToString(deterministic=True)
        Directory.from_payload(payload)
        return payload

    @classmethod
    def from_payload(cls, payload: bytes) -> Directory:
        if not payload or len(payload) > MAX_DIRECTORY_BYTES:
            raise refuse("directory.malformed", f"a directory payload is 1 to {MAX_DIRECTORY_BYTES} bytes")
        msg = directory_pb2.NetworkDirectory()
        try:
            msg.ParseFromString(payload)
        except DecodeError:
            raise refuse("directory.malformed", "the payload is not a NetworkDirectory message") from None
        if _has_unknown_fields(msg):
            # A field this verifier does not know could be a rule it would not
            # apply: refuse rather than ignore it.
            raise refuse(
                "directory.malformed", "the directory has fields this version does not know; upgrade"
            )
        return _from_proto(msg)


def _duration(value: dt.timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def _has_unknown_fields(msg: Message) -> bool:
    if len(UnknownFieldSet(msg)):
        return True
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        items = value if fd.is_repeated else [value]
        if any(_has_unknown_fields(v) for v in items):
            return True
    return False


# --- content rules ---------------------------------------------------------------


def _token(value: str, what: str, rule: str) -> str:
    ok = 0 < len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_.") for c in value)
    if not ok:
        raise refuse(rule, f"{what} must be 1-64 ASCII letters, digits, '-', '_' or '.'")
    return value


def _endpoint(value: str, who: str) -> str:
    host, sep, port = value.rpartition(":")
    ok = (
        sep
        and host
        and len(value) <= 255
        and value.isascii()
        and port.isdigit()
        and 0 < int(port) < 65536
        and not any(c.isspace() for c in value)
    )
    if not ok:
        raise refuse("directory.member", f"{who}: endpoint {value[:80]!r} is not host:port")
    return value


def _dns_name(value: str, who: str) -> str:
    labels = value.split(".")
    ok = (
        0 < len(value) <= 253
        and value == value.lower()
        and all(
            0 < len(lb) <= 63 and lb.isascii() and all(c.isalnum() or c == "-" for c in lb) and lb[0] != "-"
            for lb in labels
        )
    )
    if not ok:
        raise refuse(
            "directory.member", f"{who}: TLS server name {value[:80]!r} is not a lower-case DNS name"
        )
    return value


def _log_key(der: bytes, name: str, who: str) -> bytes:
    try:
        cert = x509.load_der_x509_certificate(der)
        role = role_of(cert)
    except (ValueError, CreditnetError):
        raise refuse(
            "directory.member", f"{who}: the log-key certificate is not a creditnet certificate"
        ) from None
    if role != Role.logkey(name) or not isinstance(cert.public_key(), ed25519.Ed25519PublicKey):
        raise refuse(
            "directory.member", f"{who}: the log-key certificate must be Ed25519 for {Role.logkey(name)}"
        )
    return der


def _from_proto(m: directory_pb2.NetworkDirectory) -> Directory:
    network = _token(m.network, "the network name", "directory.network")
    if m.version == 0:
        raise refuse("directory.version", "version must be at least 1")
    if not m.HasField("issued_at"):
        raise refuse("directory.version", "issued_at is missing")
    if len(m.cities) + len(m.aggregators) > MAX_MEMBERS:
        raise refuse("directory.malformed", f"more than {MAX_MEMBERS} members")

    members: set[str] = set()
    endpoints: dict[str, str] = {}
    server_names: dict[str, str] = {}

    def claim(who: str, eps: Iterable[str], server_name: str) -> tuple[str, ...]:
        if who in members:
            raise refuse("directory.duplicate", f"member {who} is listed twice")
        members.add(who)
        out = tuple(_endpoint(e, who) for e in eps)
        if not out:
            raise refuse("directory.member", f"{who}: at least one endpoint is required")
        for e in out:
            if e in endpoints:
                raise refuse(
                    "directory.duplicate", f"endpoint {e} is listed for both {endpoints[e]} and {who}"
                )
            endpoints[e] = who
        name = _dns_name(server_name, who)
        if name in server_names:
            raise refuse(
                "directory.duplicate",
                f"TLS server name {name} is used by both {server_names[name]} and {who}",
            )
        server_names[name] = who
        return out

    cities: list[City] = []
    for c in m.cities:
        try:
            div = divisions.city(c.code)
        except divisions.DivisionError as exc:
            raise refuse("directory.city", f"city {c.code[:16]!r}: {exc.message}") from None
        who = f"city {div.code}"
        if not c.name_zh or not c.name_en:
            raise refuse("directory.member", f"{who}: name_zh and name_en are required")
        if c.node_spki_sha256 and len(c.node_spki_sha256) != 32:
            raise refuse("directory.member", f"{who}: node_spki_sha256 must be 32 bytes or empty")
        eps = claim(div.code, c.endpoints, c.tls_server_name)
        cities.append(
            City(
                div.code,
                c.name_zh,
                c.name_en,
                eps,
                c.tls_server_name,
                _log_key(c.log_key_certificate, div.code, who),
                c.node_spki_sha256,
            )
        )
    aggregators: list[Aggregator] = []
    for a in m.aggregators:
        name = _token(a.name, "an aggregator name", "directory.member")
        if name.isdigit():
            raise refuse("directory.member", f"aggregator {name}: a name of digits would read as a city code")
        who = f"aggregator {name}"
        eps = claim(name, a.endpoints, a.tls_server_name)
        aggregators.append(
            Aggregator(name, eps, a.tls_server_name, _log_key(a.log_key_certificate, name, who))
        )

    assignments: list[WitnessAssignment] = []
    assigned: set[str] = set()
    for w in m.witness_assignments:
        if w.log not in members:
            raise refuse("directory.witness", f"witness assignment for {w.log[:64]!r}, which is not a member")
        if w.log in assigned:
            raise refuse("directory.duplicate", f"the log of {w.log} has two witness assignments")
        assigned.add(w.log)
        seen: set[str] = set()
        for name in w.witnesses:
            if name not in members:
                raise refuse("directory.witness", f"log {w.log}: witness {name[:64]!r} is not a member")
            if name == w.log:
                raise refuse("directory.witness", f"log {w.log}: a log cannot witness itself")
            if name in seen:
                raise refuse("directory.witness", f"log {w.log}: witness {name} is listed twice")
            seen.add(name)
        if not 1 <= w.quorum <= len(w.witnesses):
            raise refuse(
                "directory.witness",
                f"log {w.log}: quorum {w.quorum} must be between 1 and its {len(w.witnesses)} witnesses",
            )
        assignments.append(WitnessAssignment(w.log, tuple(w.witnesses), w.quorum))

    return Directory(
        network=network,
        version=m.version,
        issued_at=ts_from_proto(m.issued_at),
        cities=tuple(cities),
        aggregators=tuple(aggregators),
        witness_assignments=tuple(assignments),
        policy=_policy(m),
        revoked=_revoked(m.revoked_certificates),
        governance=_governance(m),
    )


def _policy(m: directory_pb2.NetworkDirectory) -> Policy:
    if not m.HasField("policy"):
        raise refuse("directory.policy", "the network policy is missing")
    p = m.policy
    for name in ("clock_skew", "refresh_interval", "max_age"):
        if not p.HasField(name):
            raise refuse("directory.policy", f"policy.{name} is missing")
    policy = Policy(
        witness_quorum=p.witness_quorum,
        clock_skew=p.clock_skew.ToTimedelta(),
        max_message_bytes=p.max_message_bytes,
        bank_rate_per_second=p.bank_rate_per_second,
        bank_rate_burst=p.bank_rate_burst,
        refresh_interval=p.refresh_interval.ToTimedelta(),
        max_age=p.max_age.ToTimedelta(),
    )
    checks = [
        (policy.witness_quorum >= 1, "witness_quorum must be at least 1"),
        (dt.timedelta(0) <= policy.clock_skew <= dt.timedelta(hours=1), "clock_skew must be 0 to 1 hour"),
        (policy.max_message_bytes >= 1024, "max_message_bytes must be at least 1024"),
        (policy.bank_rate_per_second >= 1, "bank_rate_per_second must be at least 1"),
        (policy.bank_rate_burst >= policy.bank_rate_per_second, "bank_rate_burst must be at least the rate"),
        (policy.refresh_interval > dt.timedelta(0), "refresh_interval must be positive"),
        (
            policy.max_age > policy.refresh_interval,
            "max_age must be longer than refresh_interval, or every directory expires before the next",
        ),
    ]
    for ok, why in checks:
        if not ok:
            raise refuse("directory.policy", f"policy: {why}")
    return policy


def _revoked(entries: Sequence[directory_pb2.RevokedCertificate]) -> tuple[Revoked, ...]:
    if len(entries) > MAX_REVOKED:
        raise refuse("directory.revocation", f"more than {MAX_REVOKED} revoked certificates")
    out: list[Revoked] = []
    for i, r in enumerate(entries):
        if not (0 < len(r.serial) <= 20) or r.serial[0] == 0:
            raise refuse(
                "directory.revocation", f"revoked certificate {i}: serial must be 1-20 bytes, minimal"
            )
        if len(r.spki_sha256) != 32:
            raise refuse("directory.revocation", f"revoked certificate {i}: spki_sha256 must be 32 bytes")
        if not r.HasField("revoked_at"):
            raise refuse("directory.revocation", f"revoked certificate {i}: revoked_at is missing")
        if r.reason not in directory_pb2.RevocationReason.values():
            raise refuse("directory.revocation", f"revoked certificate {i}: unknown reason {r.reason}")
        out.append(Revoked(r.serial, r.spki_sha256, r.reason, ts_from_proto(r.revoked_at)))
    return tuple(out)


def _governance(m: directory_pb2.NetworkDirectory) -> Governance:
    g = m.governance
    if not g.keys:
        raise refuse("directory.governance", "no governance keys: nobody could sign the next directory")
    if len(g.keys) > MAX_GOVERNANCE_KEYS:
        raise refuse("directory.governance", f"more than {MAX_GOVERNANCE_KEYS} governance keys")
    names: set[str] = set()
    spkis: set[bytes] = set()
    keys: list[GovernanceKey] = []
    for k in g.keys:
        name = _token(k.name, "a governance key name", "directory.governance")
        if name in names:
            raise refuse("directory.governance", f"governance key {name} is listed twice")
        if len(k.spki_sha256) != 32:
            raise refuse("directory.governance", f"governance key {name}: spki_sha256 must be 32 bytes")
        if k.spki_sha256 in spkis:
            raise refuse(
                "directory.governance", f"governance key {name}: the same key is listed under two names"
            )
        if k.certificate:
            try:
                cert = x509.load_der_x509_certificate(k.certificate)
                role = role_of(cert)
                pub = cert.public_key()
            except (ValueError, CreditnetError):
                raise refuse(
                    "directory.governance", f"governance key {name}: the certificate is malformed"
                ) from None
            if (
                role != Role(RoleKind.GOVERNANCE, subject=name)
                or not isinstance(pub, ec.EllipticCurvePublicKey)
                or spki_sha256(pub) != k.spki_sha256
            ):
                raise refuse(
                    "directory.governance",
                    f"governance key {name}: the certificate is not "
                    f"creditnet://governance/{name} for this key",
                )
        names.add(name)
        spkis.add(k.spki_sha256)
        keys.append(GovernanceKey(name, k.spki_sha256, k.certificate))
    if not 1 <= g.threshold <= len(keys):
        raise refuse(
            "directory.governance",
            f"threshold {g.threshold} must be between 1 and the number of governance keys ({len(keys)})",
        )
    return Governance(tuple(keys), g.threshold)


__all__ = [
    "MAX_DIRECTORY_BYTES",
    "Aggregator",
    "City",
    "Directory",
    "Governance",
    "GovernanceKey",
    "Policy",
    "Revoked",
    "WitnessAssignment",
    "serial_bytes",
    "spki_sha256",
]
