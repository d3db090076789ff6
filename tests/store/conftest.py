"""Every store test runs on SQLite (a file in tmp_path) and on PostgreSQL.

PostgreSQL: ``DATABASE_URL`` if set, else the local server. Each test run
creates its own database (``creditnet_test_<random>``) through the
``postgres`` maintenance database and drops it at the end; each test starts
from empty tables. Without a reachable server the PostgreSQL variants are
skipped, unless ``CREDITNET_REQUIRE_POSTGRES`` is set (CI), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import OperationalError

from creditnet.store import AsyncStore, Store
from creditnet.store.models import METADATA

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    base = make_url(os.environ.get("DATABASE_URL") or DEFAULT_PG_URL)
    if base.drivername in ("postgresql", "postgres"):
        base = base.set(drivername="postgresql+psycopg")
    where = f"{base.host or 'localhost'}:{base.port or 5432}"
    admin = create_engine(
        base.set(database="postgres"), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    name = f"creditnet_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL not reachable at {where}: Postgres tests skipped ({exc.orig})"
        if os.environ.get("CREDITNET_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store') / 'node.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    engine = create_engine(url)
    try:
        METADATA.drop_all(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest_asyncio.fixture
async def astore(db_url: str) -> AsyncIterator[AsyncStore]:
    s = await AsyncStore.open(db_url)
    try:
        yield s
    finally:
        await s.close()
