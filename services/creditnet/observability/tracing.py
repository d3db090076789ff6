"""The process's OpenTelemetry tracer provider (the SDK): where a server's spans go.

Carrying the trace between processes and the client spans live in
`creditnet.tracecontext`, which needs only the API.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from creditnet import __version__
from creditnet.errors import Error

__all__ = [
    "TracingSetupError",
    "configure_tracing",
    "otlp_exporter_from_env",
]


class TracingSetupError(Error, ValueError):
    """Tracing was asked for in a way this installation cannot provide."""


OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_OTLP_EXPORTERS = (
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


def otlp_exporter_from_env(env: Mapping[str, str] | None = None) -> SpanExporter | None:
    """An OTLP span exporter when ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, else None.

    The exporter package is optional (it brings its own gRPC or HTTP
    stack); asking for export without it installed is an error, not silence.
    """
    env = os.environ if env is None else env
    wanted = [name for name in OTLP_ENDPOINT_VARIABLES if env.get(name, "").strip()]
    if not wanted:
        return None
    for module_name in _OTLP_EXPORTERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        exporter: SpanExporter = module.OTLPSpanExporter()
        return exporter
    raise TracingSetupError(
        f"{wanted[0]} is set but no OTLP exporter is installed; "
        "install opentelemetry-exporter-otlp-proto-grpc (or -proto-http), or unset it"
    )


def configure_tracing(
    service_name: str,
    *,
    attributes: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
    env: Mapping[str, str] | None = None,
) -> trace.TracerProvider:
    """Give this process an SDK tracer provider: once per process, before serving.

    Spans then have ids of their own (which the logs show) and are exported
    to `exporter`, or over OTLP when the standard variables ask for it, or
    nowhere. Sampling follows ``OTEL_TRACES_SAMPLER`` (default: always, and
    always as the caller decided). A provider set earlier is kept and returned.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    resource = Resource.create(
        {"service.name": service_name, "service.version": __version__, **(attributes or {})}
    )
    provider = TracerProvider(resource=resource)
    chosen = exporter if exporter is not None else otlp_exporter_from_env(env)
    if chosen is not None:
        provider.add_span_processor(BatchSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    return provider
