"""What the auditor asks of the network: a node's entries and proofs, witnesses' evidence, certificates.

Every call has a deadline; the answers are checked by :mod:`creditnet.auditor.checks`
and the chain's verifiers, never trusted as they come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

import grpc

from creditnet.auditor.checks import ProofUnavailable
from creditnet.chain.keys import NATIONAL
from creditnet.channels import secure_channel
from creditnet.domain import City
from creditnet.errors import Error
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENTRIES_PER_CALL",
    "EntryOrderError",
    "NodeProofs",
    "ProgressFn",
    "aggregator_channel",
    "close_channels",
    "download_entries",
    "list_evidence",
    "node_channel",
    "pool_certificates",
    "witness_stubs",
]

# GetEntries serves at most 100 000 entries per call; smaller calls keep the
# progress bar moving and a slow link within each call's deadline.
ENTRIES_PER_CALL = 10_000
DEFAULT_TIMEOUT = 30.0

ProgressFn = Callable[[int, int], None]


class NodeProofs:
    """Proofs asked of a node's ChainService."""

    def __init__(self, stub: chain_pb2_grpc.ChainServiceStub, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.stub = stub
        self.timeout = timeout

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        try:
            resp = await self.stub.GetConsistencyProof(
                chain_pb2.GetConsistencyProofRequest(first_size=first, second_size=second),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise ProofUnavailable(f"{exc.code().name}: {exc.details()}") from None
        return list(resp.proof)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        try:
            resp = await self.stub.GetInclusionProof(
                chain_pb2.GetInclusionProofRequest(index=index, tree_size=size), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise ProofUnavailable(f"{exc.code().name}: {exc.details()}") from None
        return list(resp.proof)


class EntryOrderError(Error, ValueError):
    """A node streamed its entries out of order."""


async def download_entries(
    stub: chain_pb2_grpc.ChainServiceStub,
    *,
    expected: int = 0,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[bytes]:
    """Every entry of the log, in order; `progress(done, total)` as they arrive.

    `expected` (the checkpoint size) is the total shown until more arrive.
    Raises :class:`EntryOrderError` if the node sends an index out of order.
    """
    entries: list[bytes] = []
    while True:
        start = len(entries)
        call = stub.GetEntries(
            chain_pb2.GetEntriesRequest(start=start, end=start + ENTRIES_PER_CALL), timeout=timeout
        )
        async for item in call:
            if item.index != len(entries):
                raise EntryOrderError(f"the node sent entry {item.index} where entry {len(entries)} belongs")
            entries.append(item.entry)
            if progress is not None and len(entries) % 1000 == 0:
                progress(len(entries), max(expected, len(entries)))
        if len(entries) - start < ENTRIES_PER_CALL:
            break
    if progress is not None:
        progress(len(entries), max(expected, len(entries)))
    return entries


async def list_evidence(
    stubs: Mapping[str, chain_pb2_grpc.WitnessServiceStub], timeout: float
) -> tuple[dict[str, list[chain_pb2.Evidence]], dict[str, str]]:
    async def one(stub: chain_pb2_grpc.WitnessServiceStub) -> list[chain_pb2.Evidence]:
        resp = await stub.ListEvidence(chain_pb2.ListEvidenceRequest(), timeout=timeout)
        return list(resp.evidence)

    names = list(stubs)
    results = await asyncio.gather(*(one(stubs[n]) for n in names), return_exceptions=True)
    got: dict[str, list[chain_pb2.Evidence]] = {}
    errors: dict[str, str] = {}
    for name, res in zip(names, results, strict=True):
        if isinstance(res, grpc.aio.AioRpcError):
            errors[name] = f"{res.code().name}: {res.details()}"
        elif isinstance(res, BaseException):
            raise res
        else:
            got[name] = res
    return got, errors


async def pool_certificates(
    nodes: Mapping[str, chain_pb2_grpc.ChainServiceStub],
    aggregator: aggregator_pb2_grpc.AggregatorServiceStub | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[bytes]:
    """Every log-key certificate the nodes (and the aggregator) send with their checkpoints.

    A checkpoint is cosigned by witnesses whose certificates should travel
    with it, but any certificate the CA issued for that witness's log key
    verifies it equally; pooling them lets a checkpoint whose node lost some
    certificates (e.g. after a restart) still be checked. Calls that fail
    contribute nothing.
    """

    async def node_certs(stub: chain_pb2_grpc.ChainServiceStub) -> list[bytes]:
        resp = await stub.GetCheckpoint(chain_pb2.GetCheckpointRequest(), timeout=timeout)
        return list(resp.key_certificates)

    async def aggregator_certs(stub: aggregator_pb2_grpc.AggregatorServiceStub) -> list[bytes]:
        resp = await stub.GetNetworkCheckpoint(aggregator_pb2.GetNetworkCheckpointRequest(), timeout=timeout)
        return list(resp.key_certificates)

    calls = [node_certs(s) for s in nodes.values()]
    if aggregator is not None:
        calls.append(aggregator_certs(aggregator))
    pooled: dict[bytes, None] = {}
    for res in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(res, grpc.aio.AioRpcError):
            continue
        if isinstance(res, BaseException):
            raise res
        pooled.update(dict.fromkeys(res))
    return list(pooled)


def node_channel(city: City, endpoint: str, identity: Identity, trust: TrustStore) -> grpc.aio.Channel:
    return secure_channel(endpoint, identity, trust, node_server_name(city))


def witness_stubs(
    channels: Mapping[City, grpc.aio.Channel], aggregator: grpc.aio.Channel | None, *, but: City | None = None
) -> dict[str, chain_pb2_grpc.WitnessServiceStub]:
    """Every witness by its name: the nodes (except `but`, the log audited) and the aggregator."""
    stubs = {c.value: chain_pb2_grpc.WitnessServiceStub(ch) for c, ch in channels.items() if c != but}
    if aggregator is not None:
        stubs[NATIONAL] = chain_pb2_grpc.WitnessServiceStub(aggregator)
    return stubs


def aggregator_channel(
    endpoint: str | None, identity: Identity, trust: TrustStore
) -> grpc.aio.Channel | None:
    if endpoint is None:
        return None
    return secure_channel(endpoint, identity, trust, AGGREGATOR_SERVER_NAME)


async def close_channels(channels: Iterable[grpc.aio.Channel], extra: grpc.aio.Channel | None = None) -> None:
    closing = [ch.close() for ch in channels]
    if extra is not None:
        closing.append(extra.close())
    await asyncio.gather(*closing, return_exceptions=True)
