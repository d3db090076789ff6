"""A network CA with governance keys and log keys for the five pilot cities, Suzhou and the aggregator."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from creditnet.chain.keys import LogKey
from creditnet.dates import utcnow
from creditnet.directory.build import PILOT_CITIES, MemberSpec, issue_governance, make_directory
from creditnet.directory.model import Directory, Policy
from creditnet.pki import CertificateAuthority, Identity, TrustStore

NOW = utcnow().replace(microsecond=0)
ISSUED = NOW - dt.timedelta(minutes=5)


@dataclass
class World:
    ca: CertificateAuthority
    trust: TrustStore
    gov: list[Identity]  # alice, bob, carol: threshold 2
    new_gov: list[Identity]  # dave, erin: a rotation's keys
    members: dict[str, MemberSpec]

    def directory(
        self,
        version: int,
        *,
        cities: tuple[str, ...] = PILOT_CITIES,
        governance: list[Identity] | None = None,
        threshold: int = 2,
        issued_at: dt.datetime | None = None,
        policy: Policy | None = None,
    ) -> Directory:
        return make_directory(
            version=version,
            issued_at=issued_at or NOW - dt.timedelta(minutes=1),
            cities=[self.members[c] for c in cities],
            aggregators=[self.members["national"]],
            governance=governance if governance is not None else self.gov,
            threshold=threshold,
            policy=policy,
        )


@pytest.fixture(scope="session")
def world() -> World:
    ca = CertificateAuthority.create("directory test CA", not_before=ISSUED)
    members = {}
    for i, name in enumerate((*PILOT_CITIES, "320500", "national")):
        log = LogKey.issue(ca, name)
        members[name] = MemberSpec(name, (f"127.0.0.1:{7000 + i}",), log.certificate_der)
    return World(
        ca=ca,
        trust=TrustStore(ca.cert),
        gov=issue_governance(ca, ["alice", "bob", "carol"], not_before=ISSUED),
        new_gov=issue_governance(ca, ["dave", "erin"], not_before=ISSUED),
        members=members,
    )
