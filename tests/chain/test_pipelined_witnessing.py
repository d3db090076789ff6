"""Pipelined witness rounds: a round starts while another is in flight, bounded, and crossing safely.

The witnesses are real witness servers on real gRPC ports whose servicer
holds each AddCheckpoint call at a gate until the test opens the gate for
that checkpoint's size: the order in which rounds reach the witnesses is the
test's to choose, and nothing here depends on timings.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest_asyncio

from creditnet import pilot
from creditnet.chain.keys import LogKey
from creditnet.chain.receipts import verify_receipt
from creditnet.dates import ts_to_proto
from creditnet.ledger.log import MAX_ROUNDS_IN_FLIGHT, Ledger
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.rpc import ServerHandle, start_server
from creditnet.store import AsyncStore, Store
from creditnet.v2 import chain_pb2, chain_pb2_grpc
from creditnet.witness.link import WitnessLink
from creditnet.witness.server import Witness, WitnessService

# Generous: only reached when what is awaited never happens (a failure).
PATIENCE = 10.0


@dataclass(frozen=True, slots=True)
class Call:
    event: str  # "arrived" at the gate, "cosigned", or "refused"
    witness: str
    old_size: int
    size: int
    code: str = ""


@dataclass
class Gates:
    """Which checkpoint sizes the witnesses may process, and everything that happened at them."""

    open: set[int] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def let_through(self, *sizes: int) -> None:
        async with self.changed:
            self.open.update(sizes)
            self.changed.notify_all()

    async def record(self, call: Call) -> None:
        async with self.changed:
            self.calls.append(call)
            self.changed.notify_all()

    async def until(self, what: Callable[[list[Call]], bool]) -> None:
        async def met() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: what(self.calls))

        await asyncio.wait_for(met(), PATIENCE)

    def of(self, event: str, size: int) -> list[Call]:
        return [c for c in self.calls if c.event == event and c.size == size]


class GatedWitnessService(WitnessService):
    """The real witness service, each call held until its checkpoint's size is let through."""

    def __init__(self, name: str, witness: Witness, trust: TrustStore, gates: Gates) -> None:
        super().__init__(witness, trust)
        self.name = name
        self.gates = gates

    async def AddCheckpoint(
        self, request: chain_pb2.AddCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> chain_pb2.AddCheckpointResponse:
        size = int(request.checkpoint.split("\n")[1])
        gates = self.gates
        await gates.record(Call("arrived", self.name, request.old_size, size))
        async with gates.changed:
            await gates.changed.wait_for(lambda: size in gates.open)
        try:
            resp = await super().AddCheckpoint(request, context)
        except BaseException:
            code = context.code()
            await gates.record(
                Call("refused", self.name, request.old_size, size, code.name if code is not None else "")
            )
            raise
        await gates.record(Call("cosigned", self.name, request.old_size, size))
        return resp


@dataclass
class Rig:
    trust: TrustStore
    hefei: Identity
    log_key: LogKey
    witnesses: dict[str, Witness]
    handles: list[ServerHandle]
    gates: Gates
    tmp: Path

    def ledger(self) -> Ledger:
        links = [
            WitnessLink.connect(name, f"127.0.0.1:{h.port}", self.hefei, self.trust)
            for name, h in zip(self.witnesses, self.handles, strict=True)
        ]
        store = AsyncStore(Store.open(f"sqlite:///{self.tmp / '340100.db'}", migrate=True))
        # Three witnesses, all needed: every round asks each of them, no spares, no hedging.
        return Ledger(store, self.log_key, witnesses=links, quorum=3)


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ca = CertificateAuthority.create()
    trust = TrustStore(ca.cert)
    gates = Gates()
    witnesses: dict[str, Witness] = {}
    handles: list[ServerHandle] = []
    stores: list[Store] = []
    for city in (pilot.SHANGHAI, pilot.NANJING, pilot.HANGZHOU):
        store = Store.open(f"sqlite:///{tmp_path / f'{city.value}.db'}", migrate=True)
        stores.append(store)
        witness = Witness(store, LogKey.issue(ca, city.value))
        service = GatedWitnessService(city.value, witness, trust, gates)
        handles.append(
            await start_server(
                listen="127.0.0.1:0",
                identity=issue_identity(ca, Role.node(city)),
                trust=trust,
                register=lambda s, svc=service: chain_pb2_grpc.add_WitnessServiceServicer_to_server(svc, s),
                service_names=["creditnet.v2.WitnessService"],
            )
        )
        witnesses[city.value] = witness
    yield Rig(
        trust,
        issue_identity(ca, Role.node(pilot.HEFEI)),
        LogKey.issue(ca, "340100"),
        witnesses,
        handles,
        gates,
        tmp_path,
    )
    for h in handles:
        await h.server.stop(0)
    for s in stores:
        s.close()


def entry(i: int) -> chain_pb2.LedgerEntry:
    return chain_pb2.LedgerEntry(
        kind=chain_pb2.ENTRY_KIND_QUERY_ANSWERED,
        time=ts_to_proto(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)),
        city=pilot.HEFEI.proto,
        query_id=f"q-{i}",
        bank_code="B0310H231000001",
    )


