"""Test vectors for the signed network directory (docs/directory.md#test-vectors).

Written with the other vectors by ``python -m creditnet_devkit.vectors``
as docs/test-vectors/v2/directory.json, beside the envelope and chain
vectors. Like the envelope vectors (`vectors.core`), every input is fixed: keys derived
from labels, certificates with fixed serials and validity re-signed with
deterministic ECDSA, fixed directory contents and times, deterministic
signatures. Regenerating gives the same bytes.

Each case gives the trust state (a pinned anchor, or a trusted directory)
and a candidate envelope, and what a verifier must conclude at `verify_at`:
valid with a version, or refused with a rule id.

The private keys in the vectors are public knowledge: never trust them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from creditnet.dates import UTC
from creditnet.directory.build import PILOT_CITIES, MemberSpec, make_directory
from creditnet.directory.model import Directory, Policy
from creditnet.directory.sign import DIRECTORY_TYPE, sign
from creditnet.pki import Identity, Role, key_to_pem
from creditnet.v2 import directory_pb2, envelope_pb2
from creditnet_devkit.vectors.core import (
    CERT_NOT_AFTER,
    CERT_NOT_BEFORE,
    VERIFY_AT,
    FixedCA,
    make_ca,
    make_participant,
    restamp,
)

__all__ = [
    "FILE_NAME",
    "Case",
    "Keys",
    "directory",
    "generate",
    "make_cases",
    "make_keys",
    "render",
]

FORMAT_VERSION: Final = 1
FILE_NAME: Final = "directory.json"
ISSUED: Final = dt.datetime(2025, 6, 1, 7, 0, 0, tzinfo=UTC)
_WARNING: Final = "TEST KEYS: these private keys are published; never trust them outside tests."


@dataclass(frozen=True, slots=True)
class Keys:
    ca: FixedCA
    gov: list[Identity]  # gov-1, gov-2, gov-3 (threshold 2)
    new_gov: list[Identity]  # gov-4, gov-5 (a rotation's keys)
    members: list[MemberSpec]


def _log_key(ca: FixedCA, name: str, serial: int) -> bytes:
    seed = hashlib.sha256(b"creditnet test vector log key v1: " + name.encode()).digest()
    pub = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    template = ca.ca.issue(Role.logkey(name), pub, not_before=CERT_NOT_BEFORE)
    cert = restamp(
        template,
        public_key=pub,
        issuer_key=ca.ca.key,
        serial=serial,
        not_before=CERT_NOT_BEFORE,
        not_after=CERT_NOT_AFTER,
    )
    return cert.public_bytes(serialization.Encoding.DER)


def make_keys() -> Keys:
    ca = make_ca("directory-ca", "creditnet directory test-vector CA", 0x2000)
    gov = [
        make_participant(f"gov-{i}", ca, Role.governance(f"gov-{i}"), 0x2100 + i).identity
        for i in range(1, 6)
    ]
    members = [
        MemberSpec(name, (f"127.0.0.1:{7100 + i}",), _log_key(ca, name, 0x2200 + i))
        for i, name in enumerate((*PILOT_CITIES, "national"))
    ]
    return Keys(ca, gov[:3], gov[3:], members)


def directory(
    keys: Keys, version: int, *, minutes: int = 0, governance: Sequence[Identity] | None = None
) -> Directory:
    return make_directory(
        version=version,
        issued_at=ISSUED + dt.timedelta(minutes=minutes),
        cities=keys.members[:-1],
        aggregators=keys.members[-1:],
        governance=list(governance) if governance is not None else keys.gov,
        threshold=2,
        policy=Policy(),
    )


def _raw(keys: Keys, d: Directory, edit: Any, signers: Sequence[Identity]) -> envelope_pb2.SignedEnvelope:
    """A signed directory whose payload breaks a content rule (so `sign` would refuse to make it)."""
    from creditnet.directory.sign import add_signature

    msg: directory_pb2.NetworkDirectory = d.to_proto()
    edit(msg)
    env = envelope_pb2.SignedEnvelope(
        payload_type=DIRECTORY_TYPE, payload=msg.SerializeToString(deterministic=True)
    )
    for s in signers:
        add_signature(env, s)
    return env


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    description: str
    candidate: envelope_pb2.SignedEnvelope
    trusted: envelope_pb2.SignedEnvelope | None
    anchor: bytes | None
    rule: str | None
    version: int | None = None


def make_cases(keys: Keys) -> list[Case]:
    g, n = keys.gov, keys.new_gov
    v1 = sign(directory(keys, 1), g[:2])
    anchor = hashlib.sha256(v1.payload).digest()
    v3 = sign(directory(keys, 3, minutes=20), g[1:])
    old = replace(directory(keys, 2, minutes=10), issued_at=VERIFY_AT - dt.timedelta(days=8))
    return [
        Case(
            "valid-first",
            "Version 1, signed by gov-1 and gov-2 (2 of 3), pinned by its SHA-256.",
            v1,
            None,
            anchor,
            None,
            1,
        ),
        Case(
            "anchor-mismatch",
            "Version 1 against a different pinned anchor (SHA-256 of version 3's payload).",
            v1,
            None,
            hashlib.sha256(v3.payload).digest(),
            "directory.anchor",
        ),
        Case(
            "valid-update",
            "Version 3 after version 1 (version 2 skipped), signed by gov-2 and gov-3.",
            v3,
            v1,
            None,
            None,
            3,
        ),
        Case(
            "below-threshold",
            "Version 2 signed by gov-1 only: 1 of the 2 required.",
            sign(directory(keys, 2, minutes=10), g[:1]),
            v1,
            None,
            "directory.threshold",
        ),
        Case(
            "rolled-back",
            "Version 2 offered to a holder of version 3.",
            sign(directory(keys, 2, minutes=10), g[:2]),
            v3,
            None,
            "directory.rollback",
        ),
        Case(
            "fork",
            "A second version 1 (issued a minute later, so other bytes) offered to a holder of version 1.",
            sign(directory(keys, 1, minutes=1), g[:2]),
            v1,
            None,
            "directory.fork",
        ),
        Case(
            "expired",
            "Version 2 issued 8 days before verify_at; its policy's max_age is 7 days.",
            sign(old, g[:2]),
            _older_anchor(keys),
            None,
            "directory.expired",
        ),
        Case(
            "rotated-valid",
            "Version 2 replaces gov-1..3 (k=2) with gov-4, gov-5 (k=2); signed by gov-1, 2, 4 and 5.",
            sign(directory(keys, 2, minutes=10, governance=n), [*g[:2], *n]),
            v1,
            None,
            None,
            2,
        ),
        Case(
            "rotated-new-keys-only",
            "The same rotation signed only by the new keys gov-4 and gov-5.",
            sign(directory(keys, 2, minutes=10, governance=n), n),
            v1,
            None,
            "directory.rotation",
        ),
        Case(
            "county-code",
            "Version 2 listing 320582 (Zhangjiagang, a county-level city) as a member city; validly signed.",
            _raw(
                keys, directory(keys, 2, minutes=10), lambda m: setattr(m.cities[1], "code", "320582"), g[:2]
            ),
            v1,
            None,
            "directory.city",
        ),
        Case(
            "no-governance-keys",
            "Version 2 with an empty governance key list (nobody could sign version 3); validly signed.",
            _raw(keys, directory(keys, 2, minutes=10), lambda m: m.governance.ClearField("keys"), g[:2]),
            v1,
            None,
            "directory.governance",
        ),
    ]


def _older_anchor(keys: Keys) -> envelope_pb2.SignedEnvelope:
    d = replace(directory(keys, 1), issued_at=VERIFY_AT - dt.timedelta(days=9))
    return sign(d, keys.gov[:2])


def _b64(env: envelope_pb2.SignedEnvelope) -> str:
    return base64.b64encode(env.SerializeToString(deterministic=True)).decode()


def render(keys: Keys, cases: Sequence[Case]) -> bytes:
    def ident(i: Identity) -> dict[str, str]:
        return {
            "role_uri": i.role.uri,
            "certificate_pem": i.cert_pem.decode(),
            "private_key_pem": key_to_pem(i.key).decode(),
        }

    doc = {
        "format_version": FORMAT_VERSION,
        "description": (
            "Signed network directories and what a verifier concludes at verify_at. Envelopes are "
            "creditnet.v2.SignedEnvelope, binary protobuf in base64; each signature is ECDSA P-256 "
            "over PAE(payload_type, payload). 'trusted' is the directory held (verified as of its own "
            "issued_at against its own governance); when it is null, 'anchor_sha256' is the pinned "
            "SHA-256 of a first directory's payload."
        ),
        "see": "docs/directory.md#test-vectors",
        "warning": _WARNING,
        "verify_at": VERIFY_AT.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "payload_type": DIRECTORY_TYPE,
        "ca_certificate_pem": keys.ca.ca.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "governance_keys": [ident(i) for i in (*keys.gov, *keys.new_gov)],
        "cases": [
            {
                "name": c.name,
                "description": c.description,
                "anchor_sha256": c.anchor.hex() if c.anchor else None,
                "trusted_envelope_b64": _b64(c.trusted) if c.trusted else None,
                "candidate_envelope_b64": _b64(c.candidate),
                "candidate_payload_sha256": hashlib.sha256(c.candidate.payload).hexdigest(),
                "expected": {"valid": True, "version": c.version}
                if c.rule is None
                else {"valid": False, "rule": c.rule},
            }
            for c in cases
        ],
    }
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def generate() -> dict[str, bytes]:
    keys = make_keys()
    return {FILE_NAME: render(keys, make_cases(keys))}
