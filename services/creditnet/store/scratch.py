"""Throw-away PostgreSQL databases for tests and benchmarks.

The server is ``DATABASE_URL`` if set (any database on it: the maintenance
database ``postgres`` is used to create and drop), else the local server.
Every database is created under a random name with a caller's prefix and
dropped (``WITH (FORCE)``: connections a test left open do not keep it) when
the :class:`ScratchDatabases` is closed.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from typing import Final, Self

from sqlalchemy import URL, create_engine, make_url
from sqlalchemy.exc import OperationalError

from creditnet.errors import Error

__all__ = [
    "ScratchDatabases",
    "ServerUnavailable",
    "server_url",
]

DEFAULT_SERVER: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")


class ServerUnavailable(Error, RuntimeError):
    """The PostgreSQL server cannot be reached (or refuses to create databases)."""


def server_url(env: Mapping[str, str] | None = None) -> URL:
    """The server to create databases on, with the psycopg 3 driver."""
    env = os.environ if env is None else env
    url = make_url(env.get("DATABASE_URL") or DEFAULT_SERVER)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"DATABASE_URL must name a PostgreSQL server, not {url.get_backend_name()!r}")
    return url.set(drivername="postgresql+psycopg")


class ScratchDatabases:
    """Creates databases named ``<prefix>_<random>_<name>``; drops them all on close."""

    def __init__(self, prefix: str, server: URL | None = None) -> None:
        self._server = server or server_url()
        self._prefix = f"{prefix}_{secrets.token_hex(4)}"
        if not _NAME.fullmatch(self._prefix):
            raise ValueError(f"database prefix {prefix!r}: use lower-case letters, digits and _")
        self._admin = create_engine(
            self._server.set(database="postgres"),
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 5},
        )
        self._created: list[str] = []

    @property
    def where(self) -> str:
        return f"{self._server.host or 'localhost'}:{self._server.port or 5432}"

    def create(self, name: str) -> str:
        """A new empty database; returns its URL (with the password, if any)."""
        full = f"{self._prefix}_{name}"
        if not _NAME.fullmatch(full):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _ (63 at most)")
        try:
            with self._admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{full}"')
        except OperationalError as exc:
            raise ServerUnavailable(f"PostgreSQL not reachable at {self.where}: {exc.orig}") from exc
        self._created.append(full)
        return self._server.set(database=full).render_as_string(hide_password=False)

    def close(self) -> None:
        try:
            if not self._created:
                return
            with self._admin.connect() as conn:
                while self._created:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self._created[-1]}" WITH (FORCE)')
                    self._created.pop()
        finally:
            self._admin.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
