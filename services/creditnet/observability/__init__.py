"""Observability of every server: Prometheus metrics, structured logs, OpenTelemetry traces.

- `metrics`: a registry per server (`NodeMetrics`, `AggregatorMetrics`) served over HTTP.
- `interceptors`: the server interceptor that counts, times and traces every call.
- `tracing`: the process's tracer provider. W3C trace context in gRPC metadata and client
  spans (`client_span`, or the client interceptor) are `creditnet.tracecontext`'s, re-exported here.
- `logs`: JSON or text log lines carrying the call's query id and trace id.
- the query id a call is about is `creditnet.querycontext`'s, re-exported here.
"""

from __future__ import annotations

from creditnet.observability.interceptors import ServerObservability, server_interceptors
from creditnet.observability.logs import configure_logging
from creditnet.observability.metrics import (
    AggregatorMetrics,
    MetricsEndpoint,
    NodeMetrics,
    ServerMetrics,
)
from creditnet.observability.tracing import configure_tracing
from creditnet.querycontext import (
    QUERY_ID_METADATA,
    QueryRef,
    bind_query_id,
    current_query,
    query_scope,
)
from creditnet.tracecontext import (
    TracingClientInterceptor,
    client_interceptors,
    client_span,
    outgoing_metadata,
)

__all__ = [
    "QUERY_ID_METADATA",
    "AggregatorMetrics",
    "MetricsEndpoint",
    "NodeMetrics",
    "QueryRef",
    "ServerMetrics",
    "ServerObservability",
    "TracingClientInterceptor",
    "bind_query_id",
    "client_interceptors",
    "client_span",
    "configure_logging",
    "configure_tracing",
    "current_query",
    "outgoing_metadata",
    "query_scope",
    "server_interceptors",
]
