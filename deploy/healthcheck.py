"""Container health check: does this server answer SERVING over mutual TLS?

The image's HEALTHCHECK runs this inside the container. It reads the server's
own variables (CREDITNET_CERT, CREDITNET_KEY, CREDITNET_CA, CREDITNET_LISTEN),
presents the server's certificate as its client certificate and pins the TLS
name that certificate's role carries, so a pass means the real listener
completes a handshake and grpc.health.v1 reports SERVING, not merely that the
process exists. Exit status 0 when serving, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

import grpc

from creditnet import settings
from creditnet.errors import CreditnetError
from creditnet.health import check
from creditnet.pki import Identity, RoleKind, TrustStore

# Addresses that mean "every interface": reached through loopback from inside.
_WILDCARDS = {"0.0.0.0", "[::]", "*", ""}  # noqa: S104


def target(listen: str) -> str:
    """Where to reach a server that listens on `listen`, from inside its own container."""
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in _WILDCARDS else listen


async def probe(env: Mapping[str, str], timeout: float) -> str:
    """The health status name of the server these variables describe."""
    problems: settings.Problems = []
    cert = settings.CERT.value(env, problems)
    key = settings.KEY.value(env, problems)
    ca = settings.CA.value(env, problems)
    if problems:
        raise settings.SettingsError(problems)
    identity = Identity.load(cert, key)
    kind = identity.role.kind
    if kind is RoleKind.NODE:
        listen_variable = settings.NODE_LISTEN
    elif kind is RoleKind.AGGREGATOR:
        listen_variable = settings.AGGREGATOR_LISTEN
    else:
        raise ValueError(f"{cert} is a {kind.value} certificate, not a server's")
    listen = listen_variable.value(env, problems)
    if problems:
        raise settings.SettingsError(problems)
    server_name = identity.role.server_name
    assert server_name is not None
    return await check(target(listen), server_name, identity, TrustStore.load(ca), timeout=timeout)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        status = asyncio.run(probe(os.environ if env is None else env, args.timeout))
    except grpc.aio.AioRpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except CreditnetError as exc:
        print(f"unhealthy: {exc.reason}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: the server reports {status}", file=sys.stderr)
        return 1
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
