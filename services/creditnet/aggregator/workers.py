"""The aggregator served by several processes: ``creditnet aggregator run --workers N``.

Aggregator replicas already act as one over one database (creditnet.aggregator.state):
the network checkpoint is signed under the head row's lock, a log's
checkpoint is cosigned after a compare-and-set of its witnessed state, and
revocations are read from the database on every query. So a worker here is
a whole aggregator, a replica that shares the public port (and the probe
port) with the others through SO_REUSEPORT instead of having its own.
Unlike a node's workers, no process leads: the ``aggregator run`` process
only binds the port first, starts the workers, restarts one that dies and
drains them on SIGTERM (creditnet.workerpool).

What replicas on different ports each keep for themselves, these share:

- the database (alone, the SQLite file in the state directory, which the
  workers open like replicas do a shared one);
- the network directory's state file. A directory offered to the aggregator
  reaches one worker (one connection); that worker writes the file, and every
  other worker reads the file when it changes and offers it to its own
  holder, which verifies it as any holder does (signatures, a version no
  older than the one held). A refresh (each worker still pulls) does the same.

Run by the pool as ``python -m creditnet.aggregator.workers``; a worker prints
``ready`` on stdout once it serves, and stops on SIGTERM (draining its calls)
or when the ``aggregator run`` process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Gauge

from creditnet.config import AggregatorConfig
from creditnet.directory.serving import follow_file
from creditnet.limits import Limits
from creditnet.observability import ServerMetrics
from creditnet.workerpool import (
    WorkerPool,
    WorkerSite,
    worker_argv,
    worker_parser,
    worker_process,
    worker_stop,
)

__all__ = [
    "AggregatorWorkers",
    "main",
    "start_aggregator_workers",
]

log = logging.getLogger(__name__)

# How often a worker looks whether another worker changed the directory file.
DIRECTORY_CHECK = 1.0
CONFIG_NAME = "aggregator.json"


@dataclass
class AggregatorWorkers:
    """The ``aggregator run`` process of ``--workers N``: the pool, the port it holds, the workers' config."""

    pool: WorkerPool
    site: WorkerSite
    metrics: ServerMetrics

    @property
    def port(self) -> int:
        return self.site.port

    async def stop(self, grace: float = 5.0) -> None:
        try:
            await self.pool.stop(grace)
        finally:
            self.site.close()
            self.metrics.close()


async def start_aggregator_workers(
    config: AggregatorConfig,
    workers: int,
    *,
    health_listen: str | None = None,
    metrics_port: int | None = None,
    grace: float = 5.0,
    verbose: bool = False,
) -> AggregatorWorkers:
    """Bind `config.listen`, then start `workers` aggregator processes on it; return once each serves.

    Worker i serves its metrics on `metrics_port` + 1 + i (0: any free port,
    which it logs); this process's own (how many workers serve, how often
    they were started) on `metrics_port`, as the caller serves them.
    """
    if workers < 2:
        raise ValueError("--workers must be at least 2 to run worker processes")
    # 0700: the config in it may hold the database password.
    site = WorkerSite.open(config.listen, "creditnet-aggregator-")
    try:
        # The state directory is made here, once, not raced for by the workers.
        config.state_dir.mkdir(parents=True, exist_ok=True)
        path = site.save_config(CONFIG_NAME, dataclasses.replace(config, listen=site.listen).save)
        extra = ("--health-listen", health_listen) if health_listen else ()
        pool = WorkerPool(
            workers,
            lambda slot: worker_argv(
                "creditnet.aggregator.workers",
                path,
                slot,
                metrics_port=metrics_port,
                grace=grace,
                verbose=verbose,
                extra=extra,
            ),
            what="aggregator worker",
        )
        metrics = ServerMetrics("aggregator")
        serving = Gauge(
            "creditnet_workers_serving", "Worker processes serving the port now.", registry=metrics.registry
        )
        serving.set_function(lambda: len(pool.serving()))
        starts = Gauge(
            "creditnet_worker_starts",
            "Worker processes started, restarts included.",
            registry=metrics.registry,
        )
        starts.set_function(lambda: sum(s.starts for s in pool.slots))
        await pool.start()
    except BaseException:
        site.close()
        raise
    log.info("aggregator serving port %d from %d worker processes", site.port, workers)
    return AggregatorWorkers(pool, site, metrics)


def main(argv: Sequence[str] | None = None) -> int:
    parser = worker_parser("creditnet.aggregator.workers", __doc__)
    parser.add_argument("--health-listen", default=None)
    args = parser.parse_args(argv)
    worker_process(args, "aggregator worker")
    config = AggregatorConfig.load(args.config)
    asyncio.run(_serve(config, args.health_listen, args.metrics_port, args.grace))
    return 0


async def _serve(
    config: AggregatorConfig, health_listen: str | None, metrics_port: int | None, grace: float
) -> None:
    from creditnet.aggregator.server import start_aggregator

    stop = worker_stop()
    running = await start_aggregator(
        config, limits=Limits.from_env(), health_listen=health_listen, reuse_port=True
    )
    following = None
    try:
        if running.served_directory is not None:
            holder = running.served_directory.holder
            following = asyncio.create_task(follow_file(holder.path, holder, stop, DIRECTORY_CHECK))
        if metrics_port is not None:
            endpoint = running.metrics.serve(metrics_port)
            log.info("metrics on http://0.0.0.0:%d/metrics", endpoint.port)
        print("ready", flush=True)
        await stop.wait()
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await running.stop(grace)


if __name__ == "__main__":
    raise SystemExit(main())
