"""Servers refresh from the members their directory lists, not from a peer list fixed at start.

One network of real servers on loopback (mTLS), provisioned with a one-second
refresh interval, and one more real server, "east": a second aggregator that
holds and serves the directory as every member does. The governance admits
it, then removes it; every server asks it from the first round after it is
admitted, without a restart, and none asks it once it is removed. The tests
run in order: each builds on the directory the previous one left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio

from creditnet.chain.keys import LogKey
from creditnet.channels import secure_channel
from creditnet.config import DirectoryConfig
from creditnet.dates import utcnow
from creditnet.directory.model import Aggregator, Directory
from creditnet.directory.publish import Target, offer_to, publish, targets
from creditnet.directory.serving import SERVICE_NAME as DIRECTORY_SERVICE
from creditnet.directory.serving import (
    ServedDirectory,
    directory_peers,
    serve_directory,
)
from creditnet.directory.sign import load, sign
from creditnet.handlers import Finish, wrap_handler
from creditnet.network import InProcessNetwork, NetworkLayout, free_port, provision
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.rpc import PeerIdentities, ServerHandle, start_server
from creditnet.v2 import directory_service_pb2 as dpb
from creditnet.v2 import directory_service_pb2_grpc as dpb_grpc

REFRESH = dt.timedelta(seconds=1)
PATIENCE = 30
EAST = "east"
EAST_SERVER_NAME = "east.aggregator.creditnet"
GET_DIRECTORY = f"/{DIRECTORY_SERVICE}/GetDirectory"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("directory-peers"),
        enterprises_per_city=5,
        seed=11,
        directory_refresh=REFRESH,
    )


@pytest_asyncio.fixture(scope="module")
async def network(layout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(layout)
    await net.start()
    yield net
    await net.stop()


@dataclass
class CallLog(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The role URI of every caller of GetDirectory, in order."""

    trust: TrustStore
    callers: list[str] = field(default_factory=list)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method != GET_DIRECTORY:
            return handler
        peers = PeerIdentities(self.trust)

        async def around(context: grpc.aio.ServicerContext) -> Finish:
            self.callers.append(peers.role(context).uri)
            return lambda _exc: None

        return wrap_handler(handler, around)


@dataclass
class East:
    """A real server holding the directory as a member does, with the calls it received."""

    endpoint: str
    identity: Identity
    log_key: LogKey
    calls: CallLog
    served: ServedDirectory
    handle: ServerHandle