@pytest_asyncio.fixture
async def ledger(rig: Rig) -> AsyncIterator[Ledger]:
    ledger = rig.ledger()
    ledger.start()
    # The empty log's checkpoint first, so that every test starts from witnesses at size 0.
    await rig.gates.let_through(0)
    assert await ledger.wait_published(-1, PATIENCE) is not None
    yield ledger
    await rig.gates.let_through(*range(100))
    await ledger.stop()
    await ledger._astore.close()


def arrived_from_all(size: int) -> Callable[[list[Call]], bool]:
    everyone = {"310000", "320100", "330100"}
    return lambda calls: {c.witness for c in calls if c.event == "arrived" and c.size == size} == everyone


async def settled(ledger: Ledger) -> None:
    """Until no call of the log to a witness is outstanding (late ones run in the background)."""

    async def idle() -> None:
        while any(w.health.busy for w in ledger.witnesses):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(idle(), PATIENCE)


def assert_witnesses_only_moved_forward(rig: Rig, size: int) -> None:
    calls = rig.gates.calls
    # Never asked to go backwards from what the request itself claims.
    assert all(c.old_size <= c.size for c in calls)
    for name, witness in rig.witnesses.items():
        cosigned = [c.size for c in calls if c.event == "cosigned" and c.witness == name]
        assert cosigned == sorted(cosigned), f"{name} cosigned {cosigned}"
        state = witness.state("creditnet.yrd/log/340100")
        assert state is not None and state.size == size
        # What the auditor reads from each witness: nothing against the log.
        assert witness.evidence() == []
    # Refusals are only the witness saying it holds another size, never an invalid request.
    assert {c.code for c in calls if c.event == "refused"} <= {"FAILED_PRECONDITION"}


async def test_an_entry_committed_during_a_round_is_covered_by_the_next_round_already_under_way(
    rig: Rig, ledger: Ledger
) -> None:
    gates = rig.gates
    first = await ledger.append(entry(0))
    await gates.until(arrived_from_all(1))
    # While the round for size 1 is held at every witness, the next entry commits...
    second = await ledger.append(entry(1))
    # ...and its own round is already at the witnesses, before the first ended
    # (serial rounds would send it only once size 1 is cosigned).
    await gates.until(arrived_from_all(2))
    assert not gates.of("cosigned", 1)
    # Sent from the size the first round will leave each witness at.
    assert {c.old_size for c in gates.of("arrived", 2)} == {1}

    await gates.let_through(1)
    r1 = await ledger.receipt(first.index, first.entry, PATIENCE)
    await gates.let_through(2)
    r2 = await ledger.receipt(second.index, second.entry, PATIENCE)
    assert verify_receipt(rig.trust, r1, "340100").index == 0
    assert verify_receipt(rig.trust, r2, "340100").index == 1 and r2.tree_size == 2
    # The second entry waited for the one round started for it, no other:
    # rounds for sizes 0, 1 and 2 only, each call to each witness once, none refused.
    assert ledger.rounds_started == 3
    assert sorted(c.size for c in gates.calls if c.event == "arrived") == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert not [c for c in gates.calls if c.event == "refused"]
    await settled(ledger)
    assert_witnesses_only_moved_forward(rig, 2)
    assert all(w.health.healthy for w in ledger.witnesses)


