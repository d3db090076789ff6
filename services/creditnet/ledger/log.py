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

Witness rounds are pipelined: a round starts as soon as entries are pending,
while earlier rounds are still in flight (at most MAX_ROUNDS_IN_FLIGHT of
them), so an answer waits for one round, not for the rest of the round that
was running when its entry committed and then its own. A checkpoint reaching
quorum covers every smaller size: the waiters of an earlier round that has not
(or never will) reach quorum are served by it, and that round stops waiting.
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
from typing import Any

import grpc
from sqlalchemy import Connection, insert, select, update

from creditnet.chain.checkpoint import Checkpoint, Cosignature, SignedCheckpoint
from creditnet.chain.keys import LogKey, known_key
from creditnet.chain.receipts import DEFAULT_QUORUM, enterprise_commitment
from creditnet.dates import utcnow
from creditnet.errors import CreditnetError
from creditnet.ledger.sqlstore import (
    CacheMiss,
    KeptQueryAnswer,
    PendingEntry,
    SqlLog,
    pack_certificates,
    unpack_certificates,
)
from creditnet.store import AsyncStore, ClaimOutcome, ClaimRefused, LogPosition, QueryClaim
from creditnet.store.models import CHAIN_CHECKPOINTS
from creditnet.v2 import chain_pb2
from creditnet.witness.hedge import hedge_delay, plan
from creditnet.witness.link import WitnessLink, held_size

__all__ = [
    "ASK_ATTEMPTS",
    "COSIGN_TIMEOUT",
    "MAX_ROUNDS_IN_FLIGHT",
    "RETRY_PAUSE",
    "Appended",
    "Ledger",
    "Published",
]

log = logging.getLogger(__name__)

