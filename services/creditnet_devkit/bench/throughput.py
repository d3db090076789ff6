"""The network's servers against their baselines, measured in one run on one machine.

On the five-city process network ``make bench`` provisions (every server its
own process, SQLite, the credit chain on), with closed-loop load
(`creditnet_devkit.bench.load`: callers in flight, a warm-up, then a measured window):

**Saturation sweeps**, each series at 8, 32 and 128 calls in flight
(`IN_FLIGHT`), so that each is compared at its own saturation, whatever
level that is:

- ``echo``: a bare grpc.aio echo (`creditnet_devkit.bench.echo`) over the same
  mutual TLS, with Shanghai's node certificate; the request is a node
  query's bytes;
- ``node``: Shanghai's node answering signed queries (presigned, one node);
- ``node_without_chain``: the same node with its credit chain off, on a copy
  of its database (a node is its database's only process);
- ``fanout``: the crypto-free fan-out (`creditnet_devkit.bench.fanout`): a relay
  with the aggregator's certificate calling five echo servers, one per city
  with that city's node certificate, concurrently; the request is a
  federated query's bytes;
- ``federated``: the real aggregator asking the five real nodes. One bank
  drives the load, and the aggregator lets one bank hold at most half of the
  calls it allows pending on a node (`creditnet.aggregator.directory`: 32 of
  64), so beyond 32 in flight it answers sections at once, unasked, by
  design. A query with such a section is counted as shed, not as throughput
  (`creditnet_devkit.bench.load`); the table and JSON give how many and why.

**At 16 in flight** (`P99_IN_FLIGHT`), one node and the federated query:
the p99 comparison, the same number of callers on both (the method of the
runs before the sweep, kept so the figures stay comparable), and the server
CPU seconds the sealing share is computed from (`creditnet_devkit.bench.sealing`).

**Unloaded**: one call at a time, after ten unmeasured ones: the federated
query, the fan-out and one node.

The ratios over these results are computed and checked against issue 11's
targets in `creditnet_devkit.bench.targets`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import make_url

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.config import NodeConfig
from creditnet.domain import City
from creditnet.health import wait_serving
from creditnet.network import NetworkLayout, free_port, grant_demo_consent
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, node_pb2, node_pb2_grpc
from creditnet_devkit.bench.echo import METHOD as ECHO_METHOD
from creditnet_devkit.bench.fanout import METHOD as FANOUT_METHOD
from creditnet_devkit.bench.load import Shed, Window, one_at_a_time, presign, saturate, supply_for
from creditnet_devkit.bench.sealing import bench_sealing, cpu_seconds, demo_answers

__all__ = [
    "AGGREGATOR_SERVER_NAME",
    "ECHO_METHOD",
    "FANOUT_METHOD",
    "IN_FLIGHT",
    "LABELS",
    "P99_IN_FLIGHT",
    "SERIES",
    "Baselines",
    "Plan",
    "baselines",
    "best",
    "copy_sqlite",
    "curve",
    "measure_baselines",
    "measure_network",
    "node_without_chain",
    "say",
    "show",
    "spawn",
    "sweep",
]

IN_FLIGHT = (8, 32, 128)
P99_IN_FLIGHT = 16
SERIES = ("echo", "node", "node_without_chain", "fanout", "federated")
# A federated section that is an answer (or a city rightly not asked).
_SECTION_FINE = (
    aggregator_pb2.SECTION_STATUS_OK,
    aggregator_pb2.SECTION_STATUS_NO_RECORDS,
    aggregator_pb2.SECTION_STATUS_NOT_ASKED,
)
Send = Callable[[Any], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how much: `make bench`'s defaults, or --quick's."""

    window: Window
    # Queries presigned for a series' first level (later levels: from the rate before).
    first_supply: int
    unloaded_samples: int
    sealing_repeat: int
    in_flight: tuple[int, ...] = IN_FLIGHT


async def sweep(
    plan: Plan, send: Send, requests: Callable[[int], Sequence[Any]] | None = None
) -> list[dict[str, Any]]:
    """`send` at every level of `plan.in_flight`; `requests(n)`: n distinct requests to send
    (each accepted once, as presigned queries are), None: `send(None)` as often as it likes."""
    out: list[dict[str, Any]] = []
    for level in plan.in_flight:
        if requests is None:
            out.append(await saturate(lambda _i: send(None), level, plan.window))
        else:
            previous = out[-1]["per_second"] if out else None
            pool = requests(supply_for(previous, plan.window, plan.first_supply, level))
            out.append(await saturate(_sender(send, pool), level, plan.window, len(pool)))
    return out


