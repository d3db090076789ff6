"""A whole network on one machine (the five pilot cities by default): provisioning and running it.

`provision` lays out a state directory — the network CA, an identity for
every participant, each node's SQLite store loaded with synthetic data,
configs — and `network.json`, the one file that tells tools and clients in
any language where everything is. `InProcessNetwork` runs the servers inside
the current event loop (integration tests); `ProcessNetwork` runs each
server as its own operating-system process (`creditnet network up`, the demo)
and, through `supervise`, starts again one that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from creditnet import consent as consent_mod
from creditnet import divisions, pilot, provenance
from creditnet.aggregator.server import RunningAggregator, start_aggregator
from creditnet.chain.keys import NATIONAL, LogKey
from creditnet.chain.receipts import DEFAULT_QUORUM
from creditnet.config import AggregatorConfig, DirectoryConfig, NodeConfig
from creditnet.dates import utcnow
from creditnet.domain import ALL_CATEGORIES, Category, City, Purpose
from creditnet.envelope import save_envelope
from creditnet.node.server import RunningNode, start_node
from creditnet.pki import (
    AGGREGATOR_SERVER_NAME,
    CertificateAuthority,
    Identity,
    Role,
    TrustStore,
    issue_identity,
    node_server_name,
)
from creditnet.routing import RoutingKey
from creditnet.store import Store
from creditnet.v2 import envelope_pb2, records_pb2

# The synthetic data (creditnet_devkit) is imported inside `provision` and
# `load_synthetic` only: the runtime package never loads developer tooling
# when it is imported (tests/unit/test_devkit_boundary.py).

__all__ = [
    "DEMO_BANK",
    "HOST_PREFIX",
    "RESTART_BACKOFF",
    "RESTART_BACKOFF_MAX",
    "RESTART_STABLE",
    "SECOND_BANK",
    "InProcessNetwork",
    "Membership",
    "NetworkLayout",
    "ProcessNetwork",
    "Restart",
    "aggregator_process",
    "default_nodes_per_process",
    "free_port",
    "grant_demo_consent",
    "load_synthetic",
    "provision",
    "select_cities",
    "wait_federated",
]

log = logging.getLogger(__name__)

DEMO_BANK = "B0310H231000001"
SECOND_BANK = "B0302H232000001"
INGEST_BATCH = 5_000


def select_cities(spec: str) -> tuple[City, ...]:
    """The member cities `--cities` names: ``all`` (every prefecture-level city and municipality
    of the division-code data), a count N (the first N of those by code), or comma-separated codes.

    Empty means the five pilot cities. Bad input raises ValueError (or a DivisionError for a code
    that is not a city) and selects nothing.
    """
    text = spec.strip()
    if not text:
        return pilot.CITIES
    every = tuple(City(d.code) for d in divisions.cities())
    if text.lower() == "all":
        return every
    if text.isdigit() and len(text) < 6:
        count = int(text)
        if not 1 <= count <= len(every):
            raise ValueError(
                f"--cities {text}: give a count from 1 to {len(every)}, 'all', or division codes"
            )
        return every[:count]
    return City.parse_many(text)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket stays bound until all are chosen.

    Asking `free_port` several times may hand out one port twice (the
    kernel reuses a port released a moment ago), and a directory refuses two
    members at one endpoint.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class NetworkLayout:
    """Where everything of a provisioned network lives, from network.json."""

    root: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, root: Path) -> NetworkLayout:
        return cls(root=root, data=json.loads((root / "network.json").read_text(encoding="utf-8")))

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def ca(self) -> Path:
        return self.path(self.data["ca"])

    @property
    def aggregator_endpoint(self) -> str:
        return str(self.data["aggregator"]["endpoint"])

    @property
    def aggregator_config(self) -> Path:
        return self.path(self.data["aggregator"]["config"])

    @property
    def aggregator_endpoints(self) -> list[str]:
        """Every replica's endpoint, the first being `aggregator_endpoint` (one without replicas)."""
        agg = self.data["aggregator"]
        return [str(e) for e in agg.get("endpoints") or [agg["endpoint"]]]

    @property
    def aggregator_configs(self) -> list[Path]:
        """Every replica's config, in the order of `aggregator_endpoints`."""
        agg = self.data["aggregator"]
        return [self.path(c) for c in agg.get("configs") or [agg["config"]]]

    @property
    def cities(self) -> tuple[City, ...]:
        """The cities provisioned here, by code (admitted ones included, removed ones not)."""
        return tuple(sorted(City(code) for code in self.data["cities"]))

    def node_endpoint(self, city: City) -> str:
        return str(self.data["cities"][city.value]["endpoint"])

    def node_config(self, city: City) -> Path:
        return self.path(self.data["cities"][city.value]["config"])

    def identity(self, group: str, name: str) -> Identity:
        ident = self.data["identities"][group][name]
        return Identity.load(self.path(ident["cert"]), self.path(ident["key"]))

    def bank(self, code: str = DEMO_BANK) -> Identity:
        return self.identity("banks", code)

    def enterprise(self, uscc: str | None = None) -> Identity:
        return self.identity("enterprises", uscc or self.demo_enterprise)

    @property
    def demo_enterprise(self) -> str:
        return str(self.data["demo"]["enterprise"])

    def provider(self, city: City, categories: Iterable[Category] | None = None) -> Identity:
        name = f"{city.value}-all" if categories is None else None
        return self.identity(
            "providers", name or f"{city.value}-{'+'.join(c.value for c in categories or ())}"
        )


