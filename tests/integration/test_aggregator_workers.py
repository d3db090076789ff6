"""`creditnet aggregator run --workers 2`: two aggregator processes on one port, as one aggregator.

The five-city network runs as processes; the aggregator's two workers share
its port, its database (its SQLite file, or one PostgreSQL database) and its
directory file.
Which worker served a call is read from each worker's own metrics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from creditnet import consent as consent_mod
from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.directory.membership import remove
from creditnet.directory.model import Directory
from creditnet.domain import Purpose
from creditnet.network import (
    NetworkLayout,
    ProcessNetwork,
    aggregator_process,
    free_port,
    grant_demo_consent,
    provision,
)
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore
from creditnet.store.scratch import ScratchDatabases, ServerUnavailable
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2
from creditnet.v2 import directory_service_pb2 as dpb
from creditnet.v2 import directory_service_pb2_grpc as dpb_grpc
from creditnet_bank import BankClient, QueryRefused, SectionStatus
from tests.integration.conftest import POSTGRES, skip_without_postgres

pytestmark = pytest.mark.slow

WORKERS = 2
# Fresh connections per check: the kernel picks a worker per connection, so
# the chance that all of them reach one worker is 2 * 2**-16.
CONNECTIONS = 16
QUERY_DEADLINE = 15.0
# A bound against hanging, never a timing assertion.
PATIENCE = 60.0
ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)


@pytest.fixture(scope="module")
def layout(
    database: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> NetworkLayout:
    """The network, its aggregator's database on the backend under test (alone: its SQLite file)."""
    aggregator_url = None
    if database == POSTGRES:
        scratch: ScratchDatabases = request.getfixturevalue("scratch")
        try:
            aggregator_url = scratch.create("aggregator_workers")
        except ServerUnavailable as exc:
            skip_without_postgres(f"{exc}: the aggregator workers on PostgreSQL are not tested")
    return provision(
        tmp_path_factory.mktemp("aggregator-workers"),
        enterprises_per_city=10,
        seed=29,
        aggregator_database_url=aggregator_url,
    )


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest_asyncio.fixture(scope="module")
async def network(layout: NetworkLayout, metrics_port: int) -> AsyncIterator[ProcessNetwork]:
    net = ProcessNetwork(
        layout, aggregator_options=("--workers", str(WORKERS), "--metrics-port", str(metrics_port))
    )
    net.start()
    try:
        await net.wait_healthy(timeout=PATIENCE)
        # The port serves once one worker does: wait for every worker's metrics too.
        until = asyncio.get_running_loop().time() + PATIENCE
        while True:
            try:
                await asyncio.to_thread(per_worker, metrics_port, "FederatedQuery", "OK")
                break
            except OSError:
                assert asyncio.get_running_loop().time() < until, "the workers did not all serve"
                await asyncio.sleep(0.2)
        yield net
    finally:
        await asyncio.to_thread(net.stop)


def workers(net: ProcessNetwork) -> set[int]:
    """The pids of the aggregator's worker processes (the children of `aggregator run`)."""
    pid = net.procs[aggregator_process(0)].pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(c) for c in children}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def gauge(port: int, name: str) -> float:
    """A gauge of the `aggregator run` process's own metrics."""
    return next(float(line.split()[1]) for line in scrape(port).splitlines() if line.startswith(f"{name} "))


def handled(port: int, method: str, code: str) -> float:
    """Calls of `method` one worker completed with `code`, from its own metrics."""
    text = scrape(port)
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and f'grpc_method="{method}"' in line
            and f'grpc_code="{code}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def per_worker(metrics_port: int, method: str, code: str) -> list[float]:
    return [handled(metrics_port + 1 + slot, method, code) for slot in range(WORKERS)]


def bank(layout: NetworkLayout) -> BankClient:
    """A bank on a connection of its own."""
    return BankClient(
        aggregator=layout.aggregator_endpoints[0],
        identity=layout.bank(),
        trust=TrustStore.load(layout.ca),
        timeout=QUERY_DEADLINE,
    )


async def ask(layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope) -> dict[str, SectionStatus]:
    async with bank(layout) as client:
        report = await client.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION)
    return {s.city.value: s.status for s in report.sections}


