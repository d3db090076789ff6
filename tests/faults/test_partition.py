"""Each city in its own network namespace: cut one city's link and the rest keeps answering.

Needs root and iproute2. Everything lives in namespaces this test creates
and deletes: a hub namespace holding a bridge and the aggregator, and one
namespace per city joined to the bridge by a veth pair. Addresses come from
192.168.213.0/24 and exist only inside those namespaces, which have no other
interface and no default route, so no packet can leave them; nothing is
added to the machine's own namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from creditnet import pilot
from creditnet.config import AggregatorConfig, NodeConfig
from creditnet.domain import City
from creditnet.network import NetworkLayout, grant_demo_consent, provision
from tests.faults.conftest import AGGREGATOR, FaultNetwork, eventually

pytestmark = pytest.mark.slow

SUBNET = "192.168.213"
HUB_ADDRESS = f"{SUBNET}.1"
ENTERPRISES_PER_CITY = 10


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is missing"
    probe = f"cnf{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace here: {exc}"
    ip("netns", "del", probe)
    return None


@pytest.fixture(scope="module")
def namespaces() -> Iterator[dict[str, str]]:
    """hub + one namespace per city; returns {process name: namespace}."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = f"cnf{os.getpid()}"
    hub = f"{tag}-hub"
    made: list[str] = []
    try:
        ip("netns", "add", hub)
        made.append(hub)
        ip("-n", hub, "link", "set", "lo", "up")
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
        ip("-n", hub, "link", "set", "br0", "up")
        spaces = {AGGREGATOR: hub}
        for i, city in enumerate(pilot.CITIES):
            ns = f"{tag}-{city.value}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # Both ends are created inside our namespaces, never in the machine's.
            ip("-n", hub, "link", "add", port_name(city), "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", hub, "link", "set", port_name(city), "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{city_address(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            spaces[city.value] = ns
        yield spaces
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def port_name(city: City) -> str:
    return f"v-{city.value}"[:15]


def city_address(index: int) -> str:
    return f"{SUBNET}.{11 + index}"


def move_to_namespaces(layout: NetworkLayout) -> None:
    """Give every server its namespace's address, in every config and in network.json."""
    port = {c: layout.node_endpoint(c).rpartition(":")[2] for c in pilot.CITIES}
    nodes = {c: f"{city_address(i)}:{port[c]}" for i, c in enumerate(pilot.CITIES)}
    aggregator = f"{HUB_ADDRESS}:{layout.aggregator_endpoint.rpartition(':')[2]}"
    witnesses = {c.value: ep for c, ep in nodes.items()} | {"national": aggregator}
    for city in pilot.CITIES:
        path = layout.node_config(city)
        cfg = NodeConfig.load(path)
        cfg.listen = nodes[city]
        cfg.witnesses = {n: ep for n, ep in witnesses.items() if n != city.value}
        cfg.save(path)
    agg = AggregatorConfig.load(layout.aggregator_config)
    agg.listen, agg.nodes = aggregator, nodes
    agg.save(layout.aggregator_config)
    data: dict[str, Any] = json.loads((layout.root / "network.json").read_text())
    data["aggregator"]["endpoint"] = aggregator
    for city, endpoint in nodes.items():
        data["cities"][city.value]["endpoint"] = endpoint
    (layout.root / "network.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    layout.data.update(data)


@pytest_asyncio.fixture(scope="module")
async def partitioned(
    namespaces: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FaultNetwork]:
    # No directory: the servers move to other addresses after provisioning,
    # and a directory would pin (and assign witnesses at) the old ones.
    layout = provision(
        tmp_path_factory.mktemp("netns"), enterprises_per_city=ENTERPRISES_PER_CITY, seed=5, directory=False
    )
    move_to_namespaces(layout)
    net = FaultNetwork(layout, prefix={name: ["ip", "netns", "exec", ns] for name, ns in namespaces.items()})
    net.start()
    try:
        await eventually(lambda: all_serving(net), "every node serves the aggregator", attempts=60)
        yield net
    finally:
        await asyncio.to_thread(net.stop)


async def in_hub(net: FaultNetwork, *args: str) -> tuple[int, str]:
    """Run the creditnet CLI inside the hub namespace (the test process is outside every namespace)."""
    proc = await asyncio.create_subprocess_exec(
        *net.prefix[AGGREGATOR], sys.executable, "-m", "creditnet", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def all_serving(net: FaultNetwork) -> bool:
    for proc in net.procs.values():
        if proc.poll() is not None:
            raise AssertionError(f"a server exited with {proc.returncode}; see {net.layout.root / 'logs'}")
    code, _ = await in_hub(net, "network", "status", "--network", str(net.layout.root), "--json")
    return code == 0


async def ask(net: FaultNetwork, consent: Path) -> dict[str, str]:
    code, out = await in_hub(
        net, "query", "--network", str(net.layout.root), "--uscc", net.layout.demo_enterprise,
        "--consent", str(consent), "--purpose", "loan_application", "--timeout", "10", "--json",
    )  # fmt: skip
    assert code in (0, 3), f"the query failed with exit code {code}: {out}"
    return {s["city"]: s["status"] for s in json.loads(out)["sections"]}


async def test_a_city_cut_off_the_network_leaves_the_others_answering(partitioned: FaultNetwork) -> None:
    net = partitioned
    consent = net.layout.root / "demo.consent.json"
    grant_demo_consent(net.layout, save_to=consent)
    answered = {"ok", "no_records"}
    before = await ask(net, consent)
    assert set(before.values()) <= answered, before
    cut = pilot.HANGZHOU
    hub = net.prefix[AGGREGATOR][-1]
    ip("-n", hub, "link", "set", port_name(cut), "down")
    try:
        during = await ask(net, consent)
        assert during[cut.value] in ("timeout", "unavailable"), during
        assert all(during[c.value] in answered for c in pilot.CITIES if c is not cut), during
    finally:
        ip("-n", hub, "link", "set", port_name(cut), "up")

    async def rejoined() -> bool:
        return (await ask(net, consent))[cut.value] in answered

    await eventually(rejoined, "the reconnected city answers again", attempts=20)
    # The cut city's server never stopped; only its link did.
    assert net.proc(cut).poll() is None
