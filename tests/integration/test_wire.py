"""What arrives on the wire before any check: bytes that are not the method's request message."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.handlers import MALFORMED_RULE
from creditnet.network import InProcessNetwork, NetworkLayout
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2, chain_pb2, node_pb2

# Not a protobuf message at all (a varint that never ends), and a message
# nested deeper than any parser follows (start-group tags of an unknown field).
GARBAGE = b"\xff" * 12
NESTED = b"\x7b" * 5000 + b"\x7c" * 5000
NODE_SERVICES = [
    node_pb2.DESCRIPTOR.services_by_name["CityNodeService"],
    chain_pb2.DESCRIPTOR.services_by_name["ChainService"],
    chain_pb2.DESCRIPTOR.services_by_name["WitnessService"],
]
AGGREGATOR_SERVICES = [
    aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"],
    chain_pb2.DESCRIPTOR.services_by_name["WitnessService"],
]
# The services every server runs besides its own, streaming both ways among them.
COMMON_METHODS = [
    ("/grpc.health.v1.Health/Check", False, False),
    ("/grpc.health.v1.Health/Watch", False, True),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True),
]


def methods(services: list[ServiceDescriptor]) -> list[tuple[str, bool, bool]]:
    """Every method of `services` and the common ones: path, client streaming, server streaming."""
    found = [
        (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for service in services
        for method in service.methods
    ]
    return [*found, *COMMON_METHODS]


async def send_raw(
    channel: grpc.aio.Channel, path: str, client_streaming: bool, server_streaming: bool, raw: bytes
) -> None:
    """One call of `path` whose request is `raw`, bytes as they are; returns once its responses are read."""

    async def once() -> AsyncIterator[bytes]:
        yield raw

    if client_streaming and server_streaming:
        async for _ in channel.stream_stream(path)(once(), timeout=10):
            pass
    elif client_streaming:
        await channel.stream_unary(path)(once(), timeout=10)
    elif server_streaming:
        async for _ in channel.unary_stream(path)(raw, timeout=10):
            pass
    else:
        await channel.unary_unary(path)(raw, timeout=10)


async def refusals_of_undecodable_requests(
    channel: grpc.aio.Channel, calls: list[tuple[str, bool, bool]]
) -> dict[str, tuple[str, str]]:
    """Every call answered otherwise than INVALID_ARGUMENT request.malformed, with its code and details."""
    wrong: dict[str, tuple[str, str]] = {}
    for path, client_streaming, server_streaming in calls:
        for raw in (GARBAGE, NESTED):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await send_raw(channel, path, client_streaming, server_streaming, raw)
            code, details = err.value.code(), err.value.details() or ""
            if code != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith(f"{MALFORMED_RULE}: "):
                wrong[f"{path} {raw[:1]!r}"] = (code.name, details)
            assert "DecodeError" not in details and "class" not in details
    return wrong


async def test_undecodable_requests_are_refused_as_malformed_on_every_method_of_every_server(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    bank = layout.bank()
    city = pilot.NANJING
    # A provider of the city: SubmitRecords checks its caller before it reads the stream.
    provider = layout.provider(city)
    async with secure_channel(layout.node_endpoint(city), provider, trust, node_server_name(city)) as channel:
        assert await refusals_of_undecodable_requests(channel, methods(NODE_SERVICES)) == {}
    target = layout.aggregator_endpoint
    async with secure_channel(target, bank, trust, AGGREGATOR_SERVER_NAME) as channel:
        assert await refusals_of_undecodable_requests(channel, methods(AGGREGATOR_SERVICES)) == {}
