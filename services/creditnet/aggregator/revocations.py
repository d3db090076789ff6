"""Revocations the aggregator has seen, and their delivery to every node.

A revocation is kept in the aggregator's database (AggregatorState), with the
member nodes that acknowledged it, so it survives restarts and every replica
sees it. Every node gets it as soon as it is published; a node that is down
gets it from the retry loop (any replica's) when it comes back. The
aggregator also refuses revoked consents itself, reading the database on
every query, so a revocation takes effect for federated queries at once
whichever replica accepted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from creditnet.aggregator.directory import NodeDirectory, NodeLink
from creditnet.aggregator.state import AggregatorState
from creditnet.consent import VerifiedRevocation
from creditnet.errors import CreditnetError
from creditnet.v2 import aggregator_pb2, envelope_pb2, node_pb2

__all__ = [
    "RevocationOutbox",
]

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 3.0
RETRY_INTERVAL = 2.0


class RevocationOutbox:
    def __init__(self, state: AggregatorState, nodes: NodeDirectory) -> None:
        self.state = state
        self.nodes = nodes
        # Revocations are permanent: a consent once seen revoked needs no
        # second look. Anything not here is looked up in the database.
        self._known: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None

    async def is_revoked(self, consent_digest: bytes) -> bool:
        """Whether any replica accepted a revocation of the consent (raises aggregator.database)."""
        if consent_digest in self._known:
            return True
        if await asyncio.to_thread(self.state.is_revoked, consent_digest):
            self._known.add(consent_digest)
            return True
        return False

    async def publish(
        self, rev: VerifiedRevocation, consent: envelope_pb2.SignedEnvelope
    ) -> list[aggregator_pb2.RevocationDelivery]:
        digest = rev.consent_digest
        request = node_pb2.RevokeConsentRequest(revocation=rev.envelope, consent=consent)
        # Committed before anything is delivered or answered: once the bank
        # hears it was accepted, every replica refuses the consent.
        await asyncio.to_thread(self.state.add_revocation, digest, request)
        self._known.add(digest)
        kept = await asyncio.to_thread(self.state.revocation, digest) or request
        results = await asyncio.gather(
            *(self._deliver(digest, kept, link) for link in self.nodes.links.values())
        )
        return list(results)

    async def _deliver(
        self, digest: bytes, request: node_pb2.RevokeConsentRequest, link: NodeLink
    ) -> aggregator_pb2.RevocationDelivery:
        try:
            await link.stub.RevokeConsent(request, timeout=DELIVERY_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return aggregator_pb2.RevocationDelivery(
                city=link.city.proto, delivered=False, error=f"{exc.code().name}: will retry"
            )
        try:
            await asyncio.to_thread(self.state.mark_delivered, digest, link.city)
        except CreditnetError:
            # Delivered but not marked: the retry loop delivers it again
            # (a node takes a revocation it holds as a no-op).
            log.warning("could not mark a revocation delivered to %s", link.city.value)
        return aggregator_pb2.RevocationDelivery(city=link.city.proto, delivered=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def retry_once(self) -> None:
        """Deliver every revocation a member node has not acknowledged."""
        for pending in await asyncio.to_thread(self.state.pending, list(self.nodes.links)):
            for city in pending.cities:
                link = self.nodes.get(city)
                if link is not None:
                    await self._deliver(pending.digest, pending.request, link)

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL)
            try:
                await self.retry_once()
            except CreditnetError as exc:
                log.warning("revocation retry skipped: %s", exc.reason)
