"""Every store test runs on SQLite (a file in tmp_path) and on PostgreSQL.

PostgreSQL: ``DATABASE_URL`` if set, else the local server. Each test run
creates its own database (``creditnet_test_<random>_store``) and drops it at
the end. ``db_url`` is an empty database (no schema); ``migrated_url``,
``store`` and ``astore`` one at the head revision with no rows. Without a
reachable server the PostgreSQL variants are skipped, unless
``CREDITNET_REQUIRE_POSTGRES`` is set (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import create_engine, inspect

from creditnet.store import AsyncStore, Store, head_revision
from creditnet.store.scratch import ScratchDatabases, ServerUnavailable


def require_postgres(reason: str) -> None:
    """Skip (or, with CREDITNET_REQUIRE_POSTGRES=1, fail) a PostgreSQL test."""
    if os.environ.get("CREDITNET_REQUIRE_POSTGRES"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_scratch() -> Iterator[ScratchDatabases]:
    with ScratchDatabases("creditnet_test") as scratch:
        yield scratch


@pytest.fixture(scope="session")
def pg_database_url(pg_scratch: ScratchDatabases) -> str:
    try:
        return pg_scratch.create("store")
    except ServerUnavailable as exc:
        require_postgres(f"{exc}: PostgreSQL tests skipped")
        raise


def empty_postgres(url: str) -> str:
    """Drop everything in the database (tables, migration version)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()
    return url


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database: no schema yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store') / 'node.db'}"
    return empty_postgres(request.getfixturevalue("pg_database_url"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "node.db"
    Store.open(f"sqlite:///{path}", migrate=True).close()
    return path


@pytest.fixture(params=BACKENDS)
def migrated_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database at the head revision, with no rows (migrating once per run:
    a copy of a migrated file, or the PostgreSQL tables emptied)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("store") / "node.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database_url")
    if Store.revision(url) != head_revision():
        Store.open(empty_postgres(url), migrate=True).close()
        return url
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            names = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
            conn.exec_driver_sql(f"TRUNCATE {', '.join(names)} RESTART IDENTITY")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    s = Store.open(migrated_url)
    try:
        yield s
    finally:
        s.close()


@pytest_asyncio.fixture
async def astore(migrated_url: str) -> AsyncIterator[AsyncStore]:
    s = await AsyncStore.open(migrated_url)
    try:
        yield s
    finally:
        await s.close()
