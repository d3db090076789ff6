"""The node's store at the scale of Shanghai, on SQLite and on PostgreSQL.

``python -m creditnet_devkit.bench.scale`` (``make bench-scale``) builds one city's
store — 3,000,000 enterprises and 30,000,000 credit records by default;
``--enterprises`` and ``--records`` scale it down — from the synthetic
generator through the real ingestion path (record validation, then
``Store.ingest`` and ``Store.upsert_profiles`` in 5,000-row transactions) into
every backend in the same pass, so both get the same rows in the same order.
It reports each backend's ingestion rate, the process's resident memory at
10%, 50% and 100% of the load (it must not grow with the store), and then
p50/p99 latency of a node's reads at that size: one enterprise's records over
the consent period plus its profile, as every answered query does.

Records are spread evenly over the enterprises: an enterprise gets all its
generated records (about 25) while the running total is below its share of
``--records``, and only its registration profile otherwise (a registered
enterprise without credit records yet).

:func:`bench_backends` is the part of ``make bench``: a node's signed-query
throughput and store ingestion on PostgreSQL against SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from creditnet import pilot, provenance
from creditnet import records as records_mod
from creditnet.domain import ALL_CATEGORIES, City
from creditnet.pki import CertificateAuthority
from creditnet.store import Store
from creditnet.store.scratch import ScratchDatabases, ServerUnavailable
from creditnet.v2 import records_pb2
from creditnet_devkit import synthetic
from creditnet_devkit.bench.provenance import bench_provider, signed_batches

__all__ = [
    "Backend",
    "Load",
    "bench_backends",
    "load",
    "main",
    "peak_rss_bytes",
    "percentiles",
    "query_latency",
    "rss_bytes",
    "run_scale",
    "show_backends",
    "show_scale",
]

SEED = 20221118
CITY = pilot.SHANGHAI
BATCH = 5_000
MARKS = (0.1, 0.5, 1.0)
# What a consent typically covers: the last three years of data.
PERIOD = (synthetic.AS_OF - dt.timedelta(days=3 * 365), synthetic.AS_OF)


# -- measuring -------------------------------------------------------------------


def rss_bytes() -> int:
    """The process's resident memory now."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


@dataclass(slots=True)
class Backend:
    """One store being loaded, and how long its writes took."""

    name: str
    url: str
    store: Store
    seconds: float = 0.0
    marks: list[dict[str, float]] = field(default_factory=list)

    def write(
        self,
        profiles: list[records_pb2.EnterpriseProfile],
        recs: list[records_pb2.CreditRecord],
        signed: provenance.SignedBatch | None,
    ) -> None:
        t0 = time.perf_counter()
        if profiles:
            self.store.upsert_profiles(profiles)
        if recs and signed is not None:
            self.store.ingest(recs, signed.provider_id, signed=signed, leaves=range(len(recs)))
        self.seconds += time.perf_counter() - t0


# -- the data set ----------------------------------------------------------------


@dataclass(slots=True)
class Load:
    """Streams one city's enterprises as batches of profiles and of records."""

    enterprises: int
    records: int
    seed: int = SEED
    sample_size: int = 2000
    profiles_done: int = 0
    records_done: int = 0
    with_records: int = 0
    sample: list[str] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    @property
    def rows(self) -> int:
        return self.enterprises + self.records

    @property
    def rows_done(self) -> int:
        return self.profiles_done + self.records_done

    def batches(self) -> Iterator[tuple[list[records_pb2.EnterpriseProfile], list[records_pb2.CreditRecord]]]:
        profiles: list[records_pb2.EnterpriseProfile] = []
        recs: list[records_pb2.CreditRecord] = []
        for index in range(self.enterprises):
            share = self.records * (index + 1) // self.enterprises
            if self.records_done + len(recs) < share:
                items = iter(synthetic.enterprise_items(self.seed, CITY, index))
                profile = next(items)
                assert isinstance(profile, records_pb2.EnterpriseProfile)
                own = [r for r in items if isinstance(r, records_pb2.CreditRecord) and r.city == CITY.proto]
                recs.extend(own)
                self._remember(profile.uscc)
            else:
                profile = synthetic.plan_enterprise(self.seed, CITY, index).profile()
            profiles.append(profile)
            if len(recs) >= BATCH or len(profiles) >= BATCH:
                yield profiles, recs
                self.profiles_done += len(profiles)
                self.records_done += len(recs)
                profiles, recs = [], []
        if profiles or recs:
            yield profiles, recs
            self.profiles_done += len(profiles)
            self.records_done += len(recs)

    def _remember(self, uscc: str) -> None:
        # Reservoir sampling: a uniform sample of the enterprises with records.
        self.with_records += 1
        if len(self.sample) < self.sample_size:
            self.sample.append(uscc)
        else:
            j = self._rng.randrange(self.with_records)
            if j < self.sample_size:
                self.sample[j] = uscc


