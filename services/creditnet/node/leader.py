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

import contextlib
import dataclasses
import inspect
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from creditnet.workerpool import WorkerPool, WorkerSite, worker_argv

__all__ = [
    "CLAIM_REFUSALS",
    "LEADER_SERVICE",
    "PEER_CERTIFICATE",
    "ForwardedPeer",
    "LeaderServicer",
    "Leading",
    "lead",
]

log = logging.getLogger(__name__)

LEADER_SERVICE = leader_pb2.DESCRIPTOR.services_by_name["LeaderService"].full_name
# Metadata of a forwarded call: the PEM certificate the worker's TLS handshake verified.
PEER_CERTIFICATE = "creditnet-peer-certificate-bin"
SOCKET_NAME = "leader.sock"

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
        # Appends by worker pid (a restarted worker is a new pid, and starts at 0).
        self.appends: Counter[int] = Counter()

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
        self.appends[request.worker_pid] += 1
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
        return leader_pb2.ListWorkersResponse(
            workers=[
                leader_pb2.Worker(
                    pid=s.proc.pid, slot=s.index, appends=self.appends[s.proc.pid], starts=s.starts
                )
                for s in self.pool.serving()
                if s.proc is not None
            ]
        )


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
class Leading:
    """What a leader runs besides its node: the workers, their socket and the reserved port."""

    pool: WorkerPool
    site: WorkerSite

    @property
    def port(self) -> int:
        return self.site.port

    async def stop_workers(self, grace: float) -> None:
        await self.pool.stop(grace)

    def close(self) -> None:
        self.site.close()


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
    # 0700: only this user reaches the socket in it.
    site = WorkerSite.open(config.listen, f"creditnet-{config.city.value}-")
    try:
        socket_path = str(site.path / SOCKET_NAME)
        worker_config = site.save_config("node.json", dataclasses.replace(config, listen=site.listen).save)
        pool = WorkerPool(
            workers,
            lambda slot: worker_argv(
                "creditnet.node.worker",
                worker_config,
                slot,
                metrics_port=metrics_port,
                grace=grace,
                verbose=verbose,
                extra=("--leader", socket_path),
            ),
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
        site.close()
        raise
    return handle, Leading(pool, site)
