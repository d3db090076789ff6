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

from creditnet.dates import utcnow
from creditnet.directory.model import Directory, Revoked, serial_bytes, spki_sha256
from creditnet.directory.publish import Offered, Target, publish, targets
from creditnet.directory.sign import load, save, sign
from creditnet.directory.verify import VerifiedDirectory, verify
from creditnet.errors import CreditnetError, InvalidArgument
from creditnet.network import NetworkLayout
from creditnet.pki import Identity, TrustStore, load_cert
from creditnet.rpc import secure_channel
from creditnet.v2 import directory_pb2, envelope_pb2
from creditnet.v2 import directory_service_pb2 as pb
from creditnet.v2 import directory_service_pb2_grpc as pb_grpc

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


def governance_signers(layout: NetworkLayout) -> list[Identity]:
    """The first k governance keys of the state directory: enough to sign a new version."""
    section = _settings(layout)
    keys = section["governance"]
    assert isinstance(keys, dict)
    threshold = int(str(section["threshold"]))
    return [
        Identity.load(layout.path(k["cert"]), layout.path(k["key"])) for k in list(keys.values())[:threshold]
    ]


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


def _verified_newest(
    layout: NetworkLayout, trust: TrustStore, held: list[envelope_pb2.SignedEnvelope]
) -> VerifiedDirectory:
    section = _settings(layout)
    first_env = load(layout.path(str(section["file"])))
    anchor = bytes.fromhex(str(section["anchor"]))
    if hashlib.sha256(first_env.payload).digest() != anchor:
        raise InvalidArgument(
            "directory.anchor", "the state directory's first directory is not the pinned one"
        )
    first = verify(
        first_env, trust=trust, anchor_sha256=anchor, at=Directory.from_payload(first_env.payload).issued_at
    )
    best = first
    for env in held:
        try:
            candidate = verify(env, trust=trust, trusted=first)
        except CreditnetError:
            # A server's word is not enough; an unverifiable one is skipped.
            continue
        if candidate.version > best.version:
            best = candidate
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
    base = (await asyncio.to_thread(_verified_newest, layout, trust, held)).directory
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
    env = sign(d, governance_signers(layout))
    file = layout.path(str(_settings(layout)["file"])).parent / f"directory-v{d.version}.json"
    save(env, file)
    return Revocation(d, file, await publish(layout, env, operator, only))
