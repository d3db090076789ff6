"""The `creditnet` command: every role's tool, one `--help` away."""

from __future__ import annotations

import typer

from creditnet import __version__
from creditnet.cli import (
    chain_cmds,
    consent_cmds,
    data_cmds,
    demo,
    directory_cmds,
    network_cmds,
    node_cmds,
    pki_cmds,
    query_cmds,
)

__all__ = [
    "app",
    "main",
]

app = typer.Typer(
    name="creditnet",
    help="creditnet — the Yangtze River Delta cross-city enterprise credit-information network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(pki_cmds.app, name="pki")
app.add_typer(node_cmds.app, name="node")
app.add_typer(network_cmds.aggregator_app, name="aggregator")
app.add_typer(network_cmds.network_app, name="network")
app.add_typer(consent_cmds.app, name="consent")
app.add_typer(data_cmds.data_app, name="data")
app.add_typer(data_cmds.provider_app, name="provider")
app.add_typer(chain_cmds.app, name="chain")
app.add_typer(directory_cmds.app, name="directory")
app.command("query")(query_cmds.query)
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"creditnet {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """creditnet — the Yangtze River Delta cross-city enterprise credit-information network."""
