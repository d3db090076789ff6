"""National-scale benchmark: 5, 50 and 333 real city nodes on this machine (issue 9).

``python -m creditnet_devkit.bench.national`` (``make bench-national``) provisions and
runs, for each size, the first N prefecture-level cities by code as
`creditnet network up --cities N` does (node hosts and the aggregator as
processes), sends federated queries for synthetic enterprises through the
bank SDK, prints a table and writes bench-national.json in the current
directory: a list of runs, one per N.

Per run: cities asked per query (mean, p99) — flat in N when routing works;
federated latency p50/p99 as the bank sees it (signing, the aggregator, the
nodes, opening and verifying every answer and receipt) and its ratio to N=5
measured in the same run; the aggregator's memory per city; the witnessing
work of a node (logs it witnesses, cosignatures per checkpoint); the
aggregator's background calls per round (network checkpoint, filters) while
idle; idle CPU; filter size and false-positive rate; provisioning and start
times. The machine is shared and noisy: read the ratios, not the times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from creditnet.channels import secure_channel
from creditnet.domain import City, Purpose
from creditnet.network import (
    NetworkLayout,
    ProcessNetwork,
    aggregator_process,
    free_port,
    grant_demo_consent,
    provision,
    select_cities,
)
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity, node_server_name
from creditnet.routing import BloomFilter, RoutingKey
from creditnet.v2 import node_pb2, node_pb2_grpc, routing_pb2
from creditnet_devkit import synthetic

__all__ = [
    "BenchNetwork",
    "bench_national",
    "bench_size",
    "main",
    "show",
]

SIZES = (5, 50, 333)
SEED = 20261207
ENTERPRISES = 10
QUERIES = 200
IDLE_SECONDS = 20.0
# Enterprises and probes of the false-positive measurement at national scale.
FP_ENTERPRISES = 1_000_000
FP_PROBES = 200_000
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class BenchNetwork(ProcessNetwork):
    """The network's processes, the aggregator serving its Prometheus metrics."""

    metrics_port: int = 0

    def start_aggregator(self, replica: int = 0) -> None:
        self._spawn(
            aggregator_process(replica),
            [
                "aggregator",
                "run",
                "--config",
                str(self.layout.aggregator_configs[replica]),
                "--metrics-port",
                str(self.metrics_port + replica),
            ],
        )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _scrape(port: int) -> dict[str, float]:
    """The aggregator's background-round counters, by name and label."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("creditnet_aggregator_rounds_total", "creditnet_aggregator_round_calls_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _per_round(before: dict[str, float], after: dict[str, float], kind: str) -> float | None:
    rounds = after.get(f'creditnet_aggregator_rounds_total{{round="{kind}"}}', 0.0) - before.get(
        f'creditnet_aggregator_rounds_total{{round="{kind}"}}', 0.0
    )
    calls = after.get(f'creditnet_aggregator_round_calls_total{{round="{kind}"}}', 0.0) - before.get(
        f'creditnet_aggregator_round_calls_total{{round="{kind}"}}', 0.0
    )
    return calls / rounds if rounds else None


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _witness_work(layout: NetworkLayout, sample: Sequence[City]) -> tuple[float, float]:
    """Logs each sampled node witnesses, and cosignatures per checkpoint it published (mean)."""
    witnessed, cosigs = [], []
    for city in sample:
        db = layout.root / "nodes" / city.value / "node.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            witnessed.append(conn.execute("SELECT COUNT(*) FROM witness_state").fetchone()[0])
            cosigs += [r[0] for r in conn.execute("SELECT cosignatures FROM chain_checkpoint WHERE size > 0")]
    return statistics.mean(witnessed), statistics.mean(cosigs) if cosigs else 0.0


async def _filters(layout: NetworkLayout, sample: Sequence[City]) -> list[routing_pb2.MembershipFilter]:
    aggregator = layout.identity("aggregator", "national")
    trust = TrustStore.load(layout.ca)
    out = []
    for city in sample:
        async with secure_channel(
            layout.node_endpoint(city), aggregator, trust, node_server_name(city)
        ) as channel:
            resp = await node_pb2_grpc.CityNodeServiceStub(channel).GetMembershipFilter(
                node_pb2.GetMembershipFilterRequest(), timeout=10
            )
        out.append(routing_pb2.MembershipFilter.FromString(resp.filter.payload))
    return out


def _national_filter_fp() -> dict[str, float]:
    """A filter holding FP_ENTERPRISES enterprises: its size and measured false-positive rate."""
    key = RoutingKey.generate()
    rng = random.Random(SEED)
    bloom = BloomFilter.sized(FP_ENTERPRISES)
    bloom.add_many(key.tag(f"in-{i}-{rng.random()}") for i in range(FP_ENTERPRISES))
    hits = sum(1 for i in range(FP_PROBES) if key.tag(f"out-{i}") in bloom)
    return {
        "filter_bytes_per_million": bloom.bit_count / 8 * 1_000_000 / FP_ENTERPRISES,
        "filter_fp_rate_1m": hits / FP_PROBES,
    }


async def _queries(
    layout: NetworkLayout, plans: list[synthetic.EnterprisePlan]
) -> tuple[list[float], list[int], int]:
    """Each plan's enterprise consents and a bank asks once: latencies, cities asked, wrong routes."""
    from creditnet_bank import BankClient, SectionStatus

    ca = CertificateAuthority.load(layout.root / "pki")
    identities: dict[str, Identity] = {p.uscc: issue_identity(ca, Role.enterprise(p.uscc)) for p in plans}
    latencies: list[float] = []
    asked: list[int] = []
    wrong = 0
    async with BankClient.from_network(layout.root / "network.json") as bank:
        for plan in plans:
            env = grant_demo_consent(layout, enterprise=identities[plan.uscc])
            start = time.perf_counter()
            report = await bank.query(plan.uscc, env, Purpose.LOAN_APPLICATION, timeout=30)
            latencies.append(time.perf_counter() - start)
            got = {s.city for s in report.sections if s.asked}
            asked.append(len(got))
            if report.missing_cities:
                raise RuntimeError(f"cities missing from a report: {report.missing_cities}")
            # A holder not asked would be a false negative: never allowed.
            if not set(plan.cities) <= got:
                raise RuntimeError(f"{plan.uscc}: holders {plan.cities} not all asked ({sorted(got)})")
            wrong += sum(
                1
                for s in report.sections
                if s.asked and s.status is SectionStatus.NO_RECORDS and s.city != plan.home_city
            )
    return latencies, asked, wrong