COSIGN_TIMEOUT = 2.0
# Witness rounds in flight at once: each signs a checkpoint and asks `quorum`
# witnesses, so a slow witness set must not make the node start round after round.
MAX_ROUNDS_IN_FLIGHT = 2
# After a round without quorum that no later round covers, the next one waits this long.
RETRY_PAUSE = 0.2
# Calls to a witness for one checkpoint: from the best guess at the size it
# holds, then from the sizes it reports (rounds in flight may cross at it).
ASK_ATTEMPTS = 3


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
        # Witness rounds in flight, by the size of their checkpoint (see `_publish_loop`).
        self._rounds: dict[int, asyncio.Task[None]] = {}
        self._retry_at = 0.0
        self.max_rounds_in_flight = MAX_ROUNDS_IN_FLIGHT
        # Rounds started, and the most ever in flight at once.
        self.rounds_started = 0
        self.rounds_peak = 0
        self._last_start = 0.0
        # Smoothed time from a round's start to its quorum (0 until one is measured).
        self._round_time = 0.0

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
                    CHAIN_CHECKPOINTS.c.size,
                    CHAIN_CHECKPOINTS.c.note,
                    CHAIN_CHECKPOINTS.c.cosignatures,
                    CHAIN_CHECKPOINTS.c.key_certificates,
                )
                .where(CHAIN_CHECKPOINTS.c.cosignatures >= self.quorum)
                .order_by(CHAIN_CHECKPOINTS.c.size.desc())
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
        """Start a witness round whenever committed entries are not covered by one.

        The rounds in flight are not waited for: their checkpoints are smaller,
        so an entry committed meanwhile needs a round of its own. What holds a
        round back: the bound on rounds in flight; the pause after a round
        that no later one covers failed; and, while rounds are in flight, a
        spacing of 1/max_rounds_in_flight of a usual round since the last one
        started. Without the spacing, rounds started together end together,
        and the entries committed meanwhile wait for a slot as long as for a
        serial round; with it, an entry waits for its round to start at most
        that fraction of a round. A round ending, or entries committing, wakes
        this loop.
        """
        try:
            while True:
                self._wake_publisher.clear()
                size, pause = self._next_round()
                if size is None:
                    await self._wake_publisher.wait()
                elif pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake_publisher.wait(), pause)
                else:
                    self._last_start = asyncio.get_running_loop().time()
                    self._rounds[size] = asyncio.create_task(self._round(size))
                    self.rounds_started += 1
                    self.rounds_peak = max(self.rounds_peak, len(self._rounds))
        finally:
            rounds = list(self._rounds.values())
            for t in rounds:
                t.cancel()
            await asyncio.gather(*rounds, return_exceptions=True)

    def _next_round(self) -> tuple[int | None, float]:
        """The size the next round is for (None: none is due), and how long until it may start."""
        size = self._uncovered()
        if size is None or len(self._rounds) >= self.max_rounds_in_flight:
            return None, 0.0
        start_at = self._retry_at
        if self._rounds:
            start_at = max(start_at, self._last_start + self._round_time / self.max_rounds_in_flight)
        return size, max(0.0, start_at - asyncio.get_running_loop().time())

    def _uncovered(self) -> int | None:
        """The committed size, if neither the published checkpoint nor a round in flight covers it."""
        size = self.committed_size
        # Nothing published yet: even the empty log's checkpoint is worth a round.
        covered = max(
            self.published.size if self.published is not None else -1, max(self._rounds, default=-1)
        )
        return size if size > covered else None

    def _covers(self, size: int) -> bool:
        return self.published is not None and self.published.size >= size

    async def _round(self, size: int) -> None:
        ok = False
        try:
            ok = await self.publish(size)
        except Exception:
            log.exception("publishing checkpoint %d failed", size)
        finally:
            del self._rounds[size]
            if not ok and not any(s > size for s in self._rounds):
                # Not enough witnesses now, and no later round to cover these
                # entries: try again shortly (and on the next append).
                self._retry_at = asyncio.get_running_loop().time() + RETRY_PAUSE
            self._wake_publisher.set()

    async def publish(self, size: int) -> bool:
        """Sign a checkpoint of `size` and have it cosigned: whether a published one covers `size` now."""
        started = asyncio.get_running_loop().time()
        root = self._roots.get(size)
        if root is None:
            root = await asyncio.get_running_loop().run_in_executor(self._writer, self.log.tree.root, size)
        # Only sizes not yet published can still be asked for.
        for old in [k for k in self._roots if k < size]:
            del self._roots[old]
        signed = Checkpoint(self.origin, size, root).sign(self._log_signer)
        cosigs, certs = await self._gather_cosignatures(signed)
        if len(cosigs) < self.quorum and self._covers(size):
            # Overtaken: a later checkpoint reached quorum first and serves
            # this round's waiters; this one is not worth keeping.
            return True
        note = signed.with_cosignatures(cosigs).encode() if cosigs else signed.encode()
        # Kept for operators and restarts, off the answers' critical path: the
        # entries themselves were durable before this checkpoint was signed.
        self._background(asyncio.to_thread(self._save_checkpoint, size, note, len(cosigs), certs))
        if len(cosigs) < self.quorum:
            log.warning("checkpoint %d has %d of %d cosignatures", size, len(cosigs), self.quorum)
            return False
        took = asyncio.get_running_loop().time() - started
        self._round_time = took if not self._round_time else 0.8 * self._round_time + 0.2 * took
        async with self._published_changed:
            if self.published is None or self.published.size < size:
                self.published = Published(size, note, len(cosigs), certs)
            self._published_changed.notify_all()
        return True

    async def _gather_cosignatures(self, signed: SignedCheckpoint) -> tuple[list[Cosignature], list[bytes]]:
        """Cosignatures from the first `quorum` witnesses to answer, hedged (see `witness.hedge`).

        Stops early, with what it has, once a later checkpoint is published.
        """
        cosigs: list[Cosignature] = []
        certs: list[bytes] = [self.log_key.certificate_der]
        if self.follow is not None:
            # The witnesses the network directory assigns now (admissions
            # and removals change them), read at every round.
            self.witnesses, self.quorum = self.follow()
        if not self.witnesses:
            return cosigs, certs
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Rounds overlap: a witness still holding an earlier round's call past
        # any hedge delay would only pile up calls (it handles them one at a
        # time), so it sits this round out unless the quorum needs it.
        overdue = hedge_delay([w.health for w in self.witnesses])
        ready = [w for w in self.witnesses if not w.late(now, overdue)]
        asked = ready if len(ready) >= self.quorum else self.witnesses
        first, spares = plan(asked, lambda w: w.health, self.quorum, self._rotation, now)
        self._rotation = (self._rotation + 1) % len(self.witnesses)
        delay = hedge_delay([w.health for w in first[: self.quorum]])
        pending = {asyncio.create_task(self._cosign(w, signed)) for w in first}
        overtaken = asyncio.ensure_future(self._published_beyond(signed.checkpoint.size))
        hedge_at = loop.time() + delay
        try:
            await self._collect(signed, pending, spares, cosigs, certs, overtaken, hedge_at, delay)
        except asyncio.CancelledError:
            # The log is stopping: nothing is to wait for its calls.
            for task in pending:
                task.cancel()
            raise
        finally:
            overtaken.cancel()
        for task in pending:
            # Late witnesses still record what they cosigned (and how they did).
            self._background(task)
        return cosigs, certs

    async def _collect(
        self,
        signed: SignedCheckpoint,
        pending: set[asyncio.Task[tuple[Cosignature, bytes] | None]],
        spares: list[WitnessLink],
        cosigs: list[Cosignature],
        certs: list[bytes],
        overtaken: asyncio.Future[None],
        hedge_at: float,
        delay: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        while pending and len(cosigs) < self.quorum:
            wait = max(0.0, hedge_at - loop.time()) if spares else None
            waiting: set[asyncio.Future[Any]] = {*pending, overtaken}
            await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if overtaken.done():
                return
            done = {t for t in pending if t.done()}
            pending -= done
            if not done:
                # No quorum within the hedge delay: someone asked is stuck.
                # Ask a spare per cosignature still missing, without waiting.
                for _ in range(self.quorum - len(cosigs)):
                    if (spare := _spare(spares, loop.time(), delay)) is None:
                        break
                    pending.add(asyncio.create_task(self._cosign(spare, signed)))
                hedge_at = loop.time() + delay
                continue
            for task in done:
                got = task.result()
                if got is not None:
                    cosigs.append(got[0])
                    certs.append(got[1])
                elif (spare := _spare(spares, loop.time(), delay)) is not None:
                    pending.add(asyncio.create_task(self._cosign(spare, signed)))

    async def _published_beyond(self, size: int) -> None:
        async with self._published_changed:
            await self._published_changed.wait_for(lambda: self._covers(size))

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
        overtaken = False
        try:
            got, overtaken = await self._ask_witness(w, signed)
        finally:
            if got is not None:
                w.health.answered(loop.time() - start)
            elif overtaken or (w.size or 0) > signed.checkpoint.size:
                # Overtaken by a newer checkpoint (calls to one witness may
                # cross): it answered, and the fault is not the witness's.
                w.health.settled()
            else:
                w.health.failed(loop.time())
        return got

    async def _ask_witness(
        self, w: WitnessLink, signed: SignedCheckpoint
    ) -> tuple[tuple[Cosignature, bytes] | None, bool]:
        """The witness's cosignature, if any, and whether the call was overtaken by another round's.

        A call is sent from the size the witness will hold when it arrives, as
        best known: that of the newest smaller checkpoint still in flight to it
        (an earlier round's call, sent first, usually lands first), else the
        size it last cosigned. When rounds cross, the witness refuses and says
        what it holds; the call is sent again from there, never from beyond
        this checkpoint: a witness is never asked to go backwards.
        """
        size = signed.checkpoint.size
        old = max([w.size or 0, *(s for s, _ in w.sending if s < size)])
        sending = (size, asyncio.get_running_loop().time())
        w.sending.append(sending)
        try:
            for _ in range(ASK_ATTEMPTS):
                if old > size:
                    return None, True
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
                    held = held_size(exc)
                    if held is None or held == old:
                        return None, False
                    # What it held when it refused: a call of another round may
                    # have landed since, so this is a floor, never lowered from.
                    w.size = max(w.size or 0, held)
                    old = held
                    continue
                # Calls to one witness may finish out of order (a late one from an
                # earlier round): the size it holds only ever grows.
                w.size = max(w.size or 0, size)
                if w.trust is not None:
                    try:
                        known_key(w.trust, resp.witness_key_certificate)
                    except CreditnetError as exc:
                        w.last_error = f"witness key: {exc.reason}"
                        return None, False
                w.last_error = ""
                self.witness_certs[w.name] = resp.witness_key_certificate
                try:
                    return (
                        Cosignature.parse_line(resp.cosignature.strip("\n") + "\n"),
                        resp.witness_key_certificate,
                    ), False
                except ValueError:
                    w.last_error = "malformed cosignature"
                    return None, False
            # Each refusal named another size: the witness answers, moved by
            # other rounds' calls crossing this one, which is no fault of its.
            return None, True
        finally:
            w.sending.remove(sending)

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


def _spare(spares: list[WitnessLink], now: float, delay: float) -> WitnessLink | None:
    """The next spare to ask, passing over those late with a call of an earlier round."""
    while spares:
        w = spares.pop(0)
        if not w.late(now, delay):
            return w
    return None


def _save_checkpoint(size: int, note: str, cosignatures: int, packed: bytes, conn: Connection) -> None:
    updated = conn.execute(
        update(CHAIN_CHECKPOINTS)
        .where(CHAIN_CHECKPOINTS.c.size == size, CHAIN_CHECKPOINTS.c.cosignatures <= cosignatures)
        .values(note=note, cosignatures=cosignatures, key_certificates=packed)
    ).rowcount
    exists = conn.execute(select(CHAIN_CHECKPOINTS.c.size).where(CHAIN_CHECKPOINTS.c.size == size)).first()
    if not updated and exists is None:
        conn.execute(
            insert(CHAIN_CHECKPOINTS).values(
                size=size,
                note=note,
                cosignatures=cosignatures,
                key_certificates=packed,
                signed_at=utcnow(),
            )
        )
