"""Run a city node: load its identity and store, serve until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from creditnet.batches import read_batch
from creditnet.chain.keys import LogKey
from creditnet.config import NodeConfig
from creditnet.dates import utcnow
from creditnet.directory.serving import SERVICE_NAME as DIRECTORY_SERVICE
from creditnet.directory.serving import ServedDirectory, serve_directory
from creditnet.domain import City
from creditnet.ledger.log import Ledger
from creditnet.ledger.service import ChainService
from creditnet.limits import Limits
from creditnet.limits import server_interceptors as limit_interceptors
from creditnet.node.leader import Leading, lead
from creditnet.node.membership import MembershipPublisher
from creditnet.node.service import CityNodeService
from creditnet.observability import NodeMetrics, server_interceptors
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.routing import RoutingKey
from creditnet.rpc import ServerHandle, start_server
from creditnet.store import AsyncStore
from creditnet.store.lock import WriterLock
from creditnet.v2 import chain_pb2, chain_pb2_grpc, node_pb2, node_pb2_grpc
from creditnet.witness.assignment import AssignedWitnesses
from creditnet.witness.link import WitnessLink
from creditnet.witness.server import Witness, WitnessService

__all__ = [
    "CHAIN_SERVICES",
    "SERVICE_NAME",
    "SUBMIT_RECORDS",
    "RunningNode",
    "directory_peers",
    "prune_expired_queries",
    "public_services",
    "start_node",
]

log = logging.getLogger(__name__)

# How often expired query ids are forgotten.
PRUNE_INTERVAL = 60.0
SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["CityNodeService"].full_name
# Read record by record, so that one undecodable record is rejected alone.
SUBMIT_RECORDS = f"/{SERVICE_NAME}/SubmitRecords"
CHAIN_SERVICES = [
    chain_pb2.DESCRIPTOR.services_by_name["ChainService"].full_name,
    chain_pb2.DESCRIPTOR.services_by_name["WitnessService"].full_name,
]


@dataclass
class RunningNode:
    config: NodeConfig
    handle: ServerHandle
    store: AsyncStore
    service: CityNodeService
    ledger: Ledger
    metrics: NodeMetrics
    lock: WriterLock
    pruning: asyncio.Task[None] | None = None
    directory: ServedDirectory | None = None
    # With --workers N > 1: the workers serving the public port (self.handle: the leader's socket).
    leading: Leading | None = None

    @property
    def port(self) -> int:
        return self.leading.port if self.leading is not None else self.handle.port

    async def stop(self, grace: float = 5.0) -> None:
        if self.leading is not None:
            # The workers drain first: their calls still need this process to commit.
            await self.leading.stop_workers(grace)
        if self.pruning is not None:
            self.pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pruning
        if self.directory is not None:
            await self.directory.stop()
        if self.service.membership is not None:
            await self.service.membership.stop()
        await self.handle.stop(grace)
        await self.service.drain(grace)
        await self.ledger.stop()
        await self.store.close()
        # Only once everything is written may another node process start.
        await asyncio.to_thread(self.lock.release)
        self.metrics.close()
        if self.leading is not None:
            self.leading.close()


def public_services() -> list[ServiceDescriptor]:
    """The services a node serves on its public port (without a network directory)."""
    return [
        node_pb2.DESCRIPTOR.services_by_name["CityNodeService"],
        chain_pb2.DESCRIPTOR.services_by_name["ChainService"],
        chain_pb2.DESCRIPTOR.services_by_name["WitnessService"],
    ]


async def start_node(
    config: NodeConfig,
    *,
    limits: Limits | None = None,
    health_listen: str | None = None,
    workers: int = 1,
    metrics_port: int | None = None,
    grace: float = 5.0,
    verbose: bool = False,
) -> RunningNode:
    """Open the node's store and ledger and serve; `limits` default to the environment's.

    The node's metrics are collected from the start; serving them over HTTP
    (``running.metrics.serve(port)``) is the caller's choice.

    With `workers` > 1 this process leads (creditnet.node.leader): it serves
    the public services on its private socket only, and `workers` worker
    processes serve the public port; `metrics_port` then says where the
    workers serve theirs (the next ports), `grace` how long they drain.
    """
    limits = Limits.from_env() if limits is None else limits
    if workers < 1:
        raise ValueError("a node runs at least one worker")
    if workers > 1 and not config.chain_enabled:
        raise ValueError("--workers > 1 needs the credit chain (the leader's ledger is the one writer)")
    identity = Identity.load(config.cert, config.key)
    trust = TrustStore.load(config.ca)
    log_key = LogKey.load(config.log_cert, config.log_key)
    if log_key.name != config.city.value:
        raise ValueError(f"the log key is for {log_key.name!r}, not for the {config.city.value} node")
    store = await AsyncStore.open(config.database_url)
    try:
        # Before anything is written: a second node process on this database stops here.
        lock = await asyncio.to_thread(WriterLock.acquire, config.database_url, config.city.value)
    except BaseException:
        await store.close()
        raise
    served: ServedDirectory | None = None
    leading: Leading | None = None
    try:
        witnesses = [WitnessLink.connect(n, ep, identity, trust) for n, ep in config.witnesses.items()]
        ledger = await asyncio.to_thread(Ledger, store, log_key, witnesses=witnesses, quorum=config.quorum)
        witness = Witness(store.store, log_key)
        metrics = NodeMetrics(config.city)
        metrics.watch_ledger(ledger)
        service = CityNodeService(
            city=config.city,
            identity=identity,
            trust=trust,
            store=store,
            ledger=ledger if config.chain_enabled else None,
            metrics=metrics,
            witness=witness,
        )
        if config.routing_key is not None:
            service.membership = MembershipPublisher(
                city=config.city, identity=identity, key=RoutingKey.load(config.routing_key), store=store
            )
            # Built before serving: the first filter covers every record already stored.
            await service.membership.rebuild()
        chain = ChainService(city=config.city, ledger=ledger, trust=trust)
        if config.directory is not None:
            served = await serve_directory(
                config.directory, identity, trust, directory_peers(config), config.city.code
            )
            holder = served.holder
            ledger.follow = AssignedWitnesses(
                config.city.code,
                lambda: held.directory if (held := holder.current) is not None else None,
                identity,
                trust,
                (witnesses, config.quorum),
            )

        def register(server: grpc.aio.Server) -> None:
            if served is not None:
                served.register(server)
            node_pb2_grpc.add_CityNodeServiceServicer_to_server(service, server)
            chain_pb2_grpc.add_ChainServiceServicer_to_server(chain, server)
            chain_pb2_grpc.add_WitnessServiceServicer_to_server(WitnessService(witness, trust), server)

        if workers > 1:
            handle, leading = await lead(
                config,
                workers,
                ledger=ledger,
                register=register,
                service_names=[SERVICE_NAME, *CHAIN_SERVICES, *([DIRECTORY_SERVICE] if served else [])],
                # The workers count and limit calls as they come in; the
                # directory's gate runs here too, for the calls they forward.
                interceptors=[served.gate] if served else [],
                deserializers={SUBMIT_RECORDS: read_batch},
                health_listen=health_listen,
                metrics_port=metrics_port,
                grace=grace,
                verbose=verbose,
            )
        else:
            handle = await start_server(
                listen=config.listen,
                identity=identity,
                trust=trust,
                register=register,
                service_names=[SERVICE_NAME, *CHAIN_SERVICES, *([DIRECTORY_SERVICE] if served else [])],
                # Observed first, so that calls the limits refuse are counted too.
                interceptors=[
                    *server_interceptors(metrics),
                    *limit_interceptors(limits, trust),
                    *([served.gate] if served else []),
                ],
                maximum_concurrent_rpcs=limits.hard_cap,
                health_listen=health_listen,
                deserializers={SUBMIT_RECORDS: read_batch},
            )
    except BaseException:
        if served is not None:
            await served.stop()
        await store.close()
        await asyncio.to_thread(lock.release)
        raise
    ledger.start()
    if served is not None:
        served.refresher.start()
    if service.membership is not None:
        service.membership.start_checking()
    port = leading.port if leading is not None else handle.port
    log.info("node %s serving on port %d", config.city.value, port)
    return RunningNode(
        config=config,
        handle=handle,
        store=store,
        service=service,
        ledger=ledger,
        metrics=metrics,
        lock=lock,
        pruning=asyncio.create_task(prune_expired_queries(store)),
        directory=served,
        leading=leading,
    )


def directory_peers(config: NodeConfig) -> dict[str, tuple[str, str]]:
    """Whom a node asks for newer directories when no member its directory lists answers: its witnesses."""
    return {
        name: (ep, AGGREGATOR_SERVER_NAME if name == "national" else node_server_name(City.parse(name)))
        for name, ep in config.witnesses.items()
    }


async def prune_expired_queries(
    store: AsyncStore, interval: float = PRUNE_INTERVAL, clock: Callable[[], dt.datetime] = utcnow
) -> None:
    """Forget, every `interval` seconds, the query ids (and kept answers) of expired queries.

    An expired query is refused before any claim, so its id guards nothing
    any more; without this the replay table would grow with every query.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            forgotten = await store.prune_queries(clock())
        except Exception:
            log.exception("forgetting expired query ids failed; trying again in %.0f s", interval)
            continue
        if forgotten:
            log.debug("forgot %d expired query ids", forgotten)
