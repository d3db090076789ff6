"""The head of the Yangtze River Delta credit chain: network checkpoints.

Every few seconds the aggregator reads each city's latest published
checkpoint, verifies the city's signature and the witness quorum, checks it is
consistent with the last one it accepted from that city (keeping evidence if
not), and signs a network checkpoint that names every city's size and root
and the hash of the previous network checkpoint — a hash chain of tree heads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from creditnet.aggregator.directory import NodeDirectory
from creditnet.chain.checkpoint import CosignedCheckpoint
from creditnet.chain.keys import NETWORK_ORIGIN, LogKey
from creditnet.chain.merkle import ProofError, verify_consistency
from creditnet.chain.note import ALG_ED25519, Signer, sign_note
from creditnet.chain.receipts import ReceiptError, verify_checkpoint
from creditnet.chain.witness import Witness
from creditnet.domain import City
from creditnet.pki import TrustStore
from creditnet.v1 import chain_pb2, chain_pb2_grpc

log = logging.getLogger(__name__)

INTERVAL = 2.0


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
        self.signer = Signer(NETWORK_ORIGIN, log_key.private_key, ALG_ED25519)
        self.head = self._load()
        self._task: asyncio.Task[None] | None = None

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

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
            resp = await stub.GetCheckpoint(chain_pb2.GetCheckpointRequest(), timeout=2)
            cp = verify_checkpoint(
                self.trust, resp.checkpoint, list(resp.key_certificates), city.value, self.quorum
            )
        except (grpc.aio.AioRpcError, ReceiptError) as exc:
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
                        timeout=2,
                    )
                    verify_consistency(
                        prev[0], cp.checkpoint.size, list(proof.proof), prev[1], cp.checkpoint.root_hash
                    )
                except ProofError as exc:
                    await self._evidence(city, "inconsistent", resp.checkpoint, str(exc))
                    return None
                except grpc.aio.AioRpcError:
                    return None
        elif prev is not None:
            await self._evidence(city, "rollback", resp.checkpoint, f"size {cp.checkpoint.size} < {prev[0]}")
            return None
        return Fetched(cp, resp.checkpoint, list(resp.key_certificates))

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
        results = await asyncio.gather(*(self._fetch(c) for c in City))
        # From here to the new note nothing awaits: GetNetworkCheckpoint never
        # sees a city's checkpoint that the note it serves does not name.
        changed = False
        for city, got in zip(City, results, strict=True):
            if got is None:
                continue
            head = (got.checkpoint.checkpoint.size, got.checkpoint.checkpoint.root_hash)
            if self.head.cities.get(city.value) != head:
                self.head.cities[city.value] = head
                changed = True
            self.head.city_notes[city.value] = got.note
            self.head.city_certificates[city.value] = got.certificates
        if changed or not self.head.note:
            prev_hash = hashlib.sha256(self.head.note.encode()).digest()
            seq = self.head.sequence + 1
            lines = [NETWORK_ORIGIN, str(seq), base64.b64encode(prev_hash).decode()]
            for c in City:
                size, root = self.head.cities.get(c.value, (0, hashlib.sha256(b"").digest()))
                lines.append(f"{c.value} {size} {base64.b64encode(root).decode()}")
            note = sign_note("".join(f"{line}\n" for line in lines), [self.signer])
            self.head.sequence, self.head.note = seq, note
            await asyncio.to_thread(self._save)
        return self.head.note
