"""Making directories: members from division codes, governance keys from the CA, witness assignments.

Used by `creditnet directory init`, the test vectors and the benchmark. The
default witness assignment is a ring: each city's log is witnessed by the
next `min(3, cities - 1)` cities in code order, plus every aggregator, with
the policy's quorum (capped at the number of witnesses), so a node's
witnessing load stays constant as cities join.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from creditnet import divisions, pilot
from creditnet.directory.model import (
    Aggregator,
    City,
    Directory,
    Governance,
    GovernanceKey,
    Policy,
    Revoked,
    WitnessAssignment,
    spki_sha256,
)
from creditnet.pki import CertificateAuthority, Identity, Role, issue_identity

__all__ = [
    "PILOT_CITIES",
    "MemberSpec",
    "governance_key",
    "issue_governance",
    "make_directory",
    "node_server_name",
    "ring_assignments",
]

# The pilot's codes (creditnet.pilot), in the order the test vectors were made in.
PILOT_CITIES = tuple(
    c.code for c in (pilot.SHANGHAI, pilot.NANJING, pilot.HANGZHOU, pilot.HEFEI, pilot.JIAXING)
)
NETWORK = "creditnet.yrd"
RING_WITNESSES = 3


def node_server_name(code: str) -> str:
    """The v2 TLS server name of a city's node: its division code."""
    return f"{code}.node.creditnet"


def _aggregator_server_name(name: str) -> str:
    return "aggregator.creditnet" if name == "national" else f"{name}.aggregator.creditnet"


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """What an operator says about a member; the rest is derived."""

    name: str  # a division code for a city, else an aggregator name
    endpoints: tuple[str, ...]
    log_key_certificate: bytes
    node_spki_sha256: bytes = b""


def _city_member(spec: MemberSpec) -> City:
    div = divisions.city(spec.name)
    return City(
        code=div.code,
        name_zh=div.name_zh,
        name_en=div.name_en,
        endpoints=spec.endpoints,
        tls_server_name=node_server_name(div.code),
        log_key_certificate=spec.log_key_certificate,
        node_spki_sha256=spec.node_spki_sha256,
    )


def _aggregator_member(spec: MemberSpec) -> Aggregator:
    return Aggregator(spec.name, spec.endpoints, _aggregator_server_name(spec.name), spec.log_key_certificate)


def ring_assignments(
    cities: Sequence[str], aggregators: Sequence[str], quorum: int
) -> tuple[WitnessAssignment, ...]:
    ordered = sorted(cities)
    n = len(ordered)
    out = []
    for i, code in enumerate(ordered):
        peers = [ordered[(i + j) % n] for j in range(1, min(RING_WITNESSES, n - 1) + 1)]
        witnesses = (*peers, *aggregators)
        if witnesses:
            out.append(WitnessAssignment(code, witnesses, min(quorum, len(witnesses))))
    return tuple(out)


def governance_key(identity: Identity) -> GovernanceKey:
    return GovernanceKey(
        identity.role.subject,
        spki_sha256(identity.key.public_key()),
        identity.cert.public_bytes(serialization.Encoding.DER),
    )


def issue_governance(ca: CertificateAuthority, names: Sequence[str], **kw: object) -> list[Identity]:
    return [issue_identity(ca, Role.governance(n), **kw) for n in names]


def make_directory(
    *,
    version: int,
    issued_at: dt.datetime,
    cities: Sequence[MemberSpec],
    aggregators: Sequence[MemberSpec],
    governance: Sequence[Identity | GovernanceKey],
    threshold: int,
    policy: Policy | None = None,
    revoked: Sequence[Revoked] = (),
    network: str = NETWORK,
) -> Directory:
    policy = policy or Policy()
    keys = tuple(g if isinstance(g, GovernanceKey) else governance_key(g) for g in governance)
    city_members = tuple(sorted((_city_member(c) for c in cities), key=lambda c: c.code))
    aggs = tuple(_aggregator_member(a) for a in aggregators)
    return Directory(
        network=network,
        version=version,
        issued_at=issued_at,
        cities=city_members,
        aggregators=aggs,
        witness_assignments=ring_assignments(
            [c.code for c in city_members], [a.name for a in aggs], policy.witness_quorum
        ),
        policy=policy,
        revoked=tuple(revoked),
        governance=Governance(keys, threshold),
    )
