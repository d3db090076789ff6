"""The head of the Yangtze River Delta credit chain: network checkpoints.

Every few seconds the aggregator reads the latest published checkpoint of
each city that may have changed (one it cosigned a new checkpoint of, or
relayed a query to, or could not read last time; and, in turn, every
SWEEP_ROUNDS-th city, so each is read at least every SWEEP_ROUNDS rounds),
verifies the city's signature and the witness quorum, checks it is
consistent with the last one it accepted from that city (keeping evidence if
not), and signs a network checkpoint that names every city's size and root
and the hash of the previous network checkpoint — a hash chain of tree heads.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from creditnet.aggregator.directory import NodeDirectory
from creditnet.chain.checkpoint import CosignedCheckpoint
from creditnet.chain.hedge import WitnessHealth
from creditnet.chain.keys import NETWORK_ORIGIN, LogKey
from creditnet.chain.merkle import ProofError, verify_consistency
from creditnet.chain.note import ALG_ED25519, Signer, sign_note
from creditnet.chain.receipts import ReceiptError, verify_checkpoint
from creditnet.chain.witness import Witness
from creditnet.directory.model import WitnessAssignment
from creditnet.domain import City
from creditnet.pki import TrustStore
from creditnet.v2 import chain_pb2, chain_pb2_grpc

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


@dataclass
class NetworkHead:
    sequence: int = 0
    note: str = ""
    city_notes: dict[str, str] = field(default_factory=dict)
    cities: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # The log-key certificates each city's checkpoint came with (its own and
    # its witnesses'), so that GetNetworkCheckpoint is verifiable on its own.
    city_certificates: dict[str, list[bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fetched:
    checkpoint: CosignedCheckpoint
    note: str
    certificates: list[bytes]


class NetworkCheckpointer:
    def __init__(
        self,
        directory: NodeDirectory,
        trust: TrustStore,
        log_key: LogKey,
        witness: Witness,
        state_file: Path,
        quorum: int,
    ) -> None:
        self.directory = directory
        self.trust = trust
        self.log_key = log_key
        self.witness = witness
        self.state_file = state_file
        self.quorum = quorum
        # Set when the aggregator holds a network directory: the witnesses it
        # assigns to a log, against which that log's checkpoints are verified.
        self.assignments: Callable[[str], WitnessAssignment | None] | None = None
        self.signer = Signer(NETWORK_ORIGIN, log_key.private_key, ALG_ED25519)
        self.head = self._load()
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

    def _load(self) -> NetworkHead:
        if not self.state_file.exists():
            return NetworkHead()
        data = json.loads(self.state_file.read_text())
        return NetworkHead(
            sequence=int(data["sequence"]),
            note=str(data["note"]),
            city_notes=dict(data["city_notes"]),
            cities={k: (int(v[0]), base64.b64decode(v[1])) for k, v in data["cities"].items()},
            city_certificates={
                k: [base64.b64decode(c) for c in v] for k, v in data.get("city_certificates", {}).items()
            },
        )

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "sequence": self.head.sequence,
                    "note": self.head.note,
                    "city_notes": self.head.city_notes,
                    "cities": {
                        k: [v[0], base64.b64encode(v[1]).decode()] for k, v in self.head.cities.items()
                    },
                    "city_certificates": {
                        k: [base64.b64encode(c).decode() for c in v]
                        for k, v in self.head.city_certificates.items()
                    },
                }
            )
        )
        os.replace(tmp, self.state_file)

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
        return Fetched(cp, resp.checkpoint, list(resp.key_certificates))

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
        """
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
        # From here to the new note nothing awaits: GetNetworkCheckpoint never
        # sees a city's checkpoint that the note it serves does not name.
        changed = False
        for city in list(self._reading):
            task = self._reading.get(city)
            if task is None or not task.done():
                continue
            del self._reading[city]
            fetched = _outcome(city, task)
            if fetched is None:
                self._unread.add(city)
                continue
            self._unread.discard(city)
            cp = fetched.checkpoint
            if self.head.cities.get(city.value) != (cp.checkpoint.size, cp.checkpoint.root_hash):
                self.head.cities[city.value] = (cp.checkpoint.size, cp.checkpoint.root_hash)
                changed = True
            self.head.city_notes[city.value] = fetched.note
            self.head.city_certificates[city.value] = fetched.certificates
        if changed or not self.head.note:
            prev_hash = hashlib.sha256(self.head.note.encode()).digest()
            seq = self.head.sequence + 1
            lines = [NETWORK_ORIGIN, str(seq), base64.b64encode(prev_hash).decode()]
            # One line per member city, by code: a city admitted since the
            # last round appears at size 0 until its checkpoint is read.
            for c in self.directory.members():
                size, root = self.head.cities.get(c.value, (0, hashlib.sha256(b"").digest()))
                lines.append(f"{c.value} {size} {base64.b64encode(root).decode()}")
            note = sign_note("".join(f"{line}\n" for line in lines), [self.signer])
            self.head.sequence, self.head.note = seq, note
            await asyncio.to_thread(self._save)
        return self.head.note


def _outcome(city: City, task: asyncio.Task[Fetched | None]) -> Fetched | None:
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is not None:
        log.error("reading the checkpoint of %s failed", city.value, exc_info=exc)
        return None
    return task.result()
