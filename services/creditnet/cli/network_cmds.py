"""`creditnet network` and `creditnet aggregator`: the whole network and its hub."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from creditnet import pilot
from creditnet.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    MetricsPortOpt,
    ServeOptions,
    console,
    errors,
    fail,
    print_json,
    read_network,
    serve_until_signalled,
)
from creditnet.config import AggregatorConfig, parse_nodes
from creditnet.dates import utcnow
from creditnet.domain import City
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name

if TYPE_CHECKING:
    from creditnet.directory.membership import MembershipChange

__all__ = [
    "admit_city",
    "aggregator_app",
    "network_app",
    "provision_with_progress",
    "remove_city",
    "run_aggregator",
    "status",
    "up",
]

# Six Python servers starting at once on a busy laptop may take a while.
STARTUP_TIMEOUT = 120.0
# Cities `network up` lists in its table (network.json lists every one).
TABLE_CITIES = 20

network_app = typer.Typer(
    help="The network on one machine: up, status, admit and remove a city.", no_args_is_help=True
)
aggregator_app = typer.Typer(help="The national aggregator: run it.", no_args_is_help=True)


def provision_with_progress(
    state_dir: Path,
    enterprises: int,
    seed: int,
    directory: bool = True,
    cities: tuple[City, ...] = pilot.CITIES,
    aggregator_replicas: int = 1,
    aggregator_database: str | None = None,
) -> None:
    """Provision with one progress bar over the cities' records (a bar per city for a handful)."""
    from creditnet.network import provision

    started = time.monotonic()
    per_city = len(cities) <= 8
    with Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        TextColumn("{task.completed:,} records"),
        TextColumn("{task.fields[where]}"),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[str, TaskID] = {}
        seen: set[str] = set()

        def tick(city: str, n: int) -> None:
            key = city if per_city else "all"
            if key not in tasks:
                what = f"loading {city:<9}" if per_city else f"loading {len(cities)} cities"
                tasks[key] = progress.add_task(what, total=None, where="")
            seen.add(city)
            where = "" if per_city else f"{len(seen)} of {len(cities)} cities, at {city}"
            progress.update(tasks[key], advance=n, where=where)

        console.print(f"provisioning {len(cities)} cities: certificates, keys, directory, stores")
        provision(
            state_dir,
            cities=cities,
            enterprises_per_city=enterprises,
            seed=seed,
            progress=tick,
            directory=directory,
            routing=True,
            aggregator_replicas=aggregator_replicas,
            aggregator_database_url=aggregator_database,
        )
    console.print(f"provisioned {len(cities)} cities in {time.monotonic() - started:.1f} s")


