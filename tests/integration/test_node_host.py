"""A node host runs several whole city nodes in one process, or none (services/creditnet/node/host.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from creditnet import pilot
from creditnet.config import NodeConfig
from creditnet.network import provision
from creditnet.node.host import start_nodes


def _free(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    with socket.socket() as sock:
        # Connections the nodes closed may linger in TIME_WAIT; only a listener holds the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


async def test_a_host_serves_each_node_on_its_own_port_and_stops_them_all(tmp_path: Path) -> None:
    layout = provision(tmp_path / "net", cities=(pilot.HEFEI, pilot.SHANGHAI), enterprises_per_city=2)
    configs = [NodeConfig.load(layout.node_config(c)) for c in layout.cities]
    host = await start_nodes(configs)
    try:
        assert [n.config.city for n in host.nodes] == sorted(c.city for c in configs)
        assert not any(_free(c.listen) for c in configs)
    finally:
        await host.stop(grace=0)
    assert host.nodes == [] and all(_free(c.listen) for c in configs)


async def test_a_host_that_cannot_start_one_node_leaves_none_running(tmp_path: Path) -> None:
    layout = provision(tmp_path / "net", cities=(pilot.HEFEI, pilot.SHANGHAI), enterprises_per_city=2)
    configs = [NodeConfig.load(layout.node_config(c)) for c in layout.cities]
    # Another program holds the second node's port: that node cannot start.
    host, port = configs[1].listen.rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        with pytest.raises(Exception):  # noqa: B017 - whatever start_node raises for a taken port
            await start_nodes(configs)
        # The node that did start was stopped again: its port is free.
        assert _free(configs[0].listen)


async def test_a_host_refuses_one_city_twice(tmp_path: Path) -> None:
    layout = provision(tmp_path / "net", cities=(pilot.HEFEI,), enterprises_per_city=2)
    config = NodeConfig.load(layout.node_config(pilot.HEFEI))
    with pytest.raises(ValueError, match="each city once"):
        await start_nodes([config, config])
    assert _free(config.listen)
