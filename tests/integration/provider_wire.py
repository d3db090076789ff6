"""SubmitRecords messages built byte by byte, as a provider with its own encoder sends them."""

from __future__ import annotations

from collections.abc import AsyncIterator

from creditnet import pilot, provenance
from creditnet.channels import secure_channel
from creditnet.domain import City
from creditnet.network import NetworkLayout
from creditnet.node.server import SUBMIT_RECORDS
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.v2 import envelope_pb2, records_pb2


def field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field, as any encoder writes it."""
    size, prefix = len(data), b""
    while True:
        byte = size & 0x7F
        size >>= 7
        prefix += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([number << 3 | 2]) + prefix + data


def message(raws: list[bytes], manifest: envelope_pb2.SignedEnvelope | None) -> bytes:
    """A SubmitRecords message of records' bytes exactly as given, with `manifest` if any."""
    body = b"".join(field(1, r) for r in raws)
    return body if manifest is None else body + field(2, manifest.SerializeToString())


def signed_message(provider: Identity, raws: list[bytes]) -> bytes:
    """The records' bytes as they are, with the provider's manifest over them."""
    return message(raws, provenance.sign_batch(provider, raws))


def owned(provider: Identity, *recs: records_pb2.CreditRecord) -> list[bytes]:
    """The records as `provider` signs them: with its provider_id, encoded."""
    for rec in recs:
        rec.provider_id = provenance.provider_id_of(provider.role)
    return provenance.encode(recs)


async def submit_raw(
    layout: NetworkLayout, provider: Identity, trust: TrustStore, *messages: bytes, city: City = pilot.HEFEI
) -> bytes:
    """A SubmitRecords stream of messages as they are on the wire; the response's bytes."""

    async def stream() -> AsyncIterator[bytes]:
        for m in messages:
            yield m

    endpoint = layout.node_endpoint(city)
    async with secure_channel(endpoint, provider, trust, node_server_name(city)) as channel:
        response: bytes = await channel.stream_unary(SUBMIT_RECORDS)(stream(), timeout=30)
        return response
