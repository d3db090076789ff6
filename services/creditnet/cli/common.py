"""Helpers every command shares: output, errors and exit codes, serving."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol

import grpc
import typer
from rich.console import Console

from creditnet.errors import CreditnetError
from creditnet.limits import Limits
from creditnet.observability import ServerMetrics, configure_logging, configure_tracing
from creditnet.settings import ServerSettings, unknown_variables

__all__ = [
    "EXIT_FAILURE",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "MetricsPortOpt",
    "ServeOptions",
    "Serving",
    "console",
    "err_console",
    "errors",
    "fail",
    "print_json",
    "read_network",
    "serve_until_signalled",
    "settle_heap",
]

console = Console()
err_console = Console(stderr=True)

# Exit codes, documented in --help of the commands that use them.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn expected failures into one clear line and a non-zero exit code."""
    try:
        yield
    except CreditnetError as exc:
        fail(exc.reason)
    except grpc.aio.AioRpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    except (FileNotFoundError, FileExistsError, PermissionError) as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _setup_logging(
    verbose: bool = False,
    *,
    fmt: object = "text",
    level: int | None = None,
    static: dict[str, str] | None = None,
) -> None:
    """Log lines to stderr, as text for people or JSON for collectors, with query and trace ids."""
    chosen = level if level is not None else logging.DEBUG if verbose else logging.INFO
    configure_logging(fmt, chosen, static=static)


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(help="Serve Prometheus metrics on this port (default: CREDITNET_METRICS_PORT, or none)."),
]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How a server runs besides its own configuration: limits, probes, metrics, shutdown."""

    limits: Limits
    health_listen: str | None = None
    metrics_port: int | None = None
    grace: float = 5.0

    @classmethod
    def from_files(cls, verbose: bool, metrics_port: int | None) -> ServeOptions:
        """For a server run from its JSON config: text logs; limits from the environment or defaults."""
        _setup_logging(verbose)
        return cls(Limits.from_env(), metrics_port=metrics_port)

    @classmethod
    def from_settings(
        cls, server: ServerSettings, verbose: bool, metrics_port: int | None, static: dict[str, str]
    ) -> ServeOptions:
        """For a server run from the environment, as in a container; warns of unknown variables."""
        _setup_logging(
            verbose, fmt=server.log_format, level=None if verbose else server.log_level, static=static
        )
        for warning in unknown_variables():
            logging.getLogger("creditnet").warning(warning)
        return cls(
            Limits.from_settings(server),
            health_listen=server.health_listen,
            metrics_port=server.metrics_port if metrics_port is None else metrics_port,
            grace=server.shutdown_grace,
        )


class Serving(Protocol):
    @property
    def port(self) -> int: ...

    @property
    def metrics(self) -> ServerMetrics: ...

    async def stop(self, grace: float = ...) -> None: ...


def settle_heap() -> None:
    """Once a server has started: what it built to start (keys, configs, stores, hundreds of nodes
    in a node host) is kept out of the garbage collector's full passes, which would otherwise walk
    it all and stall the event loop for hundreds of milliseconds at a time."""
    gc.collect()
    gc.freeze()


def serve_until_signalled(start: Callable[[], Awaitable[Serving]], what: str, options: ServeOptions) -> None:
    """Start a server, run until SIGINT/SIGTERM, then drain for up to `grace` seconds and stop.

    With `options.metrics_port`, Prometheus metrics are served over plain HTTP on it
    (0.0.0.0: expose it only inside the operator's network).
    """
    configure_tracing(f"creditnet-{what.split()[0]}")
    metrics_port, grace = options.metrics_port, options.grace

    async def main() -> None:
        running = await start()
        settle_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if metrics_port is not None:
            endpoint = running.metrics.serve(metrics_port)
            err_console.print(f"{what} metrics on http://0.0.0.0:{endpoint.port}/metrics")
        err_console.print(f"{what} serving on port {running.port} (Ctrl-C to stop)")
        await stop.wait()
        err_console.print(f"{what}: draining in-flight calls (up to {grace:g} s) and stopping")
        await running.stop(grace=grace)

    asyncio.run(main())


def _path_option(help_text: str, **kw: Any) -> Any:
    return typer.Option(..., help=help_text, **kw)


def read_network(network: Path) -> Path:
    """Accept a state directory or the network.json inside it."""
    return network if network.name == "network.json" else network / "network.json"