def load(load_spec: Load, backends: list[Backend], progress: Callable[[str], None]) -> dict[str, Any]:
    provider = bench_provider(CertificateAuthority.create(), CITY)
    generate_s = validate_s = 0.0
    marks = list(MARKS)
    rss: list[dict[str, float]] = []
    start = time.perf_counter()
    t0 = time.perf_counter()
    for profiles, recs in load_spec.batches():
        t1 = time.perf_counter()
        generate_s += t1 - t0
        for rec in recs:
            records_mod.validate_record(rec, today=synthetic.AS_OF)
        t2 = time.perf_counter()
        validate_s += t2 - t1
        # Signed as the city's provider would have (not counted as store time).
        signed = None
        if recs:
            recs, signed = provenance.sign_records(provider, recs)
        for b in backends:
            b.write(profiles, recs, signed)
        done = load_spec.rows_done + len(profiles) + len(recs)
        while marks and done >= marks[0] * load_spec.rows:
            mark = marks.pop(0)
            rss.append(
                {
                    "fraction": mark,
                    "records": load_spec.records_done + len(recs),
                    "rss_mib": rss_bytes() / 2**20,
                    "peak_rss_mib": peak_rss_bytes() / 2**20,
                    "elapsed_s": time.perf_counter() - start,
                }
            )
            for b in backends:
                b.marks.append({"fraction": mark, "seconds": b.seconds})
            progress(
                f"{mark:.0%}: {load_spec.records_done + len(recs):,} records,"
                f" RSS {rss[-1]['rss_mib']:.0f} MiB, {rss[-1]['elapsed_s']:.0f} s"
            )
        t0 = time.perf_counter()
    return {
        "enterprises": load_spec.enterprises,
        "records": load_spec.records_done,
        "enterprises_with_records": load_spec.with_records,
        "generate_seconds": generate_s,
        "validate_seconds": validate_s,
        "wall_seconds": time.perf_counter() - start,
        "rss": rss,
    }


def query_latency(store: Store, usccs: Sequence[str]) -> dict[str, Any]:
    """One enterprise's records over the consent period and its profile, per enterprise."""
    latencies: list[float] = []
    found = 0
    for uscc in usccs:
        t0 = time.perf_counter()
        # What a node reads to answer: the signed records, their batches, the profile.
        disclosed = store.disclose(uscc, ALL_CATEGORIES, *PERIOD, with_profile=True)
        profile = disclosed.profile
        latencies.append(time.perf_counter() - t0)
        found += len(disclosed.records)
        if profile is None:
            raise RuntimeError(f"enterprise {uscc} has no profile in the {store.backend} store")
    stats = []
    for _ in range(5):
        t0 = time.perf_counter()
        store.stats()
        stats.append(time.perf_counter() - t0)
    return {
        "queries": len(usccs),
        "records_per_query": found / max(len(usccs), 1),
        **percentiles(latencies),
        "stats_ms": 1000 * min(stats),
    }


def run_scale(
    enterprises: int,
    records: int,
    backend_names: Sequence[str],
    work: Path,
    progress: Callable[[str], None] = print,
    keep: bool = False,
) -> dict[str, Any]:
    """Build the store on every backend and measure it; see the module doc."""
    if enterprises < 1 or records < 1:
        raise ValueError(f"--enterprises and --records must be positive, not {enterprises} and {records}")
    scratch: ScratchDatabases | None = None
    backends: list[Backend] = []
    result: dict[str, Any] = {"skipped": {}}
    try:
        for name in backend_names:
            if name == "sqlite":
                url = f"sqlite:///{work / '310000.db'}"
            elif name == "postgresql":
                scratch = scratch or ScratchDatabases("creditnet_scale")
                try:
                    url = scratch.create("310000")
                except ServerUnavailable as exc:
                    result["skipped"][name] = str(exc)
                    progress(f"postgresql skipped: {exc}")
                    continue
            else:
                raise ValueError(f"unknown backend {name!r}; use sqlite and/or postgresql")
            backends.append(Backend(name, url, Store.open(url, migrate=True)))
        spec = Load(enterprises, records)
        result["load"] = load(spec, backends, progress)
        for b in backends:
            progress(f"{b.name}: measuring reads over {len(spec.sample):,} enterprises")
            size = b.store.stats().db_size_bytes
            result[b.name] = {
                "ingest_seconds": b.seconds,
                "rows_per_second": spec.rows_done / b.seconds if b.seconds else 0.0,
                "records_per_second": spec.records_done / b.seconds if b.seconds else 0.0,
                "segments": _segments(b, spec),
                "db_size_bytes": size,
                "reads": query_latency(b.store, spec.sample),
            }
        return result
    finally:
        for b in backends:
            b.store.close()
        if scratch is not None:
            if keep:
                progress(f"kept: {', '.join(b.url for b in backends)}")
            else:
                scratch.close()


