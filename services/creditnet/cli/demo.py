"""`creditnet demo`: the whole network, one real federated query, then clean up."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.rule import Rule

from creditnet.cli.common import console, errors
from creditnet.cli.network_cmds import provision_with_progress
from creditnet.cli.render import render_report
from creditnet.domain import Category, City, Purpose


def demo(
    enterprises: Annotated[int, typer.Option(min=10, help="Synthetic enterprises per city.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 20221118,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Keep the network here (default: a temporary directory)."),
    ] = None,
) -> None:
    """Run five city nodes and the aggregator on SQLite, grant a consent, query, refuse, revoke."""
    from creditnet.network import DEMO_BANK, NetworkLayout, ProcessNetwork, grant_demo_consent
    from creditnet_bank import BankClient, QueryRefused

    tmp = None
    if state_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="creditnet-demo-"))
        state_dir = tmp
    net: ProcessNetwork | None = None
    with errors():
        try:
            console.print(Rule("1. provisioning: network CA, identities, synthetic data on SQLite"))
            started = time.monotonic()
            if not (state_dir / "network.json").exists():
                provision_with_progress(state_dir, enterprises, seed)
            layout = NetworkLayout.load(state_dir)
            console.print(f"provisioned in {time.monotonic() - started:.1f}s → {state_dir / 'network.json'}")

            console.print(Rule("2. starting five city nodes and the national aggregator (mutual TLS)"))
            net = ProcessNetwork(layout)
            net.start()
            asyncio.run(net.wait_healthy())
            for c in City:
                console.print(f"  {c.display:<14} {layout.node_endpoint(c)}  serving")
            console.print(f"  {'aggregator':<14} {layout.aggregator_endpoint}  serving")

            uscc = layout.demo_enterprise
            console.print(Rule(f"3. enterprise {uscc} grants bank {DEMO_BANK} a consent"))
            consent_file = state_dir / "demo.consent.json"
            consent = grant_demo_consent(
                layout, purpose=Purpose.LOAN_APPLICATION, max_uses=10, save_to=consent_file
            )
            console.print(
                f"  purpose loan_application, all categories, all cities, 3 years of data → {consent_file}"
            )

            console.print(Rule("4. the bank's federated query, every city's answer verified"))

            async def run_queries() -> None:
                async with BankClient.from_network(state_dir / "network.json", DEMO_BANK) as bank:
                    report = await bank.query(uscc, consent, Purpose.LOAN_APPLICATION)
                    render_report(report, console)
                    with_records = [s.city.value for s in report.sections if s.records]
                    console.print(f"records came from {len(with_records)} cities: {', '.join(with_records)}")

                    console.print(Rule("5. an out-of-scope query is refused"))
                    try:
                        await bank.query(uscc, consent, Purpose.GUARANTEE)
                    except QueryRefused as exc:
                        console.print(f"  purpose 'guarantee' → [red]{exc.code.name}[/] {exc.reason}")
                    narrow = grant_demo_consent(layout, categories=(Category.TAX, Category.UTILITY))
                    try:
                        await bank.query(
                            uscc, narrow, Purpose.LOAN_APPLICATION, categories=[Category.JUDICIAL]
                        )
                    except QueryRefused as exc:
                        console.print(
                            "  judicial records under a tax+utility consent → "
                            f"[red]{exc.code.name}[/] {exc.reason}"
                        )
                    report = await bank.query(uscc, narrow, Purpose.LOAN_APPLICATION, cities=[City.SHANGHAI])
                    console.print(
                        "  same consent, within scope (tax+utility, Shanghai only) → "
                        f"{report.record_count} records"
                    )

            asyncio.run(run_queries())
        finally:
            console.print(Rule("6. shutting down"))
            if net is not None:
                net.stop()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            console.print("network stopped cleanly")
