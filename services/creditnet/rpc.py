"""gRPC plumbing shared by every server and client: mTLS, limits, health,
reflection, peer identity and the mapping of refusals to status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from creditnet.channels import MAX_RECEIVE_BYTES, MAX_SEND_BYTES
from creditnet.errors import CreditnetError, PermissionDenied, Unauthenticated
from creditnet.handlers import Deserializer, refuse_undecodable
from creditnet.pki import Identity, Role, RoleKind, TrustStore, VerifiedCert

__all__ = [
    "INTERNAL_DETAILS",
    "REUSE_PORT_OPTIONS",
    "SERVER_OPTIONS",
    "PeerIdentities",
    "RequestDecoding",
    "ServerHandle",
    "enable_reflection",
    "refusals",
    "server_credentials",
    "start_internal_server",
    "start_server",
    "taken",
]

log = logging.getLogger(__name__)

# What a creditnet server says of its own failures (INTERNAL): never more.
INTERNAL_DETAILS = "internal error; the operator has the details"

# Servers take small requests and may send large answers (a federated report
# holds five cities' records); clients the other way round (`creditnet.channels`).
SERVER_LIMITS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
]

SERVER_OPTIONS: list[tuple[str, Any]] = [
    *SERVER_LIMITS,
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]
REUSE_PORT_OPTIONS: list[tuple[str, Any]] = [
    *(o for o in SERVER_OPTIONS if o[0] != "grpc.so_reuseport"),
    ("grpc.so_reuseport", 1),
]


# grpcio-reflection ships only v1alpha; grpc.reflection.v1 is the same protocol
# (identical messages and field numbers) under another package, which current
# clients (grpcurl, Postman, grpc-java's ProtoReflectionService) ask first.
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1ALPHA_PACKAGE = reflection_v1alpha_pb2.DESCRIPTOR.package


def _describe_reflection_v1() -> None:
    """Add grpc/reflection/v1/reflection.proto to the default pool, so v1 describes itself."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1_SERVICE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")
    old, new = f".{_V1ALPHA_PACKAGE}.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for fld in message.field:
            if fld.HasField("type_name"):
                fld.type_name = fld.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve server reflection as both grpc.reflection.v1 and grpc.reflection.v1alpha."""
    _describe_reflection_v1()
    names = [*service_names, REFLECTION_V1_SERVICE, reflection.SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # The v1alpha message classes encode v1 messages byte for byte.
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )


def server_credentials(identity: Identity, trust: TrustStore) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=trust.ca_pem,
        require_client_auth=True,
    )


class RequestDecoding(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requests that do not decode are refused INVALID_ARGUMENT request.malformed, on every method.

    `deserializers` read the requests of the methods they name instead of
    the generated ones (the path is ``/package.Service/Method``).
    """

    def __init__(self, deserializers: Mapping[str, Deserializer] | None = None) -> None:
        self.deserializers = dict(deserializers or {})

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return refuse_undecodable(handler, self.deserializers.get(handler_call_details.method))


@dataclass
class ServerHandle:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    # Plaintext, health-only server for orchestrators' native gRPC probes.
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


async def start_server(
    *,
    listen: str,
    identity: Identity,
    trust: TrustStore,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    maximum_concurrent_rpcs: int | None = None,
    health_listen: str | None = None,
    deserializers: Mapping[str, Deserializer] | None = None,
    reuse_port: bool = False,
) -> ServerHandle:
    """Start a grpc.aio server with health checking and reflection.

    There is no plaintext mode: every server of the network speaks mutual
    TLS with certificates from the network CA. The one exception is
    `health_listen`: a second port that serves only grpc.health.v1 in
    plaintext, for Kubernetes' native gRPC probes (which cannot do mTLS). It
    discloses nothing but SERVING/NOT_SERVING.

    Every method of every server refuses a request that does not decode with
    INVALID_ARGUMENT ``request.malformed`` (innermost, so the interceptors
    given count and limit such calls like any other); `deserializers`
    replace the generated deserializers of the methods they name.

    With `reuse_port` the port (and `health_listen`) is bound with
    SO_REUSEPORT, for the worker processes of one server that serve one port
    together (the kernel spreads connections over them); off otherwise, so
    that a second server started on a port in use fails instead of sharing it.
    """
    return await _serve(
        options=REUSE_PORT_OPTIONS if reuse_port else SERVER_OPTIONS,
        bind=lambda server: server.add_secure_port(listen, server_credentials(identity, trust)),
        where=listen,
        register=register,
        service_names=service_names,
        interceptors=interceptors,
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        health_listen=health_listen,
        deserializers=deserializers,
    )