async def test_both_workers_answer_and_a_revocation_at_one_is_enforced_by_both(
    network: ProcessNetwork, layout: NetworkLayout, metrics_port: int
) -> None:
    assert len(workers(network)) == WORKERS
    before = per_worker(metrics_port, "FederatedQuery", "OK")
    consent = grant_demo_consent(layout)
    for _ in range(CONNECTIONS):
        statuses = await ask(layout, consent)
        assert set(statuses) == {c.value for c in layout.cities}
        assert all(s in ANSWERED for s in statuses.values()), statuses
    after = per_worker(metrics_port, "FederatedQuery", "OK")
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == CONNECTIONS
    assert all(n > 0 for n in served), served

    # Revoked through one connection (one worker); refused through every other.
    trust = TrustStore.load(layout.ca)
    revocation = consent_mod.revoke(layout.enterprise(), consent, reason="loan withdrawn")
    async with secure_channel(
        layout.aggregator_endpoints[0], layout.enterprise(), trust, AGGREGATOR_SERVER_NAME
    ) as channel:
        await aggregator_pb2_grpc.AggregatorServiceStub(channel).BroadcastRevocation(
            aggregator_pb2.BroadcastRevocationRequest(revocation=revocation, consent=consent), timeout=10
        )
    before = per_worker(metrics_port, "FederatedQuery", "PERMISSION_DENIED")
    for _ in range(CONNECTIONS):
        with pytest.raises(QueryRefused) as refused:
            await ask(layout, consent)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.reason.startswith("consent.revoked")
    after = per_worker(metrics_port, "FederatedQuery", "PERMISSION_DENIED")
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


async def test_a_killed_worker_is_started_again_and_queries_go_on(
    network: ProcessNetwork, layout: NetworkLayout, metrics_port: int
) -> None:
    assert gauge(metrics_port, "creditnet_workers_serving") == WORKERS
    assert gauge(metrics_port, "creditnet_worker_starts") == WORKERS
    first = workers(network)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    until = loop.time() + PATIENCE
    while (now := workers(network)) == first or len(now) != WORKERS or victim in now:
        assert loop.time() < until, f"worker {victim} was not replaced: {now}"
        await asyncio.sleep(0.2)
    assert first - {victim} <= now
    assert gauge(metrics_port, "creditnet_worker_starts") == WORKERS + 1
    consent = grant_demo_consent(layout)
    for _ in range(CONNECTIONS // 2):
        statuses = await ask(layout, consent)
        assert all(s in ANSWERED for s in statuses.values()), statuses
    assert network.procs[aggregator_process(0)].poll() is None


async def held_versions(layout: NetworkLayout) -> list[int]:
    trust = TrustStore.load(layout.ca)
    operator = layout.identity("operators", pilot.SHANGHAI.value)
    out = []
    for _ in range(CONNECTIONS):
        async with secure_channel(
            layout.aggregator_endpoints[0], operator, trust, AGGREGATOR_SERVER_NAME
        ) as channel:
            answer = await dpb_grpc.DirectoryServiceStub(channel).GetDirectory(
                dpb.GetDirectoryRequest(), timeout=10
            )
        out.append(Directory.from_payload(answer.directory.payload).version)
    return out


async def test_a_directory_offered_to_one_worker_is_held_by_both(
    network: ProcessNetwork, layout: NetworkLayout
) -> None:
    old = set(await held_versions(layout))
    assert len(old) == 1
    # Published once to the aggregator's endpoint: one connection, one worker.
    # (The directory's refresh interval is minutes: only the shared file can
    # bring it to the other worker within this test.)
    change = await remove(layout, pilot.JIAXING.value)
    new = change.directory.version
    assert new > max(old)
    loop = asyncio.get_running_loop()
    until = loop.time() + PATIENCE
    while set(seen := await held_versions(layout)) != {new}:
        assert loop.time() < until, f"the workers hold {seen}, not only {new}"
        await asyncio.sleep(0.5)
    # And both federate to the cities of the new directory only (each takes
    # its node links from the directory it holds within moments): the removed
    # city's node still runs (it was not sent the new directory) and would
    # answer, but is not asked.
    consent = grant_demo_consent(layout)
    remaining = {c.value for c in layout.cities} - {pilot.JIAXING.value}
    while True:
        rounds = [await ask(layout, consent) for _ in range(CONNECTIONS // 2)]
        if all(set(statuses) == remaining for statuses in rounds):
            break
        assert loop.time() < until, f"a worker still asks {pilot.JIAXING.value}: {rounds}"
    for statuses in rounds:
        assert all(s in ANSWERED for s in statuses.values()), statuses


async def test_sigterm_drains_the_workers_and_stops(network: ProcessNetwork) -> None:
    pids = workers(network)
    proc = network.procs[aggregator_process(0)]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, PATIENCE) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
