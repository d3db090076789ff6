"""The node database's schema: which revision a database is at, and moving it.

The schema is defined by the Alembic migrations in ``migrations/`` (they cover
the node's tables and the credit chain's), never by ``create_all``. Opening a
store only checks the revision (:func:`require_head`); changing it is an
explicit act (:func:`migrate`, ``creditnet node migrate``).

A migration runs in one transaction, under a lock that serialises migrators
(``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and
reads the revision again once it holds the lock: two nodes started together
migrate once, and PostgreSQL's transactional DDL means a failed migration
leaves the database as it was.

Databases created before migrations existed (tables made by ``create_all``,
no ``alembic_version``) hold exactly the first revision's tables, or some of
them; the first revision creates only what is missing, so migrating adopts them.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from creditnet.errors import Error, FailedPrecondition

__all__ = [
    "WRITE_OPTION",
    "Migration",
    "SchemaNotReady",
    "UnknownRevision",
    "alembic_config",
    "current_revision",
    "head_revision",
    "migrate",
    "require_head",
    "revisions",
]

MIGRATIONS: Final = Path(__file__).with_name("migrations")

# Execution option that marks a connection as about to write (SQLite then
# starts its transaction with BEGIN IMMEDIATE; see store.py).
WRITE_OPTION: Final = "creditnet_write"

# An arbitrary advisory-lock key; it only has to be the same for every migrator.
_PG_LOCK_KEY: Final = 0x63726564_69746E65

_ALEMBIC: Final = threading.Lock()

_MIGRATE_HINT: Final = "run `creditnet node migrate --config node.json`"


class SchemaNotReady(FailedPrecondition):
    """The database is not at the schema revision this software needs."""

    def __init__(self, message: str) -> None:
        super().__init__("store.schema", message)


class UnknownRevision(Error, ValueError):
    """A revision that is not one of the shipped migrations."""


@dataclass(frozen=True, slots=True)
class Migration:
    """What :func:`migrate` did: ``before`` → ``after`` (None is the empty schema)."""

    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """Alembic's configuration for the shipped migrations, on a database URL
    (developer commands) or on an open connection (:func:`migrate`)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        # configparser interpolates %; URLs may carry escaped characters.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this software's tables are at."""
    head = _script().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def revisions() -> list[str]:
    """Every shipped revision, oldest first."""
    return [rev.revision for rev in reversed(list(_script().walk_revisions()))]


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for a database without one (empty, or
    made before migrations existed)."""
    with engine.connect() as conn:
        return _current(conn)


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def require_head(engine: Engine) -> None:
    """Raise :class:`SchemaNotReady` unless the database is at :func:`head_revision`."""
    with engine.connect() as conn:
        current = _current(conn)
        if current == head_revision():
            return
        legacy = current is None and "records" in inspect(conn).get_table_names()
    where = engine.url.render_as_string(hide_password=True)
    head = head_revision()
    if current is None and legacy:
        problem = f"the database {where} was created before schema migrations (it has no revision)"
    elif current is None:
        problem = f"the database {where} has no creditnet schema yet"
    elif current in revisions():
        problem = f"the database {where} is at schema revision {current}, this software needs {head}"
    else:
        raise SchemaNotReady(
            f"the database {where} is at schema revision {current}, which this software does not know"
            f" (it needs {head}): it was migrated by a newer creditnet; run that version"
        )
    raise SchemaNotReady(f"{problem}; {_MIGRATE_HINT}")


def migrate(engine: Engine, target: str = "head") -> Migration:
    """Upgrade (or downgrade) the database to ``target``: ``head``, a revision
    id, or ``base`` (no tables at all). Idempotent."""
    wanted = _resolve(target)
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
            before = _current(conn)
            if before is not None and before not in revisions():
                where = engine.url.render_as_string(hide_password=True)
                raise SchemaNotReady(
                    f"the database {where} is at schema revision {before}, which this software does not"
                    " know; it was migrated by a newer creditnet, so run that version's migrate"
                )
            if before != wanted:
                cfg = alembic_config(connection=conn)
                # Alembic keeps the running migration in module globals.
                with _ALEMBIC:
                    if _is_ancestor(before, wanted):
                        command.upgrade(cfg, wanted or "base")
                    else:
                        command.downgrade(cfg, wanted or "base")
            after = _current(conn)
    return Migration(before=before, after=after)


def _resolve(target: str) -> str | None:
    if target == "base":
        return None
    if target == "head":
        return head_revision()
    if target not in revisions():
        raise UnknownRevision(
            f"{target!r} is not a schema revision; use head, base or one of {', '.join(revisions())}"
        )
    return target


def _is_ancestor(older: str | None, newer: str | None) -> bool:
    """True if ``newer`` is reached from ``older`` by upgrading (or they are equal)."""
    if older is None:
        return True
    if newer is None:
        return False
    order = revisions()
    return order.index(older) <= order.index(newer)
