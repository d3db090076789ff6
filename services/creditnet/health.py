"""Waiting for servers to report SERVING over standard gRPC health checking."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet.channels import secure_channel
from creditnet.pki import Identity, TrustStore

__all__ = [
    "check",
    "wait_serving",
]


async def check(
    endpoint: str, server_name: str, identity: Identity, trust: TrustStore, timeout: float = 2.0
) -> str:
    """Return the health status name, or raise grpc.aio.AioRpcError."""
    async with secure_channel(endpoint, identity, trust, server_name) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


async def wait_serving(
    endpoint: str,
    server_name: str,
    identity: Identity,
    ca: Path,
    *,
    timeout: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    trust = TrustStore.load(ca)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{server_name} exited with code {process.returncode} before serving; see its log"
            )
        try:
            if await check(endpoint, server_name, identity, trust, timeout=1.0) == "SERVING":
                return
        except grpc.aio.AioRpcError as exc:
            last = exc.code().name
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{server_name} at {endpoint} is not serving after {timeout:.0f}s ({last})")
