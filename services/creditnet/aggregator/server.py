"""Run the aggregator: channels to every node, serve until stopped.

With a network directory, the node links follow it (`DirectoryFollower`):
the member cities of the directory held now are the nodes federated queries
(and the network checkpointer) ask, at the endpoint and TLS server name the
directory lists; a city admitted or removed takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc

from creditnet.aggregator.directory import BankOfCall, NodeDirectory
from creditnet.aggregator.head import NetworkCheckpointer
from creditnet.aggregator.routing import Router
from creditnet.aggregator.service import AggregatorService
from creditnet.aggregator.state import AggregatorState, sqlite_url
from creditnet.chain.keys import LogKey
from creditnet.config import AggregatorConfig
from creditnet.directory.serving import SERVICE_NAME as DIRECTORY_SERVICE
from creditnet.directory.serving import ServedDirectory, serve_directory
from creditnet.directory.verify import DirectoryHolder, VerifiedDirectory
from creditnet.domain import City
from creditnet.limits import Limits
from creditnet.limits import server_interceptors as limit_interceptors
from creditnet.observability import AggregatorMetrics, server_interceptors
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.routing import RoutingKey
from creditnet.rpc import ServerHandle, start_server
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc
from creditnet.witness.server import Witness, WitnessService

__all__ = [
    "DirectoryFollower",
    "RunningAggregator",
    "directory_nodes",
    "start_aggregator",
]

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"].full_name
# How often the aggregator looks whether its held directory changed (an offer
# or a refresh may replace it at any time; looking costs an attribute read).
FOLLOW_INTERVAL = 0.2

log = logging.getLogger(__name__)


def directory_nodes(held: VerifiedDirectory) -> dict[City, tuple[str, str]]:
    """The member cities of a directory: city -> (its first endpoint, its TLS server name)."""
    return {City(c.code): (c.endpoints[0], c.tls_server_name) for c in held.directory.cities}


@dataclass
class DirectoryFollower:
    """Keeps the aggregator's node links those of the member cities of the directory it holds.

    A city's link is made at the endpoint and TLS server name the directory
    lists when the city is admitted or its entry changes. A link the config
    made for a member city is kept as long as the directory does not change
    that city's entry (a deployment may reach a node at another address
    than the one it publishes, e.g. through a proxy or a private network).
    """

    holder: DirectoryHolder
    nodes: NodeDirectory
    interval: float = FOLLOW_INTERVAL
    _seen: VerifiedDirectory | None = None
    _listed: dict[City, tuple[str, str]] | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def follow_once(self) -> tuple[list[City], list[City]]:
        """Sync the links if the held directory changed since last time; (added, removed)."""
        held = self.holder.current
        if held is None or held is self._seen:
            return [], []
        listed = directory_nodes(held)
        wanted: dict[City, tuple[str, str]] = {}
        for city, entry in listed.items():
            link = self.nodes.get(city)
            unchanged = self._listed is None or self._listed.get(city) == entry
            wanted[city] = (link.endpoint, self.nodes.server_name(city)) if link and unchanged else entry
        self._seen, self._listed = held, listed
        return self.nodes.sync(wanted)

    def start(self) -> None:
        self.follow_once()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.follow_once()
            except Exception:
                log.exception("following the network directory failed; keeping the node links")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class RunningAggregator:
    config: AggregatorConfig
    handle: ServerHandle
    service: AggregatorService
    directory: NodeDirectory
    metrics: AggregatorMetrics
    state: AggregatorState | None = None
    served_directory: ServedDirectory | None = None
    follower: DirectoryFollower | None = None

    @property
    def port(self) -> int:
        return self.handle.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.service.outbox.stop()
        if self.service.router is not None:
            await self.service.router.stop()
        if self.service.head is not None:
            await self.service.head.stop()
        if self.follower is not None:
            await self.follower.stop()
        if self.served_directory is not None:
            await self.served_directory.stop()
        await self.handle.stop(grace)
        await self.directory.close()
        if self.state is not None:
            self.state.close()
        self.metrics.close()


async def start_aggregator(
    config: AggregatorConfig,
    *,
    limits: Limits | None = None,
    health_listen: str | None = None,
    reuse_port: bool = False,
) -> RunningAggregator:
    """Serve the aggregator; `limits` default to the environment's. Metrics are served by the caller.

    With `reuse_port` its ports (the public one and `health_listen`) are bound
    with SO_REUSEPORT: it is one of the worker processes of `aggregator run
    --workers N` (creditnet.aggregator.workers).
    """
    limits = Limits.from_env() if limits is None else limits
    identity = Identity.load(config.cert, config.key)
    trust = TrustStore.load(config.ca)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    # Replicas share one database (config.database_url); alone, a SQLite file.
    state = await asyncio.to_thread(AggregatorState.open, config.database_url or sqlite_url(config.state_dir))
    try:
        await asyncio.to_thread(state.adopt_files, config.state_dir)
    except BaseException:
        state.close()
        raise
    directory = NodeDirectory(config.nodes, identity, trust, connections_per_node=config.node_connections)
    metrics = AggregatorMetrics(config.nodes)
    metrics.watch_directory(directory.load)
    service = AggregatorService(
        identity=identity,
        trust=trust,
        directory=directory,
        state=state,
        default_timeout=config.default_timeout,
        metrics=metrics,
    )
    if config.routing_key is not None:
        service.router = Router(directory, service.verifier, RoutingKey.load(config.routing_key))
        service.router.on_round = lambda calls: metrics.round_ran("filter", calls)
    witness_service: WitnessService | None = None
    names = [SERVICE_NAME]
    if config.log_key is not None and config.log_cert is not None:
        # The aggregator witnesses every city's log and heads the network chain.
        log_key = LogKey.load(config.log_cert, config.log_key)
        # Replicas witness with one key on one database (shared: no cached state).
        witness = Witness(state.store, log_key, shared=True)
        witness_service = WitnessService(witness, trust)
        service.head = NetworkCheckpointer(directory, trust, log_key, witness, state, config.quorum)
        service.head.on_round = lambda calls: metrics.round_ran("checkpoint", calls)
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
        reuse_port=reuse_port,
    )
    service.outbox.start()
    if service.router is not None:
        service.router.start()
    follower: DirectoryFollower | None = None
    if served is not None:
        # Before the first query: the links are the held directory's members from the start.
        follower = DirectoryFollower(served.holder, directory)
        follower.start()
        served.refresher.start()
    if service.head is not None:
        service.head.start()
    return RunningAggregator(
        config=config,
        handle=handle,
        service=service,
        directory=directory,
        metrics=metrics,
        state=state,
        served_directory=served,
        follower=follower,
    )
