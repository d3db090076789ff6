"""The port a server with worker processes reserves before its workers bind it."""

from __future__ import annotations

import socket

import pytest

from creditnet.workerpool import reserve_port


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
