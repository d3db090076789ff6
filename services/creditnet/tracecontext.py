"""OpenTelemetry trace context over gRPC, the calling side: one federated query is one trace.

The bank's call starts the trace; W3C ``traceparent`` (and ``tracestate``,
``baggage``) travel in gRPC metadata; every server continues the caller's
trace in a SERVER span; the aggregator's calls to the nodes are CLIENT spans
inside its own SERVER span, so the trace shows each city's call, including
one that never reached its node (a TIMEOUT has a client span and no server
span).

Which propagators run is the OpenTelemetry API's global choice
(``OTEL_PROPAGATORS``, W3C trace context and baggage by default). Spans go to
the global tracer provider unless one is given: without
`creditnet.observability.configure_tracing` (or another SDK set-up) the API
records nothing but still passes the caller's trace id on, so logs on every
server name the same trace.

Only the OpenTelemetry API is used here, never its SDK: the bank's SDK
carries the trace without loading a server's observability.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from creditnet import __version__
from creditnet.querycontext import QUERY_ID_METADATA, current_query

__all__ = [
    "TracingClientInterceptor",
    "client_interceptors",
    "client_span",
    "extract_context",
    "get_tracer",
    "outgoing_metadata",
    "rpc_attributes",
    "span_name",
    "split_method",
    "traced",
]

INSTRUMENTATION = "creditnet.observability"
# Probes and reflection: frequent, and nothing to follow across servers.
UNTRACED_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Metadata = Sequence[tuple[str, str | bytes]]


def traced(method: str) -> bool:
    return not method.startswith(UNTRACED_PREFIXES)


def split_method(method: str) -> tuple[str, str]:
    """``/creditnet.v2.CityNodeService/Query`` → (``creditnet.v2.CityNodeService``, ``Query``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return (service or "unknown"), (name or "unknown")


def span_name(method: str) -> str:
    service, name = split_method(method)
    return f"{service}/{name}"


def rpc_attributes(method: str) -> dict[str, str]:
    service, name = split_method(method)
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    return trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider=provider)


# --- carrying the context in metadata ---------------------------------------------


def extract_context(metadata: Metadata | None) -> otel_context.Context:
    """The caller's trace context from incoming metadata (empty when it sent none)."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        # Binary headers (-bin) carry nothing the text propagators read.
        if isinstance(value, str):
            carrier[key.lower()] = value
    return propagate.extract(carrier)


def outgoing_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None = None,
    context: otel_context.Context | None = None,
) -> list[tuple[str, str | bytes]]:
    """`metadata` plus the trace context of `context` (default: the current one) and the bound query id.

    For a call made without the client interceptor: pass it as the call's
    ``metadata=``.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    out = [(k, v) for k, v in metadata or () if k not in carrier and k != QUERY_ID_METADATA]
    out.extend(carrier.items())
    query = current_query()
    if query is not None:
        out.append((QUERY_ID_METADATA, query.query_id))
    return out


# --- client side ------------------------------------------------------------------


def _client_attributes(method: str, server_name: str) -> dict[str, str]:
    attributes = rpc_attributes(method)
    if server_name:
        attributes["server.address"] = server_name
    query = current_query()
    if query is not None:
        attributes["creditnet.query_id"] = query.query_id
    return attributes


def _status_of(exc: BaseException) -> grpc.StatusCode:
    """The status a failed call ends with, as far as the caller can tell."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code: grpc.StatusCode = exc.code()
        return code
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    # A refusal already turned into the caller's own exception (e.g. the
    # bank SDK's QueryRefused) keeps its status as `code`.
    code_attr = getattr(exc, "code", None)
    return code_attr if isinstance(code_attr, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


@contextmanager
def client_span(
    method: str,
    server_name: str = "",
    metadata: Iterable[tuple[str, str | bytes]] | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
) -> Iterator[list[tuple[str, str | bytes]]]:
    """A CLIENT span around a call to `method` (``/pkg.Service/Method``); yields the metadata to send.

    The metadata carries this span's trace context and the bound query id;
    pass it as the call's ``metadata=``. The span ends with the block, with
    the status of the exception that left it (an AioRpcError's code,
    DEADLINE_EXCEEDED for a TimeoutError, CANCELLED) or OK. Retries inside
    one block are one client span, their server spans its children.

    This is what the network's own calls use: unlike a client interceptor
    it adds nothing to calls that are not followed, and no reference cycles
    (grpc.aio's intercepted calls are cyclic garbage until the collector runs,
    which delays the exit of short-lived processes such as the CLI).
    """
    if not traced(method):
        yield outgoing_metadata(metadata)
        return
    tracer = get_tracer(tracer_provider)
    with tracer.start_as_current_span(
        span_name(method),
        kind=SpanKind.CLIENT,
        attributes=_client_attributes(method, server_name),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield outgoing_metadata(metadata)
        except BaseException as exc:
            _set_client_status(span, _status_of(exc))
            raise
        _set_client_status(span, grpc.StatusCode.OK)


def _details_with(details: grpc.aio.ClientCallDetails, context: otel_context.Context | None) -> Any:
    metadata = outgoing_metadata(details.metadata, context)
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class TracingClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Send the trace context and query id with every call; a CLIENT span for each unary call.

    `server_name` is the TLS name the channel is pinned to (``340100.node.creditnet``),
    so the aggregator's spans name the city each call went to.

    For channels whose every call should be followed. grpc.aio makes each
    intercepted call cyclic garbage (its own structure, whatever the
    interceptor does): harmless in a server, where the collector runs
    often, but it delays the exit of a short-lived process by seconds, so
    the network's own code uses `client_span` at the calls that matter.
    """

    def __init__(self, server_name: str = "", tracer_provider: trace.TracerProvider | None = None) -> None:
        self.server_name = server_name
        self.tracer = get_tracer(tracer_provider)

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = _method_name(client_call_details)
        if not traced(method):
            return await continuation(client_call_details, request)
        attributes = _client_attributes(method, self.server_name)
        span = self.tracer.start_span(span_name(method), kind=SpanKind.CLIENT, attributes=attributes)
        details = _details_with(client_call_details, trace.set_span_in_context(span))
        call = None
        try:
            call = await continuation(details, request)
            # Waiting here ends the span when the call ends; the caller then
            # awaits the finished call and gets the same response or error.
            await call
        except grpc.aio.AioRpcError as exc:
            _set_client_status(span, exc.code())
            span.end()
            if call is None:
                raise
            return call
        except BaseException as exc:
            # Cancelled (the caller's own deadline) or failed before a call
            # existed: the call, if any, must not outlive the caller's interest.
            if call is not None:
                call.cancel()
            _set_client_status(span, _status_of(exc))
            span.end()
            raise
        _set_client_status(span, grpc.StatusCode.OK)
        span.end()
        return call

    async def intercept_unary_stream(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_details_with(client_call_details, None), request)

    async def intercept_stream_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(_details_with(client_call_details, None), request_iterator)

    async def intercept_stream_stream(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(_details_with(client_call_details, None), request_iterator)


def _set_client_status(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))


def client_interceptors(
    server_name: str = "", tracer_provider: trace.TracerProvider | None = None
) -> list[grpc.aio.ClientInterceptor]:
    """For grpc.aio.secure_channel(..., interceptors=…); see `TracingClientInterceptor`."""
    return [TracingClientInterceptor(server_name, tracer_provider)]
