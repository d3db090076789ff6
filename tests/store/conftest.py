"""Every store test runs on SQLite (a file in tmp_path) and on PostgreSQL.

PostgreSQL: ``DATABASE_URL`` if set, else the local server. Each test run
creates its own database (``creditnet_test_<random>_store``) and drops it at
the end; each test starts from an empty schema, migrated to head by the
``store`` fixtures. Without a reachable server the PostgreSQL variants are
skipped, unless ``CREDITNET_REQUIRE_POSTGRES`` is set (CI), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy import create_engine

from creditnet.store import AsyncStore, Store
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database: no schema yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store') / 'node.db'}"
    return empty_postgres(request.getfixturevalue("pg_database_url"))


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """A database at the head revision, with no rows."""
    Store.open(db_url, migrate=True).close()
    return db_url


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
