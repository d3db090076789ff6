"""A small network whose servers run as operating-system processes, for fault tests.

One network is provisioned and started per run, the first time a test asks
for it. Tests kill, freeze, restart and signal its processes; the
`network` fixture brings every process back (thawed, running, SERVING)
before and after each test, so no test inherits another's faults.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.domain import City
from creditnet.health import wait_serving
from creditnet.network import NetworkLayout, ProcessNetwork, aggregator_process, provision
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc

ENTERPRISES_PER_CITY = 20
AGGREGATOR = "aggregator"
# How long a test waits for something that must happen soon (a process to
# serve, to exit, an entry to appear); only a bound against hanging.
PATIENCE = 60.0


def name_of(who: City | str) -> str:
    return who.value if isinstance(who, City) else who


@dataclass
class FaultNetwork(ProcessNetwork):
    """ProcessNetwork with the handles fault tests need: signals, restarts, per-process env."""

    # Extra environment for a process when it is next started.
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    # A command prefix per process, e.g. ["ip", "netns", "exec", "cn-hefei"].
    prefix: dict[str, list[str]] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    # Sent SIGTERM: draining, and about to exit.
    terminating: set[str] = field(default_factory=set)

    def _spawn(self, name: str, args: list[str]) -> None:
        log_dir = self.log_dir or (self.layout.root / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [*self.prefix.get(name, []), sys.executable, "-m", "creditnet", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env.get(name, {})},
            )

    def start(self) -> None:
        for city in pilot.CITIES:
            self.start_node(city)
        self.start_aggregator()

    def start_aggregator(self, replica: int = 0) -> None:
        config = self.layout.aggregator_configs[replica]
        self._spawn(aggregator_process(replica), ["aggregator", "run", "--config", str(config)])

    def restart(self, who: City | str) -> None:
        name = name_of(who)
        if name == AGGREGATOR:
            self.start_aggregator()
        else:
            self.start_node(City.parse(name))

    def proc(self, who: City | str) -> subprocess.Popen[bytes]:
        return self.procs[name_of(who)]

    def log(self, who: City | str) -> str:
        path = (self.log_dir or self.layout.root / "logs") / f"{name_of(who)}.log"
        return path.read_text(encoding="utf-8", errors="replace")

    async def kill(self, who: City | str) -> None:
        """SIGKILL, and wait until the process is gone."""
        proc = self.proc(who)
        self.frozen.discard(name_of(who))
        proc.kill()
        await asyncio.to_thread(proc.wait, PATIENCE)

    def freeze(self, who: City | str) -> None:
        self.proc(who).send_signal(signal.SIGSTOP)
        self.frozen.add(name_of(who))

    def thaw(self, who: City | str) -> None:
        if name_of(who) in self.frozen:
            self.proc(who).send_signal(signal.SIGCONT)
            self.frozen.discard(name_of(who))

    def terminate(self, who: City | str) -> None:
        self.proc(who).send_signal(signal.SIGTERM)
        self.terminating.add(name_of(who))

    async def wait_exit(self, who: City | str) -> int:
        return await asyncio.to_thread(self.proc(who).wait, PATIENCE)

    def endpoint(self, who: City | str) -> tuple[str, str]:
        name = name_of(who)
        if name == AGGREGATOR:
            return self.layout.aggregator_endpoint, AGGREGATOR_SERVER_NAME
        city = City.parse(name)
        return self.layout.node_endpoint(city), node_server_name(city)

    async def wait_serving(self, who: City | str) -> None:
        endpoint, server_name = self.endpoint(who)
        await wait_serving(
            endpoint, server_name, self.operator, self.layout.ca, timeout=PATIENCE, process=self.proc(who)
        )

    @property
    def operator(self) -> Identity:
        return self.layout.identity("operators", pilot.SHANGHAI.value)

    async def heal(self) -> None:
        """Every process thawed, running with its normal environment, and SERVING."""
        for name in list(self.frozen):
            self.thaw(name)
        for name in list(self.terminating):
            await self.wait_exit(name)
            self.terminating.discard(name)
        names = [c.value for c in pilot.CITIES] + [AGGREGATOR]
        for name in names:
            proc = self.procs.get(name)
            if name in self.env:
                del self.env[name]
                if proc is not None and proc.poll() is None:
                    await self.kill(name)
            if proc is None or proc.poll() is not None:
                self.restart(name)
        await asyncio.gather(*(self.wait_serving(n) for n in names))
        # The aggregator's own channels may still be backing off from a node
        # that was down: wait until it reaches every node itself.
        await eventually(self.aggregator_reaches_all, "the aggregator reaches every node")

    async def aggregator_reaches_all(self) -> bool:
        trust = TrustStore.load(self.layout.ca)
        endpoint, server_name = self.endpoint(AGGREGATOR)
        async with secure_channel(endpoint, self.operator, trust, server_name) as channel:
            resp = await aggregator_pb2_grpc.AggregatorServiceStub(channel).ListNodes(
                aggregator_pb2.ListNodesRequest(), timeout=10
            )
        serving = {n.city for n in resp.nodes if n.health == aggregator_pb2.NODE_HEALTH_SERVING}
        return serving == {c.proto for c in pilot.CITIES}

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}


@pytest.fixture(scope="session")
def fault_layout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(tmp_path_factory.mktemp("faults"), enterprises_per_city=ENTERPRISES_PER_CITY, seed=11)


@pytest.fixture(scope="session")
def fault_trust(fault_layout: NetworkLayout) -> TrustStore:
    return TrustStore.load(fault_layout.ca)


@pytest_asyncio.fixture(scope="session")
async def running(fault_layout: NetworkLayout) -> AsyncIterator[FaultNetwork]:
    net = FaultNetwork(fault_layout)
    net.start()
    try:
        await net.wait_healthy(timeout=PATIENCE)
        yield net
    finally:
        for name in list(net.frozen):
            net.thaw(name)
        await asyncio.to_thread(net.stop)


@pytest_asyncio.fixture
async def network(running: FaultNetwork) -> AsyncIterator[FaultNetwork]:
    await running.heal()
    yield running
    await running.heal()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, attempts: int = 200) -> None:
    """Wait until `check` holds, polling; fails after `attempts` polls of 0.1 s."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def chain_entries(
    layout: NetworkLayout, city: City, identity: Identity, trust: TrustStore, endpoint: str | None = None
) -> list[chain_pb2.LedgerEntry]:
    """Every entry on a node's credit-chain log, read over ChainService.GetEntries."""
    target = endpoint or layout.node_endpoint(city)
    async with secure_channel(target, identity, trust, node_server_name(city)) as channel:
        stub = chain_pb2_grpc.ChainServiceStub(channel)
        return [
            chain_pb2.LedgerEntry.FromString(item.entry)
            async for item in stub.GetEntries(chain_pb2.GetEntriesRequest(), timeout=10)
        ]


async def answered(
    layout: NetworkLayout, cities: Sequence[City], query_id: str, identity: Identity, trust: TrustStore
) -> dict[City, int]:
    """How many times each node's log says it answered `query_id`."""

    async def count(city: City) -> int:
        entries = await chain_entries(layout, city, identity, trust)
        return sum(
            1 for e in entries if e.kind == chain_pb2.ENTRY_KIND_QUERY_ANSWERED and e.query_id == query_id
        )

    return dict(zip(cities, await asyncio.gather(*(count(c) for c in cities)), strict=True))


def network_json(layout: NetworkLayout) -> Path:
    return layout.root / "network.json"
