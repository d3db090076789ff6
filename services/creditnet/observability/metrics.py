"""Prometheus metrics of one server: its calls, and what only a node or the aggregator knows.

Every server instance has its own registry, so several servers in one
process (the in-process test network) never share or collide on a metric.
Per-call counters follow the grpc-ecosystem names (``grpc_server_*``) that
existing dashboards read. State that already lives in an object (a node's
ledger, the aggregator's pending calls per node) is read at scrape time by
a collector rather than copied on every change, so the hot path pays
nothing for it.

Nothing here carries credit data: labels are cities, methods, status codes,
refusal rules and outcomes, never an enterprise, a bank or a query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from creditnet import __version__
from creditnet.domain import City
from creditnet.errors import Error
from creditnet.tracecontext import split_method
from creditnet.v2 import aggregator_pb2

__all__ = [
    "SECTION_STATUSES",
    "AggregatorMetrics",
    "LedgerCollector",
    "LedgerLike",
    "MetricsEndpoint",
    "MetricsError",
    "NodeLoadCollector",
    "NodeLoadLike",
    "NodeMetrics",
    "PublishedLike",
    "SectionLike",
    "ServerMetrics",
    "WitnessLike",
    "grpc_type",
    "section_status_label",
]

# From a cached answer (~1 ms) to the longest deadline a bank may set.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

GRPC_TYPES = ("unary", "client_stream", "server_stream", "bidi_stream")
SECTION_STATUSES: tuple[str, ...] = tuple(
    name.removeprefix("SECTION_STATUS_").lower()
    for name in aggregator_pb2.SectionStatus.keys()  # noqa: SIM118 - an enum wrapper, not a dict
    if name != "SECTION_STATUS_UNSPECIFIED"
)
INGEST_OUTCOMES = ("accepted", "duplicate", "rejected")


class MetricsError(Error, ValueError):
    """A metric was fed something it cannot count."""


def grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def section_status_label(status: int) -> str:
    """``SECTION_STATUS_NO_RECORDS`` (the proto number) → ``no_records``."""
    try:
        name = aggregator_pb2.SectionStatus.Name(status)  # type: ignore[arg-type]
    except ValueError:
        raise MetricsError(f"unknown section status {status}") from None
    return name.removeprefix("SECTION_STATUS_").lower()


# --- the HTTP endpoint ----------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server (any path answers); `close` stops it and frees the port."""

    port: int
    _server: object
    _thread: threading.Thread

    def close(self) -> None:
        server = self._server
        shutdown: Callable[[], None] = server.shutdown  # type: ignore[attr-defined]
        server_close: Callable[[], None] = server.server_close  # type: ignore[attr-defined]
        shutdown()
        server_close()
        self._thread.join()


