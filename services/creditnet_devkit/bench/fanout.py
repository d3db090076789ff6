"""A crypto-free fan-out relay: the baseline a federated query's throughput is compared with.

Shaped like the aggregator and nothing more: a grpc.aio server with the
network's mutual TLS (the aggregator's certificate) that, for each call,
calls every echo server concurrently (`creditnet_devkit.bench.echo`, one per city,
each with that city's node certificate, over mutual TLS as the aggregator's
client identity) and answers with their replies concatenated. No
signatures, no consent, no credit chain, no store: what remains is the gRPC,
TLS and asyncio cost of one call in and five calls out.

``python -m creditnet_devkit.bench.fanout --listen … --cert … --key … --ca …
--echo 310000=127.0.0.1:PORT …`` (``make bench`` starts it).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc

from creditnet.channels import secure_channel
from creditnet.domain import City
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.rpc import SERVER_OPTIONS, server_credentials
from creditnet_devkit.bench.echo import METHOD as ECHO_METHOD

__all__ = [
    "CALL_TIMEOUT",
    "ECHO_METHOD",
    "METHOD",
    "SERVER_OPTIONS",
    "main",
    "parse_echo",
    "serve",
]

METHOD = "/bench.Fanout/Relay"
# Bounds each echo call as the aggregator's default bounds a node call.
CALL_TIMEOUT = 10.0


async def serve(listen: str, cert: Path, key: Path, ca: Path, echoes: dict[City, str]) -> None:
    identity = Identity.load(cert, key)
    trust = TrustStore.load(ca)
    channels = [secure_channel(ep, identity, trust, node_server_name(city)) for city, ep in echoes.items()]
    calls = [ch.unary_unary(ECHO_METHOD) for ch in channels]

    async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        replies = await asyncio.gather(*(call(request, timeout=CALL_TIMEOUT) for call in calls))
        return b"".join(replies)

    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Fanout", {"Relay": grpc.unary_unary_rpc_method_handler(relay)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(listen, server_credentials(identity, trust))
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        for ch in channels:
            await ch.close()


def parse_echo(spec: str) -> tuple[City, str]:
    """``310000=127.0.0.1:7001`` → (Shanghai, "127.0.0.1:7001")."""
    city, sep, endpoint = spec.partition("=")
    if not sep or not endpoint:
        raise argparse.ArgumentTypeError(f"expected CITY=HOST:PORT, got {spec!r}")
    return City.parse(city), endpoint


def main() -> None:
    p = argparse.ArgumentParser(description="crypto-free fan-out relay to echo servers (benchmark baseline)")
    p.add_argument("--listen", required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--echo", type=parse_echo, action="append", required=True, help="CITY=HOST:PORT")
    a = p.parse_args()
    asyncio.run(serve(a.listen, a.cert, a.key, a.ca, dict(a.echo)))


if __name__ == "__main__":
    main()
