"""A real five-city network for the integration tests, on each database.

The network is provisioned once per database backend (CA, identities,
synthetic data) and its servers run on real loopback ports with mutual TLS,
inside the test event loop. Every test that uses it runs twice: on SQLite
files, and on PostgreSQL with one database per city node, created for this
run and dropped at its end. Without a reachable PostgreSQL server
(``DATABASE_URL``, else 127.0.0.1:5432) the PostgreSQL half is skipped, or
fails when ``CREDITNET_REQUIRE_POSTGRES=1``.

``DATABASE_URL`` only says where the server is: it is taken out of the
environment while these tests run, because a node's config would otherwise
give that one database to every node.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import URL

from creditnet import pilot
from creditnet.network import InProcessNetwork, NetworkLayout, provision
from creditnet.pki import CertificateAuthority, TrustStore
from creditnet.store.scratch import ScratchDatabases, ServerUnavailable, server_url

ENTERPRISES_PER_CITY = 40
SQLITE, POSTGRES = "sqlite", "postgresql"


def skip_without_postgres(reason: str) -> None:
    if os.environ.get("CREDITNET_REQUIRE_POSTGRES"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="package", autouse=True)
def postgres_server() -> Iterator[URL]:
    """Where PostgreSQL databases are created; DATABASE_URL is unset meanwhile."""
    saved = os.environ.pop("DATABASE_URL", None)
    try:
        yield server_url({"DATABASE_URL": saved} if saved else {})
    finally:
        if saved is not None:
            os.environ["DATABASE_URL"] = saved


@pytest.fixture(scope="package")
def scratch(postgres_server: URL) -> Iterator[ScratchDatabases]:
    with ScratchDatabases("creditnet_it", postgres_server) as databases:
        yield databases


@pytest.fixture(scope="package", params=[SQLITE, pytest.param(POSTGRES, marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    """The backend the session network's nodes run on."""
    return str(request.param)


@pytest.fixture(scope="package")
def layout(
    database: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> NetworkLayout:
    urls = None
    if database == POSTGRES:
        scratch: ScratchDatabases = request.getfixturevalue("scratch")
        try:
            urls = {city: scratch.create(city.value) for city in pilot.CITIES}
        except ServerUnavailable as exc:
            skip_without_postgres(f"{exc}: the PostgreSQL half of the integration tests is skipped")
    return provision(
        tmp_path_factory.mktemp(f"network-{database}"),
        enterprises_per_city=ENTERPRISES_PER_CITY,
        seed=7,
        database_urls=urls,
    )


@pytest.fixture(scope="package")
def ca(layout: NetworkLayout) -> CertificateAuthority:
    return CertificateAuthority.load(layout.root / "pki")


@pytest.fixture(scope="package")
def trust(layout: NetworkLayout) -> TrustStore:
    return TrustStore.load(layout.ca)


@pytest_asyncio.fixture(scope="package")
async def network(layout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(layout)
    await net.start()
    yield net
    await net.stop()


@pytest.fixture
def state_root(layout: NetworkLayout) -> Path:
    return layout.root
