"""An enterprise's own credit-chain history: who looked at its data, where, why.

The enterprise signs one HistoryRequest per city node (bound to that node,
used once) and calls every node in parallel over mutual TLS with its own
certificate: a history goes to nobody else. Each node streams a summary of
every entry naming the enterprise, then the entries themselves with the salts
of their commitments; every item is checked here before it is shown: its
receipt (inclusion in a checkpoint signed by that city's log key and cosigned
by a witness quorum) and that its commitment is to this enterprise with that
salt. When every item was asked for, the summary must match them. A node
whose answer fails any check is reported as failed, and none of its items
are kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from creditnet import uscc as uscc_mod
from creditnet.auditor.remote import pool_certificates
from creditnet.chain.receipts import DEFAULT_QUORUM, ReceiptError, check_commitment, verify_receipt
from creditnet.channels import secure_channel
from creditnet.dates import ts_from_proto, ts_to_proto, utcnow
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import HISTORY_REQUEST_TYPE, sign
from creditnet.errors import Error
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, RoleKind, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc, envelope_pb2

__all__ = [
    "BankRefusals",
    "History",
    "HistoryError",
    "HistoryItem",
    "NodeSummary",
    "Outcome",
    "build_request",
    "fetch_history",
    "verify_history",
]

DEFAULT_TIMEOUT = 15.0


class HistoryError(Error, ValueError):
    """A history request that cannot be made, or a node's answer that does not verify."""


class Outcome(enum.Enum):
    ANSWERED = "answered"
    REFUSED = "refused"
    REVOKED = "revoked"


