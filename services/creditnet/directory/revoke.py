"""Revoking a certificate network-wide: a new directory version listing it, signed and published.

`creditnet pki revoke` runs this with the governance keys of a `network up`
state directory. The directory it extends is the newest one the servers
hold, verified here from the pinned first directory before it is signed
again: the governance never signs what a server merely claims.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from creditnet.channels import secure_channel
from creditnet.dates import utcnow
from creditnet.directory.model import Directory, Revoked, serial_bytes, spki_sha256
from creditnet.directory.publish import Offered, Target, publish, targets
from creditnet.directory.sign import load, save, sign
from creditnet.directory.verify import VerifiedDirectory, verify
from creditnet.errors import CreditnetError, InvalidArgument
from creditnet.network import NetworkLayout
from creditnet.pki import Identity, RoleKind, TrustStore, load_cert
from creditnet.v2 import directory_pb2, envelope_pb2
from creditnet.v2 import directory_service_pb2 as pb
from creditnet.v2 import directory_service_pb2_grpc as pb_grpc

__all__ = [
    "Revocation",
    "find_certificate",
    "governance_signers",
    "held_directories",
    "revoke",
]

KEY_COMPROMISE = directory_pb2.REVOCATION_REASON_KEY_COMPROMISE


@dataclass(frozen=True, slots=True)
class Revocation:
    directory: Directory
    file: Path
    answers: list[Offered]


def _settings(layout: NetworkLayout) -> dict[str, object]:
    section = layout.data.get("directory")
    if not isinstance(section, dict):
        raise InvalidArgument(
            "directory.missing", f"{layout.root} has no network directory (provisioned without one)"
        )
    return section


def _governance_identities(layout: NetworkLayout) -> list[Identity]:
    """Every governance key the state directory holds: network.json's and STATE/directory/governance/*."""
    section = _settings(layout)
    keys = section["governance"]
    assert isinstance(keys, dict)
    pairs = [(layout.path(k["cert"]), layout.path(k["key"])) for k in keys.values()]
    folder = layout.path(str(section["file"])).parent / "governance"
    pairs += [(pem, pem.with_suffix(".key")) for pem in sorted(folder.glob("*.pem"))]
    found: dict[bytes, Identity] = {}
    for cert, key in pairs:
        if not (cert.is_file() and key.is_file()):
            continue
        ident = Identity.load(cert, key)
        if ident.role.kind is RoleKind.GOVERNANCE:
            found.setdefault(spki_sha256(ident.key.public_key()), ident)
    return list(found.values())


def governance_signers(layout: NetworkLayout, directory: Directory) -> list[Identity]:
    """Enough governance keys of the state directory to sign the version after `directory`.

    They are the keys `directory` lists (after a rotation: the new ones,
    never the retired ones), matched by name and SPKI SHA-256 and not revoked,
    k of them (its threshold); ``revoke.signers`` if the state dir has fewer.
    """
    gov = directory.governance
    listed = {(k.name, k.spki_sha256) for k in gov.keys}
    signers = [
        ident
        for ident in _governance_identities(layout)
        if (ident.role.subject, spki_sha256(ident.key.public_key())) in listed
        and not directory.is_certificate_revoked(ident.cert)
    ]
    signers.sort(key=lambda i: [k.name for k in gov.keys].index(i.role.subject))
    if len(signers) < gov.threshold:
        have = ", ".join(i.role.subject for i in signers) or "none"
        folder = layout.path(str(_settings(layout)["file"])).parent / "governance"
        raise InvalidArgument(
            "revoke.signers",
            f"directory version {directory.version} is signed by {gov.threshold} of "
            f"{', '.join(k.name for k in gov.keys)}; {layout.root} holds the keys of {have} "
            f"(put the others' NAME.pem and NAME.key in {folder})",
        )
    return signers[: gov.threshold]


def find_certificate(layout: NetworkLayout, serial: int) -> x509.Certificate:
    """The certificate with this serial among the state directory's identities.

    The directory names a revoked certificate by serial and SPKI SHA-256
    both; a serial alone is enough only when the certificate is at hand.
    """
    for group in layout.data["identities"].values():
        for ident in group.values():
            cert = load_cert(layout.path(ident["cert"]))
            if cert.serial_number == serial:
                return cert
    raise InvalidArgument(
        "revoke.unknown", f"no certificate with serial {serial:x} in {layout.root}; give --cert PEM instead"
    )


def _known_directories(layout: NetworkLayout) -> list[envelope_pb2.SignedEnvelope]:
    """The signed directories kept in the state dir (STATE/directory/*.json: the first one, those
    `pki revoke` and `directory publish --network` wrote, any an operator put there)."""
    folder = layout.path(str(_settings(layout)["file"])).parent
    out = []
    for file in sorted(folder.glob("*.json")):
        try:
            out.append(load(file))
        except CreditnetError:
            continue
    return out


