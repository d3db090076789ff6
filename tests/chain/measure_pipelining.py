"""How long an answer waits for its receipt, with serial and with pipelined witness rounds.

    python -m tests.chain.measure_pipelining [--delay 0.02] [--rate 150] [--n 1000] [--base COMMIT]

Three real witness servers per variant (all in one separate process), each
holding every AddCheckpoint call `--delay` seconds before the witness handles
it (the network's share of a round), and a ledger with quorum 3. Entries
arrive open-loop (Poisson, `--rate` per second), each appended and then
waited on for its receipt; the wait is from the append call to the receipt.
Variants in the same run: rounds in flight bounded at 1 (serial: the next
round starts when the previous one ends, the shape before pipelining), 2 (the
default) and 4, and with `--base` the ledger module of that commit (git show; one since
the ledger package) as it was. The variants take turns, in bursts, so that they share the
machine's noise. Waits are printed as ratios to the serial variant's, and in
units of the round that published each answer's checkpoint ("rounds waited":
serial rounds make it ~1.5 plus the commit).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from creditnet import pilot
from creditnet.chain.keys import LogKey
from creditnet.dates import ts_to_proto
from creditnet.ledger import log as current
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.rpc import ServerHandle, start_server
from creditnet.store import AsyncStore, Store
from creditnet.v2 import chain_pb2, chain_pb2_grpc
from creditnet.witness.link import WitnessLink
from creditnet.witness.server import Witness, WitnessService


class DelayedWitnessService(WitnessService):
    def __init__(self, witness: Witness, trust: TrustStore, delay: float) -> None:
        super().__init__(witness, trust)
        self.delay = delay
        self.calls = 0

    async def AddCheckpoint(
        self, request: chain_pb2.AddCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.AddCheckpointResponse:
        self.calls += 1
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
    # Commits since the ledger got its own package: before, the module imported
    # chain/ modules that no longer exist, so it cannot be loaded next to this tree.
    source = subprocess.run(
        ["git", "show", f"{commit}:services/creditnet/ledger/log.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("creditnet.ledger._log_base", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{commit}:ledger.py", "exec"), module.__dict__)
    return module


CITIES = (pilot.SHANGHAI, pilot.NANJING, pilot.HANGZHOU)


@dataclass
class Witnesses:
    """Three witness servers, each on its own port and database."""

    handles: list[ServerHandle] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)
    services: list[DelayedWitnessService] = field(default_factory=list)

    @classmethod
    async def serve(
        cls, ca: CertificateAuthority, trust: TrustStore, delay: float, tmp: Path, tag: str
    ) -> Witnesses:
        got = cls()
        for city in CITIES:
            store = Store.open(f"sqlite:///{tmp / f'{tag}-{city.value}.db'}", migrate=True)
            got.stores.append(store)
            service = DelayedWitnessService(Witness(store, LogKey.issue(ca, city.value)), trust, delay)
            got.services.append(service)
            got.handles.append(
                await start_server(
                    listen="127.0.0.1:0",
                    identity=issue_identity(ca, Role.node(city)),
                    trust=trust,
                    register=lambda s, svc=service: chain_pb2_grpc.add_WitnessServiceServicer_to_server(
                        svc, s
                    ),
                    service_names=["creditnet.v2.WitnessService"],
                )
            )
        return got

    @property
    def ports(self) -> list[int]:
        return [h.port for h in self.handles]

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.services)

    async def stop(self) -> None:
        for h in self.handles:
            await h.server.stop(0)
        for s in self.stores:
            s.close()


async def serve_witnesses(directory: Path, delay: float, tags: list[str]) -> None:
    """Every variant's witnesses, here: their ports on stdout, then their call counts when asked."""
    ca = CertificateAuthority.load(directory)
    trust = TrustStore(ca.cert)
    served = {tag: await Witnesses.serve(ca, trust, delay, directory, tag) for tag in tags}
    print(json.dumps({tag: w.ports for tag, w in served.items()}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "calls":
            print(json.dumps({tag: w.calls for tag, w in served.items()}), flush=True)
    for w in served.values():
        await w.stop()


class Variant:
    """One ledger and its three witnesses, fed in bursts so that the variants share the machine's noise."""

    def __init__(self, name: str, module: ModuleType, bound: int | None) -> None:
        self.name = name
        self.module = module
        self.bound = bound
        self.stores: list[Store] = []
        # Calls the witnesses took, counted from the warm-up's end to the last answer.
        self.calls = 0
        # Per round: checkpoint size -> seconds from its start to its end.
        self.rounds: dict[int, float] = {}
        # Per answer: (seconds from append to receipt, size of the checkpoint in its receipt).
        self.answers: list[tuple[float, int]] = []
        self.ledger: Any = None

    @property
    def tag(self) -> str:
        return "".join(ch for ch in self.name if ch.isalnum())

    async def start(self, ca: CertificateAuthority, trust: TrustStore, ports: list[int], tmp: Path) -> None:
        hefei: Identity = issue_identity(ca, Role.node(pilot.HEFEI))
        links = [
            WitnessLink.connect(city.value, f"127.0.0.1:{port}", hefei, trust)
            for city, port in zip(CITIES, ports, strict=True)
        ]
        tag = self.tag
        store = Store.open(f"sqlite:///{tmp / f'{tag}-340100.db'}", migrate=True)
        self.stores.append(store)
        # Ledgers since the one write path append through the store's writer (an AsyncStore).
        log_store: Any = AsyncStore(store) if self.module is current else store
        ledger = self.module.Ledger(log_store, LogKey.issue(ca, "340100"), witnesses=links, quorum=3)
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
        self.rounds.clear()

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
            # Three when no call is refused and sent again (rounds crossing at a witness).
            "calls_per_round": self.calls / len(self.rounds),
            "peak": float(getattr(self.ledger, "rounds_peak", 1)),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--n", type=int, default=1000, help="answers per variant")
    parser.add_argument("--burst", type=int, default=100, help="answers per variant in turn")
    parser.add_argument("--base", help="also measure the ledger module of this commit")
    parser.add_argument("--serve-witnesses", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("tags", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_witnesses:
        await serve_witnesses(Path(args.serve_witnesses), args.delay, args.tags)
        return
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
        ca.save(Path(tmp))
        # The witnesses run in a process of their own, as other cities' nodes do: their
        # work competes with the log's for the machine, not for its event loop.
        witnesses = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.chain.measure_pipelining",
            "--serve-witnesses",
            tmp,
            "--delay",
            str(args.delay),
            *[v.tag for v in variants],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert witnesses.stdin is not None and witnesses.stdout is not None

        async def ask(line: str) -> dict[str, Any]:
            assert witnesses.stdin is not None and witnesses.stdout is not None
            if line:
                witnesses.stdin.write(line.encode() + b"\n")
                await witnesses.stdin.drain()
            got: dict[str, Any] = json.loads(await witnesses.stdout.readline())
            return got

        ports = await ask("")
        for v in variants:
            await v.start(ca, trust, ports[v.tag], Path(tmp))
        before = await ask("calls")
        for turn, first in enumerate(range(0, args.n, args.burst)):
            # In turn, each variant first as often as last.
            for v in variants[turn % len(variants) :] + variants[: turn % len(variants)]:
                await v.burst(first, min(args.burst, args.n - first), args.rate, rng)
        after = await ask("calls")
        for v in variants:
            v.calls = after[v.tag] - before[v.tag]
            await v.stop()
        witnesses.stdin.close()
        await witnesses.wait()
    got = {v.name: v.figures() for v in variants}
    serial = got[serial_variant.name]
    print(
        f"witness delay {args.delay * 1000:.0f} ms, {args.rate:.0f} arrivals/s, {args.n} answers per variant"
    )
    print(
        f"{'variant':<22}{'round ms':>9}{'mean/serial':>12}{'p99/serial':>11}"
        f"{'waited mean':>12}{'waited p99':>11}{'rounds/answer':>14}{'calls/round':>12}{'peak':>5}"
    )
    print(f"{'':<22}{'':>9}{'':>12}{'':>11}{'(rounds)':>12}{'(rounds)':>11}")
    for name, f in got.items():
        print(
            f"{name:<22}{f['round'] * 1000:>9.1f}{f['mean'] / serial['mean']:>12.2f}"
            f"{f['p99'] / serial['p99']:>11.2f}{f['rounds_waited_mean']:>12.2f}"
            f"{f['rounds_waited_p99']:>11.2f}{f['rounds_per_answer']:>14.3f}{f['calls_per_round']:>12.2f}"
            f"{f['peak']:>5.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
