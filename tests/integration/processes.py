"""A city node run as its own operating-system process on a database of the
test's choosing (SQLite file or PostgreSQL), for tests that freeze, kill and
restart it, or start a second one beside it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from sqlalchemy import create_engine, text

from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.config import NodeConfig
from creditnet.domain import City, Purpose
from creditnet.health import wait_serving
from creditnet.network import NetworkLayout, free_port
from creditnet.pki import TrustStore, node_server_name
from creditnet.store import Store
from creditnet.store.lock import DatabaseInUse, WriterLock
from creditnet.store.scratch import ScratchDatabases
from creditnet.v2 import chain_pb2, chain_pb2_grpc, envelope_pb2, node_pb2, node_pb2_grpc, query_pb2
from tests.integration.conftest import SQLITE

REPO = Path(__file__).resolve().parents[2]
# A bound against hanging, never a timing assertion.
PATIENCE = 60.0


def fresh_database(database: str, name: str, tmp_path: Path, scratch: ScratchDatabases | None) -> str:
    """An empty database at the current schema, of the backend under test."""
    if database == SQLITE:
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
    else:
        assert scratch is not None
        url = scratch.create(name)
    Store.open(url, migrate=True).close()
    return url


@dataclass
class NodeProcess:
    """`creditnet node run` of one city on `url`, with the credit chain on and
    no witnesses (quorum 0): it cosigns nothing with the test network's nodes,
    whose logs of that city are others. It holds no network directory, whose
    witness assignment would otherwise name those nodes."""

    layout: NetworkLayout
    city: City
    url: str
    root: Path
    listen: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # `node run --workers`: with more than one, this process leads worker processes.
    workers: int = 1
    # Keep the layout's network directory (its witness assignment then names
    # the layout's other nodes: answers wait for cosignatures that never come).
    directory: bool = False

    def start(self, listen: str | None = None) -> subprocess.Popen[bytes]:
        cfg = NodeConfig.load(self.layout.node_config(self.city))
        cfg.listen = listen or self.listen
        cfg.database_url = self.url
        cfg.witnesses = {}
        cfg.quorum = 0
        if not self.directory:
            cfg.directory = None
        cfg.chain_enabled = True
        self.starts += 1
        path = self.root / f"{self.city.value}-{self.starts}.json"
        cfg.save(path)
        with open(self.log_path(self.starts), "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "creditnet", "node", "run", "--config", str(path)]
                + (["--workers", str(self.workers)] if self.workers > 1 else []),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if listen is None:
            self.proc = proc
        return proc

    def log_path(self, start: int) -> Path:
        return self.root / f"{self.city.value}-{start}.log"

    async def serving(self) -> None:
        await wait_serving(
            self.listen,
            node_server_name(self.city),
            self.layout.bank(),
            self.layout.ca,
            timeout=PATIENCE,
            process=self.proc,
        )

    def running(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None and self.proc.poll() is None
        return self.proc

    def freeze(self) -> None:
        self.running().send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.running().send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL, then wait until its database is free for the next one."""
        proc = self.running()
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        await asyncio.to_thread(proc.wait, PATIENCE)
        await database_free(self.url)

    async def stop(self) -> int:
        proc = self.running()
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        return await asyncio.to_thread(proc.wait, PATIENCE)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(PATIENCE)

    async def ask(
        self, query: envelope_pb2.SignedEnvelope, trust: TrustStore, timeout: float = 10.0
    ) -> node_pb2.QueryResponse:
        async with secure_channel(self.listen, self.layout.bank(), trust, node_server_name(self.city)) as ch:
            return await node_pb2_grpc.CityNodeServiceStub(ch).Query(
                node_pb2.QueryRequest(query=query), timeout=timeout
            )

    async def outcome(
        self, query: envelope_pb2.SignedEnvelope, trust: TrustStore, timeout: float = 10.0
    ) -> str:
        """``ok``, or the rule id of the refusal, or the status of a failed call."""
        try:
            await self.ask(query, trust, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                return exc.code().name
            return (exc.details() or "").split(":")[0]
        return "ok"

    async def entries(self, trust: TrustStore) -> list[chain_pb2.LedgerEntry]:
        async with secure_channel(self.listen, self.layout.bank(), trust, node_server_name(self.city)) as ch:
            stub = chain_pb2_grpc.ChainServiceStub(ch)
            return [
                chain_pb2.LedgerEntry.FromString(item.entry)
                async for item in stub.GetEntries(chain_pb2.GetEntriesRequest(), timeout=10)
            ]


async def database_free(url: str) -> None:
    """Wait until no node process holds the database (a killed one's
    PostgreSQL session ends a moment after the process)."""
    for _ in range(int(PATIENCE / 0.1)):
        try:
            lock = await asyncio.to_thread(WriterLock.acquire, url)
        except DatabaseInUse:
            await asyncio.sleep(0.1)
            continue
        await asyncio.to_thread(lock.release)
        return
    raise AssertionError(f"the database {url} is still held by a node process")


def unanswered_claims(url: str) -> int:
    """Query ids whose use is spent with no kept answer or ledger entry."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM query_uses WHERE answer IS NULL OR ledger_index IS NULL")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def claims(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM query_uses")).scalar_one())
    finally:
        engine.dispose()


def query(
    layout: NetworkLayout, grant: envelope_pb2.SignedEnvelope, city: City, query_id: str | None = None
) -> envelope_pb2.SignedEnvelope:
    """The demo bank's signed query about the demo enterprise, asking `city` alone."""
    return query_mod.build(
        layout.bank(),
        grant,
        enterprise_uscc=layout.demo_enterprise,
        purpose=Purpose.LOAN_APPLICATION,
        cities=(city,),
        query_id=query_id,
    )


def query_id(q: envelope_pb2.SignedEnvelope) -> str:
    return query_pb2.CreditQuery.FromString(q.payload).query_id
