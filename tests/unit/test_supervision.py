"""`network up` restarts a server that died, ever less often while it keeps dying."""

from __future__ import annotations

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