def _segments(b: Backend, spec: Load) -> list[dict[str, float]]:
    """Ingestion rate within each stretch between marks: does it hold up as the store grows?"""
    out = []
    previous_fraction, previous_seconds = 0.0, 0.0
    for mark in b.marks:
        rows = (mark["fraction"] - previous_fraction) * spec.rows
        seconds = mark["seconds"] - previous_seconds
        out.append({"up_to": mark["fraction"], "rows_per_second": rows / seconds if seconds else 0.0})
        previous_fraction, previous_seconds = mark["fraction"], mark["seconds"]
    return out


def show_scale(r: dict[str, Any]) -> None:
    ld = r["load"]
    print(
        f"Shanghai-sized store: {ld['enterprises']:,} enterprises, {ld['records']:,} records"
        f" ({ld['enterprises_with_records']:,} enterprises with records),"
        f" loaded in {ld['wall_seconds']:.0f} s"
        f" (generating {ld['generate_seconds']:.0f} s, validating {ld['validate_seconds']:.0f} s)"
    )
    for name, reason in r["skipped"].items():
        print(f"  {name}: SKIPPED ({reason})")
    for name in ("sqlite", "postgresql"):
        if name not in r:
            continue
        b = r[name]
        segs = ", ".join(f"≤{s['up_to']:.0%} {s['rows_per_second']:,.0f}/s" for s in b["segments"])
        size = f"{b['db_size_bytes'] / 2**30:.2f} GiB" if b["db_size_bytes"] else "?"
        rd = b["reads"]
        print(
            f"  {name:<10} ingest {b['rows_per_second']:9,.0f} rows/s"
            f" ({b['records_per_second']:,.0f} records/s; {segs}); {size}"
        )
        print(
            f"  {'':<10} reads (records over 3 years + profile, {rd['records_per_query']:.1f} records):"
            f" p50 {rd['p50_ms']:.2f} ms, p99 {rd['p99_ms']:.2f} ms; stats {rd['stats_ms']:.1f} ms"
        )
    print(
        "  process RSS: "
        + ", ".join(
            f"{m['fraction']:.0%} {m['rss_mib']:.0f} MiB (peak {m['peak_rss_mib']:.0f})" for m in ld["rss"]
        )
    )


# -- make bench: a node and ingestion on each backend ---------------------------------------


Call = Callable[[int], Awaitable[object]]


async def _drive(call: Call, total: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"per_second": total / (time.perf_counter() - start), **percentiles(latencies)}


async def _node_rate(root: Path, queries: int, concurrency: int = 8, warmup: int = 200) -> dict[str, float]:
    from creditnet import query as query_mod
    from creditnet.channels import secure_channel
    from creditnet.domain import Purpose
    from creditnet.network import NetworkLayout, grant_demo_consent
    from creditnet.pki import TrustStore, node_server_name
    from creditnet.v2 import node_pb2, node_pb2_grpc

    layout = NetworkLayout.load(root)
    bank = layout.bank()
    consent = grant_demo_consent(layout)
    # Signed before the clock starts: the bank's signing is not the node's cost.
    signed = [
        query_mod.build(
            bank,
            consent,
            enterprise_uscc=layout.demo_enterprise,
            purpose=Purpose.LOAN_APPLICATION,
            cities=(CITY,),
        )
        for _ in range(queries + warmup)
    ]
    trust = TrustStore.load(layout.ca)
    async with secure_channel(layout.node_endpoint(CITY), bank, trust, node_server_name(CITY)) as ch:
        stub = node_pb2_grpc.CityNodeServiceStub(ch)

        async def ask(i: int) -> object:
            return await stub.Query(node_pb2.QueryRequest(query=signed[i]), timeout=10)

        await _drive(ask, warmup, concurrency)

        async def measured(i: int) -> object:
            return await ask(warmup + i)

        return await _drive(measured, queries, concurrency)


