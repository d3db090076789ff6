"""An enterprise's own credit-chain history: who looked at its data, where, why.

The enterprise signs a HistoryRequest with its own key and asks every city
node in parallel. Each node answers with the entries naming the enterprise
and the salts of their commitments; every item is checked here before it is
shown: its receipt (inclusion in a checkpoint signed by that city's log key
and cosigned by a witness quorum) and that its commitment is to this
enterprise with that salt. A node whose answer fails any check is reported as
failed, and none of its items are kept.
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
from creditnet.chain.audit import pool_certificates
from creditnet.chain.ledger import DEFAULT_QUORUM
from creditnet.chain.receipts import ReceiptError, check_commitment, verify_receipt
from creditnet.dates import ts_from_proto, ts_to_proto, utcnow
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import HISTORY_REQUEST_TYPE, sign
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, RoleKind, TrustStore, node_server_name
from creditnet.rpc import secure_channel
from creditnet.v1 import aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc, envelope_pb2

__all__ = [
    "History",
    "HistoryError",
    "HistoryItem",
    "Outcome",
    "build_request",
    "fetch_history",
    "verify_history",
]

DEFAULT_TIMEOUT = 15.0


class HistoryError(ValueError):
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
class History:
    uscc: str
    # Verified items of every node that answered, oldest first.
    items: tuple[HistoryItem, ...]
    # Nodes that could not be asked, or whose answer did not verify, and why.
    failures: Mapping[City, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "enterprise": self.uscc,
            "items": [i.to_json() for i in self.items],
            "failures": {c.value: why for c, why in self.failures.items()},
        }


def build_request(enterprise: Identity, uscc: str | None = None) -> envelope_pb2.SignedEnvelope:
    """A HistoryRequest signed by the enterprise; nodes answer it only for the signer itself."""
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
    msg = chain_pb2.HistoryRequest(
        enterprise_uscc=wanted, issued_at=ts_to_proto(utcnow()), request_id=str(uuid.uuid4())
    )
    return sign(HISTORY_REQUEST_TYPE, msg.SerializeToString(deterministic=True), enterprise)


def verify_history(
    trust: TrustStore,
    city: City,
    response: chain_pb2.GetHistoryResponse,
    uscc: str,
    quorum: int = DEFAULT_QUORUM,
    certificates: Sequence[bytes] = (),
) -> list[HistoryItem]:
    """Check every item of one node's answer; raises :class:`HistoryError` on the first that fails.

    `certificates` are log-key certificates gathered elsewhere (see
    :func:`creditnet.chain.audit.pool_certificates`), used with those in each receipt.
    """
    if response.city != city.proto:
        raise HistoryError(f"the {city.value} node answered as another city")
    items: list[HistoryItem] = []
    seen: set[int] = set()
    for item in response.items:
        where = f"entry {item.receipt.index}"
        receipt = item.receipt
        if certificates:
            receipt = chain_pb2.Receipt()
            receipt.CopyFrom(item.receipt)
            receipt.key_certificates[:] = [*certificates, *item.receipt.key_certificates]
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
        if outcome is None:
            raise HistoryError(f"{where}: an entry of kind {entry.kind} does not belong in a history")
        if vr.index in seen:
            raise HistoryError(f"{where} is listed twice")
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
    return items


async def fetch_history(
    enterprise: Identity,
    trust: TrustStore,
    endpoints: Mapping[City, str],
    *,
    uscc: str | None = None,
    aggregator: str | None = None,
    quorum: int = DEFAULT_QUORUM,
    timeout: float = DEFAULT_TIMEOUT,
) -> History:
    """Ask every node in `endpoints` in parallel for the enterprise's history and verify it all.

    The nodes' (and the `aggregator`'s) log-key certificates are pooled, so a
    receipt verifies even if its node sent fewer certificates than it should.
    """
    if not endpoints:
        raise HistoryError("no city node to ask; give a network or at least one node")
    request = build_request(enterprise, uscc)
    wanted = chain_pb2.HistoryRequest()
    wanted.ParseFromString(request.payload)
    cities = [c for c in City if c in endpoints]
    channels = {c: secure_channel(endpoints[c], enterprise, trust, node_server_name(c)) for c in cities}
    agg_channel = (
        secure_channel(aggregator, enterprise, trust, AGGREGATOR_SERVER_NAME) if aggregator else None
    )
    try:
        stubs = {c: chain_pb2_grpc.ChainServiceStub(ch) for c, ch in channels.items()}
        pool = asyncio.ensure_future(
            pool_certificates(
                {c.value: s for c, s in stubs.items()},
                aggregator_pb2_grpc.AggregatorServiceStub(agg_channel) if agg_channel else None,
                timeout,
            )
        )
        answers = await asyncio.gather(
            *(
                stubs[c].GetHistory(chain_pb2.GetHistoryRequest(request=request), timeout=timeout)
                for c in cities
            ),
            return_exceptions=True,
        )
        pooled = await pool
    finally:
        closing = [ch.close() for ch in channels.values()]
        if agg_channel is not None:
            closing.append(agg_channel.close())
        await asyncio.gather(*closing, return_exceptions=True)

    items: list[HistoryItem] = []
    failures: dict[City, str] = {}
    for city, answer in zip(cities, answers, strict=True):
        if isinstance(answer, grpc.aio.AioRpcError):
            failures[city] = f"{answer.code().name}: {answer.details()}"
        elif isinstance(answer, BaseException):
            raise answer
        else:
            try:
                items.extend(verify_history(trust, city, answer, wanted.enterprise_uscc, quorum, pooled))
            except HistoryError as exc:
                failures[city] = f"the answer does not verify: {exc}"
    items.sort(key=lambda i: (i.time, i.city.value, i.index))
    return History(uscc=wanted.enterprise_uscc, items=tuple(items), failures=failures)
