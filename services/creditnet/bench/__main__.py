"""Run every benchmark and print the ratios (also as JSON with --json).

Each figure is compared with a baseline measured in the same run:
- a node's signed queries/s vs a bare grpc.aio echo over the same mutual TLS;
- the same node with its credit chain vs without (the ledger's cost);
- a federated five-city query vs one node, at 16 concurrent clients;
- store ingestion vs raw sqlite3.executemany of the same rows;
- durable ledger appends vs SHA-256 of the entries plus one commit per batch;
- inclusion and consistency proof times at 1,000,000 entries;
- network directory verification at 5, 50 and 333 cities vs one ECDSA verify;
- time from `pki revoke` to refusal at every server, in refresh intervals;
- seal + open time per answer for each HPKE suite, and sealing's share of the
  federated run's server CPU (creditnet.bench.sealing says how it is computed).
- answer size and bank-side verify time per record with provider proofs vs without.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
from sqlalchemy import make_url

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.bench.chain import bench_appends, bench_proofs
from creditnet.bench.directory import bench_directory
from creditnet.bench.directory import show as show_directory
from creditnet.bench.provenance import bench_provenance
from creditnet.bench.provenance import show as show_provenance
from creditnet.bench.revocation import bench_revocation
from creditnet.bench.revocation import show as show_revocation
from creditnet.bench.scale import bench_backends, show_backends
from creditnet.bench.sealing import bench_sealing, cpu_seconds, demo_answers
from creditnet.bench.sealing import show as show_sealing
from creditnet.channels import secure_channel
from creditnet.config import NodeConfig
from creditnet.domain import City, Purpose
from creditnet.health import wait_serving
from creditnet.network import NetworkLayout, ProcessNetwork, free_port, grant_demo_consent, provision
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, node_pb2, node_pb2_grpc

Call = Callable[[int], Awaitable[object]]
WARMUP = 200


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
    # Signed before the clock starts: the client's signing is not what a
    # node's throughput should be charged with.
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


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *args])  # noqa: S603 - our own modules


async def echo_rate(
    layout: NetworkLayout, bank: Identity, trust: TrustStore, body: bytes, n: int
) -> dict[str, float]:
    port = free_port()
    ident = layout.data["identities"]["nodes"]["310000"]
    proc = spawn(
        [
            "creditnet.bench.echo",
            "--listen",
            f"127.0.0.1:{port}",
            "--cert",
            str(layout.path(ident["cert"])),
            "--key",
            str(layout.path(ident["key"])),
            "--ca",
            str(layout.ca),
        ]
    )
    try:
        async with secure_channel(f"127.0.0.1:{port}", bank, trust, node_server_name(pilot.SHANGHAI)) as ch:
            call = ch.unary_unary("/bench.Echo/Echo")
            for _ in range(100):
                try:
                    await call(body, timeout=2)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)

            async def do(i: int) -> object:
                return await call(body, timeout=10)

            await drive(do, WARMUP, 8)
            return await drive(do, n, 8)
    finally:
        proc.terminate()
        proc.wait()


async def node_rate(
    endpoint: str,
    bank: Identity,
    trust: TrustStore,
    queries: list[envelope_pb2.SignedEnvelope],
    n: int,
    conc: int,
) -> dict[str, float]:
    async with secure_channel(endpoint, bank, trust, node_server_name(pilot.SHANGHAI)) as ch:
        stub = node_pb2_grpc.CityNodeServiceStub(ch)

        async def do(i: int) -> object:
            return await stub.Query(node_pb2.QueryRequest(query=queries[i]), timeout=10)

        await drive(do, WARMUP, conc)
        rest = queries[WARMUP:]

        async def do_rest(i: int) -> object:
            return await stub.Query(node_pb2.QueryRequest(query=rest[i]), timeout=10)

        return await drive(do_rest, n, conc)


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


async def bench_network(layout: NetworkLayout, n: int, pids: Sequence[int] = ()) -> dict[str, Any]:
    """`pids`: the network's server processes, whose CPU time the federated run is charged with."""
    trust = TrustStore.load(layout.ca)
    bank = layout.bank()
    consent = grant_demo_consent(layout)
    results: dict[str, Any] = {}
    sample = presign(layout, consent, 1)[0]
    results["echo"] = await echo_rate(
        layout, bank, trust, node_pb2.QueryRequest(query=sample).SerializeToString(), n
    )

    shanghai = layout.node_endpoint(pilot.SHANGHAI)
    results["node"] = await node_rate(
        shanghai, bank, trust, presign(layout, consent, n + WARMUP, (pilot.SHANGHAI,)), n, 8
    )

    # The same node without its credit chain, on the same data: the ledger's cost.
    cfg = NodeConfig.load(layout.node_config(pilot.SHANGHAI))
    cfg.listen = f"127.0.0.1:{free_port()}"
    cfg.chain_enabled = False
    # A node is its database's only process: the baseline gets a copy.
    cfg.database_url = copy_sqlite(cfg.database_url, layout.root / "nodes" / "310000" / "node-nochain.db")
    plain_cfg = layout.root / "nodes" / "310000" / "node-nochain.json"
    cfg.save(plain_cfg)
    plain = spawn(["creditnet", "node", "run", "--config", str(plain_cfg)])
    try:
        await wait_serving(cfg.listen, node_server_name(pilot.SHANGHAI), bank, layout.ca, process=plain)
        results["node_without_chain"] = await node_rate(
            cfg.listen, bank, trust, presign(layout, consent, n + WARMUP, (pilot.SHANGHAI,)), n, 8
        )
    finally:
        plain.terminate()
        plain.wait()

    results["node_16"] = await node_rate(
        shanghai, bank, trust, presign(layout, consent, n + WARMUP, (pilot.SHANGHAI,)), n, 16
    )
    fed_n = max(n // 2, WARMUP)
    federated = presign(layout, consent, fed_n + WARMUP)
    async with secure_channel(layout.aggregator_endpoint, bank, trust, AGGREGATOR_SERVER_NAME) as ch:
        agg = aggregator_pb2_grpc.AggregatorServiceStub(ch)
        ok = (aggregator_pb2.SECTION_STATUS_OK, aggregator_pb2.SECTION_STATUS_NO_RECORDS)

        async def do_fed(i: int) -> object:
            resp = await agg.FederatedQuery(
                aggregator_pb2.FederatedQueryRequest(query=federated[i]), timeout=30
            )
            bad = [s for s in resp.sections if s.status not in ok]
            if bad:
                raise RuntimeError(f"federated query had failing sections: {bad[0].reason}")
            return resp

        await drive(do_fed, WARMUP, 16)
        federated = federated[WARMUP:]
        cpu_before = cpu_seconds(pids)
        results["federated_16"] = await drive(do_fed, fed_n, 16)
        results["federated_16"]["server_cpu_seconds"] = cpu_seconds(pids) - cpu_before
    answers = await demo_answers(layout, consent)
    results["sealing"] = bench_sealing(layout, answers, results["federated_16"] if pids else None)
    return results


def bench_ingest(tmp: Path, rows: int) -> dict[str, Any]:
    from creditnet import synthetic
    from creditnet.store import Store
    from creditnet.v2 import records_pb2

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
            "INSERT OR IGNORE INTO r (provider_id, record_id, uscc, category, city, record_date,"
            " source, payload) VALUES (?,?,?,?,?,?,?,?)",
            tuples[i : i + batch],
        )
        db.execute("COMMIT")
    raw = len(tuples) / (time.perf_counter() - t0)
    db.close()

    # Signed before the clock starts, as the node receives batches signed:
    # the store keeps each record's bytes with its batch and inclusion path.
    from creditnet.bench.provenance import bench_provider, signed_batches
    from creditnet.pki import CertificateAuthority

    provider = bench_provider(CertificateAuthority.create(), pilot.HEFEI)
    signed = signed_batches(provider, recs, batch)
    store = Store.open(f"sqlite:///{tmp / 'store.db'}", migrate=True)
    t0 = time.perf_counter()
    for part, proof in signed:
        store.ingest(part, proof.provider_id, signed=proof, leaves=range(len(part)))
    ours = len(recs) / (time.perf_counter() - t0)
    store.close()
    return {"rows": len(recs), "raw_executemany_per_second": raw, "store_ingest_per_second": ours}