def _verified_newest(
    layout: NetworkLayout, trust: TrustStore, held: list[envelope_pb2.SignedEnvelope]
) -> VerifiedDirectory:
    """The newest directory that verifies from the pinned first one, walking every version at hand.

    A governance rotation cannot be skipped (rule V8): the versions after it
    verify only against it. So the servers' directories and the state dir's
    are walked in version order, each verified against the last that was.
    A server holding a newer directory than that walk reaches is refused
    with ``revoke.chain``: signing on an older base would fork the network
    under keys it may have retired.
    """
    section = _settings(layout)
    first_env = load(layout.path(str(section["file"])))
    anchor = bytes.fromhex(str(section["anchor"]))
    if hashlib.sha256(first_env.payload).digest() != anchor:
        raise InvalidArgument(
            "directory.anchor", "the state directory's first directory is not the pinned one"
        )
    best = verify(
        first_env, trust=trust, anchor_sha256=anchor, at=Directory.from_payload(first_env.payload).issued_at
    )
    candidates: dict[bytes, tuple[int, envelope_pb2.SignedEnvelope]] = {}
    for env in [*_known_directories(layout), *held]:
        try:
            version = Directory.from_payload(bytes(env.payload)).version
        except CreditnetError:
            continue
        candidates.setdefault(bytes(env.payload), (version, env))
    now = utcnow()
    for version, env in sorted(candidates.values(), key=lambda c: c[0]):
        if version <= best.version:
            continue
        d = Directory.from_payload(bytes(env.payload))
        try:
            # As of now, or of its expiry for one the network has moved past.
            best = verify(env, trust=trust, trusted=best, at=min(now, d.expires_at))
        except CreditnetError:
            # A server's word (or a stray file) is not enough; an unverifiable one is skipped.
            continue
    newer = [v for v, env in (c for c in candidates.values()) if v > best.version and env in held]
    if newer:
        raise InvalidArgument(
            "revoke.chain",
            f"a server holds directory version {max(newer)}, which does not verify from the pinned one "
            f"through the versions at hand (newest verified: {best.version}); put the missing versions "
            f"(a governance rotation) in {layout.path(str(section['file'])).parent}",
        )
    return best


async def held_directories(
    layout: NetworkLayout, identity: Identity, trust: TrustStore
) -> list[envelope_pb2.SignedEnvelope]:
    async def one(endpoint: str, server_name: str) -> envelope_pb2.SignedEnvelope | None:
        async with secure_channel(endpoint, identity, trust, server_name) as channel:
            try:
                answer: pb.GetDirectoryResponse = await pb_grpc.DirectoryServiceStub(channel).GetDirectory(
                    pb.GetDirectoryRequest(), timeout=5
                )
            except grpc.aio.AioRpcError:
                # An unreachable server: the others' directories will do.
                return None
        env: envelope_pb2.SignedEnvelope = answer.directory
        return env

    got = await asyncio.gather(*(one(t.endpoint, t.server_name) for t in targets(layout)))
    return [env for env in got if env is not None]


async def revoke(
    layout: NetworkLayout,
    cert: x509.Certificate,
    *,
    reason: int = KEY_COMPROMISE,
    only: list[Target] | None = None,
) -> Revocation:
    """Sign the next directory version with `cert` revoked (serial and SPKI) and publish it.

    Published to every server, or to `only` these (the others then learn it from their peers).
    """
    trust = TrustStore.load(layout.ca)
    operator = layout.identity("operators", sorted(layout.data["identities"]["operators"])[0])
    held = await held_directories(layout, operator, trust)
    verified = await asyncio.to_thread(_verified_newest, layout, trust, held)
    base = verified.directory
    serial = serial_bytes(cert.serial_number)
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise InvalidArgument("revoke.key", "not a network certificate (ECDSA P-256 or Ed25519 key)")
    spki = spki_sha256(pub)
    if any(r.serial == serial or r.spki_sha256 == spki for r in base.revoked):
        raise InvalidArgument("revoke.duplicate", f"directory version {base.version} already revokes it")
    now = max(utcnow().replace(microsecond=0), base.issued_at)
    d = dataclasses.replace(
        base,
        version=base.version + 1,
        issued_at=now,
        revoked=(*base.revoked, Revoked(serial, spki, reason, now)),
    )
    env = sign(d, governance_signers(layout, base))
    # Never publish what the servers would refuse: it must verify as their next version.
    await asyncio.to_thread(verify, env, trust=trust, trusted=verified)
    file = layout.path(str(_settings(layout)["file"])).parent / f"directory-v{d.version}.json"
    save(env, file)
    return Revocation(d, file, await publish(layout, env, operator, only))
