"""The port a server with worker processes reserves before its workers bind it."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from creditnet.workerpool import private_directory, reserve_port


def _time_wait_port() -> int:
    """A port nothing listens on any more, whose server side closed a connection first (TIME_WAIT)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first: its end waits in TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_a_restarted_server_reserves_its_port_while_the_last_ones_connections_linger() -> None:
    port = _time_wait_port()
    # A plain bind of the port fails now, as a socket without SO_REUSEADDR would.
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    sock, listen = reserve_port(f"127.0.0.1:{port}")
    try:
        assert listen == f"127.0.0.1:{port}"
        # And the workers bind it beside the reservation.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
    finally:
        sock.close()


def test_a_port_another_server_listens_on_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        with pytest.raises(OSError):
            reserve_port(f"127.0.0.1:{port}")


def test_port_zero_reserves_a_port_of_its_own() -> None:
    sock, listen = reserve_port("127.0.0.1:0")
    try:
        host, _, port = listen.rpartition(":")
        assert host == "127.0.0.1" and int(port) == sock.getsockname()[1] > 0
    finally:
        sock.close()


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_private_directory_is_the_users_alone_and_sweeps_what_killed_servers_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # Left by a server killed with SIGKILL: its socket and the workers' config (a password).
    stale = tmp_path / "creditnet-340100-old"
    stale.mkdir(mode=0o700)
    (stale / "owner.pid").write_text(str(_dead_pid()))
    (stale / "node.json").write_text('{"database_url": "postgresql://u:secret@db/x"}')
    running = tmp_path / "creditnet-340100-running"
    running.mkdir(mode=0o700)
    (running / "owner.pid").write_text(str(os.getpid()))
    unowned = tmp_path / "creditnet-340100-unowned"  # not one of ours (or one being made)
    unowned.mkdir()
    other_city = tmp_path / "creditnet-310000-old"
    other_city.mkdir()
    (other_city / "owner.pid").write_text(str(_dead_pid()))

    private = private_directory("creditnet-340100-")
    try:
        path = Path(private.name)
        assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o700
        assert (path / "owner.pid").read_text() == str(os.getpid())
        assert not stale.exists()
        assert running.exists() and unowned.exists() and other_city.exists()
    finally:
        private.cleanup()