def _ident(root: Path, directory: Path, name: str, identity: Identity) -> dict[str, str]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    identity.save(cert, key)
    return {
        "cert": str(cert.relative_to(root)),
        "key": str(key.relative_to(root)),
        "role": identity.role.uri,
    }


def provision(
    root: Path,
    *,
    cities: Iterable[City] = pilot.CITIES,
    enterprises_per_city: int = 2000,
    seed: int = 20221118,
    host: str = "127.0.0.1",
    quorum: int = DEFAULT_QUORUM,
    progress: Callable[[str, int], None] | None = None,
    database_urls: Mapping[City, str] | None = None,
    directory: bool = True,
    directory_refresh: dt.timedelta = dt.timedelta(minutes=5),
    directory_max_age: dt.timedelta = dt.timedelta(days=7),
    routing: bool = False,
    aggregator_replicas: int = 1,
    aggregator_database_url: str | None = None,
) -> NetworkLayout:
    """Create a complete network in `root` (which must be empty or absent).

    Each node's database is a SQLite file in its directory, or the URL given
    for its city in `database_urls` (one database per city: a node's tables
    have no city column); it is migrated and loaded here.

    With `directory` (the default), the network also gets a signed network
    directory (protocol v2) in ``directory/``: governance keys gov-1..3 (2 of
    3), version 1 signed, its anchor pinned in every server's config, and
    the policy's refresh interval and maximum age as given. Without it the
    servers hold none and take their members from their configs.

    With `routing`, every node and the aggregator get the network's routing
    key (``routing.key`` next to their keys): nodes publish membership
    filters and the aggregator asks only the cities that may hold records
    (docs/protocol.md, "Routing"). Without it every city in scope is asked.

    With `aggregator_replicas` above 1, that many aggregator processes serve
    the network, each on its own port with its own config, sharing the
    aggregator's identity, log key and one database: `aggregator_database_url`
    (PostgreSQL), else one SQLite file under ``aggregator/``. The directory
    and network.json list every replica's endpoint; node i asks replica
    i mod n to witness its log, so every replica witnesses.
    """
    from creditnet_devkit import synthetic

    members = tuple(sorted(set(cities)))
    if not members:
        raise ValueError("a network needs at least one city")
    if aggregator_replicas < 1:
        raise ValueError("a network needs at least one aggregator")
    urls = _node_database_urls(root, members, database_urls)
    root.mkdir(parents=True, exist_ok=True)
    if (root / "network.json").exists():
        raise FileExistsError(f"{root} already holds a network; use another --state-dir or remove it")
    ca = CertificateAuthority.create()
    ca.save(root / "pki")
    ca_rel = "pki/ca.pem"
    demo_uscc = synthetic.pick_demo_enterprise(seed, enterprises_per_city, members)
    identities: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    entries: dict[str, dict[str, str]] = {}
    ports = _free_ports(len(members) + aggregator_replicas)
    node_ports, agg_ports = ports[: len(members)], ports[len(members) :]
    node_endpoints = {city: f"{host}:{port}" for city, port in zip(members, node_ports, strict=True)}
    agg_endpoints = [f"{host}:{port}" for port in agg_ports]
    agg_endpoint = agg_endpoints[0]
    witness_endpoints = {c.value: ep for c, ep in node_endpoints.items()}
    # One log key per server: the one its config names is the one the
    # directory lists.
    log_keys = {c.value: LogKey.issue(ca, c.value) for c in members} | {NATIONAL: LogKey.issue(ca, NATIONAL)}
    # The routing key: every member and the aggregator, nobody else (docs/protocol.md, "Routing").
    routing_key = RoutingKey.generate() if routing else None
    signed_directory: dict[str, Any] | None = None
    if directory:
        signed_directory = _provision_directory(
            root, ca, node_endpoints, agg_endpoints, log_keys, directory_refresh, directory_max_age
        )

    def directory_config(state: Path) -> DirectoryConfig | None:
        if signed_directory is None:
            return None
        return DirectoryConfig(
            state=state, anchor=signed_directory["anchor"], bootstrap=root / signed_directory["file"]
        )

    configured_witnesses = _configured_witnesses(members, ring=signed_directory is not None)
    for i, city in enumerate(members):
        ndir = root / "nodes" / city.value
        log_keys[city.value].save(ndir / "logkey.pem", ndir / "logkey.key")
        if routing_key is not None:
            routing_key.save(ndir / "routing.key")
        node_id = issue_identity(ca, Role.node(city))
        identities["nodes"][city.value] = _ident(root, ndir, "node", node_id)
        identities["operators"][city.value] = _ident(
            root, root / "operators", city.value, issue_identity(ca, Role.operator(city))
        )
        identities["providers"][f"{city.value}-all"] = _ident(
            root,
            root / "providers",
            f"{city.value}-all",
            issue_identity(ca, Role.provider(city, "demo-data-exchange", ALL_CATEGORIES)),
        )
        endpoint = node_endpoints[city]
        config = NodeConfig(
            city=city,
            listen=endpoint,
            cert=ndir / "node.pem",
            key=ndir / "node.key",
            ca=root / ca_rel,
            database_url=urls[city],
            log_cert=ndir / "logkey.pem",
            log_key=ndir / "logkey.key",
            # Node i asks replica i mod n to witness its log.
            witnesses={
                n: agg_endpoints[i % len(agg_endpoints)] if n == NATIONAL else witness_endpoints[n]
                for n in configured_witnesses[city.value]
            },
            quorum=quorum,
            directory=directory_config(ndir / "directory.binpb"),
            routing_key=ndir / "routing.key" if routing_key is not None else None,
        )
        config.save(ndir / "node.json")
        entries[city.value] = {
            "endpoint": endpoint,
            "config": str((ndir / "node.json").relative_to(root)),
        }
    adir = root / "aggregator"
    identities["aggregator"]["national"] = _ident(
        root, adir, "aggregator", issue_identity(ca, Role.aggregator())
    )
    log_keys[NATIONAL].save(adir / "logkey.pem", adir / "logkey.key")
    if routing_key is not None:
        routing_key.save(adir / "routing.key")
    shared_url = aggregator_database_url
    if shared_url is None and aggregator_replicas > 1:
        shared_url = f"sqlite:///{adir / 'witness.db'}"
    agg_configs = []
    for i, endpoint in enumerate(agg_endpoints):
        # Replica 0 keeps the single aggregator's files; the others a directory each.
        rdir = adir if i == 0 else adir / f"replica-{i}"
        cfg_path = adir / ("aggregator.json" if i == 0 else f"replica-{i}.json")
        AggregatorConfig(
            listen=endpoint,
            cert=adir / "aggregator.pem",
            key=adir / "aggregator.key",
            ca=root / ca_rel,
            nodes=node_endpoints,
            state_dir=rdir,
            log_cert=adir / "logkey.pem",
            log_key=adir / "logkey.key",
            quorum=quorum,
            directory=directory_config(rdir / "directory.binpb"),
            routing_key=adir / "routing.key" if routing_key is not None else None,
            database_url=shared_url,
        ).save(cfg_path)
        agg_configs.append(str(cfg_path.relative_to(root)))
    for code in (DEMO_BANK, SECOND_BANK):
        identities["banks"][code] = _ident(root, root / "banks", code, issue_identity(ca, Role.bank(code)))
    identities["enterprises"][demo_uscc] = _ident(
        root, root / "enterprises", demo_uscc, issue_identity(ca, Role.enterprise(demo_uscc))
    )
    load_synthetic(
        root,
        cities=members,
        seed=seed,
        enterprises_per_city=enterprises_per_city,
        progress=progress,
        database_urls=database_urls,
    )
    data = {
        "version": 1,
        "ca": ca_rel,
        "aggregator": {
            "endpoint": agg_endpoint,
            "config": "aggregator/aggregator.json",
            "server_name": "aggregator.creditnet",
            # Replicas (docs/deployment.md): every endpoint, the first being "endpoint".
            **({"endpoints": agg_endpoints, "configs": agg_configs} if aggregator_replicas > 1 else {}),
        },
        "cities": {c: {**v, "server_name": node_server_name(City(c))} for c, v in entries.items()},
        "identities": identities,
        "chain": {"quorum": quorum},
        **({"directory": signed_directory} if signed_directory else {}),
        "demo": {
            "enterprise": demo_uscc,
            "bank": DEMO_BANK,
            "seed": seed,
            "enterprises_per_city": enterprises_per_city,
        },
    }
    tmp = root / "network.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, root / "network.json")
    return NetworkLayout(root=root, data=data)


