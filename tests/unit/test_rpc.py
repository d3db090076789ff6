"""Server plumbing: mutual TLS only, except a health-only probe port."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.rpc import start_server


async def test_probe_port_serves_health_only_in_plaintext() -> None:
    ca = CertificateAuthority.create()
    handle = await start_server(
        listen="127.0.0.1:0",
        identity=issue_identity(ca, Role.node(pilot.HEFEI)),
        trust=TrustStore(ca.cert),
        register=lambda s: None,
        service_names=["creditnet.v2.CityNodeService"],
        health_listen="127.0.0.1:0",
    )
    try:
        assert handle.health_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.health_port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            # Nothing else is reachable on the probe port.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/creditnet.v2.CityNodeService/GetNodeInfo")(b"", timeout=5)
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


async def _reflect(channel: grpc.aio.Channel, version: str, request: dict[str, str]) -> Message:
    """One ServerReflectionInfo exchange, with the message types of `version` itself."""
    pool = descriptor_pool.Default()
    request_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"grpc.reflection.{version}.ServerReflectionRequest")
    )
    response_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"grpc.reflection.{version}.ServerReflectionResponse")
    )
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )(iter([request_cls(**request)]), timeout=5)
    responses = [r async for r in call]
    assert len(responses) == 1
    response: Message = responses[0]
    return response


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_every_server_answers_reflection_v1_and_v1alpha(version: str) -> None:
    ca = CertificateAuthority.create()
    trust = TrustStore(ca.cert)
    node = Role.node(pilot.HEFEI)
    handle = await start_server(
        listen="127.0.0.1:0",
        identity=issue_identity(ca, node),
        trust=trust,
        register=lambda s: None,
        service_names=["creditnet.v2.CityNodeService"],
    )
    try:
        bank = issue_identity(ca, Role.bank("B0001H231000001"))
        async with secure_channel(f"127.0.0.1:{handle.port}", bank, trust, str(node.server_name)) as ch:
            listed = await _reflect(ch, version, {"list_services": ""})
            names = {s.name for s in listed.list_services_response.service}  # type: ignore[attr-defined]
            assert {
                "creditnet.v2.CityNodeService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= names
            # A client can describe the reflection service it speaks, as grpcurl does first.
            found = await _reflect(
                ch, version, {"file_containing_symbol": f"grpc.reflection.{version}.ServerReflection"}
            )
            files = found.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
            described = descriptor_pb2.FileDescriptorProto.FromString(files[0])
            assert described.package == f"grpc.reflection.{version}"
            assert described.service[0].method[0].input_type == (
                f".grpc.reflection.{version}.ServerReflectionRequest"
            )
    finally:
        await handle.stop(0)
