"""A 50-city network on one machine, as `creditnet network up --cities 50` runs it.

Fifty real city nodes — each its own gRPC server with mutual TLS, SQLite
store, credit-chain log and witness duties — packed into node hosts
(`creditnet node run-many`), and the aggregator. Routing holds at this size:
a query asks exactly the enterprise's registration city and the cities that
hold its records, a city not asked never hears of the query (its credit-chain
log has no entry for it), and the bank verifies every answer and receipt.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from creditnet import uscc as uscc_mod
from creditnet.domain import City, Purpose
from creditnet.network import HOST_PREFIX, NetworkLayout, ProcessNetwork, provision, select_cities
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet_bank import BankClient, Report, SectionStatus
from creditnet_devkit import synthetic
from tests.integration.helpers import consent
from tests.integration.test_routing import ledger_query_ids, submit

pytestmark = pytest.mark.slow

CITIES = 50
SEED = 7
ENTERPRISES = 3
# Bounds on waits on a loaded two-core machine, not measurements.
STARTUP = 300.0
ROUTED_WITHIN = 60.0


@pytest.fixture(scope="module")
def nlayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("national"),
        cities=select_cities(str(CITIES)),
        enterprises_per_city=ENTERPRISES,
        seed=SEED,
        routing=True,
    )


@pytest.fixture(scope="module")
def nnetwork(nlayout: NetworkLayout) -> Iterator[ProcessNetwork]:
    net = ProcessNetwork(nlayout, nodes_per_process=CITIES // 2)
    net.start()
    try:
        asyncio.run(net.wait_healthy(timeout=STARTUP))
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def ntrust(nlayout: NetworkLayout) -> TrustStore:
    return TrustStore.load(nlayout.ca)


def enterprise_identity(layout: NetworkLayout, uscc: str) -> Identity:
    return issue_identity(CertificateAuthority.load(layout.root / "pki"), Role.enterprise(uscc))


async def query_until_routed(
    layout: NetworkLayout, enterprise: Identity, expected: set[City]
) -> tuple[Report, list[str]]:
    """Ask until the aggregator holds every city's filter and asks exactly `expected`; the last
    report and the ids of every query sent (early ones may ask cities whose filter is not yet in)."""
    uscc = enterprise.role.subject
    env = consent(layout, enterprise=enterprise, uscc=uscc)
    sent: list[str] = []
    start = time.monotonic()
    async with BankClient.from_network(layout.root / "network.json") as bank:
        while True:
            report = await bank.query(uscc, env, Purpose.LOAN_APPLICATION)
            sent.append(report.query_id)
            if {s.city for s in report.sections if s.asked} == expected:
                return report, sent
            if time.monotonic() - start > ROUTED_WITHIN:
                raise AssertionError(f"still not routed to exactly {sorted(map(str, expected))} only")
            await asyncio.sleep(1.0)


@pytest_asyncio.fixture(scope="module")
async def routed(
    nnetwork: ProcessNetwork, nlayout: NetworkLayout, ntrust: TrustStore
) -> AsyncIterator[tuple[Identity, City, tuple[City, City], Report, list[str]]]:
    """An enterprise registered in one city, with records submitted in two others."""
    cities = nlayout.cities
    home, holders = cities[17], (cities[4], cities[41])
    enterprise = enterprise_identity(
        nlayout, uscc_mod.make_uscc(random.Random("national"), home, entity="92")
    )
    for city in holders:
        await submit(nlayout, ntrust, city, enterprise.role.subject)
    report, sent = await query_until_routed(nlayout, enterprise, {home, *holders})
    yield enterprise, home, holders, report, sent


def test_fifty_cities_run_as_fifty_nodes_in_a_few_processes(
    nnetwork: ProcessNetwork, nlayout: NetworkLayout
) -> None:
    assert len(nlayout.cities) == CITIES
    hosts = {name: cities for name, cities in nnetwork.groups.items() if name.startswith(HOST_PREFIX)}
    assert len(hosts) == 2 and sorted(c for cs in hosts.values() for c in cs) == list(nlayout.cities)
    assert all(proc.poll() is None for proc in nnetwork.procs.values())
    # Every node its own port.
    assert len({nlayout.node_endpoint(c) for c in nlayout.cities}) == CITIES


async def test_a_query_asks_the_registration_city_and_the_two_holding_cities_only(
    nlayout: NetworkLayout,
    ntrust: TrustStore,
    routed: tuple[Identity, City, tuple[City, City], Report, list[str]],
) -> None:
    _, home, holders, report, _ = routed
    by_city = {s.city: s for s in report.sections}
    assert list(by_city) == list(nlayout.cities)
    assert by_city[home].routing == "registration"
    assert all(by_city[c].routing == "holds_records" for c in holders)
    # The bank verified each asked city's signed answer and its receipt.
    assert all(by_city[c].status is SectionStatus.OK for c in holders)
    assert by_city[home].status is SectionStatus.NO_RECORDS
    assert all(by_city[c].ledger_index is not None for c in (home, *holders))
    not_asked = [c for c in nlayout.cities if c not in (home, *holders)]
    assert report.not_asked_cities == not_asked and len(not_asked) == CITIES - 3
    assert all(by_city[c].status is SectionStatus.NOT_ASKED and by_city[c].answer is None for c in not_asked)
    assert not report.missing_cities and report.record_count == 2

    for city in holders:
        assert report.query_id in await ledger_query_ids(nlayout, ntrust, city)
    # No city that was not asked has a ledger entry for the query.
    logged = await asyncio.gather(*(ledger_query_ids(nlayout, ntrust, c) for c in not_asked))
    assert not [c for c, ids in zip(not_asked, logged, strict=True) if report.query_id in ids]


async def test_a_synthetic_enterprise_with_records_in_two_cities_is_asked_of_those_two(
    nnetwork: ProcessNetwork,
    nlayout: NetworkLayout,
    ntrust: TrustStore,
    routed: tuple[Identity, City, tuple[City, City], Report, list[str]],
) -> None:
    cities = nlayout.cities
    plan = next(
        p
        for city in cities
        for i in range(synthetic.enterprises_in(city, ENTERPRISES, cities))
        if len((p := synthetic.plan_enterprise(SEED, city, i, network=cities)).cities) == 2
    )
    enterprise = enterprise_identity(nlayout, plan.uscc)
    report, _ = await query_until_routed(nlayout, enterprise, set(plan.cities))
    by_city = {s.city: s for s in report.sections}
    home, other = plan.cities
    assert by_city[home].routing == "registration" and by_city[other].routing == "holds_records"
    assert by_city[home].status is by_city[other].status is SectionStatus.OK
    assert len(report.not_asked_cities) == CITIES - 2 and not report.missing_cities
    quiet = [c for c in cities if c not in plan.cities][::7]
    logged = await asyncio.gather(*(ledger_query_ids(nlayout, ntrust, c) for c in quiet))
    assert all(report.query_id not in ids for ids in logged)


def test_network_status_shows_every_citys_filter(
    nnetwork: ProcessNetwork,
    nlayout: NetworkLayout,
    routed: tuple[Identity, City, tuple[City, City], Report, list[str]],
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "creditnet", "network", "status", "--network", str(nlayout.root), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    nodes = json.loads(done.stdout)["nodes"]
    assert [n["city"] for n in nodes] == [c.value for c in nlayout.cities]
    for n in nodes:
        f = n["filter"]
        assert f["problem"] == "" and f["version"] > 0 and f["size_bytes"] > 0, n
        assert 0 <= f["age_s"] < 120
    # The holders' filters hold the enterprise whose records were submitted there.
    _, _, holders, _, _ = routed
    by_city = {n["city"]: n["filter"] for n in nodes}
    assert all(by_city[c.value]["entries"] >= 1 for c in holders)
