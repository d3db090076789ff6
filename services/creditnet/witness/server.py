"""The witness: cosign another log's checkpoint only if it extends what we saw.

Implements C2SP tlog-witness semantics as the gRPC WitnessService. For each
origin the witness keeps the last checkpoint it cosigned. A new checkpoint is
cosigned only if its log signature verifies (log-key certificate from the
network CA), `old_size` is exactly the size we hold, and the consistency
proof from our checkpoint to the new one verifies. The new state is stored
atomically before the cosignature is returned. A checkpoint of the size we
hold with another root, or one whose proof fails, is kept as evidence: two
checkpoints signed by the same log that cannot both be true.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from creditnet.chain.checkpoint import SignedCheckpoint, cosign, open_checkpoint
from creditnet.chain.keys import LogKey, known_key, log_origin
from creditnet.chain.merkle import ProofError, verify_consistency
from creditnet.chain.note import NoteError
from creditnet.dates import ts_to_proto, utcnow
from creditnet.errors import (
    CreditnetError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from creditnet.pki import TrustStore
from creditnet.rpc import PeerIdentities, refusals
from creditnet.store import Store
from creditnet.store.models import CHAIN_EVIDENCE, WITNESS_STATE
from creditnet.v2 import chain_pb2, chain_pb2_grpc
from creditnet.witness.link import SIZE_TRAILER

__all__ = [
    "Witness",
    "WitnessService",
    "WitnessedState",
]

log = logging.getLogger(__name__)

MAX_PROOF_HASHES = 128


@dataclass(frozen=True, slots=True)
class WitnessedState:
    origin: str
    size: int
    root: bytes
    note: str


class Witness:
    """Witness state and evidence, on a store's database.

    `shared`: other processes (aggregator replicas) witness with the same key
    on the same database. The state is then read from the database for every
    checkpoint, not kept in memory, and the compare-and-set that advances it
    (committed before the cosignature is made) is what makes one of two
    replicas offered different checkpoints of one size refuse.
    """

    def __init__(self, store: Store, key: LogKey, *, shared: bool = False) -> None:
        self.store = store
        self.key = key
        self.shared = shared
        # Built once: a signer derives its key id, which every cosignature carries.
        self._signer = key.witness_signer
        # Per log: one checkpoint at a time, and the state kept in memory
        # (the database holds the durable copy, written before each cosignature).
        self._locks: dict[str, asyncio.Lock] = {}
        self._states: dict[str, WitnessedState | None] = {}
        self._db = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="witness-db")
        # Told the origin of every log whose cosigned size grew (the aggregator's head reads it).
        self.advanced: Callable[[str], None] | None = None

    def state(self, origin: str) -> WitnessedState | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(WITNESS_STATE).where(WITNESS_STATE.c.origin == origin)).first()
        if row is None:
            return None
        return WitnessedState(origin, int(row.size), bytes(row.root), str(row.note))

    def states(self) -> list[WitnessedState]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(WITNESS_STATE).order_by(WITNESS_STATE.c.origin)).all()
        return [WitnessedState(str(r.origin), int(r.size), bytes(r.root), str(r.note)) for r in rows]

    def _advance(self, origin: str, old: WitnessedState | None, new: SignedCheckpoint) -> None:
        values = {
            "size": new.checkpoint.size,
            "root": new.checkpoint.root_hash,
            "note": new.encode(),
            "updated_at": utcnow(),
        }
        conflict = FailedPrecondition("witness.conflict", "the witness state moved meanwhile; retry")

        def write(conn: Connection) -> None:
            if old is None:
                conn.execute(insert(WITNESS_STATE).values(origin=origin, **values))
                return
            # Compare-and-set: the row is locked by the update, and a
            # concurrent one re-reads it after the first commits.
            moved = conn.execute(
                update(WITNESS_STATE)
                .where(
                    WITNESS_STATE.c.origin == origin,
                    WITNESS_STATE.c.size == old.size,
                    WITNESS_STATE.c.root == old.root,
                )
                .values(**values)
            ).rowcount
            if moved != 1:
                raise conflict

        try:
            # On the node store's writer thread, when the store has one.
            self.store.run_write(write)
        except IntegrityError:
            raise conflict from None

    def record_evidence(self, origin: str, kind: str, first: str, second: str, detail: str) -> None:
        row = {"origin": origin, "kind": kind, "first": first, "second": second, "detail": detail}
        self.store.run_write(
            lambda conn: conn.execute(insert(CHAIN_EVIDENCE).values(**row, found_at=utcnow()))
        )
        log.error("evidence of misbehaviour by %s: %s (%s)", origin, kind, detail)

    def evidence(self) -> list[chain_pb2.Evidence]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(CHAIN_EVIDENCE).order_by(CHAIN_EVIDENCE.c.id)).all()
        return [
            chain_pb2.Evidence(
                origin=r.origin,
                kind=r.kind,
                first_checkpoint=r.first,
                second_checkpoint=r.second,
                detail=r.detail,
                found_at=ts_to_proto(r.found_at if r.found_at.tzinfo else r.found_at.replace(tzinfo=dt.UTC)),
            )
            for r in rows
        ]

    async def add_checkpoint(
        self, trust: TrustStore, req: chain_pb2.AddCheckpointRequest
    ) -> tuple[str, int | None]:
        """Returns the cosignature line; raises a CreditnetError (with our size) otherwise."""
        try:
            k = known_key(trust, req.log_key_certificate)
        except CreditnetError as exc:
            raise PermissionDenied(
                "witness.log_key", f"the log key certificate is not valid: {exc.message}"
            ) from None
        if k.name == self.key.name:
            raise InvalidArgument("witness.self", "a log cannot witness itself")
        origin = log_origin(k.name)
        try:
            new = open_checkpoint(req.checkpoint, [k.log], origin=origin)
        except (NoteError, ValueError) as exc:
            raise InvalidArgument("witness.checkpoint", f"the checkpoint does not verify: {exc}") from None
        if len(req.consistency_proof) > MAX_PROOF_HASHES:
            raise InvalidArgument("witness.proof", "consistency proof is too long")
        if req.old_size > new.checkpoint.size:
            raise InvalidArgument("witness.old_size", "old_size is larger than the checkpoint's size")
        loop = asyncio.get_running_loop()
        async with self._locks.setdefault(origin, asyncio.Lock()):
            try:
                return await self._add(loop, origin, new, req)
            except SQLAlchemyError:
                log.warning("the witness database failed on a checkpoint of %s", origin)
                raise Unavailable(
                    "witness.database", "the witness cannot reach its database; retry"
                ) from None
            except FailedPrecondition:
                # Whatever moved the state, the next checkpoint is judged by the database's.
                self._states.pop(origin, None)
                raise

    async def _add(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: str,
        new: SignedCheckpoint,
        req: chain_pb2.AddCheckpointRequest,
    ) -> tuple[str, int | None]:
        if self.shared or origin not in self._states:
            self._states[origin] = await loop.run_in_executor(self._db, self.state, origin)
        old = self._states[origin]
        held = old.size if old else 0
        if req.old_size != held:
            raise _Conflict(held)
        if old is not None and new.checkpoint.size == old.size:
            if new.checkpoint.root_hash != old.root:
                await asyncio.to_thread(
                    self.record_evidence,
                    origin,
                    "split_view",
                    old.note,
                    new.encode(),
                    f"two checkpoints of size {old.size} with different roots",
                )
                raise FailedPrecondition(
                    "witness.split_view", "a different checkpoint of this size was cosigned before"
                )
        elif old is not None:
            try:
                verify_consistency(
                    old.size,
                    new.checkpoint.size,
                    list(req.consistency_proof),
                    old.root,
                    new.checkpoint.root_hash,
                )
            except ProofError as exc:
                await asyncio.to_thread(
                    self.record_evidence, origin, "inconsistent", old.note, new.encode(), str(exc)
                )
                raise FailedPrecondition(
                    "witness.inconsistent",
                    "the checkpoint is not consistent with the one cosigned before",
                ) from None
        if old is None or new.checkpoint.size > old.size:
            # Forgotten until the write is known to have landed: a call cancelled
            # meanwhile (its deadline passed) leaves the write to finish in the
            # thread, and the next call must read what it wrote, not insert again.
            del self._states[origin]
            await loop.run_in_executor(self._db, self._advance, origin, old, new)
            self._states[origin] = WitnessedState(
                origin, new.checkpoint.size, new.checkpoint.root_hash, new.encode()
            )
            if self.advanced is not None:
                self.advanced(origin)
        cosig = cosign(new.checkpoint, self._signer)
        return cosig.encode(), None


class _Conflict(FailedPrecondition):
    def __init__(self, size: int) -> None:
        super().__init__("witness.old_size", f"this witness holds size {size} for the log")
        self.size = size


class WitnessService(chain_pb2_grpc.WitnessServiceServicer):
    def __init__(self, witness: Witness, trust: TrustStore) -> None:
        self.witness = witness
        self.trust = trust
        self.peers = PeerIdentities(trust)

    @refusals
    async def AddCheckpoint(
        self, request: chain_pb2.AddCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.AddCheckpointResponse:
        self.peers.role(context)
        try:
            line, _ = await self.witness.add_checkpoint(self.trust, request)
        except _Conflict as exc:
            context.set_trailing_metadata(((SIZE_TRAILER, str(exc.size)),))
            raise
        return chain_pb2.AddCheckpointResponse(
            cosignature=line, witness_key_certificate=self.witness.key.certificate_der
        )

    @refusals
    async def ListEvidence(
        self, request: chain_pb2.ListEvidenceRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.ListEvidenceResponse:
        self.peers.role(context)
        return chain_pb2.ListEvidenceResponse(evidence=await asyncio.to_thread(self.witness.evidence))
