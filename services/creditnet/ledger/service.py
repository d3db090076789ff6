"""ChainService: anyone in the network may read a node's log; an enterprise
may read its own history (its entries with the salts of their commitments)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf.message import DecodeError

from creditnet import uscc as uscc_mod
from creditnet.dates import ts_from_proto, utcnow
from creditnet.domain import City, distinct_from_proto
from creditnet.envelope import HISTORY_REQUEST_TYPE, EnvelopeVerifier
from creditnet.errors import (
    AlreadyExists,
    CreditnetError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from creditnet.ledger.log import Ledger
from creditnet.pki import RoleKind, TrustStore
from creditnet.query import CLOCK_SKEW, MAX_QUERY_LIFETIME, is_canonical_uuid
from creditnet.rpc import PeerIdentities, refusals
from creditnet.v2 import chain_pb2, chain_pb2_grpc

__all__ = [
    "HISTORY_PAGE",
    "ChainService",
    "SeenRequests",
]

MAX_ENTRIES_PER_CALL = 100_000
HISTORY_RECEIPT_TIMEOUT = 5.0
# Items per streamed history message: ~1 KB each, far below the send limit.
HISTORY_PAGE = 256
HISTORY_KINDS = (
    chain_pb2.ENTRY_KIND_QUERY_ANSWERED,
    chain_pb2.ENTRY_KIND_QUERY_REFUSED,
    chain_pb2.ENTRY_KIND_CONSENT_REVOKED,
)


class ChainService(chain_pb2_grpc.ChainServiceServicer):
    def __init__(self, *, city: City, ledger: Ledger, trust: TrustStore) -> None:
        self.city = city
        self.ledger = ledger
        self.verifier = EnvelopeVerifier(trust)
        self.peers = PeerIdentities(trust)
        self._seen_requests = SeenRequests()

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

    async def GetHistory(
        self, request: chain_pb2.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chain_pb2.GetHistoryResponse]:
        try:
            uscc, msg = self._history_request(request, context)
            pages = self._history(uscc, msg)
            async for page in pages:
                yield page
        except CreditnetError as exc:
            await context.abort(exc.code, exc.reason)

    def _history_request(
        self, request: chain_pb2.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> tuple[str, chain_pb2.HistoryRequest]:
        """Every check of docs/protocol.md, "History", in its order."""
        caller = self.peers.role(context)
        now = utcnow()
        verified = self.verifier.verify(request.request, HISTORY_REQUEST_TYPE, what="history", at=now)
        msg = chain_pb2.HistoryRequest()
        try:
            msg.ParseFromString(verified.payload)
            uscc = uscc_mod.canonical(msg.enterprise_uscc)
            distinct_from_proto(_history_kind, msg.kinds, len(HISTORY_KINDS), "kinds")
        except (DecodeError, ValueError):
            raise InvalidArgument("history.malformed", "the history request is malformed") from None
        if not is_canonical_uuid(msg.request_id):
            raise InvalidArgument(
                "history.malformed", "request_id must be a UUID in canonical lower-case 8-4-4-4-12 form"
            )
        signer = verified.signer.role
        if signer.kind is not RoleKind.ENTERPRISE or signer.subject != uscc:
            raise PermissionDenied("history.signer", "only the enterprise itself may read its history")
        if caller.kind is not RoleKind.ENTERPRISE or caller.subject != uscc:
            # A signed request is not a bearer token: whoever holds a copy
            # (another node, a bank, a relay) may not read the history with it.
            raise PermissionDenied(
                "history.caller", "a history goes only to the enterprise itself: call with its certificate"
            )
        if msg.city != self.city.proto:
            raise PermissionDenied(
                "history.city", f"this history request is not for the {self.city.value} node"
            )
        issued = ts_from_proto(msg.issued_at)
        if not (now - MAX_QUERY_LIFETIME <= issued <= now + CLOCK_SKEW):
            raise FailedPrecondition("history.stale", "the history request is too old or from the future")
        if not self._seen_requests.add(msg.request_id, issued + MAX_QUERY_LIFETIME + CLOCK_SKEW, now):
            raise AlreadyExists("history.replay", "this history request was used already; sign a new one")
        return uscc, msg

    def _history_page(
        self,
        uscc: str,
        size: int,
        kinds: Sequence[int],
        msg: chain_pb2.HistoryRequest,
        after: int | None,
        limit: int,
    ) -> list[tuple[int, bytes, bytes, list[bytes]]]:
        rows = self.ledger.log.history_page(
            uscc, size=size, kinds=kinds, newest_first=msg.newest_first, after=after, limit=limit
        )
        return [(i, e, salt, self.ledger.log.tree.inclusion_proof(i, size)) for i, e, salt in rows]

    async def _history(
        self, uscc: str, msg: chain_pb2.HistoryRequest
    ) -> AsyncIterator[chain_pb2.GetHistoryResponse]:
        last = await asyncio.to_thread(self.ledger.log.last_index_of, uscc)
        pub = self.ledger.published
        if last is not None:
            pub = await self.ledger.wait_published(last, HISTORY_RECEIPT_TIMEOUT)
            if pub is None:
                raise FailedPrecondition(
                    "chain.unpublished", "the latest entries are not cosigned yet; retry"
                )
        head = chain_pb2.GetHistoryResponse(city=self.city.proto)
        if pub is None:
            # Nothing was ever logged here: an empty history, no checkpoint.
            yield head
            return
        counts, refused = await asyncio.to_thread(self.ledger.log.history_counts, uscc, pub.size)
        head.summary.CopyFrom(_summary(counts, refused))
        head.checkpoint = pub.note
        head.key_certificates.extend(pub.key_certificates)
        kinds = list(msg.kinds) or list(HISTORY_KINDS)
        left = msg.limit or None
        after: int | None = None
        page = head
        while left is None or left > 0:
            want = HISTORY_PAGE if left is None else min(HISTORY_PAGE, left)
            # One thread hop per page: the rows and every item's proof read together.
            rows = await asyncio.to_thread(self._history_page, uscc, pub.size, kinds, msg, after, want)
            for idx, entry, salt, proof in rows:
                page.items.add(
                    salt=salt,
                    receipt=chain_pb2.Receipt(
                        index=idx, entry=entry, tree_size=pub.size, inclusion_proof=proof
                    ),
                )
            yield page
            if len(rows) < want:
                return
            after = rows[-1][0]
            if left is not None:
                left -= len(rows)
            page = chain_pb2.GetHistoryResponse(city=self.city.proto)


class SeenRequests:
    """Request ids served, kept until their request could no longer be accepted anyway."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._until: dict[str, dt.datetime] = {}

    def add(self, request_id: str, until: dt.datetime, now: dt.datetime) -> bool:
        """Remember `request_id`; False if it was seen before (or too many are remembered)."""
        if request_id in self._until:
            return False
        if len(self._until) >= self.capacity:
            self._until = {k: v for k, v in self._until.items() if v >= now}
            if len(self._until) >= self.capacity:
                raise ResourceExhausted("history.busy", "too many history requests in flight; retry shortly")
        self._until[request_id] = until
        return True


def _history_kind(value: int) -> int:
    if value not in HISTORY_KINDS:
        raise ValueError(f"entry kind {value} is not part of a history")
    return value


def _summary(counts: dict[int, int], refused: list[bytes]) -> chain_pb2.HistorySummary:
    by_bank: dict[str, list[chain_pb2.LedgerEntry]] = {}
    for data in refused:
        entry = chain_pb2.LedgerEntry.FromString(data)
        by_bank.setdefault(entry.bank_code, []).append(entry)
    summary = chain_pb2.HistorySummary(
        answered=counts.get(chain_pb2.ENTRY_KIND_QUERY_ANSWERED, 0),
        refused=counts.get(chain_pb2.ENTRY_KIND_QUERY_REFUSED, 0),
        revoked=counts.get(chain_pb2.ENTRY_KIND_CONSENT_REVOKED, 0),
    )
    for bank in sorted(by_bank):
        entries = by_bank[bank]
        row = summary.refused_by_bank.add(bank_code=bank, refused=len(entries))
        row.first.CopyFrom(min((e.time for e in entries), key=lambda t: (t.seconds, t.nanos)))
        row.last.CopyFrom(max((e.time for e in entries), key=lambda t: (t.seconds, t.nanos)))
    return summary
