"""`creditnet chain`: read the Yangtze River Delta credit chain.

An enterprise reads its own history; anyone in the network audits a node's
whole log or looks at every node's latest checkpoint and the network head.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from creditnet.auditor.audit import AuditReport, audit
from creditnet.auditor.history import History, Outcome, fetch_history
from creditnet.auditor.state import AuditState
from creditnet.auditor.survey import ChainStatus, survey
from creditnet.chain.keys import NETWORK
from creditnet.chain.receipts import DEFAULT_QUORUM
from creditnet.cli.common import (
    EXIT_FAILURE,
    EXIT_PARTIAL,
    EXIT_USAGE,
    console,
    err_console,
    errors,
    fail,
    print_json,
    read_network,
)
from creditnet.config import parse_nodes
from creditnet.dates import utcnow
from creditnet.domain import Category, City
from creditnet.pki import Identity, TrustStore

__all__ = [
    "Target",
    "app",
    "history",
    "render_history",
    "resolve",
    "status",
    "verify",
]

app = typer.Typer(
    help="The credit chain: an enterprise's history, auditing a node's log, the chain's status.",
    no_args_is_help=True,
)

NetworkOpt = Annotated[
    Path | None,
    typer.Option("--network", help="A network.json (or its directory): endpoints, CA and quorum."),
]
NodeOpt = Annotated[
    list[str] | None,
    typer.Option("--node", help="CITY=HOST:PORT of a city node; repeat for each (instead of --network)."),
]
AggregatorOpt = Annotated[
    str | None,
    typer.Option(help="Aggregator HOST:PORT (with --node); a witness, and the head of the chain."),
]
CaOpt = Annotated[Path | None, typer.Option("--ca", help="The network CA certificate (with --node).")]
QuorumOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Witness cosignatures a checkpoint needs (default: the network's, or 3)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TimeoutOpt = Annotated[float, typer.Option(min=0.1, help="Deadline in seconds for each call.")]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the nodes are and what to trust, from --network and/or --node flags."""

    endpoints: dict[City, str]
    trust: TrustStore
    quorum: int
    aggregator: str | None
    network: Path | None


def resolve(
    network: Path | None,
    nodes: list[str] | None,
    ca: Path | None,
    quorum: int | None,
    aggregator: str | None = None,
) -> Target:
    """--network gives everything; --node flags add or override endpoints (and need --ca without it)."""
    from creditnet.network import NetworkLayout

    endpoints: dict[City, str] = {}
    net_quorum = DEFAULT_QUORUM
    trust_path = ca
    network_json: Path | None = None
    if network is not None:
        network_json = read_network(network)
        layout = NetworkLayout.load(network_json.parent)
        endpoints = {c: layout.node_endpoint(c) for c in layout.cities}
        net_quorum = int(layout.data.get("chain", {}).get("quorum", DEFAULT_QUORUM))
        trust_path = ca or layout.ca
        aggregator = aggregator or layout.aggregator_endpoint
    for spec in nodes or ():
        endpoints.update(parse_nodes(spec))
    if not endpoints:
        fail("give --network, or --node CITY=HOST:PORT (once per node) with --ca", EXIT_USAGE)
    if trust_path is None:
        fail("with --node, give the network CA certificate with --ca", EXIT_USAGE)
    return Target(
        endpoints=endpoints,
        trust=TrustStore.load(trust_path),
        quorum=quorum or net_quorum,
        aggregator=aggregator,
        network=network_json,
    )


def _reader_identity(target: Target, cert: Path | None, key: Path | None) -> Identity:
    """Any network certificate may read the chain; with --network the demo bank's by default."""
    from creditnet.network import DEMO_BANK, NetworkLayout

    if cert is not None and key is not None:
        return Identity.load(cert, key)
    if cert is not None or key is not None:
        fail("give both --cert and --key", EXIT_USAGE)
    if target.network is None:
        fail("with --node, give a network certificate to connect with (--cert and --key)", EXIT_USAGE)
    return NetworkLayout.load(target.network.parent).bank(DEMO_BANK)


def _b64(raw: bytes | None) -> str:
    return base64.b64encode(raw).decode() if raw is not None else ""


def _short_witness(name: str) -> str:
    return name.removeprefix(f"{NETWORK}/witness/")


def _age(then: dt.datetime, now: dt.datetime) -> str:
    secs = max(0, int((now - then).total_seconds()))
    if secs < 120:
        return f"{secs} s ago"
    if secs < 7200:
        return f"{secs // 60} min ago"
    return f"{secs // 3600} h ago"


# --------------------------------------------------------------------------- history


