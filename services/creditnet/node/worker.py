"""A worker process of a node run with ``--workers N`` (see creditnet.node.leader).

It serves the node's public port beside the other workers (SO_REUSEPORT),
with the node's own TLS identity, limits, metrics, health and reflection.
Queries it answers itself, through a read-only use of the node's database,
asking the leader only to commit (:class:`LeaderLink`); every other public
call it forwards whole to the leader with the peer certificate its TLS
handshake verified. It writes nothing to the database itself.

Run by the leader as ``python -m creditnet.node.worker``; it prints
``ready`` on stdout once it serves, and stops when the leader does (SIGTERM,
draining its calls) or when the leader is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from creditnet.channels import MAX_RECEIVE_BYTES, MAX_SEND_BYTES
from creditnet.config import NodeConfig
from creditnet.dates import ts_to_proto
from creditnet.directory.serving import SERVICE_NAME as DIRECTORY_SERVICE
from creditnet.directory.serving import DirectoryGate, follow_file, revocation_check
from creditnet.directory.verify import DirectoryHolder
from creditnet.errors import Unauthenticated, Unavailable
from creditnet.internal.v1 import leader_pb2, leader_pb2_grpc
from creditnet.ledger.log import Appended
from creditnet.ledger.sqlstore import KeptQueryAnswer
from creditnet.limits import Limits
from creditnet.limits import server_interceptors as limit_interceptors
from creditnet.node.leader import PEER_CERTIFICATE
from creditnet.node.service import RECEIPT_WAIT, CityNodeService
from creditnet.observability import NodeMetrics, server_interceptors
from creditnet.pki import Identity, TrustStore
from creditnet.rpc import start_server
from creditnet.store import AsyncStore, ClaimOutcome, ClaimRefused, QueryClaim
from creditnet.v2 import chain_pb2, directory_service_pb2, node_pb2
from creditnet.workerpool import worker_parser, worker_process, worker_stop

__all__ = [
    "FollowedDirectory",
    "LeaderLink",
    "forwarding_handler",
    "main",
    "serve_worker",
]

log = logging.getLogger(__name__)

# Served here: the query's CPU. Everything else the node serves goes to the leader.
QUERY = "Query"
# How often a worker looks for a directory its leader accepted.
DIRECTORY_CHECK = 1.0
# A receipt is asked with the caller's wait; the internal call is given this much more.
RECEIPT_SLACK = 5.0
# Receipts that came with their query's append, kept until the query asks (a bound, not a cache policy).
MAX_EARLY_RECEIPTS = 10_000
# Not forwarded from the caller's metadata: HTTP/2 and gRPC's own, and the
# certificate header, which only this process sets (from its TLS handshake).
_NOT_FORWARDED = ("grpc-", ":")
_NOT_FORWARDED_KEYS = frozenset({"user-agent", "te", "content-type", "host", PEER_CERTIFICATE})
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", max(MAX_RECEIVE_BYTES, MAX_SEND_BYTES)),
    ("grpc.max_send_message_length", max(MAX_RECEIVE_BYTES, MAX_SEND_BYTES)),
]
# When the query being answered must be replied to (time.monotonic(); None: no deadline).
_REPLY_BY: ContextVar[float | None] = ContextVar("reply_by", default=None)
# Left for the reply after the receipt wait (as the service leaves).
_REPLY_MARGIN = 0.05
_OUTCOMES = {
    leader_pb2.CLAIM_REFUSAL_REPLAY: ClaimOutcome.REPLAY,
    leader_pb2.CLAIM_REFUSAL_LIMIT_EXCEEDED: ClaimOutcome.LIMIT_EXCEEDED,
    leader_pb2.CLAIM_REFUSAL_REVOKED: ClaimOutcome.REVOKED,
}


def _leader_gone(exc: grpc.aio.AioRpcError) -> Unavailable:
    # Whether an append the leader was asked for committed is unknown: a
    # retry of the same query gets its kept answer, or answers it once.
    log.warning("the leader did not answer: %s %s", exc.code().name, exc.details())
    return Unavailable("node.restarting", "the node is restarting; retry")


class LeaderLink:
    """The leader's ledger, as :class:`creditnet.node.service.ChainWriter`: every write is the leader's."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = leader_pb2_grpc.LeaderServiceStub(channel)
        self.pid = os.getpid()
        # By ledger index: the receipt (empty: none in time) a query's append brought.
        self._early: dict[int, bytes] = {}

    async def append(
        self,
        entry: chain_pb2.LedgerEntry,
        uscc: str | None = None,
        *,
        answer: KeptQueryAnswer | None = None,
        claim: QueryClaim | None = None,
    ) -> Appended:
        request = leader_pb2.AppendRequest(
            entry=entry.SerializeToString(deterministic=True), worker_pid=self.pid
        )
        if uscc is not None:
            request.enterprise_uscc = uscc
        if answer is not None:
            request.answer.CopyFrom(
                leader_pb2.KeptAnswer(
                    query_id=answer.query_id, query_digest=answer.query_digest, answer=answer.answer
                )
            )
            # A query's answer: its receipt comes back with the commit (the service
            # asks for it next), waited for as long as the caller's deadline allows.
            by = _REPLY_BY.get()
            wait = RECEIPT_WAIT if by is None else min(RECEIPT_WAIT, by - time.monotonic() - _REPLY_MARGIN)
            request.receipt_wait_ms = max(0, int(wait * 1000))
        if claim is not None:
            request.claim.CopyFrom(
                leader_pb2.QueryClaim(
                    query_id=claim.query_id,
                    consent_digest=claim.consent_digest,
                    max_uses=claim.max_uses,
                    expires_at=ts_to_proto(claim.expires_at),
                    query_digest=claim.query_digest or b"",
                )
            )
        try:
            # No deadline: an append once asked for is not withdrawn (as Ledger.append).
            response = await self.stub.Append(request)
        except grpc.aio.AioRpcError as exc:
            raise _leader_gone(exc) from None
        if response.refused:
            raise ClaimRefused(_OUTCOMES[response.refused])
        if request.receipt_wait_ms:
            if len(self._early) >= MAX_EARLY_RECEIPTS:
                self._early.clear()
            self._early[response.index] = response.receipt
        # The salt stays with the leader, which committed the entry.
        return Appended(index=response.index, salt=b"", entry=response.entry)

    async def receipt(self, index: int, entry: bytes, timeout: float) -> chain_pb2.Receipt:
        early = self._early.pop(index, None)
        if early:
            return chain_pb2.Receipt.FromString(early)
        # None came with the append in the time its first caller had: this caller may have more.
        request = leader_pb2.GetReceiptRequest(index=index, entry=entry, wait_ms=int(timeout * 1000))
        try:
            response = await self.stub.GetReceipt(request, timeout=timeout + RECEIPT_SLACK)
        except grpc.aio.AioRpcError as exc:
            raise _leader_gone(exc) from None
        if not response.receipt:
            raise TimeoutError("no cosigned checkpoint covers this entry yet")
        return chain_pb2.Receipt.FromString(response.receipt)

    async def entry(self, index: int) -> bytes:
        try:
            response = await self.stub.GetEntry(leader_pb2.GetEntryRequest(index=index))
        except grpc.aio.AioRpcError as exc:
            raise _leader_gone(exc) from None
        return bytes(response.entry)


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str | bytes]] | None:
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    metadata: list[tuple[str, str | bytes]] = [
        (k, v)
        for k, v in context.invocation_metadata() or ()
        if not k.startswith(_NOT_FORWARDED) and k not in _NOT_FORWARDED_KEYS
    ]
    metadata.append((PEER_CERTIFICATE, pems[0]))
    return metadata


