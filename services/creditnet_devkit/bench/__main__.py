"""Run every benchmark: print a table and write ``bench.json`` in the current directory.

Each figure is compared with a baseline measured in the same run:
- saturation sweeps at 8, 32 and 128 in flight (`creditnet_devkit.bench.throughput`):
  a node's signed queries vs a bare grpc.aio echo over the same mutual TLS,
  each at its own saturation (``node_vs_echo``); the same node without its
  credit chain (``chain_cost``); the federated five-city query vs a
  crypto-free fan-out from a relay to five echo servers (``federated_vs_fanout``);
- federated p99 vs one node's p99, both with 16 callers in flight (closed
  loop, the same number of callers; ``federated_p99_vs_single``), and the
  unloaded federated p50, one query at a time (``federated_p50_unloaded_ms``);
- store ingestion vs raw sqlite3.executemany of the same rows (``ingest_vs_raw``);
- durable ledger appends vs SHA-256 of the entries plus one commit per batch;
- inclusion and consistency proof times at 1,000,000 entries;
- a node's throughput and ingestion on PostgreSQL vs SQLite;
- network directory verification at 5, 50 and 333 cities vs one ECDSA verify;
- time from `pki revoke` to refusal at every server, in refresh intervals;
- seal + open time per answer for each HPKE suite, and sealing's share of the
  federated run's server CPU (creditnet_devkit.bench.sealing says how it is computed);
- answer size and bank-side verify time per record with provider proofs vs without.

`creditnet_devkit.bench.targets` defines issue 11's targets and how each headline
ratio is computed; bench.json holds the headline ratios at its top level,
``targets`` (each with its bound, value and met/missed), every other ratio
under ``ratios``, the sweep curves under ``sweep`` and every raw result
under ``results``.

``--quick`` runs the same harness in a tiny configuration (sub-second
windows, small data, no PostgreSQL comparison): for testing its structure;
its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from creditnet.network import ProcessNetwork, provision
from creditnet_devkit.bench import targets, throughput
from creditnet_devkit.bench.chain import bench_appends, bench_proofs
from creditnet_devkit.bench.directory import bench_directory
from creditnet_devkit.bench.directory import show as show_directory
from creditnet_devkit.bench.ingest import bench_ingest
from creditnet_devkit.bench.load import Window
from creditnet_devkit.bench.provenance import bench_provenance
from creditnet_devkit.bench.provenance import show as show_provenance
from creditnet_devkit.bench.revocation import bench_revocation
from creditnet_devkit.bench.revocation import show as show_revocation
from creditnet_devkit.bench.scale import bench_backends, show_backends
from creditnet_devkit.bench.sealing import show as show_sealing
from creditnet_devkit.bench.throughput import say


@dataclass(frozen=True, slots=True)
class Sizes:
    """What the benchmarks beside the network's run on."""

    rows: int
    ledger_entries: int
    appends: int
    backend_queries: int
    directory_sizes: tuple[int, ...]
    directory_repeat: int
    revocation_runs: int
    revocation_refresh_s: float
    provenance_sizes: tuple[int, ...]


QUICK_PLAN = throughput.Plan(Window(0.2, 0.5), first_supply=200, unloaded_samples=10, sealing_repeat=5)
QUICK_SIZES = Sizes(
    rows=2000,
    ledger_entries=2000,
    appends=1000,
    backend_queries=0,
    directory_sizes=(5,),
    directory_repeat=2,
    revocation_runs=1,
    revocation_refresh_s=1.0,
    provenance_sizes=(10, 100),
)


def other_ratios(r: dict[str, Any]) -> dict[str, float]:
    """Ratios without an issue 11 target, kept from the runs before it."""
    ratios = {
        "federated_qps_vs_single_node_qps": r["federated_16"]["per_second"] / r["node_16"]["per_second"],
        "federated_p50_unloaded_vs_fanout": r["federated_unloaded"]["p50_ms"]
        / r["fanout_unloaded"]["p50_ms"],
        "fanout_p50_unloaded_ms": r["fanout_unloaded"]["p50_ms"],
        "node_p50_unloaded_ms": r["node_unloaded"]["p50_ms"],
        "appends_vs_floor": r["appends"]["appends_per_second"] / r["appends"]["floor_per_second"],
    }
    pg, lite = r["backends"].get("postgresql", {}), r["backends"].get("sqlite", {})
    if "node" in pg and "node" in lite:
        ratios["postgresql_vs_sqlite_node"] = pg["node"]["per_second"] / lite["node"]["per_second"]
        ratios["postgresql_vs_sqlite_ingest"] = pg["ingest_rows_per_second"] / lite["ingest_rows_per_second"]
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