def _serve_registry(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> MetricsEndpoint:  # noqa: S104
    """Serve `registry` over HTTP on `port` (0: any free port) from a daemon thread.

    Plain HTTP, as Prometheus scrapes: the endpoint shows counts and timings only.
    """
    if not 0 <= port <= 65535:
        raise MetricsError(f"a metrics port is 0-65535, got {port}")
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsEndpoint(port=int(server.server_port), _server=server, _thread=thread)


# --- every server ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Method:
    started: Counter
    seconds: Histogram
    service: str
    name: str
    kind: str


class ServerMetrics:
    """A server's registry and its per-call metrics; the interceptor feeds them.

    `role` and `city` are shown in ``creditnet_server_info`` (a gauge of 1 with
    the labels), the usual way to attach identity without repeating labels.
    """

    def __init__(self, role: str, city: City | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.role = role
        self.city = city
        info = Info("creditnet_server", "What this server is.", registry=self.registry)
        info.info({"role": role, "city": city.value if city else "", "version": __version__})
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter(
            "grpc_server_started_total", "Calls started on the server.", labels, registry=self.registry
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "Calls completed on the server, whatever their status.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of a call to its last response or error.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._methods: dict[tuple[str, str], _Method] = {}
        self._codes: dict[tuple[str, str, grpc.StatusCode], Counter] = {}
        self._endpoint: MetricsEndpoint | None = None

    def _method(self, method: str, kind: str) -> _Method:
        key = (method, kind)
        found = self._methods.get(key)
        if found is None:
            service, name = split_method(method)
            found = _Method(
                started=self._started.labels(kind, service, name),
                seconds=self._seconds.labels(kind, service, name),
                service=service,
                name=name,
                kind=kind,
            )
            self._methods[key] = found
        return found

    def call_started(self, method: str, kind: str = "unary") -> None:
        self._method(method, kind).started.inc()

    def call_handled(self, method: str, code: grpc.StatusCode, seconds: float, kind: str = "unary") -> None:
        m = self._method(method, kind)
        key = (method, kind, code)
        counter = self._codes.get(key)
        if counter is None:
            counter = self._handled.labels(kind, m.service, m.name, code.name)
            self._codes[key] = counter
        counter.inc()
        m.seconds.observe(seconds)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    # -- serving -----------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> MetricsEndpoint:  # noqa: S104
        """Serve this server's metrics over HTTP until `close`."""
        if self._endpoint is not None:
            raise MetricsError(f"the metrics of this server are already served on port {self._endpoint.port}")
        self._endpoint = _serve_registry(self.registry, port, addr)
        return self._endpoint

    @property
    def endpoint(self) -> MetricsEndpoint | None:
        return self._endpoint

    def close(self) -> None:
        """Stop serving (nothing to do if not serving)."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None


# --- city nodes ----------------------------------------------------------------------


class PublishedLike(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def cosignatures(self) -> int: ...


class WitnessLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    @property
    def last_error(self) -> str: ...


class LedgerLike(Protocol):
    """What the collector reads of a `creditnet.ledger.log.Ledger`."""

    @property
    def committed_size(self) -> int: ...
    @property
    def published(self) -> PublishedLike | None: ...
    @property
    def group_commits(self) -> int: ...
    @property
    def quorum(self) -> int: ...
    @property
    def witnesses(self) -> Sequence[WitnessLike]: ...


class LedgerCollector:
    """A node's credit chain, read at scrape time."""

    def __init__(self, ledger: LedgerLike) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self.ledger
        # One read of each attribute: the ledger moves on while we scrape.
        committed = ledger.committed_size
        published = ledger.published
        published_size = published.size if published is not None else 0
        yield GaugeMetricFamily(
            "creditnet_chain_size", "Entries durably appended to this node's log.", value=committed
        )
        yield GaugeMetricFamily(
            "creditnet_chain_published_size",
            "Size of the latest checkpoint cosigned by a quorum of witnesses (0: none yet).",
            value=published_size,
        )
        yield GaugeMetricFamily(
            "creditnet_chain_unpublished_entries",
            "Entries appended but not yet covered by a cosigned checkpoint.",
            value=max(0, committed - published_size),
        )
        yield GaugeMetricFamily(
            "creditnet_chain_published_cosignatures",
            "Cosignatures on the latest published checkpoint.",
            value=published.cosignatures if published is not None else 0,
        )
        yield GaugeMetricFamily(
            "creditnet_chain_quorum", "Cosignatures a checkpoint needs.", value=ledger.quorum
        )
        yield CounterMetricFamily(
            "creditnet_chain_group_commits",
            "Transactions that appended entries (each holds every append queued meanwhile).",
            value=ledger.group_commits,
        )
        size = GaugeMetricFamily(
            "creditnet_chain_witness_size",
            "Largest checkpoint size each witness has cosigned for this log (-1: not yet known).",
            labels=["witness"],
        )
        up = GaugeMetricFamily(
            "creditnet_chain_witness_ok",
            "1 if the witness's last cosigning call succeeded, else 0.",
            labels=["witness"],
        )
        for w in list(ledger.witnesses):
            size.add_metric([w.name], -1 if w.size is None else w.size)
            up.add_metric([w.name], 0 if w.last_error else 1)
        yield size
        yield up


class NodeMetrics(ServerMetrics):
    """A city node: queries answered and refused, records ingested, its credit chain."""

    def __init__(self, city: City) -> None:
        super().__init__("node", city)
        self._answered = Counter(
            "creditnet_node_queries_answered_total",
            "Queries answered with a signed answer.",
            registry=self.registry,
        )
        self._disclosed = Counter(
            "creditnet_node_records_disclosed_total",
            "Records that left this node in answers.",
            registry=self.registry,
        )
        self._refused = Counter(
            "creditnet_node_queries_refused_total",
            "Queries refused, by the rule that refused them (e.g. consent.revoked).",
            ["rule"],
            registry=self.registry,
        )
        self._ingested = Counter(
            "creditnet_ingest_records_total",
            "Records submitted by data providers, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in INGEST_OUTCOMES:
            self._ingested.labels(outcome)
        self._batches = Counter(
            "creditnet_ingest_batches_total", "Batches of provider records processed.", registry=self.registry
        )

    def query_answered(self, records_disclosed: int) -> None:
        if records_disclosed < 0:
            raise MetricsError(f"records disclosed cannot be negative, got {records_disclosed}")
        self._answered.inc()
        self._disclosed.inc(records_disclosed)

    def query_refused(self, rule: str) -> None:
        """`rule` is the refusal's rule name (``CreditnetError.rule``), a short fixed vocabulary."""
        if not rule or len(rule) > 64:
            raise MetricsError(f"a refusal rule is a short name like consent.revoked, got {rule!r}")
        self._refused.labels(rule).inc()

    def ingest_batch(self, *, accepted: int, duplicates: int, rejected: int) -> None:
        """One batch of a SubmitRecords stream, after it was stored."""
        for name, n in (("accepted", accepted), ("duplicates", duplicates), ("rejected", rejected)):
            if n < 0:
                raise MetricsError(f"{name} cannot be negative, got {n}")
        self._ingested.labels("accepted").inc(accepted)
        self._ingested.labels("duplicate").inc(duplicates)
        self._ingested.labels("rejected").inc(rejected)
        self._batches.inc()

    def watch_ledger(self, ledger: LedgerLike) -> None:
        """Report the credit chain of `ledger` on every scrape."""
        self.add_collector(LedgerCollector(ledger))


# --- the aggregator ------------------------------------------------------------------


class NodeLoadLike(Protocol):
    """A `creditnet.aggregator.directory.NodeLoad`."""

    @property
    def city(self) -> City: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def max_in_flight(self) -> int: ...
    @property
    def shed(self) -> int: ...


class NodeLoadCollector:
    """The aggregator's pending calls per node, read at scrape time."""

    def __init__(self, load: Callable[[], Iterable[NodeLoadLike]]) -> None:
        self.load = load

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "creditnet_aggregator_node_in_flight", "Calls pending on each city's node.", labels=["city"]
        )
        bound = GaugeMetricFamily(
            "creditnet_aggregator_node_max_in_flight",
            "Bound on calls pending per node; beyond it sections are answered without calling the node.",
            labels=["city"],
        )
        shed = CounterMetricFamily(
            "creditnet_aggregator_node_shed",
            "Sections answered at once: the node had too many calls pending, or the bank its share of them.",
            labels=["city"],
        )
        for load in self.load():
            city = [load.city.value]
            in_flight.add_metric(city, load.in_flight)
            bound.add_metric(city, load.max_in_flight)
            shed.add_metric(city, load.shed)
        yield in_flight
        yield bound
        yield shed


class SectionLike(Protocol):
    """A `creditnet.v2.aggregator_pb2.CitySection`."""

    @property
    def city(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def latency_ms(self) -> int: ...


ROUND_KINDS = ("checkpoint", "filter")


class AggregatorMetrics(ServerMetrics):
    """The aggregator: every city section's outcome and latency, and each node's load."""

    def __init__(self, cities: Iterable[City] = ()) -> None:
        super().__init__("aggregator")
        self._sections = Counter(
            "creditnet_aggregator_sections_total",
            "City sections of federated queries, by city and status.",
            ["city", "status"],
            registry=self.registry,
        )
        self._section_seconds = Histogram(
            "creditnet_aggregator_section_seconds",
            "Time the aggregator spent on each city's section of a federated query.",
            ["city"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._rounds = Counter(
            "creditnet_aggregator_rounds_total",
            "Background rounds run, by kind: checkpoint (network checkpoint), filter (membership filters).",
            ["round"],
            registry=self.registry,
        )
        self._round_calls = Counter(
            "creditnet_aggregator_round_calls_total",
            "Calls to nodes made by background rounds, by kind (per round: this over rounds_total).",
            ["round"],
            registry=self.registry,
        )
        for kind in ROUND_KINDS:
            self._rounds.labels(kind)
            self._round_calls.labels(kind)
        self._not_asked: dict[City, Any] = {}
        for city in cities:
            # Present at zero from the start, so rates and alerts see every city.
            for status in SECTION_STATUSES:
                self._sections.labels(city.value, status)
            self._section_seconds.labels(city.value)

    def section(self, city: City, status: str, seconds: float) -> None:
        if status not in SECTION_STATUSES:
            raise MetricsError(f"unknown section status {status!r}; one of {', '.join(SECTION_STATUSES)}")
        self._sections.labels(city.value, status).inc()
        self._section_seconds.labels(city.value).observe(max(0.0, seconds))

    def round_ran(self, kind: str, calls: int) -> None:
        """Count one background round of `kind` (ROUND_KINDS) and the node calls it made."""
        if kind not in ROUND_KINDS:
            raise MetricsError(f"unknown round {kind!r}; one of {', '.join(ROUND_KINDS)}")
        self._rounds.labels(kind).inc()
        self._round_calls.labels(kind).inc(calls)

    def not_asked(self, city: City) -> None:
        """Count a city routing left out of a query (no call: no latency observed)."""
        # A national query leaves hundreds of cities out: each city's counter is looked up once.
        counter = self._not_asked.get(city)
        if counter is None:
            counter = self._not_asked[city] = self._sections.labels(city.value, "not_asked")
        counter.inc()

    def observe_section(self, section: SectionLike) -> None:
        """Count a `CitySection` as the aggregator returns it (status, city, latency_ms)."""
        self.section(
            City.from_proto(section.city),
            section_status_label(section.status),
            section.latency_ms / 1000,
        )

    def watch_directory(self, load: Callable[[], Iterable[NodeLoadLike]]) -> None:
        """Report `load()` (``NodeDirectory.load``) on every scrape."""
        self.add_collector(NodeLoadCollector(load))
