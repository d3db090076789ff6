"""Server plumbing: mutual TLS only, except a health-only probe port."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet.domain import City
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.rpc import start_server


async def test_probe_port_serves_health_only_in_plaintext() -> None:
    ca = CertificateAuthority.create()
    handle = await start_server(
        listen="127.0.0.1:0",
        identity=issue_identity(ca, Role.node(City.HEFEI)),
        trust=TrustStore(ca.cert),
        register=lambda s: None,
        service_names=["creditnet.v1.CityNodeService"],
        health_listen="127.0.0.1:0",
    )
    try:
        assert handle.health_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.health_port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            # Nothing else is reachable on the probe port.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/creditnet.v1.CityNodeService/GetNodeInfo")(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The service port itself refuses plaintext.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await handle.health.enter_graceful_shutdown()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.health_port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await handle.stop(0)