@pytest_asyncio.fixture(scope="module")
async def east(
    layout: NetworkLayout, network: InProcessNetwork, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[East]:
    ca = CertificateAuthority.load(layout.root / "pki")
    trust = TrustStore.load(layout.ca)
    identity = issue_identity(ca, Role.aggregator(EAST), dns_names=[EAST_SERVER_NAME])
    state = tmp_path_factory.mktemp("east")
    config = DirectoryConfig(
        state=state / "directory.binpb",
        anchor=layout.data["directory"]["anchor"],
        bootstrap=layout.path(layout.data["directory"]["file"]),
    )
    # No configured peers: it knows the network only from its directory.
    served = await serve_directory(config, identity, trust, {}, EAST)
    calls = CallLog(trust)
    endpoint = f"127.0.0.1:{free_port()}"
    handle = await start_server(
        listen=endpoint,
        identity=identity,
        trust=trust,
        register=served.register,
        service_names=[DIRECTORY_SERVICE],
        interceptors=[calls, served.gate],
    )
    served.refresher.start()
    yield East(endpoint, identity, LogKey.issue(ca, EAST), calls, served, handle)
    await served.stop()
    await handle.stop(0)


def governance(layout: NetworkLayout) -> list[Identity]:
    keys = layout.data["directory"]["governance"]
    return [Identity.load(layout.path(k["cert"]), layout.path(k["key"])) for k in keys.values()][:2]


async def held(layout: NetworkLayout, target: Target) -> Directory:
    trust = TrustStore.load(layout.ca)
    async with secure_channel(target.endpoint, layout.bank(), trust, target.server_name) as channel:
        answer = await dpb_grpc.DirectoryServiceStub(channel).GetDirectory(
            dpb.GetDirectoryRequest(), timeout=5
        )
    return Directory.from_payload(answer.directory.payload)


async def versions(layout: NetworkLayout) -> dict[str, int]:
    ds = await asyncio.gather(*(held(layout, t) for t in targets(layout)))
    return {t.name: d.version for t, d in zip(targets(layout), ds, strict=True)}


async def newest(layout: NetworkLayout) -> Directory:
    ds = await asyncio.gather(*(held(layout, t) for t in targets(layout)))
    return max(ds, key=lambda d: d.version)


def successor(d: Directory, **changes: object) -> Directory:
    issued = max(utcnow().replace(microsecond=0), d.issued_at)
    return dataclasses.replace(d, version=d.version + 1, issued_at=issued, **changes)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(PATIENCE * 5):
        if await check():
            return
        await asyncio.sleep(REFRESH.total_seconds() / 5)
    raise AssertionError(f"not within {PATIENCE} refresh intervals: {what}")


async def everyone_holds(layout: NetworkLayout, version: int) -> None:
    async def check() -> bool:
        return set((await versions(layout)).values()) == {version}

    await eventually(check, f"every server holds version {version}")


def server_roles(layout: NetworkLayout) -> set[str]:
    return {f"creditnet://node/{c}" for c in layout.data["cities"]} | {"creditnet://aggregator/national"}


async def test_a_newly_admitted_member_is_asked_by_every_server_without_a_restart(
    layout: NetworkLayout, network: InProcessNetwork, east: East
) -> None:
    base = await newest(layout)
    assert all(a.name != EAST for a in base.aggregators)
    assert east.calls.callers == [], "nobody asks a server the directory does not list"

    admitted = successor(
        base,
        aggregators=(
            *base.aggregators,
            Aggregator(EAST, (east.endpoint,), EAST_SERVER_NAME, east.log_key.certificate_der),
        ),
    )
    assert all(a.ok for a in await publish(layout, sign(admitted, governance(layout))))
    await everyone_holds(layout, admitted.version)

    # A version only east holds reaches every server: they ask it now.
    only_east = successor(admitted)
    trust = TrustStore.load(layout.ca)
    answer = await offer_to(
        Target(EAST, east.endpoint, EAST_SERVER_NAME),
        sign(only_east, governance(layout)),
        layout.bank(),
        trust,
    )
    assert answer.ok and answer.version == only_east.version
    await everyone_holds(layout, only_east.version)

    async def asked_by_all() -> bool:
        return server_roles(layout) <= set(east.calls.callers)

    await eventually(asked_by_all, "every node and the aggregator ask east")
    assert f"creditnet://aggregator/{EAST}" not in east.calls.callers, "east never asks itself"


async def test_a_removed_member_is_no_longer_asked(
    layout: NetworkLayout, network: InProcessNetwork, east: East
) -> None:
    base = await newest(layout)
    assert any(a.name == EAST for a in base.aggregators)
    removed = successor(base, aggregators=tuple(a for a in base.aggregators if a.name != EAST))
    assert all(a.ok for a in await publish(layout, sign(removed, governance(layout))))
    await everyone_holds(layout, removed.version)
    # A round that began before its server took the removal may still be asking.
    await asyncio.sleep(2 * REFRESH.total_seconds())
    east.calls.callers.clear()

    # Rounds go on (a version the aggregator alone is given reaches the nodes)...
    later = successor(removed)
    aggregator = [t for t in targets(layout) if t.name == "aggregator"]
    (answer,) = await publish(layout, sign(later, governance(layout)), only=aggregator)
    assert answer.ok
    await everyone_holds(layout, later.version)
    await asyncio.sleep(2 * REFRESH.total_seconds())
    # ...and none of them asks east any more.
    assert set(east.calls.callers) & server_roles(layout) == set()


async def test_configured_peers_are_asked_when_no_listed_member_answers(
    layout: NetworkLayout, network: InProcessNetwork
) -> None:
    base = await newest(layout)
    # Every member's endpoint moved to where nothing listens.
    unreachable = successor(
        base,
        cities=tuple(dataclasses.replace(c, endpoints=(f"127.0.0.1:{free_port()}",)) for c in base.cities),
        aggregators=tuple(
            dataclasses.replace(a, endpoints=(f"127.0.0.1:{free_port()}",)) for a in base.aggregators
        ),
    )
    assert all(a.ok for a in await publish(layout, sign(unreachable, governance(layout))))
    await everyone_holds(layout, unreachable.version)

    # The nodes' witnesses (their configuration) still lead them to the aggregator.
    later = successor(unreachable)
    aggregator = [t for t in targets(layout) if t.name == "aggregator"]
    (answer,) = await publish(layout, sign(later, governance(layout)), only=aggregator)
    assert answer.ok
    await everyone_holds(layout, later.version)


def test_peers_are_every_listed_member_but_the_server_itself(layout: NetworkLayout) -> None:
    d = Directory.from_payload(load(layout.path(layout.data["directory"]["file"])).payload)
    hefei = directory_peers(d, "340100")
    names = [g[0].name for g in hefei]
    assert names == ["310000", "320100", "330100", "330400", "national"]
    by_name = {g[0].name: g for g in hefei}
    # Each is pinned to the TLS name the directory gives it.
    assert by_name["320100"][0].server_name == "320100.node.creditnet"
    assert by_name["national"][0].server_name == "aggregator.creditnet"
    assert by_name["320100"][0].endpoint == layout.data["cities"]["320100"]["endpoint"]
    assert [g[0].name for g in directory_peers(d, "national")] == [c.code for c in d.cities]
