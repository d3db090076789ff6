"""Long-lived mutual-TLS channels to the city nodes, with their health and load.

Each link bounds the calls pending on its node. A node that stops answering
(frozen, partitioned, overloaded) would otherwise collect one pending call,
with its request and its share of the HTTP/2 connection's buffers, for every
federated query until each call's deadline, and a flood of queries could pile
up thousands. Beyond the bound the aggregator answers that city's section at
once without calling the node; the other cities are unaffected.

The bound is shared fairly between banks: a bank may hold at most
``bound // (banks + 1)`` of a link's slots, where `banks` counts the banks
holding slots on it (the asking one included). One bank alone thus holds at
most half, and however many banks flood, a share stays free for a bank that
holds none yet, so one bank's burst never leaves another's query without
the cities it asks. The bank is the one the call is made for
(`_bank_of_call`, bound by `BankOfCall` for the whole incoming call).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet.channels import secure_channel
from creditnet.dates import utcnow
from creditnet.domain import City, sorted_cities
from creditnet.errors import CreditnetError
from creditnet.handlers import Finish, wrap_handler
from creditnet.pki import Identity, RoleKind, TrustStore, node_server_name
from creditnet.rpc import PeerIdentities
from creditnet.v2 import node_pb2_grpc

__all__ = [
    "DEFAULT_MAX_PENDING_PER_NODE",
    "BankOfCall",
    "NodeDirectory",
    "NodeLink",
    "NodeLoad",
    "acting_for",
]

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 1.5
# A healthy node answers in tens of milliseconds and so has a handful of
# calls pending even at hundreds of queries a second; this many means it is
# not answering.
DEFAULT_MAX_PENDING_PER_NODE = 64
# How long a link the directory dropped keeps its channel open for the calls still pending on it.
RETIRE_GRACE = 10.0


# The bank an incoming call is made for ("" when the caller is no bank).
_bank: contextvars.ContextVar[str] = contextvars.ContextVar("creditnet_bank_of_call", default="")


def _bank_of_call() -> str:
    return _bank.get()


@contextlib.contextmanager
def acting_for(bank: str) -> Iterator[None]:
    """Calls to the nodes made inside are made for `bank`."""
    token = _bank.set(bank)
    try:
        yield
    finally:
        _bank.reset(token)


class BankOfCall(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds the bank of the TLS peer for the call, so that the links can share slots by bank.

    At the aggregator the TLS peer of a FederatedQuery is the bank itself, and
    the query's verified signer must be that same bank.
    """

    def __init__(self, trust: TrustStore) -> None:
        self.peers = PeerIdentities(trust)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        async def around(context: grpc.aio.ServicerContext) -> Finish:
            try:
                role = self.peers.role(context)
            except (CreditnetError, ValueError):
                # Not ours to refuse: the service answers an unusable peer itself.
                role = None
            # Each call runs in its own task: the binding ends with it.
            _bank.set(role.subject if role is not None and role.kind is RoleKind.BANK else "")
            return _nothing

        return wrap_handler(handler, around)


def _nothing(_exc: BaseException | None) -> None:
    return None


