"""`network up` restarts a server that died, ever less often while it keeps dying."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from creditnet import pilot
from creditnet.domain import City
from creditnet.network import (
    RESTART_BACKOFF,
    RESTART_BACKOFF_MAX,
    RESTART_STABLE,
    NetworkLayout,
    ProcessNetwork,
)


@dataclass
class StandIns(ProcessNetwork):
    """Real processes standing in for the servers: one that exits at once, or one that runs."""

    exits: bool = True
    spawned: list[str] = field(default_factory=list)

    def start_node(self, city: City) -> None:
        command = ["sh", "-c", "exit 3"] if self.exits else ["sleep", "60"]
        self.procs[city.value] = subprocess.Popen(command)
        self.spawned.append(city.value)


@pytest.fixture
def net(tmp_path: Path) -> StandIns:
    return StandIns(NetworkLayout(tmp_path, {}))


def test_a_dead_server_is_restarted_after_a_backoff_that_doubles(net: StandIns) -> None:
    try:
        net.start_node(pilot.HEFEI)
        net.procs["340100"].wait(30)
        delays = []
        now = 0.0
        for _ in range(9):
            restarted = net.supervise(now)
            assert [(r.name, r.exit_code) for r in restarted] == [("340100", 3)]
            delays.append(restarted[0].next_delay)
            # Not again before its delay is over, however often asked.
            net.procs["340100"].wait(30)
            assert net.supervise(now + restarted[0].next_delay / 2) == []
            now += restarted[0].next_delay
        assert delays[:3] == [RESTART_BACKOFF, 2 * RESTART_BACKOFF, 4 * RESTART_BACKOFF]
        assert delays[-1] == RESTART_BACKOFF_MAX
        assert len(net.spawned) == 10
    finally:
        net.stop()


def test_a_server_that_stays_up_is_back_to_the_first_delay(net: StandIns) -> None:
    try:
        net.start_node(pilot.HEFEI)
        net.procs["340100"].wait(30)
        assert net.supervise(0.0)[0].attempt == 1
        net.procs["340100"].wait(30)
        assert net.supervise(RESTART_BACKOFF)[0].attempt == 2
        net.exits = False
        net.procs["340100"].wait(30)
        now = RESTART_BACKOFF * 3
        assert net.supervise(now)[0].attempt == 3
        # Running: nothing to do, and after RESTART_STABLE its record is clean.
        assert net.supervise(now + RESTART_STABLE) == []
        net.procs["340100"].kill()
        net.procs["340100"].wait(30)
        again = net.supervise(now + RESTART_STABLE + 0.1)
        assert [(r.attempt, r.next_delay) for r in again] == [(1, RESTART_BACKOFF)]
    finally:
        net.stop()


def _write_cities(root: Path, codes: list[str]) -> None:
    cities = {c: {"endpoint": "127.0.0.1:1", "config": f"nodes/{c}/node.json"} for c in codes}
    (root / "network.json").write_text(json.dumps({"cities": cities}), encoding="utf-8")


def test_follow_starts_admitted_cities_and_stops_removed_ones_only(tmp_path: Path) -> None:
    """`network up` re-reads network.json: a city added gets its node, a city removed loses it
    (and is not restarted); the other servers' processes are left alone."""
    codes = [c.value for c in pilot.CITIES]
    _write_cities(tmp_path, codes)
    net = StandIns(NetworkLayout.load(tmp_path), exits=False)
    try:
        for c in pilot.CITIES:
            net.start_node(c)
        before = dict(net.procs)
        assert net.follow().started == () and net.procs == before

        _write_cities(tmp_path, [*codes, "320500"])
        change = net.follow()
        assert change.started == (City("320500"),) and change.stopped == ()
        assert all(net.procs[name] is proc for name, proc in before.items())

        suzhou = net.procs["320500"]
        _write_cities(tmp_path, codes)
        change = net.follow()
        assert change.stopped == (City("320500"),) and "320500" not in net.procs
        assert suzhou.poll() is not None
        assert net.supervise() == [] and "320500" not in net.procs
        assert all(net.procs[name] is proc and proc.poll() is None for name, proc in before.items())

        (tmp_path / "network.json").write_text("{", encoding="utf-8")
        assert net.follow().started == () and net.procs == before
    finally:
        net.stop()
