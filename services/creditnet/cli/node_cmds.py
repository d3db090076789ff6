"""`creditnet node`: set up, run, load and inspect a city node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from creditnet.cli.common import (
    EXIT_PARTIAL,
    MetricsPortOpt,
    ServeOptions,
    console,
    errors,
    fail,
    print_json,
    serve_until_signalled,
)
from creditnet.config import NodeConfig, parse_nodes_generic
from creditnet.domain import City
from creditnet.pki import (
    CertificateAuthority,
    Identity,
    Role,
    cert_to_pem,
    generate_key,
    key_to_pem,
    make_csr,
    write_private,
    write_public,
)
from creditnet.v2 import records_pb2

__all__ = [
    "app",
    "ingest",
    "init",
    "migrate",
    "run",
    "run_many",
    "stats",
]

app = typer.Typer(help="Run a city node: init, migrate, run, ingest, stats.", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The node's node.json.")]


@app.command("init")
def init(
    city: Annotated[str, typer.Option(help="310000, 320100, 330100, 340100 or 330400.")],
    node_dir: Annotated[Path, typer.Option("--dir", help="The node's directory (created).")],
    ca_dir: Annotated[
        Path | None,
        typer.Option(
            "--ca-dir", help="Issue the certificates now with this CA; without it, only requests are written."
        ),
    ] = None,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="The network CA certificate (ca.pem).")
    ] = None,
    listen: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1:7443",
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL; default a SQLite file in --dir. DATABASE_URL overrides."),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            help="A witness of this node's credit chain: NAME=HOST:PORT (another city, or 'national')."
        ),
    ] = None,
    quorum: Annotated[int, typer.Option(min=0, help="Cosignatures a checkpoint needs to be published.")] = 3,
    routing_key: Annotated[
        Path | None,
        typer.Option(
            help="The network's routing key file (given to members out of band): the node then publishes"
            " its membership filter to the aggregator (docs/protocol.md, Routing)."
        ),
    ] = None,
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            help="Create the database schema now (--no-migrate: the database is not reachable from here;"
            " run `creditnet node migrate` where it is).",
        ),
    ] = True,
) -> None:
    """Create the node's keys, certificate requests (or certificates), node.json and database schema.

    Two keys: an ECDSA P-256 key for mutual TLS and signed answers, and an Ed25519 log key that
    signs the node's credit-chain checkpoints and its cosignatures as a witness.
    """
    from creditnet.store import Store

    with errors():
        c = City.parse(city)
        if (node_dir / "node.key").exists():
            fail(f"{node_dir} already holds a node key; refusing to overwrite it")
        witnesses = parse_nodes_generic(",".join(witness or []))
        if routing_key is not None:
            from creditnet.routing import RoutingKey

            RoutingKey.load(routing_key)  # config.routing_key before anything is written
        key = generate_key()
        write_private(node_dir / "node.key", key_to_pem(key))
        csr = make_csr(key, Role.node(c))
        write_public(node_dir / "node.csr", csr.public_bytes(serialization.Encoding.PEM))
        log_key = ed25519.Ed25519PrivateKey.generate()
        write_private(
            node_dir / "logkey.key",
            log_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        log_csr = make_csr(log_key, Role.logkey(c.value))
        write_public(node_dir / "logkey.csr", log_csr.public_bytes(serialization.Encoding.PEM))
        ca_path = ca_cert or (ca_dir / "ca.pem" if ca_dir else node_dir / "ca.pem")
        if ca_dir is not None:
            ca = CertificateAuthority.load(ca_dir)
            cert = ca.issue_from_csr(csr, Role.node(c))
            Identity.from_objects(key, cert).save(node_dir / "node.pem", node_dir / "node.key")
            write_public(
                node_dir / "logkey.pem", cert_to_pem(ca.issue_from_csr(log_csr, Role.logkey(c.value)))
            )
            if ca_cert is None:
                write_public(node_dir / "ca.pem", (ca_dir / "ca.pem").read_bytes())
                ca_path = node_dir / "ca.pem"
        NodeConfig(
            city=c,
            listen=listen,
            cert=node_dir / "node.pem",
            key=node_dir / "node.key",
            ca=ca_path,
            database_url=database_url or f"sqlite:///{(node_dir / 'node.db').resolve()}",
            log_cert=node_dir / "logkey.pem",
            log_key=node_dir / "logkey.key",
            witnesses=witnesses,
            quorum=quorum,
            routing_key=routing_key.resolve() if routing_key is not None else None,
        ).save(node_dir / "node.json")
        console.print(f"node {c.value} initialised in {node_dir}")
        if migrate:
            # The database the node will run on (DATABASE_URL overrides node.json).
            url = NodeConfig.load(node_dir / "node.json").database_url
            with _database_errors(url):
                done = Store.migrate(url)
            console.print(f"database schema created: {_revision(done.before)} → {_revision(done.after)}")
        if ca_dir is None:
            console.print(
                f"send {node_dir / 'node.csr'} and {node_dir / 'logkey.csr'} to the network CA operator:\n"
                f"  creditnet pki issue --ca-dir CA --role node --city {c.value} "
                f"--csr node.csr --out {node_dir / 'node'}\n"
                f"  creditnet pki issue --ca-dir CA --role logkey --code {c.value} "
                f"--csr logkey.csr --out {node_dir / 'logkey'}\n"
                f"and put the CA certificate at {ca_path}"
            )


def _revision(rev: str | None) -> str:
    return rev or "none"


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    from sqlalchemy import make_url
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        where = make_url(url).render_as_string(hide_password=True)
        fail(f"cannot use the database {where}: {' '.join(str(exc.orig).split())}")


@app.command("migrate")
def migrate(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The node's node.json (DATABASE_URL overrides its database). Without it the node's"
            " settings come from the environment, as in a container.",
        ),
    ] = None,
    to: Annotated[
        str, typer.Option("--to", help="Target revision: head (this release), base, or a revision id.")
    ] = "head",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
) -> None:
    """Create or upgrade the node's database schema to this release's (current → head).

    Run it once after installing a new release and before `node run`, which refuses a database
    whose schema is not the release's. Safe to run again, and from several places at once: the
    migration takes a lock, runs in one transaction and is skipped when there is nothing to do.
    Exit codes: 0 done, 1 the database is unreachable or from a newer release, 2 bad arguments.
    """
    from creditnet.settings import NodeSettings
    from creditnet.store import Store, head_revision

    with errors():
        url = NodeConfig.load(config).database_url if config else NodeSettings.from_env().database_url
        with _database_errors(url):
            done = Store.migrate(url, to)
        result = {"before": done.before, "after": done.after, "head": head_revision()}
        if json_out:
            print_json(result)
        elif done.changed:
            console.print(f"database schema migrated: {_revision(done.before)} → {_revision(done.after)}")
        else:
            console.print(f"database schema already at {_revision(done.after)}; nothing to do")


@app.command("run")
def run(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The node's node.json. Without it every setting comes from the environment"
            " (CREDITNET_*, DATABASE_URL; see docs/deployment.md), as in a container.",
        ),
    ] = None,
    metrics_port: MetricsPortOpt = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            help="Serve the public port from this many processes (SO_REUSEPORT). With more than one,"
            " this process leads: it is the one writer (store, ledger, witness duties) and the workers"
            " answer queries; a worker's metrics are on the metrics port + 1 + its slot.",
        ),
    ] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the node (mutual TLS, health, reflection) until Ctrl-C or SIGTERM.

    The database must be at this release's schema: run `creditnet node migrate` first.
    With --workers N, SIGTERM drains the workers, then this process.
    Exit codes: 0 stopped cleanly, 1 could not start, 2 bad settings.
    """
    from creditnet.node.server import start_node
    from creditnet.settings import NodeSettings

    with errors():
        if config is not None:
            options = ServeOptions.from_files(verbose, metrics_port)
            cfg = NodeConfig.load(config)
        else:
            settings = NodeSettings.from_env()
            static = {"service": "node", "city": settings.city.value}
            options = ServeOptions.from_settings(settings.server, verbose, metrics_port, static)
            cfg = settings.to_config()
        serve_until_signalled(
            lambda: start_node(
                cfg,
                limits=options.limits,
                health_listen=options.health_listen,
                workers=workers,
                metrics_port=options.metrics_port,
                grace=options.grace,
                verbose=verbose,
            ),
            f"node {cfg.city.value}",
            options,
        )