@dataclass
class NodeLink:
    city: City
    endpoint: str
    channel: grpc.aio.Channel
    stub: node_pb2_grpc.CityNodeServiceStub
    health: health_pb2_grpc.HealthStub
    last_status: str = "unknown"
    last_error: str = ""
    last_latency_ms: int = 0
    last_checked: dt.datetime | None = None
    in_flight: int = field(default=0)
    max_in_flight: int = DEFAULT_MAX_PENDING_PER_NODE
    # Calls answered at once, without asking the node, because it was saturated
    # or the bank held its share of the slots.
    shed: int = 0
    # Slots held by each bank with calls pending ("": calls for no bank).
    held: dict[str, int] = field(default_factory=dict)
    _shedding: bool = field(default=False, repr=False)
    _capped: set[str] = field(default_factory=set, repr=False)
    # More connections to the node (each its own TCP connection), queries spread over them with `channel`'s.
    spread: list[grpc.aio.Channel] = field(default_factory=list, repr=False)
    _query_stubs: list[node_pb2_grpc.CityNodeServiceStub] = field(default_factory=list, repr=False)
    _turn: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._query_stubs = [self.stub, *(node_pb2_grpc.CityNodeServiceStub(c) for c in self.spread)]

    def query_stub(self) -> node_pb2_grpc.CityNodeServiceStub:
        """The stub for the next query: the link's connections in turn (a node's workers each serve some)."""
        self._turn = (self._turn + 1) % len(self._query_stubs)
        return self._query_stubs[self._turn]

    def channels(self) -> list[grpc.aio.Channel]:
        return [self.channel, *self.spread]

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.max_in_flight

    def share(self, bank: str) -> int:
        """The most slots `bank` may hold now."""
        banks = len(self.held) + (bank not in self.held)
        return max(1, self.max_in_flight // (banks + 1))

    def try_acquire(self) -> bool:
        """Take a pending-call slot for the bank of the call; False if the node or its share is full."""
        bank = _bank_of_call()
        if self.saturated:
            self.shed += 1
            if not self._shedding:
                self._shedding = True
                log.warning(
                    "node %s has %d calls pending; answering its sections at once until it catches up",
                    self.city.value,
                    self.in_flight,
                )
            return False
        held = self.held.get(bank, 0)
        if held >= self.share(bank):
            self.shed += 1
            if bank not in self._capped:
                self._capped.add(bank)
                log.warning(
                    "bank %s has %d calls pending on node %s, its share of the %d slots; "
                    "answering its sections for that node at once until some are answered",
                    bank or "(none)",
                    held,
                    self.city.value,
                    self.max_in_flight,
                )
            return False
        self.held[bank] = held + 1
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give back a slot the bank of the call took."""
        bank = _bank_of_call()
        held = self.held.get(bank, 0)
        if self.in_flight <= 0 or held <= 0:
            raise RuntimeError(f"released a pending call to {self.city.value} that was never taken")
        self.in_flight -= 1
        if held == 1:
            del self.held[bank]
            self._capped.discard(bank)
        else:
            self.held[bank] = held - 1
        if self._shedding and self.in_flight == 0:
            self._shedding = False
            log.info("node %s has no calls pending any more; calling it again", self.city.value)

    def saturation_reason(self) -> str:
        """Why try_acquire just refused, for the section's reason."""
        if self.saturated:
            return (
                f"the node already has {self.in_flight} calls pending (bound {self.max_in_flight}); "
                "not calling it until it answers them"
            )
        bank = _bank_of_call()
        return (
            f"this bank already has {self.held.get(bank, 0)} calls pending on the node, its share of "
            f"the {self.max_in_flight} the aggregator allows; not calling it until it answers them"
        )


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One node's pending calls as the aggregator sees them, for metrics and status."""

    city: City
    in_flight: int
    max_in_flight: int
    shed: int


class NodeDirectory:
    def __init__(
        self,
        nodes: dict[City, str],
        identity: Identity,
        trust: TrustStore,
        *,
        max_pending_per_node: int = DEFAULT_MAX_PENDING_PER_NODE,
        connections_per_node: int = 1,
    ) -> None:
        if max_pending_per_node < 1:
            raise ValueError(f"max_pending_per_node must be at least 1, got {max_pending_per_node}")
        if connections_per_node < 1:
            raise ValueError(f"connections_per_node must be at least 1, got {connections_per_node}")
        self.connections_per_node = connections_per_node
        self.identity = identity
        self.trust = trust
        self.max_pending_per_node = max_pending_per_node
        self.links: dict[City, NodeLink] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._server_names: dict[City, str] = {}
        for city, endpoint in nodes.items():
            self._add(city, endpoint, node_server_name(city))

    def _add(self, city: City, endpoint: str, server_name: str) -> None:
        channel = secure_channel(endpoint, self.identity, self.trust, server_name)
        self.links[city] = NodeLink(
            city=city,
            endpoint=endpoint,
            channel=channel,
            stub=node_pb2_grpc.CityNodeServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            max_in_flight=self.max_pending_per_node,
            spread=[
                secure_channel(endpoint, self.identity, self.trust, server_name, own_connection=True)
                for _ in range(self.connections_per_node - 1)
            ],
        )
        self._server_names[city] = server_name

    def sync(self, members: Mapping[City, tuple[str, str]]) -> tuple[list[City], list[City]]:
        """Make the links exactly `members` (city -> (endpoint, TLS server name)); (added, removed).

        A link whose endpoint or server name changed is replaced. A dropped
        link's channel is closed in the background, after a grace period for
        the calls still pending on it; new calls no longer find it.
        """
        added: list[City] = []
        removed: list[City] = []
        for city in sorted(self.links):
            link = self.links[city]
            want = members.get(city)
            if want is None or want != (link.endpoint, self._server_names[city]):
                del self.links[city]
                del self._server_names[city]
                self._retire(link)
                if want is None:
                    removed.append(city)
        for city, (endpoint, server_name) in sorted(members.items()):
            if city not in self.links:
                self._add(city, endpoint, server_name)
                if city not in removed:
                    added.append(city)
        if added or removed:
            log.info(
                "node links follow the directory: added %s, removed %s",
                ", ".join(c.value for c in added) or "none",
                ", ".join(c.value for c in removed) or "none",
            )
        return added, removed

    def _retire(self, link: NodeLink) -> None:
        task = asyncio.get_running_loop().create_task(_close_all(link.channels(), RETIRE_GRACE))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def get(self, city: City) -> NodeLink | None:
        return self.links.get(city)

    def server_name(self, city: City) -> str:
        """The TLS server name the link to `city` checks; KeyError if there is none."""
        return self._server_names[city]

    def members(self) -> tuple[City, ...]:
        """The cities this aggregator has a node for, by code."""
        return sorted_cities(self.links)

    def load(self) -> list[NodeLoad]:
        """Pending calls per node, in city order."""
        return [
            NodeLoad(city=c, in_flight=lk.in_flight, max_in_flight=lk.max_in_flight, shed=lk.shed)
            for c, lk in sorted(self.links.items())
        ]

    def in_flight(self) -> dict[City, int]:
        return {c: lk.in_flight for c, lk in self.links.items()}

    async def check(self, link: NodeLink) -> NodeLink:
        start = time.perf_counter()
        try:
            resp = await link.health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT)
            link.last_status = (
                "serving" if resp.status == health_pb2.HealthCheckResponse.SERVING else "not_serving"
            )
            link.last_error = ""
        except grpc.aio.AioRpcError as exc:
            link.last_status = "unreachable"
            link.last_error = f"{exc.code().name}: {exc.details() or ''}"[:200]
        link.last_latency_ms = int((time.perf_counter() - start) * 1000)
        link.last_checked = utcnow()
        return link

    async def check_all(self) -> list[NodeLink]:
        return list(await asyncio.gather(*(self.check(link) for link in self.links.values())))

    async def close(self) -> None:
        await asyncio.gather(
            *(_close_all(link.channels(), None) for link in self.links.values()), *self._retiring
        )


async def _close_all(channels: list[grpc.aio.Channel], grace: float | None) -> None:
    await asyncio.gather(*(c.close(grace=grace) for c in channels))
