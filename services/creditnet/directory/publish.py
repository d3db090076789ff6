"""Handing a newly signed directory to every server of a running network (`directory publish`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc

from creditnet.channels import secure_channel
from creditnet.directory.model import Directory
from creditnet.directory.sign import save
from creditnet.network import NetworkLayout
from creditnet.pki import Identity, TrustStore
from creditnet.v2 import directory_service_pb2 as pb
from creditnet.v2 import directory_service_pb2_grpc as pb_grpc
from creditnet.v2 import envelope_pb2

__all__ = [
    "Offered",
    "Target",
    "keep",
    "offer_to",
    "publish",
    "targets",
]

PUBLISH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    endpoint: str
    server_name: str


@dataclass(frozen=True, slots=True)
class Offered:
    """One server's answer to an offer: the version it holds, or why it refused or was not reached."""

    target: str
    version: int | None = None
    changed: bool = False
    status: str = "OK"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "OK"


def targets(layout: NetworkLayout) -> list[Target]:
    """Every node and the aggregator of a provisioned network."""
    out = [
        Target(name, str(entry["endpoint"]), str(entry["server_name"]))
        for name, entry in sorted(layout.data["cities"].items())
    ]
    agg = layout.data["aggregator"]
    out.append(Target("aggregator", str(agg["endpoint"]), str(agg["server_name"])))
    return out


async def offer_to(
    target: Target, envelope: envelope_pb2.SignedEnvelope, identity: Identity, trust: TrustStore
) -> Offered:
    async with secure_channel(target.endpoint, identity, trust, target.server_name) as channel:
        stub = pb_grpc.DirectoryServiceStub(channel)
        try:
            answer = await stub.OfferDirectory(
                pb.OfferDirectoryRequest(directory=envelope), timeout=PUBLISH_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return Offered(target.name, status=exc.code().name, detail=exc.details() or "")
    return Offered(target.name, version=answer.version, changed=answer.changed)


def keep(layout: NetworkLayout, envelope: envelope_pb2.SignedEnvelope) -> Path | None:
    """Keep a published directory in the state dir (STATE/directory/directory-vN.json).

    `pki revoke` walks these to verify the servers' newest directory from the
    pinned first one (a governance rotation cannot be skipped). A file of
    that name already there is left as it is; returns the file written.
    """
    section = layout.data.get("directory")
    if not isinstance(section, dict):
        return None
    version = Directory.from_payload(bytes(envelope.payload)).version
    file = layout.path(str(section["file"])).parent / f"directory-v{version}.json"
    if file.exists():
        return None
    save(envelope, file)
    return file


async def publish(
    layout: NetworkLayout,
    envelope: envelope_pb2.SignedEnvelope,
    identity: Identity | None = None,
    only: list[Target] | None = None,
) -> list[Offered]:
    """Offer `envelope` to every server (or `only` these), all at once; each one's answer.

    Any network certificate may offer (an operator's by default): each server
    verifies the directory's governance signatures itself.
    """
    trust = TrustStore.load(layout.ca)
    who = identity or layout.identity("operators", sorted(layout.data["identities"]["operators"])[0])
    chosen = targets(layout) if only is None else only
    return list(await asyncio.gather(*(offer_to(t, envelope, who, trust) for t in chosen)))
