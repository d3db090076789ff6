"""Run every benchmark and print the ratios (also as JSON with --json)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from creditnet import query as query_mod
from creditnet.domain import City, Purpose
from creditnet.network import (
    DEMO_BANK,
    NetworkLayout,
    ProcessNetwork,
    free_port,
    grant_demo_consent,
    provision,
)
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore, node_server_name
from creditnet.rpc import secure_channel
from creditnet.v1 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, node_pb2, node_pb2_grpc

Call = Callable[[int], Awaitable[object]]


async def drive(call: Call, total: int, concurrency: int) -> dict[str, float]:
    """Run `total` calls with `concurrency` in flight; return rate and latency percentiles."""
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < total:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "calls": total,
        "per_second": total / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(latencies),
    }


def presign(
    layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope, n: int, cities: Sequence[City] = ()
) -> list[envelope_pb2.SignedEnvelope]:
    # Queries are signed before the clock starts: the client's signing is
    # not what a node's throughput should be charged with.
    bank = layout.bank()
    return [
        query_mod.build(
            bank,
            consent,
            enterprise_uscc=layout.demo_enterprise,
            purpose=Purpose.LOAN_APPLICATION,
            cities=tuple(cities),
        )
        for _ in range(n)
    ]


async def bench_network(layout: NetworkLayout, n: int) -> dict[str, Any]:
    trust = TrustStore.load(layout.ca)
    bank = layout.bank()
    consent = grant_demo_consent(layout)
    results: dict[str, Any] = {}

    # 1. bare echo vs one node, 8 in flight.
    echo_port = free_port()
    ident = layout.data["identities"]["nodes"]["shanghai"]
    echo = subprocess.Popen(  # noqa: S603 - our own module
        [
            sys.executable,
            "-m",
            "creditnet.bench.echo",
            "--listen",
            f"127.0.0.1:{echo_port}",
            "--cert",
            str(layout.path(ident["cert"])),
            "--key",
            str(layout.path(ident["key"])),
            "--ca",
            str(layout.ca),
        ]
    )
    try:
        sample = presign(layout, consent, 1)[0]
        body = node_pb2.QueryRequest(query=sample).SerializeToString()
        async with secure_channel(
            f"127.0.0.1:{echo_port}", bank, trust, node_server_name(City.SHANGHAI)
        ) as ch:
            echo_call = ch.unary_unary("/bench.Echo/Echo")
            for _ in range(100):
                try:
                    await echo_call(body, timeout=2)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)

            async def do_echo(i: int) -> object:
                return await echo_call(body, timeout=10)

            await drive(do_echo, 200, 8)
            results["echo"] = await drive(do_echo, n, 8)
    finally:
        echo.terminate()
        echo.wait()

    queries = presign(layout, consent, n + 200, cities=(City.SHANGHAI,))
    async with secure_channel(
        layout.node_endpoint(City.SHANGHAI), bank, trust, node_server_name(City.SHANGHAI)
    ) as ch:
        stub = node_pb2_grpc.CityNodeServiceStub(ch)

        async def do_node(i: int) -> object:
            return await stub.Query(node_pb2.QueryRequest(query=queries[i]), timeout=10)

        await drive(do_node, 200, 8)
        rest = queries[200:]

        async def do_node2(i: int) -> object:
            return await stub.Query(node_pb2.QueryRequest(query=rest[i]), timeout=10)

        results["node"] = await drive(do_node2, n, 8)

        # 2. one node at 16 concurrent clients: the reference for federation.
        single = presign(layout, consent, n, cities=(City.SHANGHAI,))

        async def do_single(i: int) -> object:
            return await stub.Query(node_pb2.QueryRequest(query=single[i]), timeout=10)

        results["node_16"] = await drive(do_single, n, 16)

    fed_n = max(n // 2, 200)
    federated = presign(layout, consent, fed_n)
    async with secure_channel(layout.aggregator_endpoint, bank, trust, AGGREGATOR_SERVER_NAME) as ch:
        agg = aggregator_pb2_grpc.AggregatorServiceStub(ch)

        async def do_fed(i: int) -> object:
            resp = await agg.FederatedQuery(
                aggregator_pb2.FederatedQueryRequest(query=federated[i]), timeout=30
            )
            bad = [
                s
                for s in resp.sections
                if s.status
                not in (aggregator_pb2.SECTION_STATUS_OK, aggregator_pb2.SECTION_STATUS_NO_RECORDS)
            ]
            if bad:
                raise RuntimeError(f"federated query had failing sections: {bad[0].reason}")
            return resp

        results["federated_16"] = await drive(do_fed, fed_n, 16)
    return results


def bench_ingest(tmp: Path, rows: int) -> dict[str, Any]:
    from creditnet import synthetic
    from creditnet.store import Store
    from creditnet.v1 import records_pb2

    recs: list[records_pb2.CreditRecord] = []
    for item in synthetic.generate(11, max(rows // 20, 10)):
        if isinstance(item, records_pb2.CreditRecord):
            recs.append(item)
            if len(recs) >= rows:
                break
    batch = 5000
    # Baseline: the same rows, already as tuples, into an equivalent table
    # with the same unique key and lookup index, one executemany per batch.
    db = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE r (id INTEGER PRIMARY KEY, provider_id TEXT, record_id TEXT, uscc TEXT, category TEXT,"
        " city TEXT, record_date TEXT, source TEXT, payload BLOB, UNIQUE(provider_id, record_id))"
    )
    db.execute("CREATE INDEX r_lookup ON r (uscc, category, record_date)")
    tuples = [
        (
            "bench",
            r.record_id,
            r.enterprise_uscc,
            r.WhichOneof("detail"),
            str(r.city),
            f"{r.record_date.year:04d}-{r.record_date.month:02d}-{r.record_date.day:02d}",
            r.source,
            r.SerializeToString(),
        )
        for r in recs
    ]
    t0 = time.perf_counter()
    for i in range(0, len(tuples), batch):
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR IGNORE INTO r (provider_id, record_id, uscc, category, city, record_date, source, payload)"
            " VALUES (?,?,?,?,?,?,?,?)",
            tuples[i : i + batch],
        )
        db.execute("COMMIT")
    raw = len(tuples) / (time.perf_counter() - t0)
    db.close()

    store = Store.open(f"sqlite:///{tmp / 'store.db'}")
    t0 = time.perf_counter()
    for i in range(0, len(recs), batch):
        store.ingest(recs[i : i + batch], "bench")
    ours = len(recs) / (time.perf_counter() - t0)
    store.close()
    return {"rows": len(recs), "raw_executemany_per_second": raw, "store_ingest_per_second": ours}


def main() -> None:
    p = argparse.ArgumentParser(description="creditnet benchmarks")
    p.add_argument("--queries", type=int, default=2000, help="calls per measurement")
    p.add_argument("--rows", type=int, default=100_000, help="records for the ingestion benchmark")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="creditnet-bench-"))
    try:
        layout = provision(tmp / "net", enterprises_per_city=200, seed=5)
        net = ProcessNetwork(layout)
        net.start()
        try:
            asyncio.run(net.wait_healthy())
            results = asyncio.run(bench_network(layout, a.queries))
        finally:
            net.stop()
        results["ingest"] = bench_ingest(tmp, a.rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r = results
    summary = {
        "node_qps_vs_echo": r["node"]["per_second"] / r["echo"]["per_second"],
        "federated_p99_vs_single_node_p99": r["federated_16"]["p99_ms"] / r["node_16"]["p99_ms"],
        "federated_qps_vs_single_node_qps": r["federated_16"]["per_second"] / r["node_16"]["per_second"],
        "ingest_vs_executemany": r["ingest"]["store_ingest_per_second"]
        / r["ingest"]["raw_executemany_per_second"],
    }
    if a.json:
        print(json.dumps({"results": r, "ratios": summary}, indent=2))
        return
    print("creditnet benchmarks (ratios against baselines measured in this run)")
    print(f"  bare echo, 8 in flight           {r['echo']['per_second']:8.0f} calls/s")
    print(
        f"  node signed queries, 8 in flight {r['node']['per_second']:8.0f} q/s   = {summary['node_qps_vs_echo']:.0%} of echo (aim ≥ 40%)"
    )
    print(
        f"  single node, 16 clients          {r['node_16']['per_second']:8.0f} q/s   p50 {r['node_16']['p50_ms']:.1f} ms  p99 {r['node_16']['p99_ms']:.1f} ms"
    )
    print(
        f"  federated 5 cities, 16 clients   {r['federated_16']['per_second']:8.0f} q/s   p50 {r['federated_16']['p50_ms']:.1f} ms  p99 {r['federated_16']['p99_ms']:.1f} ms"
    )
    print(
        f"    federated p99 / single-node p99 = {summary['federated_p99_vs_single_node_p99']:.2f}x (aim ≤ 3x)"
    )
    ing = r["ingest"]
    print(f"  raw sqlite3.executemany          {ing['raw_executemany_per_second']:8.0f} rows/s")
    print(
        f"  store ingest                     {ing['store_ingest_per_second']:8.0f} rows/s = {summary['ingest_vs_executemany']:.0%} of raw (aim ≥ 50%)"
    )


if __name__ == "__main__":
    main()
