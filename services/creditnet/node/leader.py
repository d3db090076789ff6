"""A node served by several processes: the leader, the one writer, and the workers it runs.

With ``creditnet node run --workers N`` (N > 1) the ``node run`` process is
the leader. It holds everything that writes or keeps state: the store's one
writer thread, the ledger (appends, checkpoints, witness rounds), witness
duties, the membership filter, the directory. It serves no public port
itself: it runs N worker processes (creditnet.node.worker) that each bind
the node's one public port with SO_REUSEPORT and speak the same mutual TLS,
and it answers them on a Unix domain socket in a directory only its own
user may open (LeaderService of protos/creditnet/internal/v1).

A worker answers queries itself (signatures, consent, the lookup, the
signed and sealed answer: the CPU of a query) and asks the leader only to
commit the claim, entry and kept answer and for the receipt. Every other
public call it forwards whole to the leader, with the certificate its TLS
handshake verified (``PEER_CERTIFICATE``); the leader serves those calls
with the very servicers a single-process node serves, re-verifying that
certificate against the trust store (chain, validity, revocation), so every
check still runs on a verified identity and every write on the one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from creditnet.config import NodeConfig
from creditnet.dates import ts_from_proto
from creditnet.errors import Unauthenticated
from creditnet.handlers import Deserializer
from creditnet.internal.v1 import leader_pb2, leader_pb2_grpc
from creditnet.ledger.log import Ledger
from creditnet.ledger.sqlstore import KeptQueryAnswer
from creditnet.rpc import ServerHandle, start_internal_server
from creditnet.store import ClaimOutcome, ClaimRefused, QueryClaim
from creditnet.v2 import chain_pb2

__all__ = [
    "CLAIM_REFUSALS",
    "LEADER_SERVICE",
    "PEER_CERTIFICATE",
    "ForwardedPeer",
    "LeaderServicer",
    "Leading",
    "WorkerPool",
    "lead",
    "reserve_port",
]

log = logging.getLogger(__name__)

LEADER_SERVICE = leader_pb2.DESCRIPTOR.services_by_name["LeaderService"].full_name
# Metadata of a forwarded call: the PEM certificate the worker's TLS handshake verified.
PEER_CERTIFICATE = "creditnet-peer-certificate-bin"
SOCKET_NAME = "leader.sock"
# A worker that does not say it serves within this long is given up on.
READY_TIMEOUT = 60.0
# Between a worker's death and its restart; doubled (up to the cap) while restarts keep failing.
RESTART_DELAY = 0.2
MAX_RESTART_DELAY = 10.0
# A worker up this long before it died is restarted at once again.
HEALTHY_RUN = 10.0

CLAIM_REFUSALS: Mapping[ClaimOutcome, leader_pb2.ClaimRefusal.ValueType] = {
    ClaimOutcome.REPLAY: leader_pb2.CLAIM_REFUSAL_REPLAY,
    ClaimOutcome.LIMIT_EXCEEDED: leader_pb2.CLAIM_REFUSAL_LIMIT_EXCEEDED,
    ClaimOutcome.REVOKED: leader_pb2.CLAIM_REFUSAL_REVOKED,
}


class LeaderServicer(leader_pb2_grpc.LeaderServiceServicer):
    """The leader's side of LeaderService: its ledger, asked by its workers."""

    def __init__(self, ledger: Ledger, pool: WorkerPool) -> None:
        self.ledger = ledger
        self.pool = pool

    async def Append(
        self, request: leader_pb2.AppendRequest, context: grpc.aio.ServicerContext
    ) -> leader_pb2.AppendResponse:
        entry = chain_pb2.LedgerEntry.FromString(request.entry)
        uscc = request.enterprise_uscc if request.HasField("enterprise_uscc") else None
        answer = None
        if request.HasField("answer"):
            a = request.answer
            answer = KeptQueryAnswer(a.query_id, a.query_digest, a.answer)
        claim = None
        if request.HasField("claim"):
            c = request.claim
            claim = QueryClaim(
                c.query_id, c.consent_digest, c.max_uses, ts_from_proto(c.expires_at), c.query_digest
            )
        try:
            appended = await self.ledger.append(entry, uscc, answer=answer, claim=claim)
        except ClaimRefused as exc:
            return leader_pb2.AppendResponse(refused=CLAIM_REFUSALS[exc.outcome])
        self.pool.appended(request.worker_pid)
        response = leader_pb2.AppendResponse(index=appended.index, entry=appended.entry)
        if request.receipt_wait_ms:
            # The same call brings the receipt: one internal call per query, not two.
            with contextlib.suppress(TimeoutError):
                receipt = await self.ledger.receipt(
                    appended.index, appended.entry, request.receipt_wait_ms / 1000
                )
                response.receipt = receipt.SerializeToString(deterministic=True)
        return response

    async def GetReceipt(
        self, request: leader_pb2.GetReceiptRequest, context: grpc.aio.ServicerContext
    ) -> leader_pb2.GetReceiptResponse:
        try:
            receipt = await self.ledger.receipt(request.index, request.entry, request.wait_ms / 1000)
        except TimeoutError:
            return leader_pb2.GetReceiptResponse()
        return leader_pb2.GetReceiptResponse(receipt=receipt.SerializeToString(deterministic=True))

    async def GetEntry(
        self, request: leader_pb2.GetEntryRequest, context: grpc.aio.ServicerContext
    ) -> leader_pb2.GetEntryResponse:
        return leader_pb2.GetEntryResponse(entry=await self.ledger.entry(request.index))

    async def ListWorkers(
        self, request: leader_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> leader_pb2.ListWorkersResponse:
        return leader_pb2.ListWorkersResponse(workers=self.pool.describe())


class _ForwardedContext:
    """A call's context as its servicer sees it on the leader: the worker's TLS peer as the peer."""

    def __init__(self, context: grpc.aio.ServicerContext, pem: bytes) -> None:
        self._context = context
        self._auth = {"x509_pem_cert": [pem], "transport_security_type": [b"ssl"]}

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        return self._auth

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class ForwardedPeer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Outermost on the leader's socket: a forwarded public call runs as its TLS peer's.

    A call that carries no certificate is refused UNAUTHENTICATED, as on the
    public port; the servicers then verify the certificate as they would
    one from TLS (PeerIdentities: chain, validity, revocation, role).
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith((f"/{LEADER_SERVICE}/", "/grpc.")):
            return handler
        pem = next(
            (v for k, v in handler_call_details.invocation_metadata or () if k == PEER_CERTIFICATE), None
        )
        return _as_peer(handler, pem if isinstance(pem, bytes) else None)


def _as_peer(handler: grpc.RpcMethodHandler, pem: bytes | None) -> grpc.RpcMethodHandler:
    async def peer_context(context: grpc.aio.ServicerContext) -> Any:
        if pem is None:
            refusal = Unauthenticated(
                "peer.certificate", "the call has no client certificate; use mutual TLS"
            )
            await context.abort(refusal.code, refusal.reason)
        assert pem is not None
        return _ForwardedContext(context, pem)

    kinds = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for attribute, rebuild in kinds.items():
        inner = getattr(handler, attribute)
        if inner is None:
            continue
        behaviour: Callable[..., Any]
        if inspect.isasyncgenfunction(inner):

            async def streamed(request: Any, context: grpc.aio.ServicerContext, inner: Any = inner) -> Any:
                async for item in inner(request, await peer_context(context)):
                    yield item

            behaviour = streamed
        else:

            async def awaited(request: Any, context: grpc.aio.ServicerContext, inner: Any = inner) -> Any:
                return await inner(request, await peer_context(context))

            behaviour = awaited
        return rebuild(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    raise ValueError("the method handler has no behaviour to wrap")


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    appends: int = 0
    # Said "ready": its server serves the public port.
    ready: bool = False


@dataclass
class WorkerPool:
    """N worker processes, each restarted when it dies, until the pool stops."""

    count: int
    # The command line of the worker for a slot.
    argv: Callable[[int], list[str]]
    slots: list[_Slot] = field(default_factory=list)
    _stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Start every worker and wait until each serves; if one cannot, none stays running."""
        self.slots = [_Slot(i) for i in range(self.count)]
        try:
            await asyncio.gather(*(self._spawn(s) for s in self.slots))
        except BaseException:
            await self.stop(0)
            raise
        self._tasks = [asyncio.create_task(self._supervise(s)) for s in self.slots]

    def appended(self, pid: int) -> None:
        for s in self.slots:
            if s.proc is not None and s.proc.pid == pid:
                s.appends += 1

    def describe(self) -> list[leader_pb2.Worker]:
        return [
            leader_pb2.Worker(pid=s.proc.pid, slot=s.index, appends=s.appends, starts=s.starts)
            for s in self.slots
            if s.proc is not None and s.proc.returncode is None and s.ready
        ]

    async def _spawn(self, slot: _Slot) -> None:
        slot.starts += 1
        slot.appends = 0
        slot.ready = False
        proc = await asyncio.create_subprocess_exec(
            *self.argv(slot.index), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        slot.proc = proc
        assert proc.stdout is not None
        try:
            # The worker says "ready" once its server is serving; its logs go to our stderr.
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(f"worker {slot.index} did not start (exit status {proc.returncode})")
        slot.ready = True
        log.info("worker %d serving (pid %d)", slot.index, proc.pid)

    async def _supervise(self, slot: _Slot) -> None:
        delay = RESTART_DELAY
        loop = asyncio.get_running_loop()
        while True:
            assert slot.proc is not None
            started = loop.time()
            status = await slot.proc.wait()
            if self._stopping:
                return
            log.warning(
                "worker %d (pid %d) exited with status %s; restarting it", slot.index, slot.proc.pid, status
            )
            delay = (
                RESTART_DELAY if loop.time() - started > HEALTHY_RUN else min(delay * 2, MAX_RESTART_DELAY)
            )
            while not self._stopping:
                await asyncio.sleep(delay)
                try:
                    await self._spawn(slot)
                    break
                except Exception:
                    log.exception("restarting worker %d failed; trying again in %.1f s", slot.index, delay)
                    delay = min(delay * 2, MAX_RESTART_DELAY)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (each drains its calls for up to `grace` s), then SIGKILL what remains."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)

        async def ended(p: asyncio.subprocess.Process) -> None:
            try:
                await asyncio.wait_for(p.wait(), grace + 5.0)
            except TimeoutError:
                log.warning("worker pid %d did not stop in time; killing it", p.pid)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

        await asyncio.gather(*(ended(p) for p in procs))
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Bind `listen` with SO_REUSEPORT (not listening), so that every worker binds the same port.

    Held until the node stops: with port 0 it fixes the one port the workers
    share, and a port another program holds fails here, before any worker starts.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 — as the operator's listen address says
    family, kind, proto, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    return sock, f"{listen.rpartition(':')[0]}:{bound}"


@dataclass
class Leading:
    """What a leader runs besides its node: the workers, their socket and the reserved port."""

    pool: WorkerPool
    port: int
    reservation: socket.socket
    directory: tempfile.TemporaryDirectory[str]

    async def stop_workers(self, grace: float) -> None:
        await self.pool.stop(grace)

    def close(self) -> None:
        self.reservation.close()
        self.directory.cleanup()


async def lead(
    config: NodeConfig,
    workers: int,
    *,
    ledger: Ledger,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    deserializers: Mapping[str, Deserializer],
    health_listen: str | None,
    metrics_port: int | None,
    grace: float,
    verbose: bool,
) -> tuple[ServerHandle, Leading]:
    """Serve the leader's socket (LeaderService and every public service) and start `workers` workers."""
    reservation, listen = reserve_port(config.listen)
    # mkdtemp makes the directory 0700: only this user reaches the socket in it.
    private = tempfile.TemporaryDirectory(prefix=f"creditnet-{config.city.value}-")
    try:
        path = Path(private.name)
        socket_path = str(path / SOCKET_NAME)
        worker_config = path / "node.json"
        shared = dataclasses.replace(config, listen=listen)
        shared.save(worker_config)
        # It may hold the database password.
        os.chmod(worker_config, 0o600)
        pool = WorkerPool(
            workers,
            lambda slot: _worker_argv(worker_config, socket_path, slot, metrics_port, grace, verbose),
        )
        servicer = LeaderServicer(ledger, pool)

        def register_all(server: grpc.aio.Server) -> None:
            register(server)
            leader_pb2_grpc.add_LeaderServiceServicer_to_server(servicer, server)

        handle = await start_internal_server(
            path=socket_path,
            register=register_all,
            service_names=[*service_names, LEADER_SERVICE],
            interceptors=[ForwardedPeer(), *interceptors],
            health_listen=health_listen,
            deserializers=deserializers,
        )
        os.chmod(socket_path, 0o600)
        log.info("node %s leads %d workers; its socket is %s", config.city.value, workers, socket_path)
        try:
            await pool.start()
        except BaseException:
            await handle.stop(0)
            raise
    except BaseException:
        reservation.close()
        private.cleanup()
        raise
    return handle, Leading(pool, reservation.getsockname()[1], reservation, private)


def _worker_argv(
    config: Path, socket_path: str, slot: int, metrics_port: int | None, grace: float, verbose: bool
) -> list[str]:
    argv = [sys.executable, "-m", "creditnet.node.worker", "--config", str(config), "--leader", socket_path]
    argv += ["--slot", str(slot), "--grace", str(grace)]
    if metrics_port is not None:
        # Per process: the leader's metrics on the port given, worker i's on the i+1st after it.
        argv += ["--metrics-port", str(metrics_port + 1 + slot if metrics_port else 0)]
    if verbose:
        argv.append("--verbose")
    return argv
