"""The whole chain at a glance: every node's latest checkpoint, the network checkpoint, all evidence."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from creditnet.auditor.audit import WitnessCosignature
from creditnet.auditor.evidence import EvidenceItem, evidence_item
from creditnet.auditor.remote import (
    aggregator_channel,
    close_channels,
    list_evidence,
    node_channel,
    witness_stubs,
)
from creditnet.chain.keys import known_keys
from creditnet.chain.network import NetworkCheckpoint, NetworkCheckpointError, verify_network_response
from creditnet.chain.receipts import DEFAULT_QUORUM, ReceiptError, verify_checkpoint
from creditnet.dates import utcnow
from creditnet.domain import City
from creditnet.pki import Identity, TrustStore
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc

__all__ = [
    "ChainStatus",
    "NodeCheckpoint",
    "survey",
]

# --------------------------------------------------------------------------
# The whole chain at a glance


@dataclass(frozen=True, slots=True)
class NodeCheckpoint:
    """A node's latest published checkpoint, verified, or why there is none."""

    city: City
    size: int | None = None
    root: bytes | None = None
    cosignatures: tuple[WitnessCosignature, ...] = ()
    error: str = ""

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "city": self.city.value,
            "size": self.size,
            "root": base64.b64encode(self.root).decode() if self.root is not None else None,
            "cosignatures": [
                {**c.to_json(), "age_seconds": round((now - c.time).total_seconds(), 1)}
                for c in self.cosignatures
            ],
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ChainStatus:
    nodes: tuple[NodeCheckpoint, ...]
    network: NetworkCheckpoint | None
    network_error: str
    evidence: tuple[EvidenceItem, ...]
    evidence_errors: Mapping[str, str]
    checked_at: dt.datetime = field(default_factory=utcnow)

    @property
    def missing(self) -> list[City]:
        return [n.city for n in self.nodes if n.error]

    @property
    def healthy(self) -> bool:
        """No evidence, and every node and the aggregator published a valid checkpoint."""
        return not self.evidence and not self.missing and self.network is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checked_at": self.checked_at.isoformat(),
            "nodes": [n.to_json(self.checked_at) for n in self.nodes],
            "network": self.network.to_json() if self.network else None,
            "network_error": self.network_error,
            "evidence": [e.to_json() for e in self.evidence],
            "evidence_errors": dict(self.evidence_errors),
        }


def _node_checkpoint(
    city: City,
    resp: chain_pb2.GetCheckpointResponse | str,
    trust: TrustStore,
    pooled: Sequence[bytes],
    quorum: int,
) -> NodeCheckpoint:
    if isinstance(resp, str):
        return NodeCheckpoint(city, error=resp)
    try:
        cp = verify_checkpoint(trust, resp.checkpoint, [*pooled, *resp.key_certificates], city.value, quorum)
    except ReceiptError as exc:
        return NodeCheckpoint(city, error=str(exc))
    return NodeCheckpoint(
        city,
        size=cp.checkpoint.size,
        root=cp.checkpoint.root_hash,
        cosignatures=tuple(
            WitnessCosignature(c.name, dt.datetime.fromtimestamp(c.timestamp, dt.UTC))
            for c in cp.cosignatures
        ),
    )


async def survey(
    endpoints: Mapping[City, str],
    identity: Identity,
    trust: TrustStore,
    *,
    aggregator: str | None = None,
    quorum: int = DEFAULT_QUORUM,
    timeout: float = 10.0,
) -> ChainStatus:
    """Every node's latest checkpoint, the network checkpoint and every witness's evidence."""
    channels = {c: node_channel(c, ep, identity, trust) for c, ep in endpoints.items()}
    agg_channel = aggregator_channel(aggregator, identity, trust)
    cities = sorted(channels)

    async def checkpoint(stub: chain_pb2_grpc.ChainServiceStub) -> chain_pb2.GetCheckpointResponse | str:
        try:
            resp: chain_pb2.GetCheckpointResponse = await stub.GetCheckpoint(
                chain_pb2.GetCheckpointRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return resp

    async def network_head() -> aggregator_pb2.GetNetworkCheckpointResponse | str:
        if agg_channel is None:
            return "no aggregator endpoint given"
        stub = aggregator_pb2_grpc.AggregatorServiceStub(agg_channel)
        try:
            resp: aggregator_pb2.GetNetworkCheckpointResponse = await stub.GetNetworkCheckpoint(
                aggregator_pb2.GetNetworkCheckpointRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return resp

    try:
        stubs = {c: chain_pb2_grpc.ChainServiceStub(ch) for c, ch in channels.items()}
        checkpoints, (found, evidence_errors), head = await asyncio.gather(
            asyncio.gather(*(checkpoint(stubs[c]) for c in cities)),
            list_evidence(witness_stubs(channels, agg_channel), timeout),
            network_head(),
        )
    finally:
        await close_channels(channels.values(), agg_channel)
    pooled = [der for r in checkpoints if not isinstance(r, str) for der in r.key_certificates]
    network: NetworkCheckpoint | None = None
    if isinstance(head, str):
        network_error = head
    else:
        pooled.extend(head.key_certificates)
        # The whole response: the national signature and every city checkpoint it was built from.
        try:
            network = verify_network_response(trust, head, quorum).network
            network_error = ""
        except NetworkCheckpointError as exc:
            network_error = str(exc)
    nodes = tuple(
        _node_checkpoint(c, res, trust, pooled, quorum) for c, res in zip(cities, checkpoints, strict=True)
    )
    keys = known_keys(trust, pooled)
    evidence = tuple(evidence_item(w, ev, keys) for w, evs in sorted(found.items()) for ev in evs)
    return ChainStatus(
        nodes=nodes,
        network=network,
        network_error=network_error,
        evidence=evidence,
        evidence_errors=evidence_errors,
    )
