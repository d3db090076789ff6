"""A network of any cities, by division code: nothing in the code enumerates them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from creditnet.domain import City, Purpose
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout, provision
from creditnet.pki import node_server_name
from creditnet_bank import BankClient, SectionStatus
from tests.integration.helpers import consent

SUZHOU, WUXI, WUHU = City("320500"), City("320200"), City("340200")


@pytest.fixture(scope="module")
def clayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("any-cities"), cities=(WUHU, SUZHOU, WUXI), enterprises_per_city=8, seed=5
    )


@pytest_asyncio.fixture(scope="module")
async def cnetwork(clayout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(clayout)
    await net.start()
    yield net
    await net.stop()


def test_the_network_is_the_cities_it_was_given(clayout: NetworkLayout) -> None:
    assert clayout.cities == (WUXI, SUZHOU, WUHU)
    assert {c: e["server_name"] for c, e in clayout.data["cities"].items()} == {
        c.code: node_server_name(c) for c in (WUXI, SUZHOU, WUHU)
    }
    assert node_server_name(SUZHOU) == "320500.node.creditnet"
    assert City.of_region(clayout.demo_enterprise[2:8]) in clayout.cities


async def test_a_federated_query_reaches_every_member_and_verifies(
    cnetwork: InProcessNetwork, clayout: NetworkLayout
) -> None:
    async with BankClient.from_network(clayout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(clayout.demo_enterprise, consent(clayout), Purpose.LOAN_APPLICATION)
    assert [s.city for s in report.sections] == [WUXI, SUZHOU, WUHU]
    assert all(s.status in (SectionStatus.OK, SectionStatus.NO_RECORDS) for s in report.sections), [
        (s.city, s.status, s.reason) for s in report.sections
    ]
    assert report.record_count > 0


@pytest.mark.parametrize(
    ("cities", "said"),
    [
        ("320000", "not a prefecture-level division"),
        ("999999", "not a current GB/T 2260"),
        ("suzhou", "six ASCII digits"),
    ],
)
def test_network_up_refuses_codes_that_are_not_cities(tmp_path: Path, cities: str, said: str) -> None:
    state = tmp_path / "net"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "creditnet",
            "network",
            "up",
            "--state-dir",
            str(state),
            "--cities",
            f"310000,{cities}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert said in " ".join((done.stdout + done.stderr).split())
    assert not (state / "network.json").exists()
