"""A data provider's client: stream records to its city node in batches, each signed.

Every batch goes with the provider's signed RecordBatch manifest over its
records' exact bytes (docs/protocol.md, "Records signed at their source").
A record without a provider_id gets the provider's own; one naming another
provider is sent as is, and the node refuses its batch (batch.provider_id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence

import grpc

from creditnet import provenance
from creditnet.batches import MAX_BATCH_RECORDS
from creditnet.channels import secure_channel
from creditnet.domain import City
from creditnet.pki import Identity, RoleKind, TrustStore, node_server_name
from creditnet.rpc import INTERNAL_DETAILS
from creditnet.v2 import node_pb2, node_pb2_grpc, records_pb2

__all__ = [
    "signed_request",
    "submit_records",
]

DEFAULT_BATCH = 1000


async def submit_records(
    endpoint: str,
    identity: Identity,
    trust: TrustStore,
    records: Iterable[records_pb2.CreditRecord],
    *,
    batch_size: int = DEFAULT_BATCH,
    timeout: float = 120.0,
) -> node_pb2.SubmitRecordsResponse:
    """Submit `records` to the node of the provider's city; one batch per message.

    Each batch the node acknowledges is committed whole. Re-sending after a
    failure is safe: the node keys records by provider and record_id. A
    stream cut by the node's end (a crash, a kill) fails UNAVAILABLE.
    """
    if not 1 <= batch_size <= MAX_BATCH_RECORDS:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_RECORDS} records, not {batch_size}")
    role = identity.role
    if role.kind is not RoleKind.PROVIDER or role.city is None:
        raise ValueError(f"submitting records needs a data-provider certificate, not {role.uri}")
    city: City = role.city

    async def batches() -> AsyncIterator[node_pb2.SubmitRecordsRequest]:
        batch: list[records_pb2.CreditRecord] = []
        for rec in records:
            batch.append(rec)
            if len(batch) >= batch_size:
                yield await asyncio.to_thread(signed_request, identity, batch)
                batch = []
        if batch:
            yield await asyncio.to_thread(signed_request, identity, batch)

    async with secure_channel(endpoint, identity, trust, node_server_name(city)) as channel:
        stub = node_pb2_grpc.CityNodeServiceStub(channel)
        call = stub.SubmitRecords(timeout=timeout)
        sent = 0
        try:
            async for request in batches():
                await call.write(request)
                sent += 1
            # A close that the broken connection fails raises gRPC's private
            # error type; the call's own status, awaited below, says what happened.
            with contextlib.suppress(Exception):
                await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the node ended the call first (a refusal): awaiting it below says how
        except grpc.aio.AioRpcError as exc:
            raise _stream_cut(exc, sent) from None
        try:
            response: node_pb2.SubmitRecordsResponse = await call
        except grpc.aio.AioRpcError as exc:
            # An intercepted call (every channel checks its server's
            # certificate) reports a write the broken connection failed only
            # here; a node's own INTERNAL says so in its details.
            if exc.details() == INTERNAL_DETAILS:
                raise
            raise _stream_cut(exc, sent) from None
        return response


def signed_request(
    identity: Identity, batch: Sequence[records_pb2.CreditRecord]
) -> node_pb2.SubmitRecordsRequest:
    """One SubmitRecords message: the records (those without a provider_id get the provider's)
    and the provider's signed manifest over their bytes. The caller's messages are not changed."""
    owned = provenance.owned_by(identity, batch)
    manifest = provenance.sign_batch(identity, provenance.encode(owned))
    return node_pb2.SubmitRecordsRequest(records=owned, manifest=manifest)


def _stream_cut(exc: grpc.aio.AioRpcError, sent: int) -> grpc.aio.AioRpcError:
    """The failure of a write, as the caller should see it.

    gRPC answers a write that fails because the connection broke under it
    (the node was killed mid-stream) with INTERNAL, a status that no peer
    sent, when the transport's own UNAVAILABLE has not reached the call yet.
    It is the same event as a connection lost between writes, and worth the
    same retry: resending is idempotent.
    """
    if exc.code() != grpc.StatusCode.INTERNAL:
        return exc
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=(
            f"the connection to the node broke while sending batch {sent + 1}; "
            "no batch of this stream is acknowledged, send them again"
        ),
        debug_error_string=exc.debug_error_string(),
    )
