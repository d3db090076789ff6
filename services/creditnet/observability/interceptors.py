"""The server interceptor: every call counted, timed, traced, and named in its logs.

One interceptor does all three so a call pays for one wrapper, not three:
it continues the caller's trace in a SERVER span, binds the query id the
caller claims (see `creditnet.querycontext`), counts the call when it starts
and when it ends with its final status code, and observes its duration.
Put it first in the server's interceptors, so calls that later interceptors
refuse (overload, rate limits) are counted and traced too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from creditnet.handlers import Finish, wrap_handler
from creditnet.observability.metrics import ServerMetrics, grpc_type
from creditnet.querycontext import (
    QUERY_ID_METADATA,
    QueryRef,
    current_query,
    enter_call,
    leave_call,
    parse_query_id,
)
from creditnet.tracecontext import extract_context, get_tracer, rpc_attributes, span_name, traced

__all__ = [
    "ServerObservability",
    "server_interceptors",
]

log = logging.getLogger("creditnet.calls")

# Ends of a call that are answers or cancellations, not failures of the handler.
_ANSWERED = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)

Metadata = tuple[tuple[str, str | bytes], ...]


def _claimed_query(metadata: Metadata | None) -> QueryRef | None:
    for key, value in metadata or ():
        if key == QUERY_ID_METADATA:
            query_id = parse_query_id(value)
            return None if query_id is None else QueryRef(query_id, verified=False)
    return None


def _final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, as the client sees it."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        # GeneratorExit: the client stopped reading a response stream.
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        if exc is None or isinstance(exc, grpc.aio.AbortError):
            return code
    elif exc is None:
        return grpc.StatusCode.OK
    # An exception the handler let escape: gRPC answers UNKNOWN.
    return grpc.StatusCode.UNKNOWN


class _Call:
    """One call being observed: started by the wrapper, finished exactly once."""

    __slots__ = ("_otel_token", "_query_token", "_start", "method", "obs", "span")

    def __init__(self, obs: ServerObservability, method: _Method, metadata: Metadata | None) -> None:
        self.obs = obs
        self.method = method
        self.span: trace.Span | None = None
        self._otel_token: object | None = None
        self._query_token = enter_call(_claimed_query(metadata))
        if method.traced:
            parent = extract_context(metadata)
            self.span = obs.tracer.start_span(
                method.span_name, context=parent, kind=SpanKind.SERVER, attributes=method.attributes
            )
            self._otel_token = otel_context.attach(trace.set_span_in_context(self.span, parent))
        if obs.metrics is not None:
            obs.metrics.call_started(method.path, method.kind)
        self._start = time.perf_counter()

    def finish(self, context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
        seconds = time.perf_counter() - self._start
        code = _final_code(context, exc)
        query = current_query()
        if self.obs.metrics is not None:
            self.obs.metrics.call_handled(self.method.path, code, seconds, self.method.kind)
        if self.span is not None:
            if query is not None:
                key = "creditnet.query_id" if query.verified else "creditnet.claimed_query_id"
                self.span.set_attribute(key, query.query_id)
            self.span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                self.span.set_status(Status(StatusCode.ERROR, code.name))
            if exc is not None and not isinstance(exc, _ANSWERED):
                # The type only: an exception's text may quote data.
                self.span.set_attribute("error.type", type(exc).__qualname__)
            self.span.end()
        if self.method.traced and log.isEnabledFor(logging.DEBUG):
            log.debug("%s ended %s in %.1f ms", self.method.path, code.name, seconds * 1000)
        if self._otel_token is not None:
            otel_context.detach(self._otel_token)  # type: ignore[arg-type]
        leave_call(self._query_token)


class _Method:
    __slots__ = ("attributes", "kind", "path", "span_name", "traced")

    def __init__(self, path: str, kind: str, extra: Mapping[str, str]) -> None:
        self.path = path
        self.kind = kind
        self.traced = traced(path)
        self.span_name = span_name(path)
        self.attributes: dict[str, str] = {**rpc_attributes(path), **extra}


Begin = Callable[[grpc.aio.ServicerContext], _Call]


def _observe_handler(handler: grpc.RpcMethodHandler, begin: Begin) -> grpc.RpcMethodHandler:
    """The same method handler, observed by `begin` from start to end of every call."""

    async def around(context: grpc.aio.ServicerContext) -> Finish:
        observed = begin(context)
        return lambda exc: observed.finish(context, exc)

    return wrap_handler(handler, around)


class ServerObservability(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Metrics (when `metrics` is given), a SERVER span and the claimed query id for every call.

    `attributes` go on every span; by default the role and city of `metrics`.
    """

    def __init__(
        self,
        metrics: ServerMetrics | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.tracer = get_tracer(tracer_provider)
        if attributes is None:
            attributes = {}
            if metrics is not None:
                attributes = {"creditnet.role": metrics.role}
                if metrics.city is not None:
                    attributes["creditnet.city"] = metrics.city.value
        self.attributes = dict(attributes)
        self._methods: dict[tuple[str, str], _Method] = {}

    def _method(self, path: str, kind: str) -> _Method:
        found = self._methods.get((path, kind))
        if found is None:
            found = _Method(path, kind, self.attributes)
            self._methods[(path, kind)] = found
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = self._method(handler_call_details.method, grpc_type(handler))
        metadata: Metadata | None = handler_call_details.invocation_metadata

        def begin(context: grpc.aio.ServicerContext) -> _Call:
            return _Call(self, method, metadata)

        return _observe_handler(handler, begin)


def server_interceptors(
    metrics: ServerMetrics | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    attributes: Mapping[str, str] | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """For start_server(interceptors=…), before any interceptor that may refuse calls."""
    return [ServerObservability(metrics, tracer_provider=tracer_provider, attributes=attributes)]
