"""A node killed while a provider streams batches: acknowledged batches survive, no batch is partial.

SubmitRecords is a client stream with one response at the end, so a provider
whose stream breaks learns nothing about the batches of that stream: only a
completed call acknowledges its batches. What the node guarantees (and this
test checks on a real process killed with SIGKILL) is that each batch is
committed whole or not at all, in stream order, and that re-sending is
idempotent, so a provider recovers by sending the broken stream again.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from creditnet.channels import secure_channel
from creditnet.network import NetworkLayout
from creditnet.pki import TrustStore, node_server_name
from creditnet.provider import signed_request, submit_records
from creditnet.v2 import node_pb2, node_pb2_grpc, records_pb2
from tests.faults.conftest import FaultNetwork, eventually
from tests.faults.ingest import BATCH, CITY, batch, enterprise, stored_per_batch

pytestmark = pytest.mark.slow


async def test_killed_during_ingestion_keeps_whole_batches_only(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    provider = fault_layout.provider(CITY)
    endpoint = fault_layout.node_endpoint(CITY)
    run = uuid.uuid4().hex[:8]
    uscc = enterprise(run)

    # A completed call acknowledges every batch it carried.
    acked = [r for b in range(4) for r in batch(f"{run}a", b, uscc)]
    summary = await submit_records(endpoint, provider, fault_trust, acked, batch_size=BATCH)
    assert (summary.batches, summary.accepted) == (4, 4 * BATCH)

    # A long stream, killed part-way: the stream is still open when the node dies.
    total, kill_after = 400, 12
    killed = asyncio.Event()

    async def batches() -> AsyncIterator[node_pb2.SubmitRecordsRequest]:
        for b in range(total):
            if b == kill_after:

                async def some_committed() -> bool:
                    return bool(await asyncio.to_thread(stored_per_batch, fault_layout, uscc, f"{run}b"))

                await eventually(some_committed, "the node commits the first batches")
                # Set first: the broken stream may cancel this generator at once.
                killed.set()
                await network.kill(CITY)
            yield signed_request(provider, batch(f"{run}b", b, uscc))

    async with secure_channel(endpoint, provider, fault_trust, node_server_name(CITY)) as channel:
        stub = node_pb2_grpc.CityNodeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitRecords(batches(), timeout=60)
    assert killed.is_set(), err.value
    await network.wait_exit(CITY)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    def check_on_disk() -> int:
        assert stored_per_batch(fault_layout, uscc, f"{run}a") == {b: BATCH for b in range(4)}
        broken = stored_per_batch(fault_layout, uscc, f"{run}b")
        # Whole batches only, and a prefix of the stream: batch n+1 is never
        # committed without batch n.
        assert set(broken.values()) <= {BATCH}, broken
        assert sorted(broken) == list(range(len(broken))), sorted(broken)
        return len(broken)

    committed = await asyncio.to_thread(check_on_disk)
    assert 1 <= committed < total
    network.restart(CITY)
    await network.wait_serving(CITY)
    # The restarted node holds exactly what was committed before the kill.
    assert await asyncio.to_thread(check_on_disk) == committed

    # Recovery: send the broken stream again; what was committed counts as duplicates.
    again = [r for b in range(total) for r in batch(f"{run}b", b, uscc)]
    summary = await submit_records(endpoint, provider, fault_trust, again, batch_size=BATCH)
    assert (summary.duplicates, summary.accepted) == (committed * BATCH, (total - committed) * BATCH)
    assert await asyncio.to_thread(stored_per_batch, fault_layout, uscc, f"{run}b") == {
        b: BATCH for b in range(total)
    }


async def test_a_provider_stream_cut_by_a_node_kill_fails_unavailable(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    # gRPC itself fails a write that the broken connection fails with
    # INTERNAL, whenever that failure reaches the client before the
    # transport's UNAVAILABLE does (here about one kill in ten): several kills,
    # from another thread while the provider writes small batches as fast as
    # it can, give the race its chances.
    provider = fault_layout.provider(CITY)
    endpoint = fault_layout.node_endpoint(CITY)
    codes: list[tuple[grpc.StatusCode, str]] = []
    for attempt in range(8):
        run = uuid.uuid4().hex[:8]
        uscc = enterprise(run)
        node = network.proc(CITY)
        killer = threading.Timer(0.3 + 0.05 * attempt, node.kill)

        def records(
            run: str = run, uscc: str = uscc, killer: threading.Timer = killer
        ) -> Iterator[records_pb2.CreditRecord]:
            for b in range(20_000):
                if b == 2:
                    killer.start()
                yield from batch(run, b, uscc)

        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await submit_records(endpoint, provider, fault_trust, records(), batch_size=5)
        finally:
            killer.cancel()
            if killer.is_alive():
                killer.join()
        codes.append((err.value.code(), err.value.details() or ""))
        await network.wait_exit(CITY)
        network.restart(CITY)
        await network.wait_serving(CITY)
    assert {code for code, _ in codes} == {grpc.StatusCode.UNAVAILABLE}, codes
