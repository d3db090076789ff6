"""Long-lived mutual-TLS channels to the city nodes, with their health."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet.dates import utcnow
from creditnet.domain import City
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.rpc import secure_channel
from creditnet.v1 import node_pb2_grpc

HEALTH_TIMEOUT = 1.5


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


class NodeDirectory:
    def __init__(self, nodes: dict[City, str], identity: Identity, trust: TrustStore) -> None:
        self.links: dict[City, NodeLink] = {}
        for city, endpoint in nodes.items():
            channel = secure_channel(endpoint, identity, trust, node_server_name(city))
            self.links[city] = NodeLink(
                city=city,
                endpoint=endpoint,
                channel=channel,
                stub=node_pb2_grpc.CityNodeServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
            )

    def get(self, city: City) -> NodeLink | None:
        return self.links.get(city)

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