def summary(r: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """bench.json: headline figures first, then targets, every ratio, the curves and the raw results."""
    head = targets.headline(r)
    checked = targets.check(head)
    return {
        **head,
        "targets": checked,
        "targets_missed": [k for k, t in checked.items() if not t["met"]],
        "ratios": {**head, **other_ratios(r)},
        "sweep": throughput.curve(r),
        "config": config,
        "results": r,
    }


def show(r: dict[str, Any], out: dict[str, Any]) -> None:
    print("creditnet benchmarks — ratios against baselines measured in this run")
    throughput.show(r)
    ing, ap, pr = r["ingest"], r["appends"], r["proofs"]
    print(
        f"  {'raw sqlite3.executemany':<44}{ing['raw_executemany_per_second']:8.0f} rows/s;"
        f" store ingest {ing['store_ingest_per_second']:.0f} rows/s"
    )
    print(
        f"  {'durable ledger appends, 64 writers':<44}{ap['appends_per_second']:8.0f} /s"
        f" = {out['ratios']['appends_vs_floor']:.0%} of SHA-256 + one commit per batch"
        f" ({ap['floor_per_second']:.0f}/s, {ap['entries'] / max(ap['group_commits'], 1):.0f} per commit)"
    )
    print(
        f"  proofs at {pr['entries']:,} entries (cold cache): inclusion {pr['inclusion_proof_us']:.0f} µs,"
        f" consistency {pr['consistency_proof_us']:.0f} µs, past root {pr['past_root_us']:.0f} µs"
        f" (log built in {pr['build_seconds']:.0f} s)"
    )
    if r["backends"].get("skipped"):
        print(f"  node and store on each database: SKIPPED ({r['backends']['skipped']})")
    else:
        show_backends(r["backends"])
    show_directory(r["directory"])
    show_revocation(r["revocation"])
    show_sealing(r["sealing"])
    show_provenance(r["provenance"])
    print()
    targets.show(out)


def run(plan: throughput.Plan, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    say("provisioning and starting the five-city network")
    layout = provision(tmp / "net", enterprises_per_city=200, seed=5)
    net = ProcessNetwork(layout)
    net.start()
    try:
        asyncio.run(net.wait_healthy())
        pids = [proc.pid for proc in net.procs.values()]
        results = asyncio.run(throughput.measure_network(layout, plan, pids))
    finally:
        net.stop()
    say("ingestion, ledger appends and proofs")
    results["ingest"] = bench_ingest(tmp, sizes.rows)
    results["appends"] = bench_appends(tmp, sizes.appends)
    results["proofs"] = bench_proofs(tmp, sizes.ledger_entries)
    if sizes.backend_queries > 0:
        say("a node and ingestion on SQLite and PostgreSQL")
        results["backends"] = bench_backends(tmp, sizes.backend_queries, sizes.rows)
    else:
        results["backends"] = {"skipped": "--quick"}
    say("directory, revocation, provider proofs")
    results["directory"] = bench_directory(sizes.directory_sizes, repeat=sizes.directory_repeat)
    results["revocation"] = bench_revocation(
        runs=sizes.revocation_runs, refresh=dt.timedelta(seconds=sizes.revocation_refresh_s)
    )
    results["provenance"] = bench_provenance(sizes.provenance_sizes)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m creditnet_devkit.bench", description="creditnet benchmarks")
    p.add_argument("--seconds", type=float, default=8.0, help="measured window per sweep level")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up before each window, same load")
    p.add_argument("--queries", type=int, default=3000, help="queries presigned for a sweep's first level")
    p.add_argument("--unloaded", type=int, default=200, help="samples of unloaded latency")
    p.add_argument("--rows", type=int, default=100_000, help="records for the ingestion benchmark")
    p.add_argument("--ledger-entries", type=int, default=1_000_000, help="log size for the proof benchmark")
    p.add_argument("--backend-queries", type=int, default=2000, help="node queries per database compared")
    p.add_argument("--quick", action="store_true", help="a tiny run that checks the harness, not the speed")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="where the JSON goes")
    p.add_argument("--json", action="store_true", help="also print the JSON")
    a = p.parse_args(argv)
    if a.quick:
        plan, sizes = QUICK_PLAN, QUICK_SIZES
    else:
        plan = throughput.Plan(Window(a.warmup, a.seconds), a.queries, a.unloaded, sealing_repeat=200)
        sizes = Sizes(
            rows=a.rows,
            ledger_entries=a.ledger_entries,
            appends=20_000,
            backend_queries=a.backend_queries,
            directory_sizes=(5, 50, 333),
            directory_repeat=30,
            revocation_runs=5,
            revocation_refresh_s=2.0,
            provenance_sizes=(10, 100, 1000),
        )
    # One bank drives every measurement: its per-bank rate limit (which the
    # servers spawned here inherit) would measure the limit, not the server.
    os.environ["CREDITNET_RATE_LIMIT_PER_BANK"] = "off"
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="creditnet-bench-"))
    try:
        results = run(plan, sizes, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    config = {
        "quick": a.quick,
        "plan": asdict(plan),
        "sizes": asdict(sizes),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
    }
    out = summary(results, config)
    a.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    show(results, out)
    print(f"written: {a.out} ({config['wall_seconds']:.0f} s)")
    if a.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
