"""Helpers every command shares: output, errors and exit codes, serving."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Protocol

import grpc
import typer
from rich.console import Console

from creditnet.errors import CreditnetError
from creditnet.observability import ServerMetrics, configure_logging, configure_tracing

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


def setup_logging(
    verbose: bool = False,
    *,
    fmt: object = "text",
    level: int | None = None,
    static: dict[str, str] | None = None,
) -> None:
    """Log lines to stderr, as text for people or JSON for collectors, with query and trace ids."""
    chosen = level if level is not None else logging.DEBUG if verbose else logging.INFO
    configure_logging(fmt, chosen, static=static)


class Serving(Protocol):
    @property
    def port(self) -> int: ...

    @property
    def metrics(self) -> ServerMetrics: ...

    async def stop(self, grace: float = ...) -> None: ...


def serve_until_signalled(
    start: Callable[[], Awaitable[Serving]],
    what: str,
    *,
    metrics_port: int | None = None,
    grace: float = 5.0,
) -> None:
    """Start a server, run until SIGINT/SIGTERM, then drain for up to `grace` seconds and stop.

    With `metrics_port`, Prometheus metrics are served over plain HTTP on it
    (0.0.0.0: expose it only inside the operator's network).
    """
    configure_tracing(f"creditnet-{what.split()[0]}")

    async def main() -> None:
        running = await start()
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


def path_option(help_text: str, **kw: Any) -> Any:
    return typer.Option(..., help=help_text, **kw)


def read_network(network: Path) -> Path:
    """Accept a state directory or the network.json inside it."""
    return network if network.name == "network.json" else network / "network.json"