async def test_rounds_in_flight_are_bounded_and_the_entries_held_back_share_the_next_round(
    rig: Rig, ledger: Ledger
) -> None:
    gates = rig.gates
    assert MAX_ROUNDS_IN_FLIGHT == 2
    a = [await ledger.append(entry(0))]
    await gates.until(arrived_from_all(1))
    a.append(await ledger.append(entry(1)))
    await gates.until(arrived_from_all(2))
    # Two rounds held at the witnesses: the entries committed now start none.
    a.append(await ledger.append(entry(2)))
    a.append(await ledger.append(entry(3)))
    for _ in range(20):
        await asyncio.sleep(0)  # the publisher has seen both commits
    assert ledger.rounds_started == 3 and len(ledger._rounds) == 2

    await gates.let_through(1, 2, 3, 4)
    receipts = [await ledger.receipt(x.index, x.entry, PATIENCE) for x in a]
    for x, r in zip(a, receipts, strict=True):
        assert verify_receipt(rig.trust, r, "340100").index == x.index
    # One round for both held-back entries, started when a slot freed; never a third in flight.
    assert receipts[3].tree_size == 4
    assert {c.size for c in gates.calls} == {0, 1, 2, 4}
    assert ledger.rounds_started == 4 and ledger.rounds_peak == MAX_ROUNDS_IN_FLIGHT
    await settled(ledger)
    assert_witnesses_only_moved_forward(rig, 4)


async def test_crossing_rounds_serve_every_waiter_from_the_newer_checkpoint_without_evidence(
    rig: Rig, ledger: Ledger
) -> None:
    gates = rig.gates
    first = await ledger.append(entry(0))
    await gates.until(arrived_from_all(1))
    second = await ledger.append(entry(1))
    await gates.until(arrived_from_all(2))
    # The newer round overtakes the older one at every witness: sent from size 1,
    # it is refused by witnesses still at 0, and sent again from the size they report.
    await gates.let_through(2)
    r1 = await ledger.receipt(first.index, first.entry, PATIENCE)
    r2 = await ledger.receipt(second.index, second.entry, PATIENCE)
    # Both waiters served by checkpoint 2 while the round for size 1 is still held.
    assert r1.tree_size == 2 and r2.tree_size == 2
    assert verify_receipt(rig.trust, r1, "340100").index == 0
    assert not gates.of("cosigned", 1) and not gates.of("refused", 1)
    assert sorted(c.old_size for c in gates.of("refused", 2)) == [1, 1, 1]
    assert {c.old_size for c in gates.of("cosigned", 2)} == {0}
    # The overtaken round ended (it no longer holds a slot) though its calls are still out.
    assert not ledger._rounds

    # The older checkpoint reaches the witnesses last: each refuses it (it
    # holds a newer one), which is right, and not held against it.
    await gates.let_through(1)
    await gates.until(lambda calls: len([c for c in calls if c.event == "refused" and c.size == 1]) == 3)
    await settled(ledger)
    assert all(w.health.healthy and w.health.failures == 0 for w in ledger.witnesses)
    assert all(w.size == 2 for w in ledger.witnesses)
    assert_witnesses_only_moved_forward(rig, 2)

    # The log goes on from there with the witnesses.
    third = await ledger.append(entry(2))
    await gates.let_through(3)
    r3 = await ledger.receipt(third.index, third.entry, PATIENCE)
    assert r3.tree_size == 3 and verify_receipt(rig.trust, r3, "340100").index == 2
    assert {c.old_size for c in gates.of("cosigned", 3)} == {2}


async def test_the_next_round_keeps_its_spacing_while_one_is_in_flight_but_not_once_none_is(
    rig: Rig, ledger: Ledger
) -> None:
    gates = rig.gates
    # Rounds as slow as an hour: half an hour between two rounds in flight.
    ledger._round_time = 3600.0
    await ledger.append(entry(0))
    await gates.until(arrived_from_all(1))
    second = await ledger.append(entry(1))
    for _ in range(20):
        await asyncio.sleep(0)  # the publisher has seen the commit
    assert ledger.rounds_started == 2 and list(ledger._rounds) == [1]
    # The round in flight ends: the entry's round starts at once, whatever the spacing.
    await gates.let_through(1, 2)
    r = await ledger.receipt(second.index, second.entry, PATIENCE)
    assert r.tree_size == 2 and ledger.rounds_started == 3 and ledger.rounds_peak == 1
    await settled(ledger)
    assert_witnesses_only_moved_forward(rig, 2)