def _configured_witnesses(members: tuple[City, ...], *, ring: bool) -> dict[str, tuple[str, ...]]:
    """Each node's configured witnesses: every other server in a small network; in a larger one
    with a directory, those the directory assigns (its ring), so that no node holds a channel to
    every other (the directory's assignment is what a node uses anyway)."""
    from creditnet.directory.build import ring_assignments

    codes = [c.value for c in members]
    if not ring or len(codes) <= PROCESS_PER_NODE_UP_TO:
        return {c: (*(o for o in codes if o != c), NATIONAL) for c in codes}
    return {a.log: a.witnesses for a in ring_assignments(codes, [NATIONAL], DEFAULT_QUORUM)}


def _provision_directory(
    root: Path,
    ca: CertificateAuthority,
    node_endpoints: Mapping[City, str],
    agg_endpoints: Sequence[str],
    log_keys: Mapping[str, LogKey],
    refresh: dt.timedelta,
    max_age: dt.timedelta,
) -> dict[str, Any]:
    """Version 1 of the network's directory, as `creditnet directory init --network` makes it."""
    from creditnet.directory.model import Policy
    from creditnet.directory.provision import (
        DEFAULT_GOVERNANCE,
        DEFAULT_THRESHOLD,
        init_directory,
    )

    out = root / "directory"
    endpoints = {c.code: ep for c, ep in node_endpoints.items()}
    made = init_directory(
        ca,
        out,
        codes=sorted(endpoints),
        endpoints=endpoints,
        aggregator_endpoint=agg_endpoints,
        governance=DEFAULT_GOVERNANCE,
        threshold=DEFAULT_THRESHOLD,
        policy=Policy(refresh_interval=refresh, max_age=max_age),
        log_keys=log_keys,
    )
    return {
        "file": str(made.file.relative_to(root)),
        "anchor": made.anchor,
        "threshold": DEFAULT_THRESHOLD,
        "governance": {
            name: {
                "cert": str((out / "governance" / f"{name}.pem").relative_to(root)),
                "key": str((out / "governance" / f"{name}.key").relative_to(root)),
            }
            for name in DEFAULT_GOVERNANCE
        },
    }


