"""A bare grpc.aio echo server with the network's mutual TLS: the baseline
that a node's signed-query throughput is compared with."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc

from creditnet.pki import Identity, TrustStore
from creditnet.rpc import SERVER_OPTIONS, server_credentials

__all__ = [
    "main",
    "serve",
]

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(listen: str, cert: Path, key: Path, ca: Path) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(listen, server_credentials(Identity.load(cert, key), TrustStore.load(ca)))
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--ca", type=Path, required=True)
    a = p.parse_args()
    asyncio.run(serve(a.listen, a.cert, a.key, a.ca))


if __name__ == "__main__":
    main()
