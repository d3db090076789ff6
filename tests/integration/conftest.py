"""A real five-city network for the integration tests.

It is provisioned once per run (CA, identities, synthetic data in SQLite
files) and its servers run on real loopback ports with mutual TLS, inside the
test event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from creditnet.network import InProcessNetwork, NetworkLayout, provision
from creditnet.pki import CertificateAuthority, TrustStore

ENTERPRISES_PER_CITY = 40


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(tmp_path_factory.mktemp("network"), enterprises_per_city=ENTERPRISES_PER_CITY, seed=7)


@pytest.fixture(scope="session")
def ca(layout: NetworkLayout) -> CertificateAuthority:
    return CertificateAuthority.load(layout.root / "pki")


@pytest.fixture(scope="session")
def trust(layout: NetworkLayout) -> TrustStore:
    return TrustStore.load(layout.ca)


@pytest_asyncio.fixture(scope="session")
async def network(layout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(layout)
    await net.start()
    yield net
    await net.stop()


@pytest.fixture
def state_root(layout: NetworkLayout) -> Path:
    return layout.root
