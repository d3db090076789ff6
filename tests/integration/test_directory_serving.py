"""Every node and the aggregator hold, serve, refresh and enforce the signed network directory.

One network of real servers on loopback (mTLS) for this module, provisioned
with a one-second refresh interval; each test publishes new directory
versions signed with the governance keys of the state directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from creditnet.channels import secure_channel
from creditnet.dates import utcnow
from creditnet.directory.build import issue_governance
from creditnet.directory.model import Directory
from creditnet.directory.publish import Offered, Target, publish, targets
from creditnet.directory.sign import save, sign
from creditnet.network import InProcessNetwork, NetworkLayout, provision
from creditnet.pki import CertificateAuthority, Identity, TrustStore
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc, envelope_pb2
from creditnet.v2 import directory_service_pb2 as dpb
from creditnet.v2 import directory_service_pb2_grpc as dpb_grpc

REFRESH = dt.timedelta(seconds=1)
# Bounded waits, in refresh intervals: generous for a loaded machine, never a timing assertion.
PATIENCE = 30


@pytest.fixture(scope="module")
def dlayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("directory-network"),
        enterprises_per_city=5,
        seed=11,
        directory_refresh=REFRESH,
    )


@pytest_asyncio.fixture(scope="module")
async def dnetwork(dlayout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(dlayout)
    await net.start()
    yield net
    await net.stop()


def governance(layout: NetworkLayout) -> list[Identity]:
    keys = layout.data["directory"]["governance"]
    return [Identity.load(layout.path(k["cert"]), layout.path(k["key"])) for k in keys.values()]


async def held(layout: NetworkLayout, target: Target) -> envelope_pb2.SignedEnvelope:
    """What GetDirectory answers on `target`, asked with a bank's certificate."""
    trust = TrustStore.load(layout.ca)
    async with secure_channel(target.endpoint, layout.bank(), trust, target.server_name) as channel:
        answer = await dpb_grpc.DirectoryServiceStub(channel).GetDirectory(
            dpb.GetDirectoryRequest(), timeout=5
        )
    return answer.directory


async def versions(layout: NetworkLayout) -> dict[str, int]:
    envs = await asyncio.gather(*(held(layout, t) for t in targets(layout)))
    return {
        t.name: Directory.from_payload(env.payload).version
        for t, env in zip(targets(layout), envs, strict=True)
    }


async def newest(layout: NetworkLayout) -> Directory:
    envs = await asyncio.gather(*(held(layout, t) for t in targets(layout)))
    return max((Directory.from_payload(env.payload) for env in envs), key=lambda d: d.version)