async def start_internal_server(
    *,
    path: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    health_listen: str | None = None,
    deserializers: Mapping[str, Deserializer] | None = None,
) -> ServerHandle:
    """Start a grpc.aio server on the Unix domain socket `path`, with health checking and reflection.

    For the processes of one node only, never for the network: there is no
    TLS, and who may connect is decided by the socket's file mode (the
    caller makes its directory private to its own user). `health_listen` as
    in :func:`start_server`.
    """
    handle = await _serve(
        options=SERVER_OPTIONS,
        bind=lambda server: server.add_insecure_port(f"unix:{path}"),
        where=f"the Unix socket {path}",
        register=register,
        service_names=service_names,
        interceptors=interceptors,
        health_listen=health_listen,
        deserializers=deserializers,
    )
    # A Unix socket has no port.
    handle.port = 0
    return handle


async def _serve(
    *,
    options: Sequence[tuple[str, Any]],
    bind: Callable[[grpc.aio.Server], int],
    where: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor],
    health_listen: str | None,
    deserializers: Mapping[str, Deserializer] | None,
    maximum_concurrent_rpcs: int | None = None,
) -> ServerHandle:
    """What every server shares: decoding, health, reflection, and the optional plaintext health port."""
    server = grpc.aio.server(
        options=options,
        interceptors=[*interceptors, RequestDecoding(deserializers)],
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [*service_names, health.SERVICE_NAME])
    port = bind(server)
    if port == 0:
        raise OSError(f"cannot listen on {where}")
    await server.start()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    handle = ServerHandle(server=server, port=port, health=health_servicer)
    if health_listen:
        # Started after the main server: the shared servicer already says
        # SERVING, and draining turns both ports NOT_SERVING together.
        # With the main port's options: worker processes sharing one port share their probe port too.
        probe = grpc.aio.server(options=options, interceptors=[RequestDecoding()])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe)
        probe_port = probe.add_insecure_port(health_listen)
        if probe_port == 0:
            await server.stop(0)
            raise OSError(f"cannot listen on {health_listen} for health probes")
        await probe.start()
        handle.health_server, handle.health_port = probe, probe_port
    return handle


class PeerIdentities:
    """The creditnet role of the TLS peer of a call, cached by certificate.

    A certificate the trust store's revocation check names is refused
    ``cert.revoked`` at every call, cached or not. (The TLS handshake itself
    cannot be refused per certificate with grpc python: the connection
    opens, and every call on it is refused.)
    """

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        self._cache: dict[bytes, VerifiedCert] = {}

    def role(self, context: grpc.aio.ServicerContext) -> Role:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("peer.certificate", "the call has no client certificate; use mutual TLS")
        pem = pems[0]
        verified = self._cache.get(pem)
        if verified is None:
            # TLS already validated the chain; this also re-checks validity
            # and extracts the role the CA bound into the certificate.
            verified = self.trust.verify_pem(pem)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[pem] = verified
        else:
            self.trust.require_unrevoked(verified)
        return verified.role

    def require(self, context: grpc.aio.ServicerContext, *kinds: RoleKind) -> Role:
        role = self.role(context)
        if role.kind not in kinds:
            allowed = ", ".join(k.value for k in kinds)
            raise PermissionDenied(
                "peer.role", f"this call is for {allowed} certificates, not {role.kind.value}"
            )
        return role


P = ParamSpec("P")
R = TypeVar("R")


async def taken(context: grpc.aio.ServicerContext) -> None:
    """Send the response headers now: the caller knows its call was taken.

    A client of several replicas asks another one alongside when the first
    has sent no headers within its hedge delay (docs/protocol.md, "Hedging
    past a frozen replica"); a call that takes long by design (it waits on
    the city nodes) says at once that this replica is alive and working.
    """
    await context.send_initial_metadata(())


def refusals(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Answer a CreditnetError with its status code and reason; hide anything else."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        context: Any = args[2] if len(args) > 2 else kwargs["context"]
        try:
            return await method(*args, **kwargs)
        except CreditnetError as exc:
            await context.abort(exc.code, exc.reason)
        except grpc.aio.AbortError:
            raise
        except Exception:
            # Nothing about the data may leak: the client gets a generic
            # message, the operator the traceback.
            log.exception("internal error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)
        raise AssertionError("unreachable")

    return wrapper
