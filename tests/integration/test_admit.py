"""Admitting a city to a running network and removing it: `creditnet network admit|remove`.

A sixth city (Suzhou 320500) joins a running five-city network: the next
directory version lists it, every server takes it, the aggregator's node
links follow it, and a federated query whose consent names no cities asks
Suzhou too, with a verified answer and receipt, without any other server
restarting. Removed again, it is no longer asked, and every server refuses
its node's calls (``directory.not_member``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.directory.publish import Target, targets
from creditnet.domain import City, Purpose
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout, ProcessNetwork, provision
from creditnet.pki import Identity, TrustStore
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc
from creditnet_bank import BankClient, SectionStatus
from creditnet_bank.report import Report
from tests.integration.helpers import consent

SUZHOU = City("320500")
REFRESH = dt.timedelta(seconds=3)
PATIENCE = 30.0
ANSWERED = {SectionStatus.OK, SectionStatus.NO_RECORDS}


@pytest.fixture(scope="module")
def alayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("admit-network"), enterprises_per_city=5, seed=23, directory_refresh=REFRESH
    )


@pytest_asyncio.fixture(scope="module")
async def anetwork(alayout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(alayout)
    await net.start()
    yield net
    await net.stop()


async def network_cli(layout: NetworkLayout, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "creditnet",
        "network",
        *args,
        "--network",
        str(layout.root),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def federated(layout: NetworkLayout) -> Report:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as client:
        return await client.query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)


async def refusal(layout: NetworkLayout, target: Target, caller: Identity) -> str | None:
    """The status and rule a plain call by `caller` on `target` is refused with; None if answered."""
    trust = TrustStore.load(layout.ca)
    async with secure_channel(target.endpoint, caller, trust, target.server_name) as channel:
        try:
            if target.name == "aggregator":
                await aggregator_pb2_grpc.AggregatorServiceStub(channel).ListNodes(
                    aggregator_pb2.ListNodesRequest(), timeout=5
                )
            else:
                await chain_pb2_grpc.ChainServiceStub(channel).GetCheckpoint(
                    chain_pb2.GetCheckpointRequest(), timeout=5
                )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name} {(exc.details() or '').partition(':')[0]}"
    return None


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("999999", "division.unknown"),
        ("320000", "division.not_city"),
        ("340100", "already a member"),
        ("32050", "division.malformed"),
    ],
)
async def test_admit_refuses_bad_cities_with_a_clear_error_and_changes_nothing(
    alayout: NetworkLayout, code: str, says: str
) -> None:
    before = (alayout.root / "network.json").read_bytes()
    rc, out = await network_cli(alayout, "admit", "--city", code)
    assert rc != 0, out
    assert "error:" in out and says in out, out
    assert "Traceback" not in out
    assert (alayout.root / "network.json").read_bytes() == before


async def test_remove_refuses_a_city_that_is_not_a_member(alayout: NetworkLayout) -> None:
    rc, out = await network_cli(alayout, "remove", "--city", "320500")
    assert rc != 0 and "remove.member" in out and "not a member" in out, out


async def test_a_sixth_city_is_admitted_to_a_running_network_and_then_removed(
    alayout: NetworkLayout, anetwork: InProcessNetwork
) -> None:
    report = await federated(alayout)
    assert {s.city for s in report.sections} == set(pilot.CITIES)
    aggregator = anetwork.aggregator
    nodes = dict(anetwork.nodes)

    rc, out = await network_cli(alayout, "admit", "--city", SUZHOU.value, "--json")
    assert rc == 0, out
    admitted = json.loads(out)
    assert admitted["admitted"] == SUZHOU.value and admitted["version"] == 2
    assert {a["server"]: a["status"] for a in admitted["published"]} == {
        **{c.value: "OK" for c in pilot.CITIES},
        "aggregator": "OK",
    }
    assert SUZHOU.value in json.loads((alayout.root / "network.json").read_text())["cities"]

    change = await anetwork.follow()
    assert change.started == (SUZHOU,) and change.stopped == ()
    started = time.monotonic()
    # Within one refresh interval, the federated query asks Suzhou and gets a verified answer.
    while True:
        report = await federated(alayout)
        suzhou = [s for s in report.sections if s.city == SUZHOU]
        if suzhou and suzhou[0].status in ANSWERED:
            break
        assert time.monotonic() - started < REFRESH.total_seconds(), [
            (s.city.value, s.status, s.reason) for s in report.sections
        ]
        await asyncio.sleep(0.2)
    assert suzhou[0].answer is not None and suzhou[0].receipt is not None
    assert {s.city for s in report.sections} == {*pilot.CITIES, SUZHOU}
    assert {s.status for s in report.sections} <= ANSWERED
    # No other server was restarted: the same running objects, still serving.
    assert anetwork.aggregator is aggregator
    assert all(anetwork.nodes[c] is n for c, n in nodes.items())
    # Every server holds the directory that lists Suzhou, and accepts its node.
    assert aggregator is not None and aggregator.served_directory is not None
    held = [aggregator.served_directory, *(n.directory for n in nodes.values())]
    assert all(h is not None and h.holder.require().version == 2 for h in held)
    suzhou_node = anetwork.layout.identity("nodes", SUZHOU.value)
    found = await asyncio.gather(*(refusal(alayout, t, suzhou_node) for t in targets(alayout)))
    assert set(found) == {None}, found

    rc, out = await network_cli(alayout, "remove", "--city", SUZHOU.value, "--json")
    assert rc == 0, out
    assert json.loads(out)["version"] == 3
    change = await anetwork.follow()
    assert change.stopped == (SUZHOU,) and SUZHOU not in anetwork.nodes

    report = await federated(alayout)
    assert {s.city for s in report.sections} == set(pilot.CITIES)
    assert {s.status for s in report.sections} <= ANSWERED
    assert anetwork.aggregator is aggregator
    assert all(anetwork.nodes[c] is n for c, n in nodes.items())
    # Every remaining server refuses the removed node's certificate.
    found = await asyncio.gather(*(refusal(alayout, t, suzhou_node) for t in targets(alayout)))
    assert set(found) == {"PERMISSION_DENIED directory.not_member"}, found


async def test_network_up_starts_an_admitted_city_and_stops_a_removed_one_without_restarting_others(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same with every server its own process, followed as `network up` follows network.json."""
    layout = provision(
        tmp_path_factory.mktemp("admit-processes"), enterprises_per_city=5, seed=29, directory_refresh=REFRESH
    )
    net = ProcessNetwork(layout)
    net.start()
    try:
        await net.wait_healthy(timeout=PATIENCE * 4)
        pids = {name: proc.pid for name, proc in net.procs.items()}
        rc, out = await network_cli(layout, "admit", "--city", SUZHOU.value)
        assert rc == 0, out
        assert "320500" in out and "taken by 6 of 6 servers" in out, out
        assert net.follow().started == (SUZHOU,)
        deadline = time.monotonic() + PATIENCE
        while True:
            report = await federated(layout)
            suzhou = [s for s in report.sections if s.city == SUZHOU]
            if suzhou and suzhou[0].status in ANSWERED:
                break
            assert time.monotonic() < deadline, [(s.city.value, s.status, s.reason) for s in report.sections]
            await asyncio.sleep(0.2)
        assert suzhou[0].receipt is not None
        assert net.supervise() == []
        assert {name: net.procs[name].pid for name in pids} == pids

        rc, out = await network_cli(layout, "remove", "--city", SUZHOU.value)
        assert rc == 0, out
        suzhou_proc = net.procs[SUZHOU.value]
        assert net.follow().stopped == (SUZHOU,)
        assert suzhou_proc.poll() is not None and SUZHOU.value not in net.procs
        report = await federated(layout)
        assert {s.city for s in report.sections} == set(pilot.CITIES)
        assert net.supervise() == []
        assert {name: proc.pid for name, proc in net.procs.items()} == pids
    finally:
        await asyncio.to_thread(net.stop)