def _node_database_urls(
    root: Path, cities: Iterable[City], given: Mapping[City, str] | None = None
) -> dict[City, str]:
    """Every city's database: the URL given for it, else ``nodes/<code>/node.db`` under `root`."""
    given = dict(given or {})
    urls = {c: given.pop(c, f"sqlite:///{root / 'nodes' / c.value / 'node.db'}") for c in cities}
    if given:
        raise ValueError(f"database_urls names unknown cities: {sorted(map(str, given))}")
    if len(set(urls.values())) != len(urls):
        raise ValueError("every city needs its own database; several cities were given the same URL")
    return urls


def _provisioned_provider(root: Path, city: City) -> Identity:
    """The data-exchange provider identity provisioned for `city` (``providers/<code>-all``)."""
    name = f"{city.value}-all"
    return Identity.load(root / "providers" / f"{name}.pem", root / "providers" / f"{name}.key")


def _ingest_signed(store: Store, provider: Identity, recs: list[records_pb2.CreditRecord]) -> None:
    signed_records, signed = provenance.sign_records(provider, recs)
    store.ingest(signed_records, signed.provider_id, signed=signed, leaves=range(len(signed_records)))


def load_synthetic(
    root: Path,
    *,
    cities: Iterable[City] = pilot.CITIES,
    seed: int,
    enterprises_per_city: int,
    progress: Callable[[str, int], None] | None = None,
    database_urls: Mapping[City, str] | None = None,
) -> dict[City, int]:
    """Generate the synthetic data set and load each city's share into its
    node's store, migrating each database to the current schema first."""
    from creditnet_devkit import synthetic

    members = tuple(sorted(set(cities)))
    urls = _node_database_urls(root, members, database_urls)
    stores: dict[City, Store] = {}
    try:
        for c in members:
            stores[c] = Store.open(urls[c], migrate=True)
    except BaseException:
        for opened in stores.values():
            opened.close()
        raise
    # Each city's records are signed by the data exchange provisioned for
    # it, as if it had submitted them (docs/protocol.md, "Records signed at their source").
    providers = {c: _provisioned_provider(root, c) for c in members}
    batches: dict[City, list[records_pb2.CreditRecord]] = defaultdict(list)
    profiles: dict[City, list[records_pb2.EnterpriseProfile]] = defaultdict(list)
    counts: dict[City, int] = defaultdict(int)
    try:
        for item in synthetic.generate(seed, enterprises_per_city, members):
            if isinstance(item, records_pb2.EnterpriseProfile):
                city = City.from_proto(item.home_city)
                profiles[city].append(item)
                if len(profiles[city]) >= INGEST_BATCH:
                    stores[city].upsert_profiles(profiles.pop(city))
                continue
            city = City.from_proto(item.city)
            batches[city].append(item)
            if len(batches[city]) >= INGEST_BATCH:
                _ingest_signed(stores[city], providers[city], batches.pop(city))
                counts[city] += INGEST_BATCH
                if progress:
                    progress(city.value, INGEST_BATCH)
        for city, recs in batches.items():
            _ingest_signed(stores[city], providers[city], recs)
            counts[city] += len(recs)
            if progress:
                progress(city.value, len(recs))
        for city, profs in profiles.items():
            stores[city].upsert_profiles(profs)
    finally:
        for s in stores.values():
            s.close()
    return dict(counts)


