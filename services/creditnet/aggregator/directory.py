"""Long-lived mutual-TLS channels to the city nodes, with their health and load.

Each link bounds the calls pending on its node. A node that stops answering
(frozen, partitioned, overloaded) would otherwise collect one pending call,
with its request and its share of the HTTP/2 connection's buffers, for every
federated query until each call's deadline, and a flood of queries could pile
up thousands. Beyond the bound the aggregator answers that city's section at
once without calling the node; the other cities are unaffected.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet.dates import utcnow
from creditnet.domain import City
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.rpc import secure_channel
from creditnet.v1 import node_pb2_grpc

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 1.5
# A healthy node answers in tens of milliseconds and so has a handful of
# calls pending even at hundreds of queries a second; this many means it is
# not answering.
DEFAULT_MAX_PENDING_PER_NODE = 64


@dataclass
class NodeLink:
    city: City
    endpoint: str
    channel: grpc.aio.Channel
    stub: node_pb2_grpc.CityNodeServiceStub
    health: health_pb2_grpc.HealthStub
    last_status: str = "unknown"
    last_error: str = ""
    last_latency_ms: int = 0
    last_checked: dt.datetime | None = None
    in_flight: int = field(default=0)
    max_in_flight: int = DEFAULT_MAX_PENDING_PER_NODE
    # Calls answered at once, without asking the node, because it was saturated.
    shed: int = 0
    _shedding: bool = field(default=False, repr=False)

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.max_in_flight

    def try_acquire(self) -> bool:
        """Take a pending-call slot on this node; False when it already has `max_in_flight`."""
        if self.saturated:
            self.shed += 1
            if not self._shedding:
                self._shedding = True
                log.warning(
                    "node %s has %d calls pending; answering its sections at once until it catches up",
                    self.city.value,
                    self.in_flight,
                )
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError(f"released a pending call to {self.city.value} that was never taken")
        self.in_flight -= 1
        if self._shedding and self.in_flight == 0:
            self._shedding = False
            log.info("node %s has no calls pending any more; calling it again", self.city.value)

    def saturation_reason(self) -> str:
        return (
            f"the node already has {self.in_flight} calls pending (bound {self.max_in_flight}); "
            "not calling it until it answers them"
        )


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One node's pending calls as the aggregator sees them, for metrics and status."""

    city: City
    in_flight: int
    max_in_flight: int
    shed: int


class NodeDirectory:
    def __init__(
        self,
        nodes: dict[City, str],
        identity: Identity,
        trust: TrustStore,
        *,
        max_pending_per_node: int = DEFAULT_MAX_PENDING_PER_NODE,
    ) -> None:
        if max_pending_per_node < 1:
            raise ValueError(f"max_pending_per_node must be at least 1, got {max_pending_per_node}")
        self.links: dict[City, NodeLink] = {}
        for city, endpoint in nodes.items():
            channel = secure_channel(endpoint, identity, trust, node_server_name(city))
            self.links[city] = NodeLink(
                city=city,
                endpoint=endpoint,
                channel=channel,
                stub=node_pb2_grpc.CityNodeServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
                max_in_flight=max_pending_per_node,
            )

    def get(self, city: City) -> NodeLink | None:
        return self.links.get(city)

    def load(self) -> list[NodeLoad]:
        """Pending calls per node, in city order."""
        return [
            NodeLoad(city=c, in_flight=lk.in_flight, max_in_flight=lk.max_in_flight, shed=lk.shed)
            for c, lk in sorted(self.links.items(), key=lambda item: item[0].proto)
        ]

    def in_flight(self) -> dict[City, int]:
        return {c: lk.in_flight for c, lk in self.links.items()}

    async def check(self, link: NodeLink) -> NodeLink:
        start = time.perf_counter()
        try:
            resp = await link.health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT)
            link.last_status = (
                "serving" if resp.status == health_pb2.HealthCheckResponse.SERVING else "not_serving"
            )
            link.last_error = ""
        except grpc.aio.AioRpcError as exc:
            link.last_status = "unreachable"
            link.last_error = f"{exc.code().name}: {exc.details() or ''}"[:200]
        link.last_latency_ms = int((time.perf_counter() - start) * 1000)
        link.last_checked = utcnow()
        return link

    async def check_all(self) -> list[NodeLink]:
        return list(await asyncio.gather(*(self.check(link) for link in self.links.values())))

    async def close(self) -> None:
        await asyncio.gather(*(link.channel.close() for link in self.links.values()))
