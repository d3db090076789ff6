"""Run the aggregator: channels to every node, serve until stopped."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from creditnet.aggregator.directory import BankOfCall, NodeDirectory
from creditnet.aggregator.head import NetworkCheckpointer
from creditnet.aggregator.routing import Router
from creditnet.aggregator.service import AggregatorService
from creditnet.chain.keys import LogKey
from creditnet.chain.witness import Witness, WitnessService
from creditnet.config import AggregatorConfig
from creditnet.directory.serving import SERVICE_NAME as DIRECTORY_SERVICE
from creditnet.directory.serving import ServedDirectory, serve_directory
from creditnet.limits import Limits
from creditnet.limits import server_interceptors as limit_interceptors
from creditnet.observability import AggregatorMetrics, server_interceptors
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.routing import RoutingKey
from creditnet.rpc import ServerHandle, start_server
from creditnet.store import Store
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"].full_name


@dataclass
class RunningAggregator:
    config: AggregatorConfig
    handle: ServerHandle
    service: AggregatorService
    directory: NodeDirectory
    metrics: AggregatorMetrics
    store: Store | None = None
    served_directory: ServedDirectory | None = None

    @property
    def port(self) -> int:
        return self.handle.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.service.outbox.stop()
        if self.service.router is not None:
            await self.service.router.stop()
        if self.service.head is not None:
            await self.service.head.stop()
        if self.served_directory is not None:
            await self.served_directory.stop()
        await self.handle.stop(grace)
        await self.directory.close()
        if self.store is not None:
            self.store.close()
        self.metrics.close()


async def start_aggregator(
    config: AggregatorConfig, *, limits: Limits | None = None, health_listen: str | None = None
) -> RunningAggregator:
    """Serve the aggregator; `limits` default to the environment's. Metrics are served by the caller."""
    limits = Limits.from_env() if limits is None else limits
    identity = Identity.load(config.cert, config.key)
    trust = TrustStore.load(config.ca)
    directory = NodeDirectory(config.nodes, identity, trust)
    metrics = AggregatorMetrics(config.nodes)
    metrics.watch_directory(directory.load)
    service = AggregatorService(
        identity=identity,
        trust=trust,
        directory=directory,
        state_dir=config.state_dir,
        default_timeout=config.default_timeout,
        metrics=metrics,
    )
    if config.routing_key is not None:
        service.router = Router(directory, service.verifier, RoutingKey.load(config.routing_key))
    store: Store | None = None
    witness_service: WitnessService | None = None
    names = [SERVICE_NAME]
    if config.log_key is not None and config.log_cert is not None:
        # The aggregator witnesses every city's log and heads the network chain.
        log_key = LogKey.load(config.log_cert, config.log_key)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        store = Store.open(f"sqlite:///{config.state_dir / 'witness.db'}", migrate=True)
        witness = Witness(store, log_key)
        witness_service = WitnessService(witness, trust)
        service.head = NetworkCheckpointer(
            directory, trust, log_key, witness, config.state_dir / "network-head.json", config.quorum
        )
        names.append(chain_pb2.DESCRIPTOR.services_by_name["WitnessService"].full_name)

    served: ServedDirectory | None = None
    if config.directory is not None:
        # The aggregator refreshes from the members its directory lists; the
        # nodes it federates to when none of them answers.
        peers = {c.value: (ep, node_server_name(c)) for c, ep in config.nodes.items()}
        served = await serve_directory(config.directory, identity, trust, peers, identity.role.subject)
        names.append(DIRECTORY_SERVICE)
        if service.head is not None:
            holder = served.holder
            service.head.assignments = lambda log: (
                held.directory.witnesses_of(log) if (held := holder.current) is not None else None
            )

    def register(server: grpc.aio.Server) -> None:
        if served is not None:
            served.register(server)
        aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(service, server)
        if witness_service is not None:
            chain_pb2_grpc.add_WitnessServiceServicer_to_server(witness_service, server)

    handle = await start_server(
        listen=config.listen,
        identity=identity,
        trust=trust,
        register=register,
        service_names=names,
        interceptors=[
            *server_interceptors(metrics),
            *limit_interceptors(limits, trust),
            *([served.gate] if served else []),
            BankOfCall(trust),
        ],
        maximum_concurrent_rpcs=limits.hard_cap,
        health_listen=health_listen,
    )
    service.outbox.start()
    if service.router is not None:
        service.router.start()
    if served is not None:
        served.refresher.start()
    if service.head is not None:
        service.head.start()
    return RunningAggregator(
        config=config,
        handle=handle,
        service=service,
        directory=directory,
        metrics=metrics,
        store=store,
        served_directory=served,
    )
