"""`creditnet data` and `creditnet provider`: synthetic data and provider submission."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from creditnet import pilot
from creditnet.cli.common import EXIT_PARTIAL, console, errors, fail, print_json
from creditnet.domain import City
from creditnet.v2 import records_pb2

__all__ = [
    "data_app",
    "generate",
    "provider_app",
    "submit",
]

data_app = typer.Typer(help="Synthetic data: generate record files.", no_args_is_help=True)
provider_app = typer.Typer(help="Data providers: submit records to a city node.", no_args_is_help=True)


@data_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="Output file: .jsonl or .csv.")],
    enterprises: Annotated[int, typer.Option(min=1, help="Enterprises per city.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same bytes.")] = 20221118,
    city: Annotated[str | None, typer.Option(help="Only the records held by this city's node.")] = None,
) -> None:
    """Generate realistic synthetic credit records (streamed; scales to millions)."""
    from creditnet import records
    from creditnet_devkit import synthetic

    with errors():
        only = City.parse(city) if city else None
        if out.suffix not in (".jsonl", ".csv"):
            fail("--out must end in .jsonl or .csv")
        writer = records.write_jsonl if out.suffix == ".jsonl" else records.write_csv
        count = 0

        def stream() -> Iterator[records_pb2.CreditRecord]:
            nonlocal count
            for item in synthetic.generate(seed, enterprises, pilot.CITIES):
                if isinstance(item, records_pb2.CreditRecord) and (only is None or item.city == only.proto):
                    count += 1
                    yield item

        with (
            open(out, "w", encoding="utf-8", newline="") as fh,
            Progress(console=console, transient=True) as p,
        ):
            p.add_task("generating", total=None)
            writer(stream(), fh)
        console.print(f"{count:,} records written to {out}")


@provider_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="Records as JSONL or CSV.")],
    node: Annotated[str, typer.Option(help="The city node's HOST:PORT.")],
    cert: Annotated[Path, typer.Option(help="The provider's certificate.")],
    key: Annotated[Path, typer.Option(help="The provider's key.")],
    ca: Annotated[Path, typer.Option(help="The network CA certificate.")],
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 1000,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stream a file of records to the node over mutual TLS, each batch signed with the provider's key.

    Rows that fail to parse are reported here and not sent. Exit 3 if any row was rejected.
    """
    from creditnet import records
    from creditnet.pki import Identity, TrustStore
    from creditnet.provider import submit_records

    with errors():
        ident, trust = Identity.load(cert, key), TrustStore.load(ca)
        local_errors: list[dict[str, object]] = []

        def rows() -> Iterator[records_pb2.CreditRecord]:
            for row in records.iter_file(file):
                if row.record is None or row.error:
                    local_errors.append({"line": row.line_number, "reason": row.error})
                else:
                    yield row.record

        resp = asyncio.run(submit_records(node, ident, trust, rows(), batch_size=batch_size))
        summary = {
            "received": resp.received,
            "accepted": resp.accepted,
            "duplicates": resp.duplicates,
            "rejected": resp.rejected + len(local_errors),
            "rejections": [
                {"index": r.index, "record_id": r.record_id, "reason": r.reason} for r in resp.rejections
            ]
            + local_errors,
        }
        if json_out:
            print_json(summary)
        else:
            console.print(
                f"sent {resp.received:,}: {resp.accepted:,} new, {resp.duplicates:,} already stored, "
                f"{summary['rejected']:,} rejected"
            )
        if summary["rejected"]:
            raise typer.Exit(EXIT_PARTIAL)
