"""One node process per database: a lock the serving node holds for its life.

A node is its database's single writer: its credit-chain log is appended by
one thread of one process, and its claims are completed by the process that
made them. Two node processes on one database would both append to one log
(the second to commit fails: its callers get INTERNAL) and could both
complete one unanswered claim. Until several workers per node are built for
that, a second node process is refused at start-up:

- on PostgreSQL, by a session advisory lock taken on a connection of its own
  and held until the node stops (or its process dies: the server then ends
  the session and frees the lock);
- on SQLite, by an exclusive ``flock`` on ``<database>.lock`` beside the
  database file (freed by the kernel when the process dies).

Tools that only read, and the migrator (which has its own lock), do not take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import IO, Final

import psycopg
from sqlalchemy import make_url

from creditnet.errors import FailedPrecondition

__all__ = [
    "DatabaseInUse",
    "WriterLock",
]

# An arbitrary advisory-lock key ("crednode"); distinct from the migrator's.
PG_NODE_LOCK_KEY: Final = 0x63726564_6E6F6465
_HOLDER_PREFIX: Final = "creditnet node"


class DatabaseInUse(FailedPrecondition):
    """Another node process serves this database."""

    def __init__(self, message: str) -> None:
        super().__init__("store.in_use", message)


class WriterLock:
    """The node's claim to be its database's one writer. Take with :meth:`acquire`."""

    def __init__(self, release: contextlib.ExitStack, where: str) -> None:
        self._release = release
        self.where = where

    @classmethod
    def acquire(cls, url: str, who: str = "") -> WriterLock:
        """Take the lock of the database at ``url``, or raise :class:`DatabaseInUse`.

        ``who`` names this node in what a refused second process is told.
        Blocking (a connection or a file open): call it off the event loop.
        """
        parsed = make_url(url)
        holder = f"{_HOLDER_PREFIX} {who} pid {os.getpid()} on {socket.gethostname()}".replace("  ", " ")
        if parsed.get_backend_name() == "sqlite":
            if not parsed.database:
                raise ValueError(f"no SQLite database file in {url!r}")
            return cls._flock(Path(parsed.database), holder)
        conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls._advisory(conninfo, holder, parsed.database or "")

    def release(self) -> None:
        self._release.close()

    @classmethod
    def _flock(cls, database: Path, holder: str) -> WriterLock:
        path = database.with_name(database.name + ".lock")
        stack = contextlib.ExitStack()
        fh: IO[str] = stack.enter_context(open(path, "a+", encoding="utf-8"))  # noqa: SIM115
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "another process"
            stack.close()
            raise DatabaseInUse(
                _refusal(f"the SQLite database {database}", f"{other} (lock file {path})")
            ) from None
        except BaseException:
            stack.close()
            raise
        stack.callback(fcntl.flock, fh.fileno(), fcntl.LOCK_UN)
        # Who holds it, for the operator of a refused second process.
        fh.seek(0)
        fh.truncate()
        fh.write(holder + "\n")
        fh.flush()
        return cls(stack, str(path))

    @classmethod
    def _advisory(cls, conninfo: str, holder: str, name: str) -> WriterLock:
        conn = psycopg.connect(conninfo, autocommit=True, application_name=holder[:63])
        try:
            # A holder whose host vanished (no FIN ever comes) keeps the lock
            # until the server gives up on its session: within about 30 s.
            conn.execute("SET tcp_keepalives_idle = 10")
            conn.execute("SET tcp_keepalives_interval = 5")
            conn.execute("SET tcp_keepalives_count = 4")
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (PG_NODE_LOCK_KEY,)).fetchone()
            if got is None or not got[0]:
                raise DatabaseInUse(_refusal(f"the PostgreSQL database {name}", _pg_holder(conn)))
        except BaseException:
            conn.close()
            raise
        stack = contextlib.ExitStack()
        # Closing the session frees its advisory locks.
        stack.callback(conn.close)
        return cls(stack, f"PostgreSQL advisory lock {PG_NODE_LOCK_KEY} on {name}")


def _pg_holder(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute(
        "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (PG_NODE_LOCK_KEY >> 32, PG_NODE_LOCK_KEY & 0xFFFFFFFF),
    ).fetchone()
    if row is None or not row[0]:
        return "another process"
    return f"{row[0]}" + (f" (from {row[1]})" if row[1] else "")


def _refusal(database: str, holder: str) -> str:
    return (
        f"{database} is already served by {holder}. A node is its database's single writer:"
        " run one `node run` per database, and stop the other process before starting this one"
    )