@app.command("run-many")
def run_many(
    configs: Annotated[
        list[Path], typer.Option("--config", "-c", help="A node's node.json; give one per city to serve.")
    ],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve several city nodes in one process until Ctrl-C or SIGTERM (a node host).

    Each node is whole — its own port, TLS identity, store, credit-chain log and witness duties;
    they share the interpreter only. `network up` packs large networks this way.
    Exit codes: 0 stopped cleanly, 1 a node could not start (then none runs), 2 bad settings.
    """
    import asyncio
    import signal

    from creditnet.cli.common import err_console, settle_heap
    from creditnet.node.host import start_nodes

    with errors():
        options = ServeOptions.from_files(verbose, None)
        loaded = [NodeConfig.load(path) for path in configs]

        async def main() -> None:
            host = await start_nodes(loaded, limits=options.limits)
            settle_heap()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            err_console.print(f"node host serving {len(host.nodes)} cities (Ctrl-C to stop)")
            await stop.wait()
            err_console.print(f"node host: draining in-flight calls (up to {options.grace:g} s) and stopping")
            await host.stop(grace=options.grace)

        asyncio.run(main())


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
    return n


@app.command("ingest")
def ingest(
    file: Annotated[Path, typer.Argument(help="Records as JSONL (.jsonl) or CSV (.csv).")],
    config: ConfigOpt,
    provider_cert: Annotated[
        Path,
        typer.Option(help="The data provider's certificate (of this city) that signs every batch."),
    ],
    provider_key: Annotated[Path, typer.Option(help="Its private key.")],
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per transaction.")] = 5000,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable summary.")] = False,
) -> None:
    """Load a file of records, each batch signed by its data provider. Every row is validated;
    each batch is one transaction.

    A node discloses only records their provider signed (docs/protocol.md, "Records signed at
    their source"): the provider's certificate and key sign each batch here as `creditnet data
    submit` would. Rows get the provider's provider_id; a row naming another provider, or of a
    category its certificate does not list, is rejected.
    Loading the same file twice changes nothing (rows are keyed by provider and record_id).
    Exit codes: 0 all rows stored or already present, 3 some rows were rejected (the valid rows
    are stored), 1 the file could not be read, 2 bad arguments.
    """
    from creditnet import provenance, records
    from creditnet.pki import Identity, RoleKind, TrustStore
    from creditnet.store import IngestResult, Store

    with errors():
        cfg = NodeConfig.load(config)
        provider = Identity.load(provider_cert, provider_key)
        role = provider.role
        if role.kind is not RoleKind.PROVIDER or role.city != cfg.city:
            fail(f"{provider_cert} is not a data-provider certificate of {cfg.city.value} ({role.uri})")
        # A certificate the network does not trust signs nothing a bank accepts.
        TrustStore.load(cfg.ca).verify_chain(list(provider.chain_der))
        pid = provenance.provider_id_of(role)
        covered = set(role.categories)

        def ingest_signed(batch: list[records_pb2.CreditRecord]) -> IngestResult:
            signed_records, signed = provenance.sign_records(provider, batch)
            return store.ingest(signed_records, pid, signed=signed, leaves=range(len(signed_records)))

        total = _count_lines(file)
        rows = records.iter_file(file)
        store = Store.open(cfg.database_url)
        accepted = duplicates = received = 0
        rejections: list[tuple[int, str]] = []
        reasons: Counter[str] = Counter()
        wrong_city = 0
        try:
            batch: list[records_pb2.CreditRecord] = []
            with Progress(
                TextColumn("[bold]ingesting[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=json_out,
                transient=False,
            ) as progress:
                task = progress.add_task("rows", total=total or None)
                for row in rows:
                    received += 1
                    rec, error = row.record, row.error
                    if rec is not None and error is None:
                        try:
                            category = records.validate_record(rec)
                            if rec.provider_id and rec.provider_id != pid:
                                raise ValueError(f"provider_id names another provider than {pid}")
                            if category not in covered:
                                raise ValueError(f"the provider's certificate does not list {category.value}")
                            if rec.city != cfg.city.proto:
                                wrong_city += 1
                                raise ValueError(
                                    f"record belongs to another city (this node is {cfg.city.value})"
                                )
                        except ValueError as exc:
                            error = str(exc)
                    if error is not None:
                        rejections.append((row.line_number, error))
                        reasons[error.split(":")[0][:60]] += 1
                    else:
                        assert rec is not None
                        batch.append(rec)
                    if len(batch) >= batch_size:
                        result = ingest_signed(batch)
                        accepted += result.accepted
                        duplicates += result.duplicates
                        batch = []
                    progress.advance(task)
                if batch:
                    result = ingest_signed(batch)
                    accepted += result.accepted
                    duplicates += result.duplicates
        finally:
            store.close()
        summary = {
            "file": str(file),
            "rows": received,
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": len(rejections),
            "rejections": [{"line": ln, "reason": r} for ln, r in rejections[:100]],
        }
        if json_out:
            print_json(summary)
        else:
            table = Table(title=f"ingest into the {cfg.city.value} node")
            for col in ("rows", "accepted (new)", "duplicates (unchanged)", "rejected"):
                table.add_column(col, justify="right")
            table.add_row(str(received), str(accepted), str(duplicates), str(len(rejections)))
            console.print(table)
            if rejections:
                rt = Table(title="rejected rows (first 20)")
                rt.add_column("line", justify="right")
                rt.add_column("reason")
                for ln, r in rejections[:20]:
                    rt.add_row(str(ln), r)
                console.print(rt)
        if rejections:
            raise typer.Exit(EXIT_PARTIAL)


@app.command("stats")
def stats(config: ConfigOpt, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What the node holds: enterprises, records by category and by provider."""
    from creditnet.store import Store

    with errors():
        cfg = NodeConfig.load(config)
        store = Store.open(cfg.database_url)
        try:
            st = store.stats()
        finally:
            store.close()
        data: dict[str, object] = {
            "city": cfg.city.value,
            "enterprises": st.enterprises,
            "records": st.records,
            "records_by_category": {str(k): v for k, v in st.records_by_category.items()},
            "records_by_provider": dict(st.records_by_provider),
        }
        if json_out:
            print_json(data)
            return
        table = Table(title=f"{cfg.city.display} node")
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("enterprises", f"{st.enterprises:,}")
        table.add_row("records", f"{st.records:,}")
        for k, v in st.records_by_category.items():
            table.add_row(f"  {k}", f"{v:,}")
        console.print(table)