def grant_demo_consent(
    layout: NetworkLayout,
    *,
    bank: str = DEMO_BANK,
    purpose: Purpose = Purpose.LOAN_APPLICATION,
    categories: tuple[Category, ...] = ALL_CATEGORIES,
    cities: tuple[City, ...] = (),
    max_uses: int = 0,
    validity: dt.timedelta = dt.timedelta(days=30),
    years: int = 3,
    save_to: Path | None = None,
    enterprise: Identity | None = None,
) -> envelope_pb2.SignedEnvelope:
    """A consent of the demo enterprise, or of `enterprise` (its own identity signs it)."""
    now = utcnow()
    terms = consent_mod.ConsentTerms(
        enterprise_uscc=enterprise.role.subject if enterprise is not None else layout.demo_enterprise,
        bank_code=bank,
        purpose=purpose,
        categories=categories,
        cities=cities,
        data_from=dt.date(now.year - years, 1, 1),
        data_to=now.date(),
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + validity,
        max_uses=max_uses,
    )
    env = consent_mod.grant(enterprise or layout.enterprise(), terms)
    if save_to is not None:
        save_envelope(env, save_to)
    return env


@dataclass(frozen=True, slots=True)
class Membership:
    """Node servers started and stopped because network.json gained or lost their cities."""

    started: tuple[City, ...] = ()
    stopped: tuple[City, ...] = ()


