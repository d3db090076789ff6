"""Revocation benchmark: time from `pki revoke` to refusal at every node, in refresh intervals.

``python -m creditnet_devkit.bench.revocation`` (``make bench-revocation``) runs a
five-city network in this process with a short refresh interval, revokes a
fresh bank certificate at a time, and measures until every node and the
aggregator refuse it (`cert.revoked`), polling every 1/50 of the interval:

- **published**: every server reached by the publish; from the start of
  `revoke` (fetching, verifying, signing, publishing) to refusal everywhere;
- **missed**: one running node the publish skipped (as if cut off from the
  publisher); from the start of `revoke` to its refusal, which it learns
  from its peers at its next refresh;
- **restarted**: one node down during the publish; from its restart to its
  refusal (a server refreshes from its peers as it starts).

Each time is also given as a multiple of the refresh interval, the figure
to compare across machines and intervals: the design bound for a server
that missed the publish is one interval plus one refresh round.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.directory.publish import Target, targets
from creditnet.directory.revoke import revoke
from creditnet.network import InProcessNetwork, NetworkLayout, provision
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc

__all__ = [
    "bench_revocation",
    "bench_revocation_async",
    "main",
    "show",
]

REFRESH = dt.timedelta(seconds=2)
MISSED_CITY = pilot.HEFEI
# Give up on a run after this many intervals (the bound is one).
PATIENCE = 20


async def _refused(layout: NetworkLayout, target: Target, caller: Identity, trust: TrustStore) -> bool:
    async with secure_channel(target.endpoint, caller, trust, target.server_name) as channel:
        try:
            if target.name == "aggregator":
                await aggregator_pb2_grpc.AggregatorServiceStub(channel).ListNodes(
                    aggregator_pb2.ListNodesRequest(), timeout=5
                )
            else:
                await chain_pb2_grpc.ChainServiceStub(channel).GetCheckpoint(
                    chain_pb2.GetCheckpointRequest(), timeout=5
                )
        except grpc.aio.AioRpcError as exc:
            return (exc.details() or "").startswith("cert.revoked:")
    return False


async def _until_refused(
    layout: NetworkLayout,
    chosen: list[Target],
    caller: Identity,
    trust: TrustStore,
    t0: float,
    interval: float,
) -> float:
    waiting = list(chosen)
    while waiting:
        if time.perf_counter() - t0 > PATIENCE * interval:
            raise RuntimeError(
                f"not refused within {PATIENCE} refresh intervals: {[t.name for t in waiting]}"
            )
        done = await asyncio.gather(*(_refused(layout, t, caller, trust) for t in waiting))
        waiting = [t for t, refused in zip(waiting, done, strict=True) if not refused]
        if waiting:
            await asyncio.sleep(interval / 50)
    return time.perf_counter() - t0


async def bench_revocation_async(root: Path, runs: int, refresh: dt.timedelta) -> dict[str, Any]:
    layout = provision(root, enterprises_per_city=5, seed=11, directory_refresh=refresh)
    ca = CertificateAuthority.load(root / "pki")
    trust = TrustStore.load(layout.ca)
    interval = refresh.total_seconds()
    published: list[float] = []
    missed: list[float] = []
    restarted: list[float] = []
    async with InProcessNetwork(layout) as net:
        everyone = targets(layout)
        for i in range(runs):
            bank = issue_identity(ca, Role.bank(f"B0310H2310{i:05d}"))
            t0 = time.perf_counter()
            await revoke(layout, bank.cert)
            published.append(await _until_refused(layout, everyone, bank, trust, t0, interval))

            node = [t for t in everyone if t.name == MISSED_CITY.value]
            others = [t for t in everyone if t.name != MISSED_CITY.value]
            skipped = issue_identity(ca, Role.bank(f"B0320H2320{i:05d}"))
            t0 = time.perf_counter()
            await revoke(layout, skipped.cert, only=others)
            missed.append(await _until_refused(layout, node, skipped, trust, t0, interval))

            late = issue_identity(ca, Role.bank(f"B0330H2330{i:05d}"))
            await net.stop_node(MISSED_CITY)
            await revoke(layout, late.cert)
            t0 = time.perf_counter()
            await net.start_node(MISSED_CITY)
            restarted.append(await _until_refused(layout, node, late, trust, t0, interval))

    def summary(times: list[float]) -> dict[str, float]:
        return {
            "median_s": statistics.median(times),
            "max_s": max(times),
            "median_intervals": statistics.median(times) / interval,
            "max_intervals": max(times) / interval,
        }

    return {
        "refresh_interval_s": interval,
        "runs": runs,
        "published": summary(published),
        "missed": summary(missed),
        "restarted": summary(restarted),
    }


def bench_revocation(runs: int = 5, refresh: dt.timedelta = REFRESH) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="creditnet-bench-revocation-"))
    try:
        return asyncio.run(bench_revocation_async(tmp / "net", runs, refresh))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def show(result: dict[str, Any]) -> None:
    print(
        f"certificate revocation: time to refusal, refresh interval {result['refresh_interval_s']:g} s, "
        f"{result['runs']} runs"
    )
    print(
        "{:<34} {:>10} {:>10} {:>14} {:>14}".format(
            "case", "median s", "max s", "median × intv", "max × intv"
        )
    )
    cases = (
        ("published", "publish reached every server"),
        ("missed", "a running node the publish skipped"),
        ("restarted", "node down during publish, restarted"),
    )
    for key, label in cases:
        r = result[key]
        print(
            f"{label:<36} {r['median_s']:>10.3f} {r['max_s']:>10.3f} "
            f"{r['median_intervals']:>14.2f} {r['max_intervals']:>14.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="time from pki revoke to refusal at every server")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--refresh", type=float, default=REFRESH.total_seconds(), help="refresh interval, seconds")
    p.add_argument("--out", type=Path, default=Path("bench-revocation.json"))
    a = p.parse_args(argv)
    result = bench_revocation(a.runs, dt.timedelta(seconds=a.refresh))
    show(result)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
