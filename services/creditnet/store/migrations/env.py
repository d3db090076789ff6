"""Alembic's environment: migrate the connection :mod:`creditnet.store.schema`
hands over (inside its transaction and lock), or, from the developer command,
the database at ``sqlalchemy.url``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from creditnet.store.models import METADATA

# Every table of the schema (the node's, the credit chain's, the aggregator's)
# is declared on this one metadata; autogenerate compares against it.
TARGET_METADATA = METADATA


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=TARGET_METADATA,
        compare_type=True,
        # SQLite alters tables by copying them; later revisions may need it.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass --url to python -m creditnet.store.migrations")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


main()
