"""A city node's credit-chain log: durable, group-committed appends, and
checkpoints cosigned by witnesses.

Appends go through the node store's one writer (store.aio), which gathers
those made while the previous commit runs and writes them together in one
transaction (group commit); an answered query's claim commits in that same
transaction as its entry and kept answer. An answer is released only after
its entry is on disk. A publisher task then
signs a checkpoint for the new size and asks the witnesses to cosign it; once
`quorum` of them have, the checkpoint is published and every waiting answer
gets its receipt (entry, inclusion proof, cosigned checkpoint). Signing
happens only for sizes of this one append-only tree, so the node never signs
two inconsistent checkpoints.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from sqlalchemy import Connection, insert, select, update

from creditnet.chain.checkpoint import Checkpoint, Cosignature, SignedCheckpoint
from creditnet.chain.hedge import WitnessHealth, hedge_delay, plan
from creditnet.chain.keys import LogKey, known_key
from creditnet.chain.models import CHECKPOINTS, pack_certificates, unpack_certificates
from creditnet.chain.receipts import DEFAULT_QUORUM, enterprise_commitment
from creditnet.chain.sqlstore import CacheMiss, KeptQueryAnswer, PendingEntry, SqlLog
from creditnet.channels import secure_channel
from creditnet.dates import utcnow
from creditnet.errors import CreditnetError
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.store import AsyncStore, ClaimOutcome, ClaimRefused, LogPosition, QueryClaim
from creditnet.v2 import chain_pb2, chain_pb2_grpc

__all__ = [
    "COSIGN_TIMEOUT",
    "Appended",
    "Ledger",
    "Published",
    "WitnessLink",
]

log = logging.getLogger(__name__)

COSIGN_TIMEOUT = 2.0


@dataclass
class WitnessLink:
    """A witness this log asks for cosignatures, and what it last cosigned."""

    name: str
    endpoint: str
    stub: chain_pb2_grpc.WitnessServiceStub
    channel: grpc.aio.Channel
    size: int | None = None
    last_error: str = ""
    health: WitnessHealth = field(default_factory=WitnessHealth)
    # When set, the witness's key certificate is checked at every cosignature
    # (validity and the directory's revocations): a revoked witness key's
    # cosignature does not count towards the quorum.
    trust: TrustStore | None = None

    @classmethod
    def connect(
        cls, name: str, endpoint: str, identity: Identity, trust: TrustStore, server_name: str | None = None
    ) -> WitnessLink:
        from creditnet.domain import City

        server = server_name or (
            AGGREGATOR_SERVER_NAME if name == "national" else node_server_name(City.parse(name))
        )
        channel = secure_channel(endpoint, identity, trust, server)
        return cls(
            name=name,
            endpoint=endpoint,
            stub=chain_pb2_grpc.WitnessServiceStub(channel),
            channel=channel,
            trust=trust,
        )


@dataclass(frozen=True, slots=True)
class Appended:
    index: int
    # Salt of the entry's enterprise commitment (empty when it names none).
    salt: bytes
    # The exact entry bytes: the Merkle leaf.
    entry: bytes


@dataclass
class Published:
    size: int
    note: str
    cosignatures: int
    key_certificates: list[bytes] = field(default_factory=list)


class Ledger:
    def __init__(
        self,
        store: AsyncStore,
        log_key: LogKey,
        *,
        witnesses: Sequence[WitnessLink] = (),
        quorum: int = DEFAULT_QUORUM,
    ) -> None:
        self.log_key = log_key
        self.origin = log_key.origin
        self._log_signer = log_key.log_signer
        self.witnesses = list(witnesses)
        self.quorum = quorum
        # Set by a node holding a network directory: its log's witnesses and quorum.
        self.follow: Callable[[], tuple[list[WitnessLink], int]] | None = None
        self._astore = store
        self._store = store.store
        # The store's writer thread, which extends the tree: reads of the
        # tree's in-memory state (roots, proofs of old sizes) run there too,
        # in order with the appends.
        self._writer: cf.Executor = store.writer
        self.log = SqlLog(self._store)
        self._wake_publisher = asyncio.Event()
        self._published_changed = asyncio.Condition()
        self.committed_size = self.log.tree.size
        self.published: Published | None = self._load_published()
        self.witness_certs: dict[str, bytes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loose: set[asyncio.Future[object]] = set()
        self._rotation = 0
        # Roots of committed sizes not yet published, from the writer thread.
        self._roots: dict[int, bytes] = {}
        # Consistency proofs asked for in this publish round, by old size.
        self._proofs: dict[tuple[int, int], asyncio.Future[list[bytes]]] = {}
        # Commits that appended entries (each holds every append queued while the previous one ran).
        self.group_commits = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._publish_loop())]
        if self.published is None or self.published.size < self.committed_size:
            self._wake_publisher.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._loose:
            await asyncio.gather(*self._loose, return_exceptions=True)
        await asyncio.gather(*(w.channel.close() for w in self.witnesses), return_exceptions=True)

    # -- appends -----------------------------------------------------------

    async def append(
        self,
        entry: chain_pb2.LedgerEntry,
        uscc: str | None = None,
        *,
        answer: KeptQueryAnswer | None = None,
        claim: QueryClaim | None = None,
    ) -> Appended:
        """Append durably (the entry is on disk when this returns), with the answer it logs if any.

        With `claim` (the query the entry logs as answered), the claim, the
        entry and the answer commit in one transaction, or none of them:
        :class:`ClaimRefused` if the claim was refused. A caller that stops
        waiting does not withdraw the append.
        """
        salt = b""
        if uscc is not None:
            salt = os.urandom(16)
            entry.enterprise_commitment = enterprise_commitment(uscc, salt)
        data = entry.SerializeToString(deterministic=True)
        pending = PendingEntry(data, int(entry.kind), uscc, salt or None, answer)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[LogPosition | ClaimOutcome] = loop.create_future()
        done = self._astore.append(self.log, [pending], claim)
        done.add_done_callback(functools.partial(self._on_writer_done, loop, fut))
        landed = await fut
        if isinstance(landed, ClaimOutcome):
            raise ClaimRefused(landed)
        return Appended(index=landed.index, salt=salt, entry=data)

    async def entry(self, index: int) -> bytes:
        """The exact bytes of the entry at `index` (read off the event loop)."""
        ((_, data),) = await asyncio.to_thread(self.log.entries, index, index + 1)
        return data

    def _on_writer_done(
        self,
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[LogPosition | ClaimOutcome],
        done: cf.Future[LogPosition | ClaimOutcome],
    ) -> None:
        # On the writer thread: hand over to the loop (gone only after stop).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._appended, fut, done)

    def _appended(
        self, fut: asyncio.Future[LogPosition | ClaimOutcome], done: cf.Future[LogPosition | ClaimOutcome]
    ) -> None:
        # Runs whether or not the caller still waits, before it resumes.
        exc = done.exception()
        if exc is not None:
            log.error("credit-chain append failed", exc_info=exc)
            if not fut.done():
                fut.set_exception(exc)
            return
        landed = done.result()
        if isinstance(landed, LogPosition) and landed.size > self.committed_size:
            # The first of its group to land here: the group's commit.
            self.group_commits += 1
            self.committed_size = landed.size
            self._roots[landed.size] = landed.root
            self._wake_publisher.set()
        if not fut.done():
            fut.set_result(landed)

    # -- checkpoints and witnesses ------------------------------------------

    def _load_published(self) -> Published | None:
        with self._store.engine.connect() as conn:
            row = conn.execute(
                select(
                    CHECKPOINTS.c.size,
                    CHECKPOINTS.c.note,
                    CHECKPOINTS.c.cosignatures,
                    CHECKPOINTS.c.key_certificates,
                )
                .where(CHECKPOINTS.c.cosignatures >= self.quorum)
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        certs = unpack_certificates(row.key_certificates)
        if self.log_key.certificate_der not in certs:
            # Stored before certificates were kept: receipts of it could not be
            # checked, so the next append publishes anew.
            return None
        return Published(int(row.size), str(row.note), int(row.cosignatures), certs)

    async def _publish_loop(self) -> None:
        while True:
            await self._wake_publisher.wait()
            self._wake_publisher.clear()
            size = self.committed_size
            if self.published is not None and self.published.size >= size:
                continue
            try:
                ok = await self.publish(size)
            except Exception:
                log.exception("publishing checkpoint %d failed", size)
                ok = False
            if not ok:
                # Not enough witnesses now: try again shortly (and on the next append).
                await asyncio.sleep(0.2)
                self._wake_publisher.set()

    async def publish(self, size: int) -> bool:
        root = self._roots.get(size)
        if root is None:
            root = await asyncio.get_running_loop().run_in_executor(self._writer, self.log.tree.root, size)
        # Only sizes not yet published can still be asked for.
        for old in [k for k in self._roots if k < size]:
            del self._roots[old]
        signed = Checkpoint(self.origin, size, root).sign(self._log_signer)
        cosigs, certs = await self._gather_cosignatures(signed)
        note = signed.with_cosignatures(cosigs).encode() if cosigs else signed.encode()
        # Kept for operators and restarts, off the answers' critical path: the
        # entries themselves were durable before this checkpoint was signed.
        self._background(asyncio.to_thread(self._save_checkpoint, size, note, len(cosigs), certs))
        if len(cosigs) < self.quorum:
            log.warning("checkpoint %d has %d of %d cosignatures", size, len(cosigs), self.quorum)
            return False
        async with self._published_changed:
            if self.published is None or self.published.size < size:
                self.published = Published(size, note, len(cosigs), certs)
            self._published_changed.notify_all()
        return True

    async def _gather_cosignatures(self, signed: SignedCheckpoint) -> tuple[list[Cosignature], list[bytes]]:
        """Cosignatures from the first `quorum` witnesses to answer, hedged (see `chain.hedge`)."""
        cosigs: list[Cosignature] = []
        certs: list[bytes] = [self.log_key.certificate_der]
        if self.follow is not None:
            # The witnesses the network directory assigns now (admissions
            # and removals change them), read at every round.
            self.witnesses, self.quorum = self.follow()
        if not self.witnesses:
            return cosigs, certs
        loop = asyncio.get_running_loop()
        first, spares = plan(self.witnesses, lambda w: w.health, self.quorum, self._rotation, loop.time())
        self._rotation = (self._rotation + 1) % len(self.witnesses)
        delay = hedge_delay([w.health for w in first[: self.quorum]])
        pending = {asyncio.create_task(self._cosign(w, signed)) for w in first}
        hedge_at = loop.time() + delay
        while pending and len(cosigs) < self.quorum:
            wait = max(0.0, hedge_at - loop.time()) if spares else None
            done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                # No quorum within the hedge delay: someone asked is stuck.
                # Ask a spare per cosignature still missing, without waiting.
                for _ in range(min(self.quorum - len(cosigs), len(spares))):
                    pending.add(asyncio.create_task(self._cosign(spares.pop(0), signed)))
                hedge_at = loop.time() + delay
                continue
            for task in done:
                got = task.result()
                if got is not None:
                    cosigs.append(got[0])
                    certs.append(got[1])
                elif spares:
                    pending.add(asyncio.create_task(self._cosign(spares.pop(0), signed)))
        for task in pending:
            # Late witnesses still record what they cosigned (and how they did).
            self._background(task)
        return cosigs, certs

    def _background(self, aw: Awaitable[object]) -> None:
        task = asyncio.ensure_future(aw)
        self._loose.add(task)
        task.add_done_callback(self._loose.discard)

    def _save_checkpoint(self, size: int, note: str, cosignatures: int, certs: list[bytes]) -> None:
        # Off the loop; the write itself runs on the store's writer thread.
        packed = pack_certificates(certs)
        self._store.run_write(functools.partial(_save_checkpoint, size, note, cosignatures, packed))

    async def _consistency(self, old: int, size: int) -> list[bytes]:
        """Witnesses usually hold the same old size: compute each proof once, on the writer thread."""
        key = (old, size)
        fut = self._proofs.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = asyncio.ensure_future(
                loop.run_in_executor(self._writer, self.log.tree.consistency_proof, old, size)
            )
            self._proofs = {k: v for k, v in self._proofs.items() if k[1] >= size}
            self._proofs[key] = fut
        return await fut

    async def _cosign(self, w: WitnessLink, signed: SignedCheckpoint) -> tuple[Cosignature, bytes] | None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        w.health.asked()
        got: tuple[Cosignature, bytes] | None = None
        try:
            got = await self._ask_witness(w, signed)
        finally:
            if got is not None:
                w.health.answered(loop.time() - start)
            elif (w.size or 0) > signed.checkpoint.size:
                # Overtaken by a newer checkpoint it cosigned meanwhile (calls
                # to one witness may cross): no fault of the witness.
                w.health.settled()
            else:
                w.health.failed(loop.time())
        return got

    async def _ask_witness(
        self, w: WitnessLink, signed: SignedCheckpoint
    ) -> tuple[Cosignature, bytes] | None:
        size = signed.checkpoint.size
        for _ in range(2):
            old = w.size or 0
            if old > size:
                return None
            proof = await self._consistency(old, size) if old else []
            try:
                resp = await w.stub.AddCheckpoint(
                    chain_pb2.AddCheckpointRequest(
                        old_size=old,
                        consistency_proof=proof,
                        checkpoint=signed.encode(),
                        log_key_certificate=self.log_key.certificate_der,
                    ),
                    timeout=COSIGN_TIMEOUT,
                )
            except grpc.aio.AioRpcError as exc:
                w.last_error = f"{exc.code().name}: {exc.details()}"
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    known = dict(_trailing(exc)).get("creditnet-witness-size")
                    if known is not None and known.isdigit() and int(known) != old:
                        w.size = int(known)
                        continue  # retry once from the size the witness has
                return None
            # Calls to one witness may finish out of order (a late one from an
            # earlier round): the size it holds only ever grows.
            w.size = max(w.size or 0, size)
            if w.trust is not None:
                try:
                    known_key(w.trust, resp.witness_key_certificate)
                except CreditnetError as exc:
                    w.last_error = f"witness key: {exc.reason}"
                    return None
            w.last_error = ""
            self.witness_certs[w.name] = resp.witness_key_certificate
            try:
                return Cosignature.parse_line(
                    resp.cosignature.strip("\n") + "\n"
                ), resp.witness_key_certificate
            except ValueError:
                w.last_error = "malformed cosignature"
                return None
        return None

    # -- receipts ----------------------------------------------------------

    async def wait_published(self, index: int, timeout: float) -> Published | None:
        async def covered() -> Published:
            async with self._published_changed:
                await self._published_changed.wait_for(
                    lambda: self.published is not None and self.published.size > index
                )
                assert self.published is not None
                return self.published

        try:
            return await asyncio.wait_for(covered(), timeout)
        except TimeoutError:
            return None

    async def receipt(self, index: int, entry: bytes, timeout: float) -> chain_pb2.Receipt:
        pub = await self.wait_published(index, timeout)
        if pub is None:
            raise TimeoutError("no cosigned checkpoint covers this entry yet")
        try:
            # Receipts are for fresh entries, whose proof nodes the appends
            # left in memory: computed here without any I/O...
            proof = self.log.cached_inclusion_proof(index, pub.size)
        except CacheMiss:
            # ...and on a thread when an old node must be read.
            proof = await asyncio.to_thread(self.log.tree.inclusion_proof, index, pub.size)
        return chain_pb2.Receipt(
            index=index,
            entry=entry,
            tree_size=pub.size,
            inclusion_proof=proof,
            checkpoint=pub.note,
            key_certificates=pub.key_certificates,
        )


def _trailing(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    md = exc.trailing_metadata() or ()
    return [(str(k), v.decode() if isinstance(v, bytes) else str(v)) for k, v in md]


def _save_checkpoint(size: int, note: str, cosignatures: int, packed: bytes, conn: Connection) -> None:
    updated = conn.execute(
        update(CHECKPOINTS)
        .where(CHECKPOINTS.c.size == size, CHECKPOINTS.c.cosignatures <= cosignatures)
        .values(note=note, cosignatures=cosignatures, key_certificates=packed)
    ).rowcount
    exists = conn.execute(select(CHECKPOINTS.c.size).where(CHECKPOINTS.c.size == size)).first()
    if not updated and exists is None:
        conn.execute(
            insert(CHECKPOINTS).values(
                size=size,
                note=note,
                cosignatures=cosignatures,
                key_certificates=packed,
                signed_at=utcnow(),
            )
        )
