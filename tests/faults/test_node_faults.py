"""A city node killed or frozen: federated queries keep answering within their deadline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from creditnet import pilot
from creditnet.aggregator.directory import DEFAULT_MAX_PENDING_PER_NODE
from creditnet.domain import City, Purpose
from creditnet.network import NetworkLayout, grant_demo_consent
from creditnet.v2 import envelope_pb2
from creditnet_bank import BankClient, Report, SectionStatus
from tests.faults.conftest import FaultNetwork, eventually, network_json

pytestmark = pytest.mark.slow

ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)
DEADLINE = 8.0


@pytest.fixture(scope="module")
def consent(fault_layout: NetworkLayout) -> envelope_pb2.SignedEnvelope:
    return grant_demo_consent(fault_layout)


def statuses(report: Report) -> dict[City, SectionStatus]:
    return {s.city: s.status for s in report.sections}


@dataclass
class Asked:
    # The node was already known dead when this query was sent.
    after_death: bool
    report: Report


async def test_a_killed_node_is_unavailable_and_used_again_once_restarted(
    network: FaultNetwork, fault_layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope
) -> None:
    victim = pilot.NANJING
    others = [c for c in pilot.CITIES if c is not victim]
    before = network.pids()
    asked: list[Asked] = []
    dead = asyncio.Event()
    done = asyncio.Event()
    async with BankClient.from_network(network_json(fault_layout)) as bank:

        async def ask_until_done() -> None:
            while not done.is_set():
                after_death = dead.is_set()
                report = await bank.query(
                    fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=DEADLINE
                )
                asked.append(Asked(after_death, report))

        workers = [asyncio.create_task(ask_until_done()) for _ in range(3)]
        try:

            async def some(n: int, after_death: bool) -> bool:
                if any(w.done() for w in workers):
                    return True  # a worker failed: let gather report it
                return sum(a.after_death is after_death for a in asked) >= n

            await eventually(lambda: some(3, False), "queries answered before the kill")
            # Killed while the workers' queries are in flight.
            await network.kill(victim)
            dead.set()
            await eventually(lambda: some(6, True), "queries answered after the kill")
        finally:
            done.set()
            # A query that failed (refused, or past its deadline) fails the test here.
            await asyncio.gather(*workers)

        for a in asked:
            got = statuses(a.report)
            assert all(got[c] in ANSWERED for c in others), [
                (s.city.value, s.status.value, s.reason) for s in a.report.sections
            ]
            if a.after_death:
                assert got[victim] is SectionStatus.UNAVAILABLE, got
            else:
                assert got[victim] in (*ANSWERED, SectionStatus.UNAVAILABLE), got
        assert any(a.after_death for a in asked) and any(not a.after_death for a in asked)

        network.restart(victim)
        await network.wait_serving(victim)
        last: list[Report] = []

        async def victim_answers() -> bool:
            report = await bank.query(
                fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=DEADLINE
            )
            last[:] = [report]
            return statuses(report)[victim] in ANSWERED

        await eventually(victim_answers, "the aggregator uses the restarted node again", attempts=50)
        assert not last[0].missing_cities
    # Nothing but the killed node was restarted.
    after = network.pids()
    assert {n: p for n, p in after.items() if n != victim.value} == {
        n: p for n, p in before.items() if n != victim.value
    }


async def test_a_frozen_node_times_out_within_the_deadline(
    network: FaultNetwork, fault_layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope
) -> None:
    victim = pilot.HEFEI
    network.freeze(victim)
    try:
        async with BankClient.from_network(network_json(fault_layout)) as bank:
            # The bank's own deadline bounds the call: had the aggregator waited
            # for the frozen node past it, this would raise DEADLINE_EXCEEDED.
            # (The deadline leaves the other nodes room for a witness round
            # that first waits out the frozen witness.)
            reports = await asyncio.gather(
                *(
                    bank.query(
                        fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=DEADLINE
                    )
                    for _ in range(3)
                )
            )
        for report in reports:
            got = statuses(report)
            assert got[victim] is SectionStatus.TIMEOUT, got
            assert all(got[c] in ANSWERED for c in pilot.CITIES if c is not victim), report.sections
    finally:
        network.thaw(victim)

    async with BankClient.from_network(network_json(fault_layout)) as bank:

        async def back() -> bool:
            report = await bank.query(
                fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=DEADLINE
            )
            return statuses(report)[victim] in ANSWERED

        await eventually(back, "the thawed node answers again", attempts=50)


async def test_calls_pending_on_a_frozen_node_stay_bounded(
    network: FaultNetwork, fault_layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope
) -> None:
    victim = pilot.HEFEI
    flood = DEFAULT_MAX_PENDING_PER_NODE + 16
    network.freeze(victim)
    try:
        async with BankClient.from_network(network_json(fault_layout)) as bank:
            # Queries for the frozen city alone: the aggregator's only work is to wait.
            reports = await asyncio.gather(
                *(
                    bank.query(
                        fault_layout.demo_enterprise,
                        consent,
                        Purpose.LOAN_APPLICATION,
                        cities=[victim],
                        timeout=6.0,
                    )
                    for _ in range(flood)
                )
            )
    finally:
        network.thaw(victim)
    sections = [r.sections[0] for r in reports]
    assert {s.city for s in sections} == {victim}
    assert all(s.status in (SectionStatus.TIMEOUT, SectionStatus.UNAVAILABLE) for s in sections)
    shed = [s for s in sections if "calls pending" in s.reason]
    # Never more calls sent to the frozen node than the bound (they time out,
    # or fail together when the connection is given up); the rest were
    # answered at once instead of piling up in the aggregator.
    # One bank alone holds at most half of a node's slots.
    share = DEFAULT_MAX_PENDING_PER_NODE // 2
    assert len(sections) - len(shed) <= share
    assert shed and all(s.status is SectionStatus.UNAVAILABLE for s in shed)
    assert f"has {share} calls pending on node {victim.value}, its share" in network.log("aggregator")