@network_app.command("up")
def up(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="Where the network lives (created if new).")],
    enterprises: Annotated[
        int, typer.Option(min=1, help="Synthetic enterprises per city (new networks).")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 20221118,
    cities: Annotated[
        str,
        typer.Option(
            help="New networks: the member cities, as comma-separated division codes, 'all' (every "
            "prefecture-level city and municipality, about 333), or a count N (the first N by code). "
            "Default: the five pilot cities 310000,320100,330100,330400,340100."
        ),
    ] = "",
    directory: Annotated[
        bool,
        typer.Option(
            help="New networks: sign a network directory (protocol v2; needs creditnet[names]) "
            "that every server holds, refreshes and enforces. --no-directory: members from each config."
        ),
    ] = True,
    aggregator_replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="New networks: aggregator processes serving the network from one database, each "
            "on its own port (network.json lists them all; banks fail over between them).",
        ),
    ] = 1,
    aggregator_database: Annotated[
        str | None,
        typer.Option(
            help="New networks: the replicas' shared database URL, e.g. "
            "postgresql+psycopg://127.0.0.1:5432/test (default: one SQLite file in the state dir).",
        ),
    ] = None,
    aggregator_workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Run each aggregator replica as this many processes on its one port "
            "(`creditnet aggregator run --workers`).",
        ),
    ] = 1,
) -> None:
    """Provision (if new) and run the city nodes and the aggregator until Ctrl-C.

    A new network has the five pilot cities unless --cities names others (`all`, a count, codes).
    Networks of more than 8 cities pack their nodes into node hosts (`creditnet node run-many`),
    one per CPU; every node still has its own port, TLS identity, store and credit-chain log.

    A server that dies is restarted, after a delay that doubles (up to 30 s) while it keeps dying.
    A city admitted or removed meanwhile (`creditnet network admit|remove`) has its node started
    or stopped; no other server is restarted.

    Writes STATE_DIR/network.json with every endpoint, the CA certificate and the demo identities.
    """
    from creditnet.network import NetworkLayout, ProcessNetwork, select_cities

    with errors():
        if not (state_dir / "network.json").exists():
            members = select_cities(cities)
            provision_with_progress(
                state_dir, enterprises, seed, directory, members, aggregator_replicas, aggregator_database
            )
        elif cities.strip() or aggregator_replicas != 1 or aggregator_database is not None:
            raise ValueError(
                f"{state_dir} holds a network already: --cities, --aggregator-replicas and "
                "--aggregator-database apply to new networks only"
            )
        layout = NetworkLayout.load(state_dir)
        workers = ("--workers", str(aggregator_workers)) if aggregator_workers > 1 else ()
        net = ProcessNetwork(layout, aggregator_options=workers)
        starting = time.monotonic()
        net.start()
        try:
            # Hundreds of nodes open their stores and build their filters before they serve.
            timeout = max(STARTUP_TIMEOUT, 1.0 * len(layout.cities))
            asyncio.run(net.wait_healthy(timeout=timeout))
            replicas = len(layout.aggregator_endpoints)
            console.print(
                f"{len(layout.cities)} city nodes in {len(net.procs) - replicas} processes and "
                f"{'the aggregator' if replicas == 1 else f'{replicas} aggregator replicas'} "
                f"serving after {time.monotonic() - starting:.1f} s"
            )
            table = Table(title=f"creditnet network up — {state_dir / 'network.json'}")
            table.add_column("server")
            table.add_column("endpoint")
            table.add_column("TLS name")
            for i, endpoint in enumerate(layout.aggregator_endpoints):
                table.add_row(
                    "aggregator" + (f" {i + 1}" if replicas > 1 else ""), endpoint, AGGREGATOR_SERVER_NAME
                )
            shown = layout.cities if len(layout.cities) <= TABLE_CITIES else layout.cities[:TABLE_CITIES]
            for c in shown:
                table.add_row(c.display, layout.node_endpoint(c), node_server_name(c))
            if len(shown) < len(layout.cities):
                table.add_row(f"… {len(layout.cities) - len(shown)} more", "(network.json lists all)", "")
            console.print(table)
            console.print(f"logs in {state_dir / 'logs'}; Ctrl-C to stop")
            stopping = False

            def on_signal(*_: object) -> None:
                nonlocal stopping
                stopping = True

            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            while not stopping:
                # A server that dies is started again, after a growing delay
                # if it keeps dying: killing one is how a local network is
                # put through its faults.
                # Cities admitted or removed (`creditnet network admit|remove`) since
                # the last look: their nodes are started or stopped, no other server is.
                change = net.follow()
                for c in change.started:
                    console.print(f"[green]{c.value} was admitted; started its node[/]")
                for c in change.stopped:
                    console.print(f"[yellow]{c.value} was removed; stopped its node[/]")
                for r in net.supervise():
                    console.print(
                        f"[yellow]{r.name} stopped unexpectedly (exit {r.exit_code}); restarted it"
                        f" (restart {r.attempt} in a row; see {state_dir / 'logs' / (r.name + '.log')})[/]"
                    )
                time.sleep(0.5)
        finally:
            console.print("stopping the network")
            net.stop()


