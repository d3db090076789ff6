"""A client's check of its server's certificate is read again after a call found the server unavailable.

The server may have come back with another certificate (a revoked one among
them), so the next call must not go by what was read before
(`creditnet.server_certs`). Unary calls and unary-to-stream ones (the bank's
calls to the aggregator are made so, to see their headers early) alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2

from creditnet.channels import CHANNEL_OPTIONS
from creditnet.network import NetworkLayout
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore
from creditnet.rpc import start_server
from creditnet.server_certs import ServerCertificate, server_certificate_interceptors

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


async def unary(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(
        CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    await call(health_pb2.HealthCheckRequest(), timeout=5)


async def unary_to_stream(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(
        WATCH,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(health_pb2.HealthCheckRequest(), timeout=5)
    try:
        await call.read()
    finally:
        call.cancel()


@pytest.mark.parametrize("make_call", [unary, unary_to_stream], ids=["unary", "unary-to-stream"])
async def test_a_call_that_finds_the_server_unavailable_has_its_certificate_read_again(
    layout: NetworkLayout, make_call: Callable[[grpc.aio.Channel], Awaitable[None]]
) -> None:
    trust = TrustStore.load(layout.ca)
    # A revocation check: certificates are read (it holds a directory), none is revoked.
    trust.revocation = lambda serial, spki: False
    bank = layout.bank()
    handle = await start_server(
        listen="127.0.0.1:0",
        identity=layout.identity("aggregator", "national"),
        trust=trust,
        register=lambda server: None,
        service_names=[],
    )
    endpoint = f"127.0.0.1:{handle.port}"
    interceptors = server_certificate_interceptors(endpoint, bank, trust, AGGREGATOR_SERVER_NAME)
    server: ServerCertificate = interceptors[0].server  # type: ignore[attr-defined]
    creds = grpc.ssl_channel_credentials(trust.ca_pem, bank.key_pem, bank.cert_pem)
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", AGGREGATOR_SERVER_NAME)]
    async with grpc.aio.secure_channel(
        endpoint, creds, options=options, interceptors=interceptors
    ) as channel:
        try:
            await make_call(channel)
            assert server._verified is not None, "the certificate was read before the call"
        finally:
            await handle.stop(0)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await make_call(channel)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        for _ in range(100):  # a bound against hanging: the watch ends with the call
            if server._verified is None:
                break
            await asyncio.sleep(0.05)
        assert server._verified is None, "the next call would go by the certificate read before"
