"""Making a network's first directory and its keys on disk (`directory init`, `network up`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from creditnet.chain.keys import NATIONAL, LogKey
from creditnet.dates import utcnow
from creditnet.directory.build import MemberSpec, issue_governance, make_directory
from creditnet.directory.model import Policy
from creditnet.directory.sign import save, sign
from creditnet.pki import CertificateAuthority
from creditnet.v2 import envelope_pb2

__all__ = [
    "DEFAULT_GOVERNANCE",
    "DEFAULT_THRESHOLD",
    "Initialised",
    "init_directory",
]

DEFAULT_AGGREGATOR_ENDPOINT = "127.0.0.1:7099"
DEFAULT_GOVERNANCE = ("gov-1", "gov-2", "gov-3")
DEFAULT_THRESHOLD = 2


@dataclass(frozen=True, slots=True)
class Initialised:
    envelope: envelope_pb2.SignedEnvelope
    # SHA-256 (hex) of the payload: the trust anchor every member pins.
    anchor: str
    file: Path
    signers: tuple[str, ...]


def init_directory(
    ca: CertificateAuthority,
    out: Path,
    *,
    codes: Sequence[str],
    endpoints: Mapping[str, str],
    aggregator_endpoint: str | Sequence[str] | None,
    governance: Sequence[str],
    threshold: int,
    policy: Policy,
    log_keys: Mapping[str, LogKey] | None = None,
) -> Initialised:
    """Issue the governance keys and v2 log keys into `out`, sign version 1 with the first k keys.

    Writes OUT/directory.json, OUT/anchor.sha256, OUT/governance/NAME.pem|.key
    and OUT/logkeys/NAME.pem|.key. A city without an endpoint in `endpoints`
    gets 127.0.0.1:7100, 7101, ... in the order of `codes`. A member's log
    key is taken from `log_keys` (its name to the key) if there, else issued.
    """
    keys = dict(log_keys or {})
    members = []
    for i, code in enumerate(codes):
        log = keys.get(code) or LogKey.issue(ca, code)
        log.save(out / "logkeys" / f"{code}.pem", out / "logkeys" / f"{code}.key")
        members.append(MemberSpec(code, (endpoints.get(code, f"127.0.0.1:{7100 + i}"),), log.certificate_der))
    national = keys.get(NATIONAL) or LogKey.issue(ca, NATIONAL)
    national.save(out / "logkeys" / f"{NATIONAL}.pem", out / "logkeys" / f"{NATIONAL}.key")
    # Replicas of the aggregator are one member with several endpoints.
    agg_endpoints = (
        (aggregator_endpoint,) if isinstance(aggregator_endpoint, str) else tuple(aggregator_endpoint or ())
    )
    agg = MemberSpec(NATIONAL, agg_endpoints or (DEFAULT_AGGREGATOR_ENDPOINT,), national.certificate_der)
    gov = issue_governance(ca, governance)
    for g in gov:
        g.save(out / "governance" / f"{g.role.subject}.pem", out / "governance" / f"{g.role.subject}.key")
    d = make_directory(
        version=1,
        issued_at=utcnow().replace(microsecond=0),
        cities=members,
        aggregators=[agg],
        governance=gov,
        threshold=threshold,
        policy=policy,
    )
    env = sign(d, gov[:threshold])
    save(env, out / "directory.json")
    anchor = hashlib.sha256(env.payload).hexdigest()
    (out / "anchor.sha256").write_text(anchor + "\n", encoding="utf-8")
    return Initialised(env, anchor, out / "directory.json", tuple(governance[:threshold]))