async def _routing_ready(layout: NetworkLayout, plan: synthetic.EnterprisePlan, within: float) -> None:
    """Wait until the aggregator holds every city's filter (no city is asked for want of one)."""
    from creditnet_bank import BankClient

    ca = CertificateAuthority.load(layout.root / "pki")
    identity = issue_identity(ca, Role.enterprise(plan.uscc))
    deadline = time.monotonic() + within
    async with BankClient.from_network(layout.root / "network.json") as bank:
        while True:
            report = await bank.query(
                plan.uscc,
                grant_demo_consent(layout, enterprise=identity),
                Purpose.LOAN_APPLICATION,
                timeout=60,
            )
            if not any("no usable filter" in s.routing_detail for s in report.sections):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the aggregator does not hold every city's filter")
            await asyncio.sleep(1.0)


def _sample_plans(cities: tuple[City, ...], enterprises: int, count: int) -> list[synthetic.EnterprisePlan]:
    rng = random.Random(SEED)
    pool = [(c, i) for c in cities for i in range(synthetic.enterprises_in(c, enterprises, cities))]
    return [
        synthetic.plan_enterprise(SEED, c, i, network=cities)
        for c, i in rng.sample(pool, min(count, len(pool)))
    ]


def bench_size(n: int, work: Path, enterprises: int, queries: int) -> dict[str, Any]:
    cities = select_cities(str(n))
    print(f"[{n} cities] provisioning", flush=True)
    t0 = time.monotonic()
    layout = provision(
        work / f"n{n}", cities=cities, enterprises_per_city=enterprises, seed=SEED, routing=True
    )
    provision_s = time.monotonic() - t0
    net = BenchNetwork(layout, metrics_port=free_port())
    t1 = time.monotonic()
    net.start()
    try:
        asyncio.run(net.wait_healthy(timeout=max(300.0, 2.0 * n)))
        start_s = time.monotonic() - t1
        print(f"[{n} cities] provisioned in {provision_s:.1f} s, serving in {start_s:.1f} s", flush=True)
        plans = _sample_plans(cities, enterprises, queries + 1)
        asyncio.run(_routing_ready(layout, plans[0], within=max(120.0, n)))
        # Idle: no queries, only the background rounds.
        pids = {name: proc.pid for name, proc in net.procs.items()}
        before, cpu0 = _scrape(net.metrics_port), {k: _cpu_seconds(p) for k, p in pids.items()}
        time.sleep(IDLE_SECONDS)
        after, cpu1 = _scrape(net.metrics_port), {k: _cpu_seconds(p) for k, p in pids.items()}
        idle_cpu = sum(cpu1[k] - cpu0[k] for k in pids) / IDLE_SECONDS
        print(f"[{n} cities] {queries} queries", flush=True)
        latencies, asked, wrong = asyncio.run(_queries(layout, plans[1:]))
        agg_rss = _rss_bytes(pids["aggregator"])
        sample = cities[:: max(1, len(cities) // 10)]
        witnessed, cosigs = _witness_work(layout, sample)
        filters = asyncio.run(_filters(layout, sample))
    finally:
        net.stop()
    return {
        "cities": n,
        "processes": len(pids),
        "queries": len(latencies),
        "cities_asked_mean": statistics.mean(asked),
        "cities_asked_p99": _percentile(asked, 0.99),
        "false_positive_asks": wrong,
        "p50_ms": 1000 * _percentile(latencies, 0.50),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "aggregator_rss_mb": agg_rss / 2**20,
        "aggregator_kb_per_city": agg_rss / 1024 / n,
        "logs_witnessed_per_node": witnessed,
        "cosignatures_per_checkpoint": cosigs,
        "checkpoint_calls_per_round": _per_round(before, after, "checkpoint"),
        "filter_calls_per_round": _per_round(before, after, "filter"),
        "idle_cpu_cores": idle_cpu,
        "filter_bytes_mean": statistics.mean(len(f.bits) for f in filters),
        "filter_entries_mean": statistics.mean(f.entries for f in filters),
        "provision_s": provision_s,
        "start_s": start_s,
        "up_s": provision_s + start_s,
    }


def bench_national(
    sizes: Sequence[int] = SIZES, enterprises: int = ENTERPRISES, queries: int = QUERIES
) -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="creditnet-national-") as tmp:
        for n in sizes:
            runs.append(bench_size(n, Path(tmp), enterprises, queries))
    base = runs[0]
    fp = _national_filter_fp()
    for r in runs:
        r["p50_ratio_vs_5"] = r["p50_ms"] / base["p50_ms"]
        r["p99_ratio_vs_5"] = r["p99_ms"] / base["p99_ms"]
        # What each city beyond the first run's adds to the aggregator (its fixed cost apart).
        added = r["cities"] - base["cities"]
        grown = (r["aggregator_rss_mb"] - base["aggregator_rss_mb"]) * 1024
        r["aggregator_kb_per_added_city"] = grown / added if added else None
        r.update(fp)
    return runs


COLUMNS = (
    # (header, key, format)
    ("cities", "cities", "d"),
    ("procs", "processes", "d"),
    ("asked", "cities_asked_mean", ".2f"),
    ("ask p99", "cities_asked_p99", "d"),
    ("p50 ms", "p50_ms", ".1f"),
    ("p99 ms", "p99_ms", ".1f"),
    ("p50 x5", "p50_ratio_vs_5", ".2f"),
    ("p99 x5", "p99_ratio_vs_5", ".2f"),
    ("agg MB", "aggregator_rss_mb", ".0f"),
    ("KB/+city", "aggregator_kb_per_added_city", ".0f"),
    ("wit logs", "logs_witnessed_per_node", ".1f"),
    ("cosig/cp", "cosignatures_per_checkpoint", ".1f"),
    ("cp rd/r", "checkpoint_calls_per_round", ".1f"),
    ("flt rd/r", "filter_calls_per_round", ".1f"),
    ("idle cpu", "idle_cpu_cores", ".2f"),
    ("up s", "up_s", ".0f"),
)


def show(runs: list[dict[str, Any]]) -> None:
    print("".join(f"{h:>9}" for h, _, _ in COLUMNS))
    for r in runs:
        print("".join(f"{'-' if r[k] is None else format(r[k], spec):>9}" for _, k, spec in COLUMNS))
    print(
        "asked: cities asked per query (mean, p99); x5: latency over N=5's; agg MB: aggregator RSS, "
        "KB/+city: its growth per city beyond the first size; wit logs: logs a node witnesses; "
        "cosig/cp: cosignatures per checkpoint; cp/flt rd/r: "
        "node calls per network-checkpoint / filter round while idle; idle cpu: cores, all processes"
    )
    last = runs[-1]
    print(
        f"filters: {last['filter_bytes_per_million'] / 2**20:.2f} MiB per million enterprises, "
        f"false positives {100 * last['filter_fp_rate_1m']:.2f}% at a million "
        f"(measured with {FP_PROBES:,} outside USCCs); wrong asks in the runs: "
        + ", ".join(f"{r['false_positive_asks']} at {r['cities']}" for r in runs)
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="national scale: 5, 50 and 333 city nodes on this machine")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="city counts, comma-separated")
    p.add_argument("--enterprises", type=int, default=ENTERPRISES, help="synthetic enterprises per city")
    p.add_argument("--queries", type=int, default=QUERIES, help="federated queries per size")
    p.add_argument("--out", type=Path, default=Path("bench-national.json"))
    a = p.parse_args(argv)
    runs = bench_national([int(s) for s in a.sizes.split(",")], a.enterprises, a.queries)
    show(runs)
    a.out.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
