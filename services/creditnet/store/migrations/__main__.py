"""Alembic's own commands on the shipped migrations, for developers:

    python -m creditnet.store.migrations --url sqlite:////tmp/dev.db upgrade head
    python -m creditnet.store.migrations --url sqlite:////tmp/dev.db revision --autogenerate -m "..."

Operators use ``creditnet node migrate`` instead.
"""

from __future__ import annotations

import argparse
import sys

from alembic.config import CommandLine

from creditnet.store.schema import alembic_config

PROG = "python -m creditnet.store.migrations"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, add_help=False)
    parser.add_argument("--url", required=True, help="The database (SQLAlchemy URL) the command works on.")
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    alembic = CommandLine(prog=f"{PROG} --url URL")
    options = alembic.parser.parse_args(rest)
    if not hasattr(options, "cmd"):
        alembic.parser.error("too few arguments")
    config = alembic_config(ours.url)
    config.cmd_opts = options
    alembic.run_cmd(config, options)


if __name__ == "__main__":
    main()