async def next_version(layout: NetworkLayout, **changes: object) -> Directory:
    current = await newest(layout)
    return dataclasses.replace(
        current, version=current.version + 1, issued_at=utcnow().replace(microsecond=0), **changes
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(PATIENCE * 5):
        if await check():
            return
        await asyncio.sleep(REFRESH.total_seconds() / 5)
    raise AssertionError(f"not within {PATIENCE} refresh intervals: {what}")


async def creditnet_call(layout: NetworkLayout, target: Target) -> str | None:
    """How an ordinary v1 call (not the directory's) on `target` is refused for the directory; None if not.

    The call itself may fail for its own reasons (a node with no checkpoint
    yet): only a refusal with a directory rule id counts here.
    """
    trust = TrustStore.load(layout.ca)
    async with secure_channel(target.endpoint, layout.bank(), trust, target.server_name) as channel:
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
            rule = (exc.details() or "").partition(":")[0]
            if rule.startswith("directory."):
                return f"{exc.code().name} {rule}"
    return None


async def publish_cli(layout: NetworkLayout, file: Path) -> tuple[int, str]:
    """`creditnet directory publish` as an operator runs it, in its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "creditnet",
        "directory",
        "publish",
        "--network",
        str(layout.root),
        str(file),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def refusals(answers: list[Offered]) -> set[tuple[str, str]]:
    return {(a.status, a.detail.partition(":")[0]) for a in answers}


async def test_every_server_serves_the_directory_pinned_at_provisioning(
    dlayout: NetworkLayout, dnetwork: InProcessNetwork
) -> None:
    anchor = dlayout.data["directory"]["anchor"]
    for target in targets(dlayout):
        env = await held(dlayout, target)
        assert hashlib.sha256(env.payload).hexdigest() == anchor, target.name


async def test_a_published_version_reaches_every_server(
    dlayout: NetworkLayout, dnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    d = await next_version(dlayout)
    save(sign(d, governance(dlayout)[:2]), tmp_path / "next.json")
    code, out = await publish_cli(dlayout, tmp_path / "next.json")
    assert code == 0, out
    assert set((await versions(dlayout)).values()) == {d.version}


async def test_a_lower_version_a_directory_below_threshold_or_signed_by_an_unknown_key_are_refused(
    dlayout: NetworkLayout, dnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    gov = governance(dlayout)
    good = await next_version(dlayout)
    await publish(dlayout, sign(good, gov[:2]))
    assert set((await versions(dlayout)).values()) == {good.version}

    rolled_back = dataclasses.replace(good, version=good.version - 1)
    assert refusals(await publish(dlayout, sign(rolled_back, gov[:2]))) == {
        ("FAILED_PRECONDITION", "directory.rollback")
    }
    newer = await next_version(dlayout)
    assert refusals(await publish(dlayout, sign(newer, gov[:1]))) == {
        ("UNAUTHENTICATED", "directory.threshold")
    }
    # A governance certificate from the network CA, but not a key the directory lists.
    stranger = issue_governance(CertificateAuthority.load(dlayout.root / "pki"), ["gov-x"])[0]
    assert refusals(await publish(dlayout, sign(newer, [gov[0], stranger]))) == {
        ("UNAUTHENTICATED", "directory.threshold")
    }
    # The CLI says so too, with a non-zero exit.
    save(sign(newer, gov[:1]), tmp_path / "below.json")
    code, out = await publish_cli(dlayout, tmp_path / "below.json")
    assert code == 1 and "directory.threshold" in out

    assert set((await versions(dlayout)).values()) == {good.version}
    for target in targets(dlayout):
        assert await creditnet_call(dlayout, target) is None, target.name


async def test_a_server_that_missed_a_publish_catches_up_from_a_peer_within_refresh_intervals(
    dlayout: NetworkLayout, dnetwork: InProcessNetwork
) -> None:
    d = await next_version(dlayout)
    aggregator = [t for t in targets(dlayout) if t.name == "aggregator"]
    (answer,) = await publish(dlayout, sign(d, governance(dlayout)[:2]), only=aggregator)
    assert answer.ok and answer.version == d.version

    async def everyone_has_it() -> bool:
        return set((await versions(dlayout)).values()) == {d.version}

    await eventually(everyone_has_it, f"every node holds version {d.version}")


async def test_servers_holding_only_an_expired_directory_refuse_with_directory_expired_and_recover(
    dlayout: NetworkLayout, dnetwork: InProcessNetwork
) -> None:
    gov = governance(dlayout)
    current = await newest(dlayout)
    short = await next_version(
        dlayout, policy=dataclasses.replace(current.policy, max_age=dt.timedelta(seconds=3))
    )
    assert all(a.ok for a in await publish(dlayout, sign(short, gov[:2])))

    async def all_refuse() -> bool:
        codes = [await creditnet_call(dlayout, t) for t in targets(dlayout)]
        return set(codes) == {"UNAVAILABLE directory.expired"}

    await eventually(all_refuse, "every server refuses with directory.expired")
    # The directory service still answers: it is how a server recovers.
    assert set((await versions(dlayout)).values()) == {short.version}

    fresh = dataclasses.replace(
        short, version=short.version + 1, issued_at=utcnow().replace(microsecond=0), policy=current.policy
    )
    assert all(a.ok for a in await publish(dlayout, sign(fresh, gov[:2])))
    for target in targets(dlayout):
        assert await creditnet_call(dlayout, target) is None, target.name


async def test_a_server_restarted_keeps_the_directory_it_took_last(
    dlayout: NetworkLayout, dnetwork: InProcessNetwork
) -> None:
    held_before = await versions(dlayout)
    city = next(iter(dnetwork.nodes))
    await dnetwork.stop_node(city)
    await dnetwork.start_node(city)
    target = next(t for t in targets(dlayout) if t.name == city.value)
    assert Directory.from_payload((await held(dlayout, target)).payload).version == held_before[city.value]


async def test_a_network_provisioned_without_a_directory_runs_protocol_v1_alone(tmp_path: Path) -> None:
    layout = provision(tmp_path / "v1", enterprises_per_city=5, seed=11, directory=False)
    assert "directory" not in layout.data
    async with InProcessNetwork(layout):
        for target in targets(layout):
            assert await creditnet_call(layout, target) is None, target.name
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await held(layout, target)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