def _sender(send: Send, pool: Sequence[Any]) -> Callable[[int], Awaitable[object]]:
    def call(i: int) -> Awaitable[object]:
        return send(pool[i])

    return call


def say(message: str) -> None:
    """Progress for people waiting on a run of minutes (stderr: the table stays on stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def best(series: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The level of a sweep with the highest throughput: the series' saturation."""
    return max(series, key=lambda r: float(r["per_second"]))


# -- the servers the baselines need ------------------------------------------------


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m *args`, its output to `log` (beside the network's own logs)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own modules, fixed arguments
            [sys.executable, "-m", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tls_args(layout: NetworkLayout, group: str, name: str) -> list[str]:
    ident = layout.data["identities"][group][name]
    return [
        "--cert",
        str(layout.path(ident["cert"])),
        "--key",
        str(layout.path(ident["key"])),
        "--ca",
        str(layout.ca),
    ]


@dataclass(frozen=True, slots=True)
class Baselines:
    """Running echo servers (one per city) and the fan-out relay in front of them."""

    echoes: dict[City, str]
    relay: str


@contextlib.contextmanager
def baselines(layout: NetworkLayout) -> Iterator[Baselines]:
    procs: list[subprocess.Popen[bytes]] = []
    logs = layout.root / "logs"
    try:
        echoes: dict[City, str] = {}
        for city in layout.cities:
            echoes[city] = f"127.0.0.1:{free_port()}"
            procs.append(
                spawn(
                    [
                        "creditnet_devkit.bench.echo",
                        "--listen",
                        echoes[city],
                        *_tls_args(layout, "nodes", city.value),
                    ],
                    logs / f"echo-{city.value}.log",
                )
            )
        relay = f"127.0.0.1:{free_port()}"
        procs.append(
            spawn(
                [
                    "creditnet_devkit.bench.fanout",
                    "--listen",
                    relay,
                    *_tls_args(layout, "aggregator", "national"),
                    *(f"--echo={city.value}={ep}" for city, ep in echoes.items()),
                ],
                logs / "fanout.log",
            )
        )
        yield Baselines(echoes, relay)
    finally:
        _stop(procs)


async def _until_answered(call: Callable[[], Awaitable[object]], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await call()
            return
        except grpc.aio.AioRpcError as exc:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{what} is not answering after {timeout:.0f} s: {exc.code().name}"
                ) from None
            await asyncio.sleep(0.1)


def copy_sqlite(url: str, target: Path) -> str:
    """A consistent copy of a live SQLite database (SQLite's online backup), as a URL."""
    source = make_url(url).database
    if source is None:
        raise ValueError(f"not a SQLite database: {url}")
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
    return f"sqlite:///{target}"


@contextlib.asynccontextmanager
async def node_without_chain(layout: NetworkLayout, bank: Identity) -> AsyncIterator[str]:
    """Shanghai's node with its credit chain off, on a copy of its data; yields its endpoint."""
    cfg = NodeConfig.load(layout.node_config(pilot.SHANGHAI))
    cfg.listen = f"127.0.0.1:{free_port()}"
    cfg.chain_enabled = False
    here = layout.root / "nodes" / pilot.SHANGHAI.value
    cfg.database_url = copy_sqlite(cfg.database_url, here / "node-nochain.db")
    config = here / "node-nochain.json"
    cfg.save(config)
    proc = spawn(
        ["creditnet", "node", "run", "--config", str(config)], layout.root / "logs" / "node-nochain.log"
    )
    try:
        await wait_serving(cfg.listen, node_server_name(pilot.SHANGHAI), bank, layout.ca, process=proc)
        yield cfg.listen
    finally:
        _stop([proc])


# -- the measurements --------------------------------------------------------------


async def measure_baselines(
    layout: NetworkLayout, plan: Plan, sample: envelope_pb2.SignedEnvelope
) -> dict[str, Any]:
    """The echo and the fan-out relay: sweeps, and the fan-out unloaded."""
    bank, trust = layout.bank(), TrustStore.load(layout.ca)
    echo_body = node_pb2.QueryRequest(query=sample).SerializeToString()
    relay_body = aggregator_pb2.FederatedQueryRequest(query=sample).SerializeToString()
    out: dict[str, Any] = {}
    with baselines(layout) as running:
        shanghai = running.echoes[pilot.SHANGHAI]
        async with (
            secure_channel(shanghai, bank, trust, node_server_name(pilot.SHANGHAI)) as echo_ch,
            secure_channel(running.relay, bank, trust, AGGREGATOR_SERVER_NAME) as relay_ch,
        ):
            echo = echo_ch.unary_unary(ECHO_METHOD)
            relay = relay_ch.unary_unary(FANOUT_METHOD)
            await _until_answered(lambda: echo(echo_body, timeout=2), "the echo server")
            await _until_answered(lambda: relay(relay_body, timeout=2), "the fan-out relay")
            reply = await relay(relay_body, timeout=10)
            if reply != relay_body * len(running.echoes):
                raise RuntimeError("the fan-out relay did not return every echo server's reply")
            out["echo"] = await sweep(plan, lambda _r: echo(echo_body, timeout=30))
            out["fanout"] = await sweep(plan, lambda _r: relay(relay_body, timeout=30))
            out["fanout_unloaded"] = await one_at_a_time(
                lambda _i: relay(relay_body, timeout=10), plan.unloaded_samples
            )
            out["fanout_servers"] = len(running.echoes)
            out["echo_request_bytes"] = len(echo_body)
            out["fanout_request_bytes"] = len(relay_body)
    return out


async def measure_network(layout: NetworkLayout, plan: Plan, pids: Sequence[int] = ()) -> dict[str, Any]:
    """Every measurement of the module doc; `pids`: the network's server processes, whose
    CPU time the 16-client federated run is charged with (for the sealing share)."""
    trust = TrustStore.load(layout.ca)
    bank = layout.bank()
    consent = grant_demo_consent(layout)
    results: dict[str, Any] = {"in_flight": list(plan.in_flight), "p99_in_flight": P99_IN_FLIGHT}
    say("echo and fan-out relay sweeps")
    results.update(await measure_baselines(layout, plan, presign(layout, consent, 1)[0]))

    def to_shanghai(n: int) -> list[envelope_pb2.SignedEnvelope]:
        return presign(layout, consent, n, (pilot.SHANGHAI,))

    def federated(n: int) -> list[envelope_pb2.SignedEnvelope]:
        return presign(layout, consent, n)

    async with secure_channel(
        layout.node_endpoint(pilot.SHANGHAI), bank, trust, node_server_name(pilot.SHANGHAI)
    ) as ch:
        node = node_pb2_grpc.CityNodeServiceStub(ch)

        async def ask_node(q: envelope_pb2.SignedEnvelope) -> object:
            return await node.Query(node_pb2.QueryRequest(query=q), timeout=30)

        say("node sweep, then 16 in flight and unloaded")
        results["node"] = await sweep(plan, ask_node, to_shanghai)
        pool = to_shanghai(
            supply_for(best(results["node"])["per_second"], plan.window, plan.first_supply, P99_IN_FLIGHT)
        )
        results["node_16"] = await saturate(
            lambda i: ask_node(pool[i]), P99_IN_FLIGHT, plan.window, len(pool)
        )
        pool = to_shanghai(plan.unloaded_samples + 10)
        results["node_unloaded"] = await one_at_a_time(lambda i: ask_node(pool[i]), plan.unloaded_samples)

    async with secure_channel(layout.aggregator_endpoint, bank, trust, AGGREGATOR_SERVER_NAME) as ch:
        agg = aggregator_pb2_grpc.AggregatorServiceStub(ch)
        asked: list[int] = []

        async def ask_federated(q: envelope_pb2.SignedEnvelope) -> object:
            resp = await agg.FederatedQuery(aggregator_pb2.FederatedQueryRequest(query=q), timeout=30)
            bad = [s for s in resp.sections if s.status not in _SECTION_FINE]
            # UNAVAILABLE under load is the aggregator shedding: its bound of calls
            # pending on a node (one bank holds half of it) was reached.
            if bad and all(s.status == aggregator_pb2.SECTION_STATUS_UNAVAILABLE for s in bad):
                return Shed(f"{City.from_proto(bad[0].city).value}: {bad[0].reason}")
            if bad:
                raise RuntimeError(f"a federated query had a failing section: {bad[0].reason}")
            if not asked:
                asked.append(sum(s.status != aggregator_pb2.SECTION_STATUS_NOT_ASKED for s in resp.sections))
            return resp

        pool = federated(plan.unloaded_samples + 10)
        say("federated unloaded, sweep, then 16 in flight")
        results["federated_unloaded"] = await one_at_a_time(
            lambda i: ask_federated(pool[i]), plan.unloaded_samples
        )
        results["federated"] = await sweep(plan, ask_federated, federated)
        pool = federated(
            supply_for(
                best(results["federated"])["per_second"], plan.window, plan.first_supply, P99_IN_FLIGHT
            )
        )
        results["federated_16"] = await saturate(
            lambda i: ask_federated(pool[i]),
            P99_IN_FLIGHT,
            plan.window,
            len(pool),
            meter=(lambda: cpu_seconds(pids)) if pids else None,
        )
        if pids:
            results["federated_16"]["server_cpu_seconds"] = results["federated_16"].pop("metered")
        results["federated_cities_asked"] = asked[0]

    async with (
        node_without_chain(layout, bank) as endpoint,
        secure_channel(endpoint, bank, trust, node_server_name(pilot.SHANGHAI)) as ch,
    ):
        plain = node_pb2_grpc.CityNodeServiceStub(ch)

        async def ask_plain(q: envelope_pb2.SignedEnvelope) -> object:
            return await plain.Query(node_pb2.QueryRequest(query=q), timeout=30)

        say("node without the chain: sweep")
        results["node_without_chain"] = await sweep(plan, ask_plain, to_shanghai)

    say("sealing")
    answers = await demo_answers(layout, consent)
    results["sealing"] = bench_sealing(
        layout, answers, results["federated_16"] if pids else None, repeat=plan.sealing_repeat
    )
    return results


LABELS = {
    "echo": "bare grpc.aio echo, mTLS (calls/s)",
    "node": "node signed queries (q/s)",
    "node_without_chain": "same node without the chain (q/s)",
    "fanout": "crypto-free fan-out to 5 echoes (calls/s)",
    "federated": "federated, 5 cities (q/s)",
}


def curve(r: dict[str, Any]) -> dict[str, Any]:
    """The sweeps alone, for the JSON: per series and level, rate and latencies."""
    keep = ("in_flight", "per_second", "p50_ms", "p99_ms", "calls", "shed", "supply_ran_out")
    return {
        "in_flight": list(r["in_flight"]),
        **{name: [{k: x[k] for k in keep} for x in r[name]] for name in SERIES},
        "best": {name: best(r[name])["in_flight"] for name in SERIES},
    }


def show(r: dict[str, Any]) -> None:
    levels = r["in_flight"]
    print("saturation sweep: throughput (p50 / p99 ms) by calls in flight; * = the series' best")
    print(f"  {'':<44}" + "".join(f"{f'{n} in flight':>24}" for n in levels))
    for name in SERIES:
        top = best(r[name])["in_flight"]
        cells = [
            f"{x['per_second']:.0f}{'*' if x['in_flight'] == top else ' '}"
            f" ({x['p50_ms']:.1f} / {x['p99_ms']:.1f})"
            for x in r[name]
        ]
        print(f"  {LABELS[name]:<44}" + "".join(f"{c:>24}" for c in cells))
    for name in SERIES:
        for x in r[name]:
            if x.get("shed"):
                print(
                    f"    {name} at {x['in_flight']} in flight: {x['shed']} calls shed, not counted"
                    f" ({x['shed_reason']})"
                )
    for key, label in (
        ("node_16", "one node"),
        ("federated_16", f"federated, {r['federated_cities_asked']} cities asked"),
    ):
        x = r[key]
        print(
            f"  {label + f', {P99_IN_FLIGHT} in flight':<44}{x['per_second']:8.0f} q/s"
            f"  p50 {x['p50_ms']:6.1f} ms  p99 {x['p99_ms']:6.1f} ms"
        )
    print(
        "  unloaded p50 / p99 (one at a time):"
        f" federated {r['federated_unloaded']['p50_ms']:.1f} / {r['federated_unloaded']['p99_ms']:.1f} ms,"
        f" fan-out {r['fanout_unloaded']['p50_ms']:.1f} / {r['fanout_unloaded']['p99_ms']:.1f} ms,"
        f" one node {r['node_unloaded']['p50_ms']:.1f} / {r['node_unloaded']['p99_ms']:.1f} ms"
    )
