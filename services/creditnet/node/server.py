"""Run a city node: load its identity and store, serve until stopped."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from creditnet.config import NodeConfig
from creditnet.node.service import CityNodeService
from creditnet.pki import Identity, TrustStore
from creditnet.rpc import ServerHandle, start_server
from creditnet.store import AsyncStore
from creditnet.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["CityNodeService"].full_name


@dataclass
class RunningNode:
    config: NodeConfig
    handle: ServerHandle
    store: AsyncStore
    service: CityNodeService

    @property
    def port(self) -> int:
        return self.handle.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.handle.stop(grace)
        await self.store.close()


async def start_node(config: NodeConfig) -> RunningNode:
    identity = Identity.load(config.cert, config.key)
    trust = TrustStore.load(config.ca)
    store = await AsyncStore.open(config.database_url)
    service = CityNodeService(city=config.city, identity=identity, trust=trust, store=store)
    try:
        handle = await start_server(
            listen=config.listen,
            identity=identity,
            trust=trust,
            register=lambda s: node_pb2_grpc.add_CityNodeServiceServicer_to_server(service, s),
            service_names=[SERVICE_NAME],
        )
    except BaseException:
        await store.close()
        raise
    log.info("node %s serving on port %d", config.city.value, handle.port)
    return RunningNode(config=config, handle=handle, store=store, service=service)