@dataclass
class InProcessNetwork:
    """The network's nodes and its aggregator as servers in this event loop."""

    layout: NetworkLayout
    nodes: dict[City, RunningNode] = field(default_factory=dict)
    aggregator: RunningAggregator | None = None
    # Every aggregator replica, `aggregator` first (a network without replicas has one).
    aggregators: list[RunningAggregator] = field(default_factory=list)

    async def start(self) -> InProcessNetwork:
        for city in self.layout.cities:
            await self.start_node(city)
        for path in self.layout.aggregator_configs:
            self.aggregators.append(await start_aggregator(AggregatorConfig.load(path)))
        self.aggregator = self.aggregators[0]
        return self

    async def start_node(self, city: City) -> RunningNode:
        node = await start_node(NodeConfig.load(self.layout.node_config(city)))
        self.nodes[city] = node
        return node

    async def stop_node(self, city: City) -> None:
        node = self.nodes.pop(city)
        await node.stop(grace=0)

    async def follow(self) -> Membership:
        """Re-read network.json and start the nodes of cities added to it, stop those of cities
        removed from it (`creditnet network admit|remove`); the other servers are left running."""
        self.layout = NetworkLayout.load(self.layout.root)
        wanted = set(self.layout.cities)
        started = sorted(wanted - set(self.nodes))
        stopped = sorted(set(self.nodes) - wanted)
        for city in stopped:
            await self.stop_node(city)
        for city in started:
            await self.start_node(city)
        return Membership(tuple(started), tuple(stopped))

    async def stop(self) -> None:
        for agg in self.aggregators or ([self.aggregator] if self.aggregator else []):
            await agg.stop(grace=0)
        self.aggregators.clear()
        await asyncio.gather(*(n.stop(grace=0) for n in self.nodes.values()))
        self.nodes.clear()

    async def __aenter__(self) -> InProcessNetwork:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# How long `ProcessNetwork.supervise` waits before restarting a server that
# died, doubling with each death up to the maximum; a server that then stays
# up this long is back to the first delay.
RESTART_BACKOFF = 0.5
RESTART_BACKOFF_MAX = 30.0
RESTART_STABLE = 60.0
AGGREGATOR_PROCESS = "aggregator"


def aggregator_process(replica: int) -> str:
    """The process name of an aggregator replica: ``aggregator``, then ``aggregator-1``, …"""
    return AGGREGATOR_PROCESS if replica == 0 else f"{AGGREGATOR_PROCESS}-{replica}"


def _replica_of(name: str) -> int | None:
    if name == AGGREGATOR_PROCESS:
        return 0
    rest = name.removeprefix(f"{AGGREGATOR_PROCESS}-")
    return int(rest) if rest != name and rest.isdigit() else None


@dataclass(frozen=True, slots=True)
class Restart:
    """A server `supervise` found dead and started again."""

    name: str
    exit_code: int | None
    # Restarts of this server in a row (each one sooner than RESTART_STABLE after the last).
    attempt: int
    # The least time before the next restart, should it die again.
    next_delay: float


@dataclass
class _Supervision:
    delay: float = RESTART_BACKOFF
    attempt: int = 0
    not_before: float = 0.0
    started: float = 0.0


