"""The head of the Yangtze River Delta credit chain: network checkpoints.

Every few seconds the aggregator reads the latest published checkpoint of
each city that may have changed (one it cosigned a new checkpoint of, or
relayed a query to, or could not read last time; and, in turn, every
SWEEP_ROUNDS-th city, so each is read at least every SWEEP_ROUNDS rounds),
verifies the city's signature and the witness quorum, checks it is
consistent with the last one it accepted from that city (keeping evidence if
not), and signs a network checkpoint that names every city's size and root
and the hash of the previous network checkpoint — a hash chain of tree heads.
The chain is kept in the aggregator's database (AggregatorState), where
replicas of the aggregator extend it one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from creditnet.aggregator.directory import NodeDirectory
from creditnet.aggregator.state import AggregatorState, NetworkHead
from creditnet.chain.checkpoint import CosignedCheckpoint
from creditnet.chain.keys import NETWORK_ORIGIN, LogKey
from creditnet.chain.merkle import ProofError, verify_consistency
from creditnet.chain.note import ALG_ED25519, Signer, sign_note
from creditnet.chain.receipts import ReceiptError, verify_checkpoint
from creditnet.directory.model import WitnessAssignment
from creditnet.domain import City
from creditnet.pki import TrustStore
from creditnet.v2 import chain_pb2, chain_pb2_grpc
from creditnet.witness.hedge import WitnessHealth
from creditnet.witness.server import Witness

__all__ = [
    "FETCH_TIMEOUT",
    "Fetched",
    "NetworkCheckpointer",
]

log = logging.getLogger(__name__)

INTERVAL = 2.0
# A round reads only the cities that may have changed (docs/protocol.md, "Network checkpoints at
# scale"), and 1/SWEEP_ROUNDS of the others in turn, catching changes no hint announced.
SWEEP_ROUNDS = 60
# Bounds on one city's read, and on how long a round waits for the cities
# that usually answer before it signs with what it has.
FETCH_TIMEOUT = 2.0
ROUND_WAIT = 1.0
# A city that answers these did not answer at all; any other refusal is an answer.
UNRESPONSIVE = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class Fetched:
    checkpoint: CosignedCheckpoint
    note: str
    certificates: list[bytes]
    # The city's (size, root) in the head it was checked against: it is taken
    # only into a head that still holds that (another replica may have moved on).
    against: tuple[int, bytes] | None


class NetworkCheckpointer:
    def __init__(
        self,
        directory: NodeDirectory,
        trust: TrustStore,
        log_key: LogKey,
        witness: Witness,
        state: AggregatorState,
        quorum: int,
    ) -> None:
        self.directory = directory
        self.trust = trust
        self.log_key = log_key
        self.witness = witness
        self.state = state
        self.quorum = quorum
        # Set when the aggregator holds a network directory: the witnesses it
        # assigns to a log, against which that log's checkpoints are verified.
        self.assignments: Callable[[str], WitnessAssignment | None] | None = None
        self.signer = Signer(NETWORK_ORIGIN, log_key.private_key, ALG_ED25519)
        # The committed head as this replica last read it (refreshed every round).
        self.head = NetworkHead()
        self._task: asyncio.Task[None] | None = None
        self._reading: dict[City, asyncio.Task[Fetched | None]] = {}
        self._health: collections.defaultdict[City, WitnessHealth] = collections.defaultdict(WitnessHealth)
        # Cities whose log may have grown since last read: the aggregator cosigned a new
        # checkpoint of theirs, or relayed a query to them (`hint`).
        self._hinted: set[City] = set()
        # Cities whose last read gave nothing usable: read again next round.
        self._unread: set[City] = set()
        self._rounds = 0
        self.sweep_rounds = SWEEP_ROUNDS
        # Reads started by each round, for the aggregator's metrics (None: not counted).
        self.on_round: Callable[[int], None] | None = None
        witness.advanced = self._witnessed

    def hint(self, city: City) -> None:
        """`city`'s log may have grown (a query was relayed to it): read it next round."""
        self._hinted.add(city)

    def _witnessed(self, origin: str) -> None:
        code = origin.rsplit("/", 1)[-1]
        if code.isdigit():
            self._hinted.add(City(code))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._reading.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reading.clear()

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("network checkpoint round failed")
            await asyncio.sleep(INTERVAL)

    async def _fetch(self, city: City) -> Fetched | None:
        link = self.directory.get(city)
        if link is None:
            return None
        stub = chain_pb2_grpc.ChainServiceStub(link.channel)
        try:
            resp = await stub.GetCheckpoint(chain_pb2.GetCheckpointRequest(), timeout=FETCH_TIMEOUT)
            quorum, assigned = self.quorum, None
            assignment = self.assignments(city.code) if self.assignments is not None else None
            if assignment is not None:
                quorum, assigned = assignment.quorum, assignment.witnesses
            # Signatures and certificates: off the event loop, which serves queries meanwhile.
            cp = await asyncio.to_thread(
                verify_checkpoint,
                self.trust,
                resp.checkpoint,
                list(resp.key_certificates),
                city.value,
                quorum,
                assigned=assigned,
            )
        except ReceiptError as exc:
            log.info("no checkpoint from %s this round: %s", city.value, exc)
            return None
        prev = self.head.cities.get(city.value)
        if prev is not None and cp.checkpoint.size >= prev[0]:
            if cp.checkpoint.size == prev[0] and cp.checkpoint.root_hash != prev[1]:
                await self._evidence(city, "split_view", resp.checkpoint, "same size, different root")
                return None
            if cp.checkpoint.size > prev[0]:
                try:
                    proof = await stub.GetConsistencyProof(
                        chain_pb2.GetConsistencyProofRequest(
                            first_size=prev[0], second_size=cp.checkpoint.size
                        ),
                        timeout=FETCH_TIMEOUT,
                    )
                    verify_consistency(
                        prev[0], cp.checkpoint.size, list(proof.proof), prev[1], cp.checkpoint.root_hash
                    )
                except ProofError as exc:
                    await self._evidence(city, "inconsistent", resp.checkpoint, str(exc))
                    return None
        elif prev is not None:
            await self._evidence(city, "rollback", resp.checkpoint, f"size {cp.checkpoint.size} < {prev[0]}")
            return None
        return Fetched(cp, resp.checkpoint, list(resp.key_certificates), prev)

    async def _fetch_timed(self, city: City) -> Fetched | None:
        """`_fetch`, keeping the city's health: whether it answers at all, and how fast."""
        health = self._health[city]
        loop = asyncio.get_running_loop()
        start = loop.time()
        health.asked()
        try:
            got = await self._fetch(city)
        except grpc.aio.AioRpcError as exc:
            log.info("no checkpoint from %s this round: %s", city.value, exc.code().name)
            if exc.code() in UNRESPONSIVE:
                health.failed(loop.time())
            else:
                health.answered(loop.time() - start)
            return None
        except BaseException:
            health.failed(loop.time())
            raise
        health.answered(loop.time() - start)
        return got

    async def _evidence(self, city: City, kind: str, note: str, detail: str) -> None:
        await asyncio.to_thread(
            self.witness.record_evidence,
            f"creditnet.yrd/log/{city.value}",
            kind,
            self.head.city_notes.get(city.value, ""),
            note,
            detail,
        )

    async def refresh(self) -> str:
        """One round: read every city's checkpoint and sign a network checkpoint over them.

        A city that does not answer (a frozen node holds the call until its
        timeout) must not hold back the others: the round waits only for
        cities that answered last time, and at most ROUND_WAIT; a read still
        running goes on in the background and counts in the round after it
        ends. One read per city at a time, so each is checked against the
        head it was read against.

        The head is the database's: read at the start of the round, and the
        next checkpoint is signed inside the transaction that holds it locked
        (AggregatorState.advance), chaining to the one committed there. Of two
        replicas, the one that commits second sees the first's checkpoint and
        signs only if its own reads add to it.
        """
        self.head = await asyncio.to_thread(self.state.head)
        waited: set[asyncio.Task[Fetched | None]] = set()
        members = self.directory.members()
        # The sweep is spread: each round reads every sweep_rounds-th city in turn, so that
        # every city is read at least every sweep_rounds rounds without a burst of N reads.
        sweep = (
            set(members[self._rounds % self.sweep_rounds :: self.sweep_rounds])
            if self.sweep_rounds
            else set()
        )
        self._rounds += 1
        due = self._hinted | self._unread | sweep
        self._hinted = set()
        started = 0
        for city in members:
            if city in self._reading:
                continue
            # Unchanged cities cost nothing between their turns in the sweep: the round's work
            # grows with the cities that changed, not with the network's size.
            if not (city in due or city.value not in self.head.cities):
                continue
            started += 1
            reading = asyncio.create_task(self._fetch_timed(city))
            self._reading[city] = reading
            if self._health[city].healthy:
                waited.add(reading)
        if self.on_round is not None:
            self.on_round(started)
        if waited:
            await asyncio.wait(waited, timeout=ROUND_WAIT)
        fetched: dict[str, Fetched] = {}
        for city in list(self._reading):
            task = self._reading.get(city)
            if task is None or not task.done():
                continue
            del self._reading[city]
            got = _outcome(city, task)
            if got is None:
                self._unread.add(city)
                continue
            self._unread.discard(city)
            fetched[city.value] = got
        news = {
            code: got
            for code, got in fetched.items()
            if self.head.cities.get(code)
            != (got.checkpoint.checkpoint.size, got.checkpoint.checkpoint.root_hash)
        }
        if not news and self.head.note:
            return self.head.note  # nothing to sign: no lock taken, nothing written
        codes = [c.value for c in self.directory.members()]
        self.head = await asyncio.to_thread(self.state.advance, lambda head: self._next(head, news, codes))
        return self.head.note

    def _next(
        self, committed: NetworkHead, fetched: dict[str, Fetched], members: list[str]
    ) -> NetworkHead | None:
        """The checkpoint after `committed` naming what was read, or None if it adds nothing (head locked)."""
        head = NetworkHead(
            sequence=committed.sequence,
            note=committed.note,
            city_notes=dict(committed.city_notes),
            cities=dict(committed.cities),
            city_certificates=dict(committed.city_certificates),
        )
        changed = False
        for code, got in fetched.items():
            if committed.cities.get(code) != got.against:
                continue  # checked against a head that is no longer the committed one
            cp = got.checkpoint.checkpoint
            if head.cities.get(code) != (cp.size, cp.root_hash):
                head.cities[code] = (cp.size, cp.root_hash)
                head.city_notes[code] = got.note
                head.city_certificates[code] = got.certificates
                changed = True
        if not changed and committed.note:
            return None
        prev_hash = hashlib.sha256(committed.note.encode()).digest()
        head.sequence = committed.sequence + 1
        lines = [NETWORK_ORIGIN, str(head.sequence), base64.b64encode(prev_hash).decode()]
        # One line per member city, by code: a city admitted since the
        # last round appears at size 0 until its checkpoint is read.
        for code in members:
            size, root = head.cities.get(code, (0, hashlib.sha256(b"").digest()))
            lines.append(f"{code} {size} {base64.b64encode(root).decode()}")
        head.note = sign_note("".join(f"{line}\n" for line in lines), [self.signer])
        return head


def _outcome(city: City, task: asyncio.Task[Fetched | None]) -> Fetched | None:
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is not None:
        log.error("reading the checkpoint of %s failed", city.value, exc_info=exc)
        return None
    return task.result()