def report(r: dict[str, Any]) -> dict[str, float]:
    ratios = {
        "node_qps_vs_echo": r["node"]["per_second"] / r["echo"]["per_second"],
        "ledger_cost": 1 - r["node"]["per_second"] / r["node_without_chain"]["per_second"],
        "federated_p99_vs_single_node_p99": r["federated_16"]["p99_ms"] / r["node_16"]["p99_ms"],
        "federated_qps_vs_single_node_qps": r["federated_16"]["per_second"] / r["node_16"]["per_second"],
        "ingest_vs_executemany": r["ingest"]["store_ingest_per_second"]
        / r["ingest"]["raw_executemany_per_second"],
        "appends_vs_floor": r["appends"]["appends_per_second"] / r["appends"]["floor_per_second"],
    }
    if "federated" in r["sealing"]:
        ratios["sealing_share_of_federated_server_cpu"] = r["sealing"]["federated"]["sealing_share"]
        ratios["sealing_and_proofs_share_of_federated_server_cpu"] = r["sealing"]["federated"][
            "sealing_and_proofs_share"
        ]
    # An answer of 100 records from one provider batch, as a bank verifies it cold.
    (proofs,) = [x for x in r["provenance"]["rows"] if x["records"] == 100 and x["batches"] == "one batch"]
    ratios["provider_proofs_answer_size"] = proofs["size_ratio"]
    ratios["provider_proofs_verify_time"] = proofs["verify_ratio"]
    return ratios


