"""Revocations the aggregator has seen, and their delivery to every node.

A revocation is kept as its signed envelope in a file named by the revoked
consent's digest, so it survives restarts. Every node gets it as soon as it
is published; a node that is down gets it from the retry loop when it comes
back. The aggregator also refuses revoked consents itself, so a revocation
takes effect for federated queries at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import grpc

from creditnet.aggregator.directory import NodeDirectory, NodeLink
from creditnet.consent import VerifiedRevocation
from creditnet.domain import City
from creditnet.v2 import aggregator_pb2, envelope_pb2, node_pb2

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 3.0
RETRY_INTERVAL = 2.0


class RevocationOutbox:
    def __init__(self, directory_path: Path, nodes: NodeDirectory) -> None:
        self.path = directory_path
        self.path.mkdir(parents=True, exist_ok=True)
        self.nodes = nodes
        # digest -> the request every node gets (revocation and the consent it revokes)
        self._revoked: dict[bytes, node_pb2.RevokeConsentRequest] = {}
        # digest -> cities that still need it
        self._pending: dict[bytes, set[City]] = {}
        for f in sorted(self.path.glob("*.revocation")):
            env = node_pb2.RevokeConsentRequest()
            try:
                env.ParseFromString(f.read_bytes())
                digest = bytes.fromhex(f.stem)
            except ValueError:
                log.warning("ignoring unreadable revocation file %s", f.name)
                continue
            self._revoked[digest] = env
            delivered = {City.parse(c) for c in _read_marks(f)}
            self._pending[digest] = set(self.nodes.links) - delivered
        self._task: asyncio.Task[None] | None = None

    def is_revoked(self, consent_digest: bytes) -> bool:
        return consent_digest in self._revoked

    async def publish(
        self, rev: VerifiedRevocation, consent: envelope_pb2.SignedEnvelope
    ) -> list[aggregator_pb2.RevocationDelivery]:
        digest = rev.consent_digest
        if digest not in self._revoked:
            file = self.path / f"{digest.hex()}.revocation"
            request = node_pb2.RevokeConsentRequest(revocation=rev.envelope, consent=consent)
            await asyncio.to_thread(_write_atomic, file, request.SerializeToString())
            self._revoked[digest] = request
            self._pending[digest] = set(self.nodes.links)
        results = await asyncio.gather(*(self._deliver(digest, link) for link in self.nodes.links.values()))
        return list(results)

    async def _deliver(self, digest: bytes, link: NodeLink) -> aggregator_pb2.RevocationDelivery:
        request = self._revoked[digest]
        try:
            await link.stub.RevokeConsent(request, timeout=DELIVERY_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return aggregator_pb2.RevocationDelivery(
                city=link.city.proto, delivered=False, error=f"{exc.code().name}: will retry"
            )
        pending = self._pending.get(digest)
        if pending is not None and link.city in pending:
            pending.discard(link.city)
            await asyncio.to_thread(_mark, self.path / f"{digest.hex()}.revocation", link.city)
        return aggregator_pb2.RevocationDelivery(city=link.city.proto, delivered=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL)
            for digest, cities in list(self._pending.items()):
                for city in list(cities):
                    link = self.nodes.get(city)
                    if link is not None:
                        await self._deliver(digest, link)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _marks_file(path: Path) -> Path:
    return path.with_suffix(".delivered")


def _read_marks(path: Path) -> list[str]:
    f = _marks_file(path)
    return f.read_text().split() if f.exists() else []


def _mark(path: Path, city: City) -> None:
    with open(_marks_file(path), "a") as fh:
        fh.write(city.value + "\n")
