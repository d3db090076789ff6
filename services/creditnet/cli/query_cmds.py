"""`creditnet query`: a bank asks about an enterprise."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from creditnet.cli.common import EXIT_PARTIAL, console, errors, fail, print_json, read_network
from creditnet.cli.render import render_report
from creditnet_bank import BankClient, QueryRefused
from creditnet_bank.verify import AnswerInvalid

__all__ = [
    "query",
]


def query(
    uscc: Annotated[str, typer.Option(help="The enterprise's Unified Social Credit Code.")],
    consent: Annotated[Path, typer.Option(help="The enterprise's signed consent file.")],
    purpose: Annotated[str, typer.Option(help="Must match the consent's purpose.")],
    categories: Annotated[str, typer.Option(help="Comma-separated; default all of the consent.")] = "",
    cities: Annotated[str, typer.Option(help="Comma-separated; default all of the consent.")] = "",
    aggregator: Annotated[
        list[str] | None,
        typer.Option(
            help="Aggregator HOST:PORT; repeat it (or separate by commas) for replicas, tried in turn "
            "within the deadline when one is unavailable."
        ),
    ] = None,
    cert: Annotated[Path | None, typer.Option(help="The bank's certificate.")] = None,
    key: Annotated[Path | None, typer.Option(help="The bank's private key.")] = None,
    ca: Annotated[Path | None, typer.Option(help="The network CA certificate.")] = None,
    network: Annotated[
        Path | None,
        typer.Option(help="A network.json (or its directory): endpoints and the demo bank identity."),
    ] = None,
    bank: Annotated[str | None, typer.Option(help="With --network: which bank identity to use.")] = None,
    directory_anchor: Annotated[
        str | None,
        typer.Option(help="SHA-256 (hex) of the first trusted network directory (`directory anchor`)."),
    ] = None,
    directory_state: Annotated[
        Path | None,
        typer.Option(
            help="Where the client keeps the network directory (with --network: banks/CODE.directory.binpb)."
        ),
    ] = None,
    directory_bootstrap: Annotated[
        Path | None, typer.Option(help="The first signed directory, if at hand (else fetched and pinned).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds for the whole federated query.")] = 10.0,
    exhaustive: Annotated[
        bool,
        typer.Option(
            "--exhaustive",
            help="Ask every city in scope, not only those that may hold records: each gives its signed word.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
) -> None:
    """Ask every consented city about an enterprise and print the verified, merged report.

    With a network directory (a --network with one, or --directory-anchor and --directory-state) the
    client verifies every answer against it and sends nothing while it holds only an expired one.

    The aggregator asks only the cities that may hold records of the enterprise (its registration
    city and those whose membership filter holds it); the others are reported "not_asked", on the
    aggregator's word. --exhaustive asks every city in scope.

    Every city of the scope (the query's cities, else the consent's, else every member of the
    directory) gets a row: one the aggregator returned nothing for is "missing"; a section for a
    city outside the scope, or a second one for a city, is "invalid".

    Exit codes: 0 every city asked answered, 3 some cities are missing (no section, denied, down,
    timed out or invalid; the report says which) or a section came back for a city outside the
    scope, 1 the query (or the aggregator's answer as a whole) was refused.
    """
    with errors():
        if network is None and not (aggregator and cert and key and ca):
            fail("give --network, or all of --aggregator, --cert, --key and --ca")
        if network is None and (directory_anchor is None) != (directory_state is None):
            fail("--directory-anchor and --directory-state go together")

        def connect() -> BankClient:
            # Inside the event loop: a gRPC channel belongs to the loop it was made in.
            if network is not None:
                return BankClient.from_network(
                    read_network(network), bank, timeout=timeout, directory_state=directory_state
                )
            assert aggregator and cert and key and ca
            return BankClient.from_files(
                aggregator=aggregator,
                cert=cert,
                key=key,
                ca=ca,
                timeout=timeout,
                directory_anchor=directory_anchor,
                directory_state=directory_state,
                directory_bootstrap=directory_bootstrap,
            )

        async def run() -> object:
            async with connect() as client:
                return await client.query(
                    uscc,
                    consent,
                    purpose,
                    categories=[c for c in categories.split(",") if c],
                    cities=[c for c in cities.split(",") if c],
                    exhaustive=exhaustive,
                )

        try:
            report = asyncio.run(run())
        except QueryRefused as exc:
            if json_out:
                print_json({"refused": True, "code": exc.code.name, "reason": exc.reason})
            fail(f"query refused: {exc.code.name}: {exc.reason}")
        except AnswerInvalid as exc:
            if json_out:
                print_json({"refused": True, "code": "ANSWER_INVALID", "reason": str(exc)})
            fail(f"the aggregator's answer was refused: {exc}")
        from creditnet_bank import Report

        assert isinstance(report, Report)
        if json_out:
            print_json(report.to_json())
        else:
            render_report(report, console)
        if not report.complete:
            raise typer.Exit(EXIT_PARTIAL)
