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

from creditnet import pilot
from creditnet.cli.common import console, errors
from creditnet.cli.network_cmds import provision_with_progress
from creditnet.cli.render import render_report
from creditnet.domain import Category, Purpose

__all__ = [
    "demo",
]


def demo(
    enterprises: Annotated[int, typer.Option(min=10, help="Synthetic enterprises per city.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 20221118,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Keep the network here (default: a temporary directory)."),
    ] = None,
) -> None:
    """Run five city nodes and the aggregator on SQLite, grant a consent, query, refuse, revoke."""
    from creditnet import consent as consent_mod
    from creditnet.auditor.history import fetch_history
    from creditnet.channels import secure_channel
    from creditnet.cli.chain_cmds import render_history
    from creditnet.network import DEMO_BANK, NetworkLayout, ProcessNetwork, grant_demo_consent
    from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore
    from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc
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
            for c in layout.cities:
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

            trust = TrustStore.load(layout.ca)

            async def run_queries() -> None:
                async with BankClient.from_network(state_dir / "network.json", DEMO_BANK) as bank:
                    report = await bank.query(uscc, consent, Purpose.LOAN_APPLICATION)
                    render_report(report, console)
                    with_records = [s.city.value for s in report.sections if s.records]
                    console.print(f"records came from {len(with_records)} cities: {', '.join(with_records)}")
                    receipts = sum(1 for s in report.sections if s.receipt is not None)
                    console.print(
                        f"every city's answer carried a verified, cosigned credit-chain receipt ({receipts})"
                    )

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
                    report = await bank.query(uscc, narrow, Purpose.LOAN_APPLICATION, cities=[pilot.SHANGHAI])
                    console.print(
                        "  same consent, within scope (tax+utility, Shanghai only) → "
                        f"{report.record_count} records"
                    )

                console.print(Rule("6. the enterprise reads who looked at its data, from the credit chain"))
                history = await fetch_history(
                    layout.enterprise(),
                    trust,
                    {c: layout.node_endpoint(c) for c in layout.cities},
                    aggregator=layout.aggregator_endpoint,
                )
                render_history(history)

                console.print(Rule("7. the enterprise revokes its consent; every city honours it"))
                revocation = consent_mod.revoke(layout.enterprise(), consent, reason="demo")
                async with secure_channel(
                    layout.aggregator_endpoint, layout.enterprise(), trust, AGGREGATOR_SERVER_NAME
                ) as ch:
                    delivered = await aggregator_pb2_grpc.AggregatorServiceStub(ch).BroadcastRevocation(
                        aggregator_pb2.BroadcastRevocationRequest(revocation=revocation, consent=consent),
                        timeout=15,
                    )
                reached = sum(1 for d in delivered.deliveries if d.delivered)
                console.print(f"  revocation signed by the enterprise, delivered to {reached} city nodes")
                async with BankClient.from_network(state_dir / "network.json", DEMO_BANK) as bank:
                    try:
                        await bank.query(uscc, consent, Purpose.LOAN_APPLICATION)
                    except QueryRefused as exc:
                        console.print(f"  the bank asks again → [red]{exc.code.name}[/] {exc.reason}")

            asyncio.run(run_queries())
        finally:
            console.print(Rule("8. shutting down"))
            if net is not None:
                net.stop()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            console.print("network stopped cleanly")