# Networks up to this size run a process per node, as an operator runs them;
# larger ones pack their nodes into node hosts (`creditnet node run-many`).
PROCESS_PER_NODE_UP_TO = 8
HOST_PREFIX = "nodes-"


def default_nodes_per_process(cities: int) -> int:
    """How many nodes one process serves: one each for small networks, else the network spread
    over one host per CPU (the nodes are mostly idle; one event loop serves dozens)."""
    if cities <= PROCESS_PER_NODE_UP_TO:
        return 1
    hosts = max(2, os.cpu_count() or 2)
    return -(-cities // hosts)


@dataclass
class ProcessNetwork:
    """The servers as operating-system processes: a process per node for small networks, node
    hosts of `nodes_per_process` nodes each for large ones, and the aggregator."""

    layout: NetworkLayout
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: Path | None = None
    # None: `default_nodes_per_process` for the network's size.
    nodes_per_process: int | None = None
    # Process name -> the cities it serves (a node process is named by its city's code).
    groups: dict[str, tuple[City, ...]] = field(default_factory=dict)
    # More options of every `aggregator run` (`--workers N`, `--metrics-port P`).
    aggregator_options: tuple[str, ...] = ()
    _supervision: dict[str, _Supervision] = field(default_factory=dict, repr=False)

    def _spawn(self, name: str, args: list[str]) -> None:
        log_dir = self.log_dir or (self.layout.root / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                [sys.executable, "-m", "creditnet", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start(self) -> None:
        cities = self.layout.cities
        per = self.nodes_per_process or default_nodes_per_process(len(cities))
        if per <= 1:
            for city in cities:
                self.start_node(city)
        else:
            for i in range(0, len(cities), per):
                self.start_host(f"{HOST_PREFIX}{i // per + 1:02d}", cities[i : i + per])
        for replica in range(len(self.layout.aggregator_configs)):
            self.start_aggregator(replica)

    def start_aggregator(self, replica: int = 0) -> None:
        config = self.layout.aggregator_configs[replica]
        args = ["aggregator", "run", "--config", str(config), *self.aggregator_options]
        self._spawn(aggregator_process(replica), args)

    def start_node(self, city: City) -> None:
        self.groups[city.value] = (city,)
        self._spawn(city.value, ["node", "run", "--config", str(self.layout.node_config(city))])

    def start_host(self, name: str, cities: tuple[City, ...]) -> None:
        """Start a node host serving `cities` (`creditnet node run-many`)."""
        self.groups[name] = cities
        configs = [arg for c in cities for arg in ("--config", str(self.layout.node_config(c)))]
        self._spawn(name, ["node", "run-many", *configs])

    def cities_of(self, name: str) -> tuple[City, ...]:
        """The cities process `name` serves (a node process is named by its city's code)."""
        if _replica_of(name) is not None:
            return ()
        return self.groups.get(name) or (City(name),)

    def process_of(self, city: City) -> str | None:
        """The name of the process serving `city`, if one does."""
        return next((name for name in self.procs if city in self.cities_of(name)), None)

    def _restart(self, name: str) -> None:
        if (replica := _replica_of(name)) is not None:
            self.start_aggregator(replica)
        elif name.startswith(HOST_PREFIX):
            self.start_host(name, self.cities_of(name))
        else:
            self.start_node(City.parse(name))

    def supervise(self, now: float | None = None) -> list[Restart]:
        """Start again every server that died, each after its backoff; what was restarted.

        Call it periodically while the network runs. A server that keeps
        dying is restarted ever less often (RESTART_BACKOFF doubling up to
        RESTART_BACKOFF_MAX), so a broken configuration costs a restart every
        half minute, not a busy loop; its log says why it died.
        """
        now = time.monotonic() if now is None else now
        restarted: list[Restart] = []
        for name, proc in list(self.procs.items()):
            state = self._supervision.setdefault(name, _Supervision(started=now))
            code = proc.poll()
            if code is None:
                if state.attempt and now - state.started >= RESTART_STABLE:
                    self._supervision[name] = _Supervision(started=state.started)
                continue
            if now < state.not_before:
                continue
            self._restart(name)
            state.attempt += 1
            state.started = now
            state.not_before = now + state.delay
            restarted.append(Restart(name, code, state.attempt, state.delay))
            log.warning(
                "%s exited with %s; restarted it (restart %d in a row; next no sooner than %.1f s)",
                name,
                code,
                state.attempt,
                state.delay,
            )
            state.delay = min(state.delay * 2, RESTART_BACKOFF_MAX)
        return restarted

    def follow(self, stop_timeout: float = 10.0) -> Membership:
        """Re-read network.json; start the nodes of cities added to it and stop those of cities
        removed from it (`creditnet network admit|remove`). No other server is restarted, except
        the node host of a removed city, which starts again without it.

        Call it periodically while the network runs, as `supervise`. A
        network.json that cannot be read now (being replaced, say) changes
        nothing.
        """
        try:
            fresh = NetworkLayout.load(self.layout.root)
            wanted = set(fresh.cities)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "cannot read %s (%s); node membership unchanged", self.layout.root / "network.json", exc
            )
            return Membership()
        self.layout = fresh
        running = {c for name in self.procs for c in self.cities_of(name)}
        stopped = sorted(running - wanted)
        started = sorted(wanted - running)
        for name in sorted({n for c in stopped if (n := self.process_of(c)) is not None}):
            # Out of supervision first: a stopped member is not restarted.
            proc = self.procs.pop(name)
            self._supervision.pop(name, None)
            _terminate(proc, stop_timeout)
            left = tuple(c for c in self.cities_of(name) if c in wanted)
            self.groups.pop(name, None)
            log.info("stopped %s: %s no longer in network.json", name, ", ".join(c.value for c in stopped))
            if left:
                self.start_host(name, left)
        for city in started:
            self.start_node(city)
            log.info("started the node of %s: added to network.json", city.value)
        return Membership(tuple(started), tuple(stopped))

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        from creditnet.health import wait_serving

        trust_root = self.layout.ca
        targets = {c.value: (self.layout.node_endpoint(c), node_server_name(c)) for c in self.layout.cities}
        for replica, endpoint in enumerate(self.layout.aggregator_endpoints):
            targets[aggregator_process(replica)] = (endpoint, AGGREGATOR_SERVER_NAME)
        operator = self.layout.identity("operators", self.layout.cities[0].value)
        deadline = time.monotonic() + timeout
        for name, (endpoint, server_name) in targets.items():
            owner = name if _replica_of(name) is not None else self.process_of(City(name))
            proc = self.procs.get(owner) if owner is not None else None
            await wait_serving(endpoint, server_name, operator, trust_root, timeout=timeout, process=proc)
        # Ready means ready for a federated query: the aggregator itself
        # reaches every node (its channels may still be backing off from
        # connection attempts made while the nodes were starting).
        trust = TrustStore.load(trust_root)
        for endpoint in self.layout.aggregator_endpoints:
            await wait_federated(endpoint, operator, trust, deadline - time.monotonic())

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self.procs.clear()
        self.groups.clear()


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


async def wait_federated(endpoint: str, identity: Identity, trust: TrustStore, timeout: float) -> None:
    """Wait until the aggregator at `endpoint` sees every node it knows serving; RuntimeError if not."""
    from creditnet.channels import secure_channel
    from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc

    deadline = time.monotonic() + max(timeout, 1.0)
    waiting: list[str] = []
    async with secure_channel(endpoint, identity, trust, AGGREGATOR_SERVER_NAME) as channel:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the aggregator does not reach {', '.join(waiting)}; see their logs")
            listed = await stub.ListNodes(aggregator_pb2.ListNodesRequest(), timeout=max(left, 0.5))
            waiting = [
                City.from_proto(n.city).value
                for n in listed.nodes
                if n.health != aggregator_pb2.NODE_HEALTH_SERVING
            ]
            if not waiting:
                return
            await asyncio.sleep(0.2)