@network_app.command("status")
def status(
    network: Annotated[Path | None, typer.Option(help="A network.json or its directory.")] = None,
    aggregator: Annotated[str | None, typer.Option(help="Aggregator HOST:PORT.")] = None,
    cert: Annotated[Path | None, typer.Option(help="Any network certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    ca: Annotated[Path | None, typer.Option(help="The network CA certificate.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every node's health as the aggregator sees it, with the evidence of misbehaviour it holds.

    Exit codes: 0 all nodes serving and no evidence, 3 a node is not serving or evidence exists
    against its log (`creditnet chain status` shows it), 1 the aggregator cannot be asked.
    """
    from creditnet.network import DEMO_BANK, NetworkLayout
    from creditnet.v2 import aggregator_pb2

    with errors():
        if network is not None:
            layout = NetworkLayout.load(read_network(network).parent)
            endpoint, ident, trust = (
                layout.aggregator_endpoint,
                layout.bank(DEMO_BANK),
                TrustStore.load(layout.ca),
            )
        elif aggregator and cert and key and ca:
            endpoint, ident, trust = aggregator, Identity.load(cert, key), TrustStore.load(ca)
        else:
            fail("give --network, or all of --aggregator, --cert, --key and --ca")

        async def ask() -> aggregator_pb2.ListNodesResponse:
            from creditnet.channels import secure_channel
            from creditnet.pki import AGGREGATOR_SERVER_NAME
            from creditnet.v2 import aggregator_pb2_grpc

            async with secure_channel(endpoint, ident, trust, AGGREGATOR_SERVER_NAME) as ch:
                stub = aggregator_pb2_grpc.AggregatorServiceStub(ch)
                resp: aggregator_pb2.ListNodesResponse = await stub.ListNodes(
                    aggregator_pb2.ListNodesRequest(), timeout=10
                )
                return resp

        resp = asyncio.run(ask())
        rows: list[dict[str, Any]] = [
            {
                "city": City.from_proto(n.city).value,
                "endpoint": n.endpoint,
                "health": aggregator_pb2.NodeHealth.Name(n.health).removeprefix("NODE_HEALTH_").lower(),
                "latency_ms": n.latency_ms,
                "last_error": n.last_error,
                "evidence": n.evidence,
                "filter": _filter_row(n) if n.HasField("filter") else None,
            }
            for n in resp.nodes
        ]
        if json_out:
            print_json({"aggregator": endpoint, "nodes": rows})
        else:
            table = Table(title=f"network status via aggregator {endpoint}")
            for col in ("city", "endpoint", "health", "latency", "evidence", "filter", "last error"):
                table.add_column(col)
            for r in rows:
                style = "green" if r["health"] == "serving" else "red"
                table.add_row(
                    r["city"],
                    r["endpoint"],
                    f"[{style}]{r['health']}[/]",
                    f"{r['latency_ms']} ms",
                    f"[bold red]{r['evidence']}[/]" if r["evidence"] else "none",
                    _filter_cell(r["filter"]),
                    r["last_error"],
                )
            console.print(table)
        if any(r["health"] != "serving" or r["evidence"] for r in rows):
            raise typer.Exit(3)


def _filter_row(node: Any) -> dict[str, Any]:
    f = node.filter
    age = (utcnow() - f.issued_at.ToDatetime(tzinfo=dt.UTC)).total_seconds() if f.version else None
    return {
        "version": f.version,
        "age_s": round(age, 1) if age is not None else None,
        "size_bytes": f.size_bytes,
        "entries": f.entries,
        "problem": f.problem,
    }


def _filter_cell(row: dict[str, Any] | None) -> str:
    """A city's filter for the status table: age, size and entries, or why it is not used."""
    if row is None:
        return "no routing"
    if row["problem"]:
        return f"[yellow]{row['problem'][:60]}[/]"
    return f"{row['age_s']:.0f} s old, {row['size_bytes']:,} B, {row['entries']:,} entries"


def _membership_report(
    what: str, change: MembershipChange, state: Path, json_out: bool, extra: dict[str, Any] | None = None
) -> None:
    answers = [
        {
            "server": a.target,
            "status": a.status,
            "version": a.version,
            "changed": a.changed,
            "detail": a.detail,
        }
        for a in change.answers
    ]
    if json_out:
        print_json(
            {
                what: change.city,
                "version": change.directory.version,
                "file": str(change.file),
                **(extra or {}),
                "published": answers,
            }
        )
        return
    console.print(
        f"directory version {change.directory.version} ({change.file}) {what} {change.city}; "
        f"taken by {change.accepted} of {len(answers)} servers"
    )
    for a in answers:
        style = "green" if a["status"] == "OK" else "red"
        console.print(f"  {a['server']:<10} [{style}]{a['status']}[/] {a['detail']}")
    console.print(f"network.json updated in {state}")


def _exit_if_partial(change: MembershipChange) -> None:
    """Exit 1 when a server refused the new version or was not reached (it catches up from its peers)."""
    if change.accepted < len(change.answers):
        raise typer.Exit(EXIT_FAILURE)


@network_app.command("admit")
def admit_city(
    network: Annotated[Path, typer.Option(help="The network's state directory (or its network.json).")],
    city: Annotated[str, typer.Option(help="The city's six-digit GB/T 2260 code, e.g. 320500.")],
    name_en: Annotated[
        str | None,
        typer.Option(help="Its English name, if creditnet\\[names] is not installed to derive it."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Admit CITY to a running network: its node's identities, store and config, and the next
    directory version listing it, signed with the governance keys and published to every server.

    `network up` then starts the new node; no other server is restarted. Refused (exit 1) for a
    code that is not a prefecture-level city or municipality, or a city already a member.
    """
    from creditnet.directory.membership import admit
    from creditnet.network import NetworkLayout

    with errors():
        layout = NetworkLayout.load(read_network(network).parent)
        change = asyncio.run(admit(layout, city.strip(), name_en=name_en))
        _membership_report(
            "admitted",
            change,
            layout.root,
            json_out,
            {"endpoint": change.endpoint, "server_name": node_server_name(City(change.city))},
        )
        _exit_if_partial(change)


@network_app.command("remove")
def remove_city(
    network: Annotated[Path, typer.Option(help="The network's state directory (or its network.json).")],
    city: Annotated[str, typer.Option(help="The member city's six-digit code.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Remove CITY from a running network: the next directory version without it, published to
    every other server; `network up` then stops its node, and every server refuses its calls.

    Its node directory (store and keys) is kept. Refused (exit 1) for a city that is not a member.
    """
    from creditnet.directory.membership import remove
    from creditnet.network import NetworkLayout

    with errors():
        layout = NetworkLayout.load(read_network(network).parent)
        change = asyncio.run(remove(layout, city.strip()))
        _membership_report("removed", change, layout.root, json_out)
        _exit_if_partial(change)


@aggregator_app.command("run")
def run_aggregator(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="aggregator.json")] = None,
    nodes: Annotated[str | None, typer.Option(help="CITY=HOST:PORT,... (instead of --config)")] = None,
    listen: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1:7400",
    cert: Annotated[Path | None, typer.Option(help="Aggregator certificate.")] = None,
    key: Annotated[Path | None, typer.Option(help="Aggregator key.")] = None,
    ca: Annotated[Path | None, typer.Option(help="Network CA certificate.")] = None,
    state_dir: Annotated[
        Path, typer.Option(help="The aggregator's state (its SQLite database unless --database-url).")
    ] = Path("aggregator-state"),
    database_url: Annotated[
        str | None,
        typer.Option(
            help="The database replicas share (postgresql+psycopg://…); default a file in --state-dir."
        ),
    ] = None,
    metrics_port: MetricsPortOpt = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            help="Serve the port from this many aggregator processes (SO_REUSEPORT) over the one database;"
            " this process starts, restarts and drains them. Worker i's metrics are on the metrics port"
            " + 1 + i.",
        ),
    ] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the aggregator until Ctrl-C or SIGTERM.

    Settings come from --config, or from --nodes with --cert, --key and --ca, or, with none of
    these, from the environment (CREDITNET_*; see docs/deployment.md), as in a container.
    With --workers N, SIGTERM drains the workers, then this process stops.
    Exit codes: 0 stopped cleanly, 1 could not start, 2 bad settings.
    """
    from creditnet.aggregator.server import start_aggregator
    from creditnet.aggregator.workers import start_aggregator_workers
    from creditnet.settings import AggregatorSettings

    with errors():
        if config is not None or nodes is not None:
            options = ServeOptions.from_files(verbose, metrics_port)
            if config is not None:
                cfg = AggregatorConfig.load(config)
            elif nodes and cert and key and ca:
                cfg = AggregatorConfig(
                    listen=listen,
                    cert=cert,
                    key=key,
                    ca=ca,
                    nodes=parse_nodes(nodes),
                    state_dir=state_dir,
                    database_url=database_url,
                )
            else:
                fail("give --config, or --nodes with --cert, --key and --ca", EXIT_USAGE)
        else:
            settings = AggregatorSettings.from_env()
            options = ServeOptions.from_settings(
                settings.server, verbose, metrics_port, {"service": "aggregator"}
            )
            cfg = settings.to_config()
        if workers > 1:
            serve_until_signalled(
                lambda: start_aggregator_workers(
                    cfg,
                    workers,
                    health_listen=options.health_listen,
                    metrics_port=options.metrics_port,
                    grace=options.grace,
                    verbose=verbose,
                ),
                "aggregator",
                options,
            )
            return
        serve_until_signalled(
            lambda: start_aggregator(cfg, limits=options.limits, health_listen=options.health_listen),
            "aggregator",
            options,
        )