async def _refuse_unauthenticated(context: grpc.aio.ServicerContext) -> None:
    refusal = Unauthenticated("peer.certificate", "the call has no client certificate; use mutual TLS")
    await context.abort(refusal.code, refusal.reason)


async def _relay_failure(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError) -> None:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and not exc.details():
        await context.abort(grpc.StatusCode.UNAVAILABLE, "node.restarting: the node is restarting; retry")
    # The refusal as the leader gave it; gRPC's own trailers are gRPC's to set.
    trailers = tuple((k, v) for k, v in exc.trailing_metadata() or () if not k.startswith(_NOT_FORWARDED))
    await context.abort(exc.code(), exc.details() or "", trailers)


def forwarding_handler(
    channel: grpc.aio.Channel, services: Sequence[ServiceDescriptor], *, keep: frozenset[str]
) -> grpc.GenericRpcHandler:
    """Every method of `services` but those in `keep` ("/service/method"), relayed as bytes to the leader."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for service in services:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if path not in keep:
                handlers[path] = _relay(channel, path, method.client_streaming, method.server_streaming)

    class Forwarding(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return handlers.get(handler_call_details.method)

    return Forwarding()


async def _relay_stream(requests: AsyncIterator[bytes], call: Any) -> None:
    try:
        # Nothing is written before the leader has authorized the call (its
        # servicer sends initial metadata then): a message written as the
        # leader refuses fails the call INTERNAL on our side, and that, not
        # the leader's refusal, is what the caller would get.
        await call.initial_metadata()
        if call.done():
            return
        async for item in requests:
            await call.write(item)
        await call.done_writing()
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError, grpc.aio.UsageError):
        # The leader ended the call (a refusal, or its answer before the stream's end):
        # the call's own outcome is what the caller gets.
        return


def _relay(channel: grpc.aio.Channel, path: str, client_streaming: bool, server_streaming: bool) -> Any:
    if server_streaming:
        out = channel.stream_stream(path) if client_streaming else channel.unary_stream(path)

        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            metadata = _forwarded_metadata(context)
            if metadata is None:
                await _refuse_unauthenticated(context)
            call = out(request, metadata=metadata, timeout=context.time_remaining())
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as exc:
                await _relay_failure(context, exc)

        rebuild = (
            grpc.stream_stream_rpc_method_handler
            if client_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return rebuild(streamed)
    single = channel.stream_unary(path) if client_streaming else channel.unary_unary(path)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> bytes:
        metadata = _forwarded_metadata(context)
        if metadata is None:
            await _refuse_unauthenticated(context)
        timeout = context.time_remaining()
        if not client_streaming:
            try:
                response: bytes = await single(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                await _relay_failure(context, exc)
                raise AssertionError("unreachable: abort raises") from exc
            return response
        # The caller's stream is relayed by a task of ours, stopped before this
        # call ends: a stream still being read when the call is refused fails
        # it INTERNAL instead of with the leader's refusal. A client-streaming
        # servicer of the leader sends initial metadata once it has authorized
        # the call (see _relay_stream).
        call = single(metadata=metadata, timeout=timeout)
        relaying = asyncio.create_task(_relay_stream(request, call))
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            relaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relaying
            await _relay_failure(context, exc)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            if not relaying.done():
                relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        return response

    rebuild = (
        grpc.stream_unary_rpc_method_handler if client_streaming else grpc.unary_unary_rpc_method_handler
    )
    return rebuild(unary)


class FollowedDirectory:
    """The network directory as the leader holds it, verified again here.

    The leader's refresher alone fetches directories and writes its state
    file; a worker reads that file when it changes and offers it to a
    holder of its own (kept in `copy`, never the leader's file), which
    verifies it as any holder does (signatures, a version no older than the
    one held). The worker's TLS peers are checked against it: revoked
    certificates (the trust store's revocation check) and the directory gate.
    """

    def __init__(self, source: Path, copy: Path, trust: TrustStore) -> None:
        self.source = source
        copy.write_bytes(source.read_bytes())
        # Governance signers are checked against the directories themselves (as serve_directory does).
        self.holder = DirectoryHolder(copy, TrustStore(trust.ca_cert))
        if self.holder.current is None:
            raise ValueError(f"the leader's directory {source} does not verify")
        trust.revocation = revocation_check(self.holder)
        self.gate = DirectoryGate(self.holder, trust)

    async def follow(self, stop: asyncio.Event) -> None:
        await follow_file(self.source, self.holder, stop, DIRECTORY_CHECK)


async def serve_worker(
    config: NodeConfig,
    leader: str,
    *,
    limits: Limits,
    metrics_port: int | None = None,
    grace: float = 5.0,
    slot: int = 0,
    stop: asyncio.Event,
) -> None:
    """Serve `config`'s public port beside the other workers until `stop` is set, then drain."""
    from creditnet.node.server import CHAIN_SERVICES, SERVICE_NAME, public_services

    identity = Identity.load(config.cert, config.key)
    trust = TrustStore.load(config.ca)
    directory = None
    if config.directory is not None:
        copy = Path(leader).parent / f"directory-{slot}.pb"
        directory = await asyncio.to_thread(FollowedDirectory, config.directory.state, copy, trust)
    store = await AsyncStore.open(config.database_url)
    channel = grpc.aio.insecure_channel(f"unix:{leader}", options=CHANNEL_OPTIONS)
    metrics = NodeMetrics(config.city)
    try:
        service = CityNodeService(
            city=config.city,
            identity=identity,
            trust=trust,
            store=store,
            ledger=LeaderLink(channel),
            metrics=metrics,
        )
        query = f"/{SERVICE_NAME}/{QUERY}"

        async def answer(request: node_pb2.QueryRequest, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            # Copied into the query's settling task: how long the leader may wait for its receipt.
            _REPLY_BY.set(None if remaining is None else time.monotonic() + remaining)
            return await service.Query(request, context)

        local = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                QUERY: grpc.unary_unary_rpc_method_handler(
                    answer,
                    request_deserializer=node_pb2.QueryRequest.FromString,
                    response_serializer=node_pb2.QueryResponse.SerializeToString,
                )
            },
        )
        services = public_services()
        if directory is not None:
            services.append(directory_service_pb2.DESCRIPTOR.services_by_name["DirectoryService"])
        forwarding = forwarding_handler(channel, services, keep=frozenset({query}))

        def register(server: grpc.aio.Server) -> None:
            server.add_generic_rpc_handlers((local, forwarding))

        handle = await start_server(
            listen=config.listen,
            identity=identity,
            trust=trust,
            register=register,
            service_names=[SERVICE_NAME, *CHAIN_SERVICES, *([DIRECTORY_SERVICE] if directory else [])],
            interceptors=[
                *server_interceptors(metrics),
                *limit_interceptors(limits, trust),
                *([directory.gate] if directory else []),
            ],
            maximum_concurrent_rpcs=limits.hard_cap,
            reuse_port=True,
        )
        if metrics_port is not None:
            endpoint = metrics.serve(metrics_port)
            log.info("worker pid %d metrics on http://0.0.0.0:%d/metrics", os.getpid(), endpoint.port)
        following = None if directory is None else asyncio.create_task(directory.follow(stop))
        print("ready", flush=True)
        await stop.wait()
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await handle.stop(grace)
        await service.drain(grace)
    finally:
        await channel.close()
        await store.close()
        metrics.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = worker_parser("creditnet.node.worker", __doc__)
    parser.add_argument("--leader", required=True, help="the leader's Unix socket")
    args = parser.parse_args(argv)
    worker_process(args, "worker")
    config = NodeConfig.load(args.config)

    async def run() -> None:
        await serve_worker(
            config,
            args.leader,
            limits=Limits.from_env(),
            metrics_port=args.metrics_port,
            grace=args.grace,
            slot=args.slot,
            stop=worker_stop(),
        )

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