_OUTCOMES = {
    chain_pb2.ENTRY_KIND_QUERY_ANSWERED: Outcome.ANSWERED,
    chain_pb2.ENTRY_KIND_QUERY_REFUSED: Outcome.REFUSED,
    chain_pb2.ENTRY_KIND_CONSENT_REVOKED: Outcome.REVOKED,
}
_KINDS = {o: k for k, o in _OUTCOMES.items()}


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One verified access to (or event about) the enterprise, at one city node."""

    city: City
    index: int
    time: dt.datetime
    outcome: Outcome
    bank: str
    purpose: Purpose | None
    categories: tuple[Category, ...]
    query_id: str
    consent_id: str
    # For refusals: "<gRPC code name> <rule id>", as the node logged it.
    refusal: str
    records_disclosed: int
    # The cosigned checkpoint the receipt proved the entry against.
    checkpoint_size: int
    witnesses: tuple[str, ...]

    @property
    def kind(self) -> str:
        return {
            Outcome.ANSWERED: "query_answered",
            Outcome.REFUSED: "query_refused",
            Outcome.REVOKED: "consent_revoked",
        }[self.outcome]

    @property
    def refusal_rule(self) -> str:
        """The rule that refused the query (e.g. ``consent.purpose_mismatch``), or ""."""
        return self.refusal.partition(" ")[2]

    def to_json(self) -> dict[str, Any]:
        return {
            "city": self.city.value,
            "index": self.index,
            "time": self.time.isoformat(),
            "kind": self.kind,
            "outcome": self.outcome.value,
            "bank": self.bank,
            "purpose": self.purpose.value if self.purpose else None,
            "categories": [c.value for c in self.categories],
            "query_id": self.query_id,
            "consent_id": self.consent_id,
            "refusal": self.refusal,
            "records_disclosed": self.records_disclosed,
            "checkpoint_size": self.checkpoint_size,
            "witnesses": list(self.witnesses),
        }


@dataclass(frozen=True, slots=True)
class BankRefusals:
    """Queries of one bank that named the enterprise and were refused, at one node."""

    bank: str
    refused: int
    first: dt.datetime
    last: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "refused": self.refused,
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """What one node counts of every entry naming the enterprise, whatever was asked for.

    `verified` is True when every item was fetched and the counts match them;
    otherwise the counts are the node's word (its items still verify one by one).
    """

    answered: int
    refused: int
    revoked: int
    refused_by_bank: tuple[BankRefusals, ...]
    verified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "answered": self.answered,
            "refused": self.refused,
            "revoked": self.revoked,
            "refused_by_bank": [b.to_json() for b in self.refused_by_bank],
            "verified": self.verified,
        }


@dataclass(frozen=True, slots=True)
class History:
    uscc: str
    # Verified items of every node that answered, oldest first (newest first
    # when asked so).
    items: tuple[HistoryItem, ...]
    # Nodes that could not be asked, or whose answer did not verify, and why.
    failures: Mapping[City, str] = field(default_factory=dict)
    # Each answering node's summary of every entry naming the enterprise.
    summaries: Mapping[City, NodeSummary] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "enterprise": self.uscc,
            "items": [i.to_json() for i in self.items],
            "summaries": {c.value: s.to_json() for c, s in self.summaries.items()},
            "failures": {c.value: why for c, why in self.failures.items()},
        }


def build_request(
    enterprise: Identity,
    city: City,
    uscc: str | None = None,
    *,
    newest_first: bool = False,
    limit: int = 0,
    outcomes: Sequence[Outcome] = (),
) -> envelope_pb2.SignedEnvelope:
    """A HistoryRequest for the node of `city`, signed by the enterprise; nodes serve it once, to it alone."""
    role = enterprise.role
    if role.kind is not RoleKind.ENTERPRISE:
        raise HistoryError(
            f"a history request is signed with the enterprise's own certificate, not {role.uri}"
        )
    try:
        wanted = uscc_mod.validate(uscc) if uscc else role.subject
    except ValueError as exc:
        raise HistoryError(f"--uscc: {exc}") from None
    if wanted != role.subject:
        raise HistoryError(
            f"the certificate is for enterprise {role.subject}; it cannot ask for {wanted}'s history"
        )
    if limit < 0:
        raise HistoryError("--limit must be 0 (everything) or more")
    msg = chain_pb2.HistoryRequest(
        enterprise_uscc=wanted,
        issued_at=ts_to_proto(utcnow()),
        request_id=str(uuid.uuid4()),
        city=city.proto,
        newest_first=newest_first,
        limit=limit,
        kinds=[_KINDS[o] for o in dict.fromkeys(outcomes)],
    )
    return sign(HISTORY_REQUEST_TYPE, msg.SerializeToString(deterministic=True), enterprise)


def verify_history(
    trust: TrustStore,
    city: City,
    responses: Sequence[chain_pb2.GetHistoryResponse],
    request: chain_pb2.HistoryRequest,
    quorum: int = DEFAULT_QUORUM,
    certificates: Sequence[bytes] = (),
) -> tuple[list[HistoryItem], NodeSummary | None]:
    """Check one node's streamed answer to `request`; raises :class:`HistoryError` on the first fault.

    Returns the items in the order the node sent them, and the node's
    summary (None when the node has logged nothing at all). `certificates`
    are log-key certificates gathered elsewhere (see
    :func:`creditnet.auditor.remote.pool_certificates`), used with those the node sent.
    """
    if not responses:
        raise HistoryError(f"the {city.value} node sent nothing")
    head = responses[0]
    if any(r.city != city.proto for r in responses):
        raise HistoryError(f"the {city.value} node answered as another city")
    if any(r.checkpoint or r.key_certificates or r.HasField("summary") for r in responses[1:]):
        raise HistoryError("only the first message may carry the checkpoint and summary")
    uscc = request.enterprise_uscc
    wanted = set(request.kinds) or set(_OUTCOMES)
    items: list[HistoryItem] = []
    seen: set[int] = set()
    for item in (i for r in responses for i in r.items):
        where = f"entry {item.receipt.index}"
        receipt = chain_pb2.Receipt()
        receipt.CopyFrom(item.receipt)
        receipt.checkpoint = head.checkpoint
        receipt.key_certificates[:] = [*certificates, *head.key_certificates]
        try:
            vr = verify_receipt(trust, receipt, city.value, quorum)
        except ReceiptError as exc:
            raise HistoryError(f"{where}: receipt: {exc}") from None
        entry = vr.entry
        if entry.city != city.proto:
            raise HistoryError(f"{where}: the entry names another city")
        if not check_commitment(entry, uscc, item.salt):
            raise HistoryError(f"{where}: the entry's commitment is not to {uscc} with the salt given")
        outcome = _OUTCOMES.get(entry.kind)
        if outcome is None or entry.kind not in wanted:
            raise HistoryError(f"{where}: an entry of kind {entry.kind} does not belong in this history")
        if vr.index in seen:
            raise HistoryError(f"{where} is listed twice")
        if items and (vr.index < items[-1].index) != request.newest_first:
            raise HistoryError(f"{where} is out of order")
        seen.add(vr.index)
        try:
            purpose = Purpose.from_proto(entry.purpose) if entry.purpose else None
            categories = tuple(Category.from_proto(c) for c in entry.categories)
        except ValueError as exc:
            raise HistoryError(f"{where}: {exc}") from None
        items.append(
            HistoryItem(
                city=city,
                index=vr.index,
                time=ts_from_proto(entry.time),
                outcome=outcome,
                bank=entry.bank_code,
                purpose=purpose,
                categories=categories,
                query_id=entry.query_id,
                consent_id=entry.consent_id,
                refusal=entry.refusal,
                records_disclosed=entry.records_disclosed,
                checkpoint_size=vr.checkpoint.checkpoint.size,
                witnesses=vr.checkpoint.witnesses,
            )
        )
    if request.limit and len(items) > request.limit:
        raise HistoryError(f"the node sent {len(items)} items, more than the {request.limit} asked for")
    if not head.checkpoint:
        if items:
            raise HistoryError("items came without a checkpoint")
        return items, None
    return items, _check_summary(head.summary, items, complete=not request.limit and not request.kinds)


def _check_summary(
    msg: chain_pb2.HistorySummary, items: Sequence[HistoryItem], *, complete: bool
) -> NodeSummary:
    by_bank = tuple(
        BankRefusals(b.bank_code, b.refused, ts_from_proto(b.first), ts_from_proto(b.last))
        for b in msg.refused_by_bank
    )
    summary = NodeSummary(msg.answered, msg.refused, msg.revoked, by_bank, verified=complete)
    if sum(b.refused for b in by_bank) != msg.refused:
        raise HistoryError("the summary's refusals by bank do not add up to its refusals")
    if complete:
        count = {o: sum(1 for i in items if i.outcome is o) for o in Outcome}
        got = (count[Outcome.ANSWERED], count[Outcome.REFUSED], count[Outcome.REVOKED])
        if got != (msg.answered, msg.refused, msg.revoked):
            raise HistoryError(
                f"the summary counts {msg.answered}/{msg.refused}/{msg.revoked} "
                f"(answered/refused/revoked) but the node sent {got[0]}/{got[1]}/{got[2]}"
            )
        banks: dict[str, int] = {}
        for i in items:
            if i.outcome is Outcome.REFUSED:
                banks[i.bank] = banks.get(i.bank, 0) + 1
        if banks != {b.bank: b.refused for b in by_bank}:
            raise HistoryError("the summary's refusals by bank do not match the entries")
    return summary


async def fetch_history(
    enterprise: Identity,
    trust: TrustStore,
    endpoints: Mapping[City, str],
    *,
    uscc: str | None = None,
    aggregator: str | None = None,
    quorum: int = DEFAULT_QUORUM,
    timeout: float = DEFAULT_TIMEOUT,
    newest_first: bool = False,
    limit: int = 0,
    outcomes: Sequence[Outcome] = (),
) -> History:
    """Ask every node in `endpoints` in parallel for the enterprise's history and verify it all.

    `limit` bounds the items per node, `outcomes` filters them by outcome;
    every node's summary still counts everything. The nodes' (and the
    `aggregator`'s) log-key certificates are pooled, so a receipt verifies
    even if its node sent fewer certificates than it should.
    """
    if not endpoints:
        raise HistoryError("no city node to ask; give a network or at least one node")
    cities = sorted(endpoints)
    requests = {
        c: build_request(enterprise, c, uscc, newest_first=newest_first, limit=limit, outcomes=outcomes)
        for c in cities
    }
    channels = {c: secure_channel(endpoints[c], enterprise, trust, node_server_name(c)) for c in cities}
    agg_channel = (
        secure_channel(aggregator, enterprise, trust, AGGREGATOR_SERVER_NAME) if aggregator else None
    )

    async def read(city: City) -> list[chain_pb2.GetHistoryResponse]:
        call = stubs[city].GetHistory(chain_pb2.GetHistoryRequest(request=requests[city]), timeout=timeout)
        return [r async for r in call]

    try:
        stubs = {c: chain_pb2_grpc.ChainServiceStub(ch) for c, ch in channels.items()}
        pool = asyncio.ensure_future(
            pool_certificates(
                {c.value: s for c, s in stubs.items()},
                aggregator_pb2_grpc.AggregatorServiceStub(agg_channel) if agg_channel else None,
                timeout,
            )
        )
        answers = await asyncio.gather(*(read(c) for c in cities), return_exceptions=True)
        pooled = await pool
    finally:
        closing = [ch.close() for ch in channels.values()]
        if agg_channel is not None:
            closing.append(agg_channel.close())
        await asyncio.gather(*closing, return_exceptions=True)

    items: list[HistoryItem] = []
    failures: dict[City, str] = {}
    summaries: dict[City, NodeSummary] = {}
    wanted = ""
    for city, answer in zip(cities, answers, strict=True):
        request = chain_pb2.HistoryRequest.FromString(requests[city].payload)
        wanted = request.enterprise_uscc
        if isinstance(answer, grpc.aio.AioRpcError):
            failures[city] = f"{answer.code().name}: {answer.details()}"
        elif isinstance(answer, BaseException):
            raise answer
        else:
            try:
                got, summary = verify_history(trust, city, answer, request, quorum, pooled)
            except HistoryError as exc:
                failures[city] = f"the answer does not verify: {exc}"
                continue
            items.extend(got)
            if summary is not None:
                summaries[city] = summary
    items.sort(key=lambda i: (i.time, i.city.value, i.index), reverse=newest_first)
    return History(uscc=wanted, items=tuple(items), failures=failures, summaries=summaries)