def show(r: dict[str, Any], ratios: dict[str, float]) -> None:
    def rate(name: str, key: str, unit: str = "q/s") -> str:
        x = r[key]
        return (
            f"  {name:<38}{x['per_second']:8.0f} {unit}  p50 {x['p50_ms']:6.1f} ms  p99 {x['p99_ms']:6.1f} ms"
        )

    print("creditnet benchmarks — ratios against baselines measured in this run")
    print(rate("bare grpc.aio echo, mTLS, 8 in flight", "echo", "c/s"))
    print(rate("node signed queries, 8 in flight", "node"))
    print(f"    = {ratios['node_qps_vs_echo']:.0%} of the echo (aim ≥ 40%)")
    print(rate("same node without the chain", "node_without_chain"))
    print(f"    the credit chain costs {ratios['ledger_cost']:.0%} of throughput (aim < 25%)")
    print(rate("one node, 16 clients", "node_16"))
    print(rate("federated, 5 cities, 16 clients", "federated_16"))
    print(f"    federated p99 = {ratios['federated_p99_vs_single_node_p99']:.2f}x single-node p99 (aim ≤ 3x)")
    ing = r["ingest"]
    print(f"  {'raw sqlite3.executemany':<38}{ing['raw_executemany_per_second']:8.0f} rows/s")
    print(
        f"  {'store ingest':<38}{ing['store_ingest_per_second']:8.0f} rows/s"
        f" = {ratios['ingest_vs_executemany']:.0%} of raw (aim ≥ 50%)"
    )
    ap = r["appends"]
    print(
        f"  {'durable ledger appends, 64 writers':<38}{ap['appends_per_second']:8.0f} /s"
        f" = {ratios['appends_vs_floor']:.0%} of SHA-256 + one commit per batch"
        f" ({ap['floor_per_second']:.0f}/s, {ap['entries'] / max(ap['group_commits'], 1):.0f} per commit)"
    )
    pr = r["proofs"]
    print(
        f"  proofs at {pr['entries']:,} entries (cold cache): inclusion {pr['inclusion_proof_us']:.0f} µs,"
        f" consistency {pr['consistency_proof_us']:.0f} µs, past root {pr['past_root_us']:.0f} µs"
        f" (log built in {pr['build_seconds']:.0f} s)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description="creditnet benchmarks")
    p.add_argument("--queries", type=int, default=2000, help="calls per measurement")
    p.add_argument("--rows", type=int, default=100_000, help="records for the ingestion benchmark")
    p.add_argument("--ledger-entries", type=int, default=1_000_000, help="log size for the proof benchmark")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    # One bank drives every measurement: its per-bank rate limit (which the
    # servers spawned here inherit) would measure the limit, not the server.
    os.environ["CREDITNET_RATE_LIMIT_PER_BANK"] = "off"
    tmp = Path(tempfile.mkdtemp(prefix="creditnet-bench-"))
    try:
        layout = provision(tmp / "net", enterprises_per_city=200, seed=5)
        net = ProcessNetwork(layout)
        net.start()
        try:
            asyncio.run(net.wait_healthy())
            pids = [proc.pid for proc in net.procs.values()]
            results = asyncio.run(bench_network(layout, a.queries, pids))
        finally:
            net.stop()
        results["ingest"] = bench_ingest(tmp, a.rows)
        results["appends"] = bench_appends(tmp)
        results["proofs"] = bench_proofs(tmp, a.ledger_entries)
        results["backends"] = bench_backends(tmp, a.queries, a.rows)
        results["directory"] = bench_directory()
        results["revocation"] = bench_revocation()
        results["provenance"] = bench_provenance()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = report(results)
    if a.json:
        print(json.dumps({"results": results, "ratios": ratios}, indent=2))
    else:
        show(results, ratios)
        show_backends(results["backends"])
        show_directory(results["directory"])
        show_revocation(results["revocation"])
        show_sealing(results["sealing"])
        show_provenance(results["provenance"])


if __name__ == "__main__":
    main()
