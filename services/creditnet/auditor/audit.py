"""Auditing a city node's credit-chain log from the outside.

An auditor trusts only the network CA and what it checked before. It
downloads a node's whole log, recomputes every leaf and the root at the size
of the node's latest cosigned checkpoint and at every checkpoint it saw on
earlier runs (kept in a local state file), checks each of those checkpoints
against the next both by recomputation and by the node's own consistency
proofs, and reads the other nodes' evidence about the log. It reports the
first problem exactly: when the recomputed root at a cosigned size differs,
bisection with consistency proofs verified against the cosigned root finds
the first entry that is not the cosigned history.

The checks on downloaded data are pure functions over an in-memory tree
(:mod:`creditnet.auditor.checks`), so they are testable without a network;
:func:`verify_log` fetches (:mod:`creditnet.auditor.remote`) and calls them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from creditnet.auditor.checks import (
    Problem,
    ProblemKind,
    check_against_seen,
    check_entries,
    check_log,
    distinct_sizes,
)
from creditnet.auditor.evidence import EvidenceItem, evidence_item
from creditnet.auditor.remote import (
    DEFAULT_TIMEOUT,
    EntryOrderError,
    NodeProofs,
    ProgressFn,
    aggregator_channel,
    close_channels,
    download_entries,
    list_evidence,
    node_channel,
    pool_certificates,
    witness_stubs,
)
from creditnet.auditor.state import AuditError, AuditState, SeenCheckpoint
from creditnet.chain.keys import KnownKey, known_keys, log_origin
from creditnet.chain.receipts import DEFAULT_QUORUM, ReceiptError, verify_checkpoint
from creditnet.domain import City
from creditnet.pki import Identity, TrustStore
from creditnet.v2 import aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc

__all__ = [
    "AuditReport",
    "WitnessCosignature",
    "audit",
    "verify_log",
]

# --------------------------------------------------------------------------
# Verifying one node's log


@dataclass(frozen=True, slots=True)
class WitnessCosignature:
    name: str
    time: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"witness": self.name, "time": self.time.isoformat()}


@dataclass(frozen=True, slots=True)
class AuditReport:
    city: City
    origin: str
    # The node's latest cosigned checkpoint, if it had a valid one.
    checkpoint: SeenCheckpoint | None
    cosignatures: tuple[WitnessCosignature, ...]
    # Entries downloaded (the log may hold more than the checkpoint covers).
    entries: int
    # Sizes whose recomputed roots and proofs were checked.
    checked: tuple[int, ...]
    evidence: tuple[EvidenceItem, ...]
    witness_errors: Mapping[str, str]
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "city": self.city.value,
            "origin": self.origin,
            "ok": self.ok,
            "problem": self.problem.to_json() if self.problem else None,
            "checkpoint": None
            if cp is None
            else {"size": cp.size, "root": base64.b64encode(cp.root).decode(), "note": cp.note},
            "cosignatures": [c.to_json() for c in self.cosignatures],
            "entries": self.entries,
            "checked_sizes": list(self.checked),
            "evidence": [e.to_json() for e in self.evidence],
            "witness_errors": dict(self.witness_errors),
        }


def _rpc_problem(exc: grpc.aio.AioRpcError, what: str) -> Problem:
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return Problem(ProblemKind.NO_CHECKPOINT, f"{what}: {exc.details()}")
    return Problem(ProblemKind.UNREACHABLE, f"{what}: {exc.code().name}: {exc.details()}")


async def verify_log(
    city: City,
    node: chain_pb2_grpc.ChainServiceStub,
    trust: TrustStore,
    *,
    seen: Sequence[SeenCheckpoint] = (),
    witnesses: Mapping[str, chain_pb2_grpc.ChainServiceStub] | None = None,
    evidence_from: Mapping[str, chain_pb2_grpc.WitnessServiceStub] | None = None,
    certificates: Sequence[bytes] = (),
    quorum: int = DEFAULT_QUORUM,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> AuditReport:
    """Audit `city`'s whole log (see the module docstring); the report names the first problem.

    `seen` are checkpoints of this log verified on earlier runs; `witnesses`
    are the other nodes, whose log-key certificates are pooled with
    `certificates` (see :func:`pool_certificates`); `evidence_from` are the
    witnesses (nodes and aggregator) whose evidence about this log is read,
    in parallel.
    """
    origin = log_origin(city.value)
    evidence_task = asyncio.ensure_future(list_evidence(evidence_from or {}, timeout))
    pool_task = asyncio.ensure_future(pool_certificates(witnesses or {}, timeout=timeout))
    checkpoint: SeenCheckpoint | None = None
    cosigs: tuple[WitnessCosignature, ...] = ()
    entries: list[bytes] = []
    checked: tuple[int, ...] = ()
    problem: Problem | None = None
    log_keys: dict[str, KnownKey] = {}
    try:
        try:
            resp = await node.GetCheckpoint(chain_pb2.GetCheckpointRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            problem = _rpc_problem(exc, f"the {city.value} node gave no checkpoint")
        else:
            # The node's own certificates last: they win for its own name.
            certs = [*certificates, *await pool_task, *resp.key_certificates]
            log_keys = known_keys(trust, certs)
            try:
                cp = verify_checkpoint(trust, resp.checkpoint, certs, city.value, quorum)
            except ReceiptError as exc:
                problem = Problem(
                    ProblemKind.BAD_CHECKPOINT, f"the {city.value} node's latest checkpoint: {exc}"
                )
            else:
                checkpoint = SeenCheckpoint(cp.checkpoint.size, cp.checkpoint.root_hash, resp.checkpoint)
                cosigs = tuple(
                    WitnessCosignature(c.name, dt.datetime.fromtimestamp(c.timestamp, dt.UTC))
                    for c in cp.cosignatures
                )
        if checkpoint is not None:
            problem = check_against_seen(checkpoint, seen)
        if checkpoint is not None and problem is None:
            try:
                entries = await download_entries(
                    node, expected=checkpoint.size, progress=progress, timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                problem = _rpc_problem(exc, f"the {city.value} node did not serve its entries")
            except EntryOrderError as exc:
                problem = Problem(ProblemKind.ENTRY_ORDER, str(exc))
        if checkpoint is not None and problem is None:
            chain = distinct_sizes([*seen, checkpoint])
            checked = tuple(c.size for c in chain)
            problem = await check_log(entries, chain, NodeProofs(node, timeout))
            if problem is None:
                problem = check_entries(entries, city)
        found, witness_errors = await evidence_task
    finally:
        for task in (evidence_task, pool_task):
            if not task.done():
                task.cancel()
    evidence = tuple(
        evidence_item(w, ev, log_keys)
        for w, evs in sorted(found.items())
        for ev in evs
        if ev.origin == origin
    )
    proven = [e for e in evidence if e.verified]
    if problem is None and proven:
        e = proven[0]
        problem = Problem(
            ProblemKind.EVIDENCE,
            f"witness {e.witness} holds evidence that this log signed two checkpoints that cannot "
            f"both be true ({e.kind}: {e.detail})",
        )
    return AuditReport(
        city=city,
        origin=origin,
        checkpoint=checkpoint,
        cosignatures=cosigs,
        entries=len(entries),
        checked=checked,
        evidence=evidence,
        witness_errors=witness_errors,
        problem=problem,
    )


async def audit(
    city: City,
    endpoints: Mapping[City, str],
    identity: Identity,
    trust: TrustStore,
    *,
    state: AuditState | None = None,
    aggregator: str | None = None,
    quorum: int = DEFAULT_QUORUM,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> AuditReport:
    """Connect to `city`'s node (and the others, as witnesses) and :func:`verify_log`.

    With a `state`, the checkpoints seen before are checked too, and the
    latest one is recorded when the log passes (the caller saves the state).
    The `aggregator`, a witness too, is asked only for its log-key certificate.
    """
    if city not in endpoints:
        raise AuditError(f"no endpoint for the {city.value} node")
    channels = {c: node_channel(c, ep, identity, trust) for c, ep in endpoints.items()}
    agg_channel = aggregator_channel(aggregator, identity, trust)
    try:
        stubs = {c: chain_pb2_grpc.ChainServiceStub(ch) for c, ch in channels.items()}
        origin = log_origin(city.value)
        national = (
            await pool_certificates({}, aggregator_pb2_grpc.AggregatorServiceStub(agg_channel), timeout)
            if agg_channel is not None
            else []
        )
        report = await verify_log(
            city,
            stubs[city],
            trust,
            seen=state.seen(origin) if state else (),
            witnesses={c.value: s for c, s in stubs.items() if c != city},
            evidence_from=witness_stubs(channels, agg_channel, but=city),
            certificates=national,
            quorum=quorum,
            progress=progress,
            timeout=timeout,
        )
    finally:
        await close_channels(channels.values(), agg_channel)
    if state is not None and report.ok and report.checkpoint is not None:
        state.record(origin, report.checkpoint)
    return report
