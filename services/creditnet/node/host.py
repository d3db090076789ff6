"""Several city nodes in one process: one event loop, each node still a whole node.

At national scale (about 333 cities on one machine) a process per city costs
more in interpreters than in work. A node host runs K nodes in one event
loop; each keeps everything that makes it a node — its own gRPC server on its
own port with its own TLS identity, its own store, credit-chain log, witness
duties, directory and membership filter — and they share only the
interpreter. Nodes in one host talk to each other over their real ports, as
to any other node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from creditnet.config import NodeConfig
from creditnet.limits import Limits
from creditnet.node.server import RunningNode, start_node

__all__ = [
    "NodeHost",
    "start_nodes",
]

log = logging.getLogger(__name__)

# Nodes opening their stores and building their filters at once: enough to
# overlap their I/O, few enough not to queue hundreds of threads.
STARTING_AT_ONCE = 8


@dataclass
class NodeHost:
    """The nodes a host process serves."""

    nodes: list[RunningNode] = field(default_factory=list)

    async def stop(self, grace: float = 5.0) -> None:
        running, self.nodes = self.nodes, []
        await asyncio.gather(*(n.stop(grace) for n in running), return_exceptions=True)


async def start_nodes(configs: Sequence[NodeConfig], *, limits: Limits | None = None) -> NodeHost:
    """Start every node of `configs` in this event loop; if one cannot start, none stays running."""
    if not configs:
        raise ValueError("a node host needs at least one node config")
    cities = [c.city for c in configs]
    if len(set(cities)) != len(cities):
        raise ValueError("a node host runs each city once; a config is given twice")
    limits = Limits.from_env() if limits is None else limits
    host = NodeHost()
    gate = asyncio.Semaphore(STARTING_AT_ONCE)

    async def one(config: NodeConfig) -> RunningNode:
        async with gate:
            return await start_node(config, limits=limits)

    tasks = [asyncio.create_task(one(c)) for c in configs]
    try:
        for task in asyncio.as_completed(tasks):
            host.nodes.append(await task)
    except BaseException:
        for task in tasks:
            task.cancel()
        # Every node that did start, once (those already taken in the loop included).
        started = await asyncio.gather(*tasks, return_exceptions=True)
        host.nodes = [n for n in started if isinstance(n, RunningNode)]
        await host.stop(grace=0)
        raise
    host.nodes.sort(key=lambda n: n.config.city)
    log.info("node host serving %d cities", len(host.nodes))
    return host
