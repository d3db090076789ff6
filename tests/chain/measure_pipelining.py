"""How long an answer waits for its receipt, with serial and with pipelined witness rounds.

    python -m tests.chain.measure_pipelining [--delay 0.02] [--rate 150] [--n 600] [--base COMMIT]

Three real witness servers, each holding every AddCheckpoint call `--delay`
seconds before the witness handles it (the network and the witness's work),
and a ledger with quorum 3. Entries arrive open-loop (Poisson, `--rate` per
second), each appended and then waited on for its receipt; the wait is from
the append call to the receipt. Variants in the same run: rounds in flight
bounded at 1 (serial: the next round starts when the previous one ends, the
shape before pipelining), 2 (the default) and 4, and with `--base` the ledger
module of that commit (git show) as it was. Figures are printed as ratios to
the mean witness round of the serial variant and to the serial waits.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from creditnet import pilot
from creditnet.chain import ledger as current
from creditnet.chain.keys import LogKey
from creditnet.chain.witness import Witness, WitnessService
from creditnet.dates import ts_to_proto
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.rpc import ServerHandle, start_server
from creditnet.store import Store
from creditnet.v2 import chain_pb2, chain_pb2_grpc


class DelayedWitnessService(WitnessService):
    def __init__(self, witness: Witness, trust: TrustStore, delay: float) -> None:
        super().__init__(witness, trust)
        self.delay = delay

    async def AddCheckpoint(
        self, request: chain_pb2.AddCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.AddCheckpointResponse:
        await asyncio.sleep(self.delay)
        return await super().AddCheckpoint(request, context)


def entry(i: int) -> chain_pb2.LedgerEntry:
    return chain_pb2.LedgerEntry(
        kind=chain_pb2.ENTRY_KIND_QUERY_ANSWERED,
        time=ts_to_proto(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)),
        city=pilot.HEFEI.proto,
        query_id=f"q-{i}",
        bank_code="B0310H231000001",
    )


def base_module(commit: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{commit}:services/creditnet/chain/ledger.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("creditnet.chain._ledger_base", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{commit}:ledger.py", "exec"), module.__dict__)
    return module


class Variant:
    """One ledger and its three witnesses, fed in bursts so that the variants share the machine's noise."""

    def __init__(self, name: str, module: ModuleType, bound: int | None) -> None:
        self.name = name
        self.module = module
        self.bound = bound
        self.handles: list[ServerHandle] = []
        self.stores: list[Store] = []
        # Per round: checkpoint size -> seconds from its start to its end.
        self.rounds: dict[int, float] = {}
        # Per answer: (seconds from append to receipt, size of the checkpoint in its receipt).
        self.answers: list[tuple[float, int]] = []
        self.ledger: Any = None

    async def start(self, ca: CertificateAuthority, trust: TrustStore, delay: float, tmp: Path) -> None:
        hefei: Identity = issue_identity(ca, Role.node(pilot.HEFEI))
        links = []
        tag = "".join(ch for ch in self.name if ch.isalnum())
        for city in (pilot.SHANGHAI, pilot.NANJING, pilot.HANGZHOU):
            store = Store.open(f"sqlite:///{tmp / f'{tag}-{city.value}.db'}", migrate=True)
            self.stores.append(store)
            service = DelayedWitnessService(Witness(store, LogKey.issue(ca, city.value)), trust, delay)
            handle = await start_server(
                listen="127.0.0.1:0",
                identity=issue_identity(ca, Role.node(city)),
                trust=trust,
                register=lambda s, svc=service: chain_pb2_grpc.add_WitnessServiceServicer_to_server(svc, s),
                service_names=["creditnet.v2.WitnessService"],
            )
            self.handles.append(handle)
            links.append(
                self.module.WitnessLink.connect(city.value, f"127.0.0.1:{handle.port}", hefei, trust)
            )
        store = Store.open(f"sqlite:///{tmp / f'{tag}-340100.db'}", migrate=True)
        self.stores.append(store)
        ledger = self.module.Ledger(store, LogKey.issue(ca, "340100"), witnesses=links, quorum=3)
        if self.bound is not None:
            ledger.max_rounds_in_flight = self.bound
        publish = ledger.publish

        async def timed_publish(size: int) -> bool:
            began = time.perf_counter()
            try:
                return bool(await publish(size))
            finally:
                self.rounds[size] = time.perf_counter() - began

        ledger.publish = timed_publish
        ledger.start()
        self.ledger = ledger
        # Warm up: connections made, witnesses at the log's size.
        await self.answer(-1)
        self.answers.clear()

    async def answer(self, i: int) -> None:
        began = time.perf_counter()
        a = await self.ledger.append(entry(i))
        r = await self.ledger.receipt(a.index, a.entry, 30)
        self.answers.append((time.perf_counter() - began, r.tree_size))

    async def burst(self, first: int, n: int, rate: float, rng: random.Random) -> None:
        tasks = []
        for i in range(first, first + n):
            tasks.append(asyncio.create_task(self.answer(i)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)

    async def stop(self) -> None:
        await self.ledger.stop()
        for h in self.handles:
            await h.server.stop(0)
        for s in self.stores:
            s.close()

    def figures(self) -> dict[str, float]:
        waits = sorted(w for w, _ in self.answers)
        # Each answer's wait in units of the round that published its receipt's
        # checkpoint: a ratio that the machine's load inflates on both sides.
        per_round = sorted(w / self.rounds[size] for w, size in self.answers)
        return {
            "round": statistics.mean(self.rounds.values()),
            "mean": statistics.mean(waits),
            "p99": waits[int(0.99 * (len(waits) - 1))],
            "rounds_waited_mean": statistics.mean(per_round),
            "rounds_waited_p99": per_round[int(0.99 * (len(per_round) - 1))],
            "rounds_per_answer": len(self.rounds) / len(self.answers),
            "peak": float(getattr(self.ledger, "rounds_peak", 1)),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--n", type=int, default=1000, help="answers per variant")
    parser.add_argument("--burst", type=int, default=100, help="answers per variant in turn")
    parser.add_argument("--base", help="also measure the ledger module of this commit")
    args = parser.parse_args()
    ca = CertificateAuthority.create()
    trust = TrustStore(ca.cert)
    serial_variant = Variant("serial (1 in flight)", current, 1)
    variants = [
        serial_variant,
        Variant(f"pipelined ({current.MAX_ROUNDS_IN_FLIGHT})", current, current.MAX_ROUNDS_IN_FLIGHT),
        Variant("pipelined (4)", current, 4),
    ]
    if args.base:
        variants.insert(0, Variant(f"base {args.base}", base_module(args.base), None))
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            await v.start(ca, trust, args.delay, Path(tmp))
        for turn, first in enumerate(range(0, args.n, args.burst)):
            # In turn, each variant first as often as last.
            for v in variants[turn % len(variants) :] + variants[: turn % len(variants)]:
                await v.burst(first, min(args.burst, args.n - first), args.rate, rng)
        for v in variants:
            await v.stop()
    got = {v.name: v.figures() for v in variants}
    serial = got[serial_variant.name]
    print(
        f"witness delay {args.delay * 1000:.0f} ms, {args.rate:.0f} arrivals/s, {args.n} answers per variant"
    )
    print(
        f"{'variant':<22}{'round ms':>9}{'mean/serial':>12}{'p99/serial':>11}"
        f"{'waited mean':>12}{'waited p99':>11}{'rounds/answer':>14}{'peak':>5}"
    )
    print(f"{'':<22}{'':>9}{'':>12}{'':>11}{'(rounds)':>12}{'(rounds)':>11}")
    for name, f in got.items():
        print(
            f"{name:<22}{f['round'] * 1000:>9.1f}{f['mean'] / serial['mean']:>12.2f}"
            f"{f['p99'] / serial['p99']:>11.2f}{f['rounds_waited_mean']:>12.2f}"
            f"{f['rounds_waited_p99']:>11.2f}{f['rounds_per_answer']:>14.3f}{f['peak']:>5.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