def _ingest_rate(url: str, recs: list[records_pb2.CreditRecord]) -> float:
    signed = signed_batches(bench_provider(CertificateAuthority.create(), CITY), recs, BATCH)
    with Store.open(url, migrate=True) as store:
        t0 = time.perf_counter()
        for part, proof in signed:
            store.ingest(part, proof.provider_id, signed=proof, leaves=range(len(part)))
        return len(recs) / (time.perf_counter() - t0)


def bench_backends(tmp: Path, queries: int = 2000, rows: int = 100_000) -> dict[str, Any]:
    """A node's signed queries (8 in flight, the five-city network with its
    chain) and store ingestion, on PostgreSQL and on SQLite."""
    from creditnet.network import ProcessNetwork, provision

    recs = [
        item
        for item in synthetic.generate(11, max(rows // 20, 10), cities=(CITY,))
        if isinstance(item, records_pb2.CreditRecord)
    ][:rows]
    out: dict[str, Any] = {}
    with ScratchDatabases("creditnet_bench") as scratch:
        for backend in ("sqlite", "postgresql"):
            urls: dict[City, str] | None = None
            ingest_url = f"sqlite:///{tmp / 'ingest-backends.db'}"
            if backend == "postgresql":
                try:
                    urls = {c: scratch.create(c.value) for c in pilot.CITIES}
                    ingest_url = scratch.create("ingest")
                except ServerUnavailable as exc:
                    out["postgresql"] = {"skipped": str(exc)}
                    continue
            root = tmp / f"net-{backend}"
            net = ProcessNetwork(provision(root, enterprises_per_city=200, seed=5, database_urls=urls))
            net.start()
            try:
                asyncio.run(net.wait_healthy())
                node = asyncio.run(_node_rate(root, queries))
            finally:
                net.stop()
            shutil.rmtree(root, ignore_errors=True)
            out[backend] = {"node": node, "ingest_rows_per_second": _ingest_rate(ingest_url, recs)}
    out["rows"] = len(recs)
    return out


def show_backends(r: dict[str, Any]) -> None:
    """Print :func:`bench_backends`' result (for ``python -m creditnet_devkit.bench``)."""
    print("  node and store on each database (same network, same rows)")
    for backend in ("sqlite", "postgresql"):
        b = r.get(backend, {})
        if "skipped" in b:
            print(f"    {backend:<11}SKIPPED: {b['skipped']}")
            continue
        n = b["node"]
        print(
            f"    {backend:<11}node {n['per_second']:6.0f} q/s"
            f" (p50 {n['p50_ms']:.1f} ms, p99 {n['p99_ms']:.1f} ms),"
            f" ingest {b['ingest_rows_per_second']:8,.0f} rows/s"
        )
    if "node" in r.get("postgresql", {}) and "node" in r.get("sqlite", {}):
        pg, lite = r["postgresql"], r["sqlite"]
        print(
            f"    PostgreSQL/SQLite: node {pg['node']['per_second'] / lite['node']['per_second']:.2f}x,"
            f" ingest {pg['ingest_rows_per_second'] / lite['ingest_rows_per_second']:.2f}x"
        )


# -- command line ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m creditnet_devkit.bench.scale",
        description="Build a Shanghai-sized node store on SQLite and PostgreSQL and measure it.",
    )
    p.add_argument("--enterprises", type=int, default=3_000_000, help="enterprises (profiles) to load")
    p.add_argument("--records", type=int, default=30_000_000, help="credit records to load")
    p.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql (DATABASE_URL)"
    )
    p.add_argument("--dir", type=Path, default=None, help="where the SQLite file goes (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the databases (prints where they are)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    work = a.dir or Path(tempfile.mkdtemp(prefix="creditnet-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        say: Callable[[str], None] = (lambda _m: None) if a.json else (lambda m: print(m, flush=True))
        result = run_scale(
            a.enterprises,
            a.records,
            [b.strip() for b in a.backends.split(",") if b.strip()],
            work,
            progress=say,
            keep=a.keep,
        )
    finally:
        if not a.keep and a.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        show_scale(result)


if __name__ == "__main__":
    main()