@app.command("history")
def history(
    cert: Annotated[Path, typer.Option("--cert", help="The enterprise's certificate (PEM).")],
    key: Annotated[Path, typer.Option("--key", help="The enterprise's private key (PEM).")],
    uscc: Annotated[
        str | None, typer.Option(help="The enterprise (default: the one the certificate names).")
    ] = None,
    network: NetworkOpt = None,
    node: NodeOpt = None,
    aggregator: AggregatorOpt = None,
    ca: CaOpt = None,
    quorum: QuorumOpt = None,
    timeout: TimeoutOpt = 15.0,
    newest_first: Annotated[
        bool, typer.Option("--newest-first", help="Newest entries first (default: oldest first).")
    ] = False,
    limit: Annotated[
        int, typer.Option(min=0, help="At most this many entries per node (0: all of them).")
    ] = 0,
    outcome: Annotated[
        list[str] | None,
        typer.Option(help="Only entries with this outcome: answered, refused or revoked (repeatable)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Every access to the enterprise's data on every city node, each proven by its receipt.

    The request is signed with the enterprise's own key, made for each node and sent over a
    connection made with the enterprise's certificate: a node gives a history to nobody else.
    Each node's answer is verified (the receipt's inclusion proof and cosigned checkpoint, and
    the entry's commitment to this enterprise). Every node also counts all entries naming the
    enterprise, with refused queries by bank, whatever --limit and --outcome keep out. Exit
    codes: 0 every node answered, 3 some nodes could not be asked or their answer did not
    verify (the output says which), 1 none could.
    """
    with errors():
        target = resolve(network, node, ca, quorum, aggregator)
        enterprise = Identity.load(cert, key)
        try:
            outcomes = tuple(Outcome(o.strip().lower()) for o in outcome or ())
        except ValueError:
            raise typer.BadParameter("--outcome is answered, refused or revoked") from None
        result = asyncio.run(
            fetch_history(
                enterprise,
                target.trust,
                target.endpoints,
                uscc=uscc,
                aggregator=target.aggregator,
                quorum=target.quorum,
                timeout=timeout,
                newest_first=newest_first,
                limit=limit,
                outcomes=outcomes,
            )
        )
        if json_out:
            print_json(result.to_json())
        else:
            render_history(result)
        if result.failures:
            raise typer.Exit(EXIT_FAILURE if len(result.failures) == len(target.endpoints) else EXIT_PARTIAL)


def render_history(result: History) -> None:
    table = Table(title=f"credit-chain history of {result.uscc} — {len(result.items)} entries, all verified")
    for col in ("time (UTC)", "city", "outcome", "bank", "purpose", "categories", "records", "entry"):
        table.add_column(col)
    for item in result.items:
        outcome = {
            "answered": "[green]answered[/]",
            "refused": f"[red]refused[/] {item.refusal_rule}",
            "revoked": "[yellow]consent revoked[/]",
        }[item.outcome.value]
        table.add_row(
            item.time.strftime("%Y-%m-%d %H:%M:%S"),
            item.city.value,
            outcome,
            item.bank,
            item.purpose.value if item.purpose else "",
            "all" if set(item.categories) == set(Category) else ", ".join(c.value for c in item.categories),
            str(item.records_disclosed) if item.outcome.value == "answered" else "",
            f"#{item.index} in {item.checkpoint_size} ✓",
        )
    console.print(table)
    refusals = [(city, b) for city, s in result.summaries.items() for b in s.refused_by_bank]
    if refusals:
        by_bank = Table(title="refused queries naming this enterprise, by bank (every one, at each node)")
        for col in ("city", "bank", "refused", "first (UTC)", "last (UTC)"):
            by_bank.add_column(col)
        for city, b in refusals:
            by_bank.add_row(
                city.value,
                b.bank,
                str(b.refused),
                b.first.strftime("%Y-%m-%d %H:%M:%S"),
                b.last.strftime("%Y-%m-%d %H:%M:%S"),
            )
        console.print(by_bank)
    for city, why in result.failures.items():
        err_console.print(f"[yellow]{city.value}:[/] {why}")


# --------------------------------------------------------------------------- verify


@app.command("verify")
def verify(
    city: Annotated[str, typer.Option(help="The city node whose log to audit.")],
    network: NetworkOpt = None,
    node: NodeOpt = None,
    aggregator: AggregatorOpt = None,
    ca: CaOpt = None,
    cert: Annotated[Path | None, typer.Option(help="A network certificate to connect with.")] = None,
    key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of the checkpoints verified on earlier runs (updated when all is well)."
        ),
    ] = None,
    quorum: QuorumOpt = None,
    timeout: TimeoutOpt = 60.0,
    json_out: JsonOpt = False,
) -> None:
    """Download a node's whole log and check it against every checkpoint cosigned for it.

    Recomputes every leaf and the root at the node's latest checkpoint and at every checkpoint
    in --state, checks each against the next by consistency proofs, verifies the log signature
    and witness quorum, and reads the other nodes' evidence. Reports the first problem exactly.
    Exit codes: 0 the log is sound, 1 a problem was found.
    """
    with errors():
        which = City.parse(city)
        target = resolve(network, node, ca, quorum, aggregator)
        identity = _reader_identity(target, cert, key)
        audit_state = AuditState.load(state) if state is not None else None
        with Progress(
            TextColumn(f"[bold]downloading the {which.value} log[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("entries", total=None)

            def tick(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = asyncio.run(
                audit(
                    which,
                    target.endpoints,
                    identity,
                    target.trust,
                    state=audit_state,
                    aggregator=target.aggregator,
                    quorum=target.quorum,
                    progress=tick,
                    timeout=timeout,
                )
            )
        if state is not None and audit_state is not None and report.ok:
            audit_state.save(state)
        if json_out:
            print_json(report.to_json())
        else:
            _render_audit(report)
        if not report.ok:
            raise typer.Exit(EXIT_FAILURE)


def _render_audit(report: AuditReport) -> None:
    now = utcnow()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    cp = report.checkpoint
    grid.add_row("log", report.origin)
    if cp is not None:
        grid.add_row("checkpoint", f"size {cp.size:,}, root {_b64(cp.root)}")
        grid.add_row(
            "cosigned by",
            ", ".join(f"{_short_witness(c.name)} ({_age(c.time, now)})" for c in report.cosignatures),
        )
    grid.add_row("entries downloaded", f"{report.entries:,}")
    grid.add_row("sizes checked", ", ".join(f"{s:,}" for s in report.checked) or "none")
    grid.add_row(
        "evidence",
        "; ".join(
            f"{e.witness}: {e.kind} ({'signed by the log' if e.verified else 'unverified'})"
            for e in report.evidence
        )
        or "none",
    )
    for name, why in report.witness_errors.items():
        grid.add_row(f"witness {name}", f"[yellow]not asked: {why}[/]")
    console.print(grid)
    if report.problem is None:
        console.print(f"[bold green]✓ the {report.city.value} log is sound[/]")
    else:
        console.print(f"[bold red]✗ {report.problem.message}[/]")


# --------------------------------------------------------------------------- status


@app.command("status")
def status(
    network: NetworkOpt = None,
    node: NodeOpt = None,
    aggregator: AggregatorOpt = None,
    ca: CaOpt = None,
    cert: Annotated[Path | None, typer.Option(help="A network certificate to connect with.")] = None,
    key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    quorum: QuorumOpt = None,
    timeout: TimeoutOpt = 10.0,
    json_out: JsonOpt = False,
) -> None:
    """Every node's latest cosigned checkpoint, the signed network checkpoint, and any evidence.

    Exit codes: 0 all is well, 3 evidence exists or a checkpoint (a node's or the network's) is
    missing or does not verify.
    """
    with errors():
        target = resolve(network, node, ca, quorum, aggregator)
        identity = _reader_identity(target, cert, key)
        result = asyncio.run(
            survey(
                target.endpoints,
                identity,
                target.trust,
                aggregator=target.aggregator,
                quorum=target.quorum,
                timeout=timeout,
            )
        )
        if json_out:
            print_json(result.to_json())
        else:
            _render_status(result)
        if not result.healthy:
            raise typer.Exit(EXIT_PARTIAL)


def _render_status(result: ChainStatus) -> None:
    now = result.checked_at
    nodes = Table(title="city logs: latest cosigned checkpoints")
    for col in ("city", "size", "root", "cosigned by", "problem"):
        nodes.add_column(col)
    for n in result.nodes:
        nodes.add_row(
            n.city.value,
            f"{n.size:,}" if n.size is not None else "",
            _b64(n.root),
            ", ".join(f"{_short_witness(c.name)} ({_age(c.time, now)})" for c in n.cosignatures),
            f"[red]{n.error}[/]" if n.error else "",
        )
    console.print(nodes)
    head = result.network
    if head is None:
        console.print(f"[bold red]network checkpoint: {result.network_error}[/]")
    else:
        table = Table(title=f"network checkpoint #{head.sequence} (signed by the aggregator ✓)")
        for col in ("city", "size", "root"):
            table.add_column(col)
        for name, (size, root) in head.cities.items():
            table.add_row(name, f"{size:,}", _b64(root))
        console.print(table)
    if result.evidence:
        ev = Table(title="[bold red]evidence of misbehaviour[/]")
        for col in ("witness", "log", "kind", "detail", "found", "signed by the log"):
            ev.add_column(col)
        for e in result.evidence:
            ev.add_row(
                e.witness,
                e.origin,
                e.kind,
                e.detail,
                _age(e.found_at, now),
                "yes" if e.verified else "no",
            )
        console.print(ev)
    else:
        console.print("no evidence of misbehaviour")
    for name, why in result.evidence_errors.items():
        err_console.print(f"[yellow]{name}: evidence not read: {why}[/]")
