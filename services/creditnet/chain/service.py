"""ChainService: anyone in the network may read a node's log; an enterprise
may read its own history (its entries with the salts of their commitments)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from creditnet import uscc as uscc_mod
from creditnet.chain.ledger import Ledger
from creditnet.dates import ts_from_proto, utcnow
from creditnet.domain import City
from creditnet.envelope import HISTORY_REQUEST_TYPE, EnvelopeVerifier
from creditnet.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from creditnet.pki import RoleKind, TrustStore
from creditnet.query import CLOCK_SKEW, MAX_QUERY_LIFETIME
from creditnet.rpc import PeerIdentities, refusals
from creditnet.v1 import chain_pb2, chain_pb2_grpc

MAX_ENTRIES_PER_CALL = 100_000
HISTORY_RECEIPT_TIMEOUT = 5.0


class ChainService(chain_pb2_grpc.ChainServiceServicer):
    def __init__(self, *, city: City, ledger: Ledger, trust: TrustStore) -> None:
        self.city = city
        self.ledger = ledger
        self.verifier = EnvelopeVerifier(trust)
        self.peers = PeerIdentities(trust)

    def _published(self) -> tuple[int, str, list[bytes]]:
        pub = self.ledger.published
        if pub is None:
            raise FailedPrecondition("chain.unpublished", "no cosigned checkpoint has been published yet")
        return pub.size, pub.note, pub.key_certificates

    @refusals
    async def GetCheckpoint(
        self, request: chain_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.GetCheckpointResponse:
        self.peers.role(context)
        _, note, certs = self._published()
        return chain_pb2.GetCheckpointResponse(checkpoint=note, key_certificates=certs)

    async def GetEntries(
        self, request: chain_pb2.GetEntriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chain_pb2.GetEntriesResponse]:
        try:
            self.peers.role(context)
        except PermissionDenied as exc:
            await context.abort(exc.code, exc.reason)
        size = self.ledger.committed_size
        end = min(request.end or size, size)
        if request.start > end or end - request.start > MAX_ENTRIES_PER_CALL:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chain.range: ask for at most {MAX_ENTRIES_PER_CALL} entries within [0, {size})",
            )
        start = request.start
        while start < end:
            chunk = await asyncio.to_thread(self.ledger.log.entries, start, min(start + 1000, end))
            for idx, entry in chunk:
                yield chain_pb2.GetEntriesResponse(index=idx, entry=entry)
            start += 1000

    @refusals
    async def GetConsistencyProof(
        self, request: chain_pb2.GetConsistencyProofRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.GetConsistencyProofResponse:
        self.peers.role(context)
        if not 0 <= request.first_size <= request.second_size <= self.ledger.committed_size:
            raise InvalidArgument("chain.range", "sizes must satisfy 0 ≤ first ≤ second ≤ the log's size")
        proof = await asyncio.to_thread(
            self.ledger.log.tree.consistency_proof, request.first_size, request.second_size
        )
        return chain_pb2.GetConsistencyProofResponse(proof=proof)

    @refusals
    async def GetInclusionProof(
        self, request: chain_pb2.GetInclusionProofRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.GetInclusionProofResponse:
        self.peers.role(context)
        if not 0 <= request.index < request.tree_size <= self.ledger.committed_size:
            raise InvalidArgument("chain.range", "need 0 ≤ index < tree_size ≤ the log's size")
        proof = await asyncio.to_thread(
            self.ledger.log.tree.inclusion_proof, request.index, request.tree_size
        )
        return chain_pb2.GetInclusionProofResponse(proof=proof)

    @refusals
    async def GetHistory(
        self, request: chain_pb2.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.GetHistoryResponse:
        self.peers.role(context)
        now = utcnow()
        verified = self.verifier.verify(request.request, HISTORY_REQUEST_TYPE, what="history", at=now)
        msg = chain_pb2.HistoryRequest()
        try:
            msg.ParseFromString(verified.payload)
            uscc = uscc_mod.validate(msg.enterprise_uscc)
        except (DecodeError, ValueError):
            raise InvalidArgument("history.malformed", "the history request is malformed") from None
        signer = verified.signer.role
        if signer.kind is not RoleKind.ENTERPRISE or signer.subject != uscc:
            raise PermissionDenied("history.signer", "only the enterprise itself may read its history")
        issued = ts_from_proto(msg.issued_at)
        if not (now - MAX_QUERY_LIFETIME <= issued <= now + CLOCK_SKEW):
            raise FailedPrecondition("history.stale", "the history request is too old or from the future")
        rows = await asyncio.to_thread(self.ledger.log.entries_of, uscc)
        resp = chain_pb2.GetHistoryResponse(city=self.city.proto)
        if not rows:
            return resp
        pub = await self.ledger.wait_published(rows[-1][0], HISTORY_RECEIPT_TIMEOUT)
        if pub is None:
            raise FailedPrecondition("chain.unpublished", "the latest entries are not cosigned yet; retry")
        for idx, entry, salt in rows:
            proof = await asyncio.to_thread(self.ledger.log.tree.inclusion_proof, idx, pub.size)
            resp.items.add(
                salt=salt,
                receipt=chain_pb2.Receipt(
                    index=idx,
                    entry=entry,
                    tree_size=pub.size,
                    inclusion_proof=proof,
                    checkpoint=pub.note,
                    key_certificates=pub.key_certificates,
                ),
            )
        return resp
