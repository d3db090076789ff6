"""Run the aggregator: channels to every node, serve until stopped."""

from __future__ import annotations

from dataclasses import dataclass

from creditnet.aggregator.directory import NodeDirectory
from creditnet.aggregator.service import AggregatorService
from creditnet.config import AggregatorConfig
from creditnet.pki import Identity, TrustStore
from creditnet.rpc import ServerHandle, start_server
from creditnet.v1 import aggregator_pb2, aggregator_pb2_grpc

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"].full_name


@dataclass
class RunningAggregator:
    config: AggregatorConfig
    handle: ServerHandle
    service: AggregatorService
    directory: NodeDirectory

    @property
    def port(self) -> int:
        return self.handle.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.service.outbox.stop()
        await self.handle.stop(grace)
        await self.directory.close()


async def start_aggregator(config: AggregatorConfig) -> RunningAggregator:
    identity = Identity.load(config.cert, config.key)
    trust = TrustStore.load(config.ca)
    directory = NodeDirectory(config.nodes, identity, trust)
    service = AggregatorService(
        identity=identity,
        trust=trust,
        directory=directory,
        state_dir=config.state_dir,
        default_timeout=config.default_timeout,
    )
    handle = await start_server(
        listen=config.listen,
        identity=identity,
        trust=trust,
        register=lambda s: aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(service, s),
        service_names=[SERVICE_NAME],
    )
    service.outbox.start()
    return RunningAggregator(config=config, handle=handle, service=service, directory=directory)
