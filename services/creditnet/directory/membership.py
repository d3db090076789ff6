"""Admitting a city to a running network, and removing one: `creditnet network admit|remove`.

Admission issues the new node's identities from the network CA (node TLS,
operator, a provider, its log key), creates its node directory, config and
store (migrated, loaded with synthetic data for that city), signs the next
directory version listing it with the governance keys of the state
directory, publishes it to every server, and only then adds the city to
network.json, where `network up`'s supervisor (or `InProcessNetwork.follow`)
finds it and starts its node. Removal signs and publishes the next version
without the city and drops it from network.json; its node is then stopped,
and every server holding the new directory refuses its calls
(``directory.not_member``).

As with revocation (`creditnet.directory.revoke`), the version extended is the
newest one the servers hold, verified here from the pinned first directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from creditnet import divisions
from creditnet.chain.keys import NATIONAL, LogKey
from creditnet.config import AggregatorConfig, DirectoryConfig, NodeConfig
from creditnet.dates import utcnow
from creditnet.directory.build import node_server_name, ring_assignments
from creditnet.directory.model import City as CityMember
from creditnet.directory.model import Directory, spki_sha256
from creditnet.directory.publish import Offered, Target, publish, targets
from creditnet.directory.revoke import _settings, _verified_newest, governance_signers, held_directories
from creditnet.directory.serving import open_holder
from creditnet.directory.sign import save, sign
from creditnet.domain import ALL_CATEGORIES, City
from creditnet.errors import FailedPrecondition, InvalidArgument
from creditnet.network import NetworkLayout, _ident, free_port, load_synthetic
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import envelope_pb2

__all__ = [
    "MembershipChange",
    "admit",
    "remove",
]


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """A signed directory version that admits or removes a city, and who took it."""

    city: str
    directory: Directory
    file: Path
    answers: list[Offered]
    endpoint: str = ""

    @property
    def accepted(self) -> int:
        return sum(1 for a in self.answers if a.ok)


def _member_city(code: str) -> divisions.Division:
    """The division `code` names, if it can be a network city; DivisionError (clear) otherwise."""
    try:
        return divisions.city(code)
    except divisions.DivisionError as exc:
        raise InvalidArgument(exc.rule, f"cannot admit {code}: {exc.message}") from None


def _english_name(div: divisions.Division, given: str | None) -> str:
    if given is not None:
        if not given.strip():
            raise InvalidArgument("admit.name_en", "the English name may not be empty")
        return given.strip()
    try:
        return div.name_en
    except divisions.DivisionError as exc:
        if exc.rule != "division.names":
            raise
        raise InvalidArgument(
            "admit.name_en",
            f"no English name for {div.code} {div.name_zh}: {exc.message}, or give --name-en",
        ) from None


def _write_network(layout: NetworkLayout) -> None:
    """Write network.json atomically (readers, such as the supervisor, never see half of it)."""
    tmp = layout.root / "network.json.tmp"
    tmp.write_text(json.dumps(layout.data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, layout.root / "network.json")


def _next_version(base: Directory, cities: tuple[CityMember, ...]) -> Directory:
    ordered = tuple(sorted(cities, key=lambda c: c.code))
    return dataclasses.replace(
        base,
        version=base.version + 1,
        issued_at=max(utcnow().replace(microsecond=0), base.issued_at),
        cities=ordered,
        witness_assignments=ring_assignments(
            [c.code for c in ordered], [a.name for a in base.aggregators], base.policy.witness_quorum
        ),
    )


def _sign_and_save(layout: NetworkLayout, d: Directory) -> tuple[envelope_pb2.SignedEnvelope, Path]:
    # Admission and removal leave the governance as it is: the keys `d` lists sign it.
    env = sign(d, governance_signers(layout, d))
    file = layout.path(str(_settings(layout)["file"])).parent / f"directory-v{d.version}.json"
    save(env, file)
    return env, file


async def _newest(layout: NetworkLayout) -> tuple[Directory, Identity, TrustStore]:
    trust = TrustStore.load(layout.ca)
    operator = layout.identity("operators", sorted(layout.data["identities"]["operators"])[0])
    held = await held_directories(layout, operator, trust)
    base = (await asyncio.to_thread(_verified_newest, layout, trust, held)).directory
    return base, operator, trust


def _require_some_took(answers: list[Offered], version: int) -> None:
    if not any(a.ok for a in answers):
        why = "; ".join(f"{a.target}: {a.status} {a.detail}".strip() for a in answers)
        raise FailedPrecondition(
            "directory.publish", f"no server took directory version {version} ({why or 'no servers'})"
        )


async def admit(
    layout: NetworkLayout, code: str, *, name_en: str | None = None, host: str | None = None
) -> MembershipChange:
    """Admit the city `code` to the network of `layout` (see the module's docstring).

    Refused, before anything is written, for a code that is not a network
    city (unknown, province, county), a city already a member (in
    network.json or in the directory the servers hold), or one whose node
    directory already exists (a removed city's data is kept; move it away
    to admit the city afresh).
    """
    _settings(layout)
    div = _member_city(code)
    if div.code in layout.data["cities"]:
        raise InvalidArgument("admit.member", f"{div.code} {div.name_zh} is already a member of the network")
    english = _english_name(div, name_en)
    base, operator, trust = await _newest(layout)
    if base.city(div.code) is not None:
        raise InvalidArgument(
            "admit.member",
            f"{div.code} {div.name_zh} is already a member of directory version {base.version}",
        )
    root = layout.root
    ndir = root / "nodes" / div.code
    if ndir.exists():
        raise FileExistsError(f"{ndir} already exists (a removed node's data?); move it away to admit afresh")
    city = City(div.code)
    host = host or layout.aggregator_endpoint.rpartition(":")[0]
    endpoint = f"{host}:{free_port()}"
    ca = CertificateAuthority.load(layout.ca.parent)
    written: list[Path] = []
    try:
        ndir.mkdir(parents=True)
        log_key = LogKey.issue(ca, div.code)
        log_key.save(ndir / "logkey.pem", ndir / "logkey.key")
        node_id = issue_identity(ca, Role.node(city))
        identities: dict[str, dict[str, Any]] = {
            "nodes": {div.code: _ident(root, ndir, "node", node_id)},
            "operators": {
                div.code: _ident(root, root / "operators", div.code, issue_identity(ca, Role.operator(city)))
            },
            "providers": {
                f"{div.code}-all": _ident(
                    root,
                    root / "providers",
                    f"{div.code}-all",
                    issue_identity(ca, Role.provider(city, "demo-data-exchange", ALL_CATEGORIES)),
                )
            },
        }
        member = CityMember(
            code=div.code,
            name_zh=div.name_zh,
            name_en=english,
            endpoints=(endpoint,),
            tls_server_name=node_server_name(div.code),
            log_key_certificate=log_key.certificate_der,
            node_spki_sha256=spki_sha256(node_id.key.public_key()),
        )
        written += [
            layout.path(ident[part])
            for group in ("operators", "providers")
            for ident in identities[group].values()
            for part in ("cert", "key")
        ]
        d = _next_version(base, (*base.cities, member))
        env, file = _sign_and_save(layout, d)
        written.append(file)
        section = _settings(layout)
        # Witnessed by every other member and the national aggregator, as provisioned nodes are.
        witnesses = {c: str(e["endpoint"]) for c, e in layout.data["cities"].items()}
        witnesses[NATIONAL] = layout.aggregator_endpoint
        config = NodeConfig(
            city=city,
            listen=endpoint,
            cert=ndir / "node.pem",
            key=ndir / "node.key",
            ca=layout.ca,
            database_url=f"sqlite:///{ndir / 'node.db'}",
            log_cert=ndir / "logkey.pem",
            log_key=ndir / "logkey.key",
            witnesses=witnesses,
            quorum=int(layout.data["chain"]["quorum"]),
            directory=DirectoryConfig(
                state=ndir / "directory.binpb",
                anchor=str(section["anchor"]),
                bootstrap=layout.path(str(section["file"])),
            ),
        )
        config.save(ndir / "node.json")
        assert config.directory is not None
        # The new node starts holding the directory that lists it.
        holder = await asyncio.to_thread(open_holder, config.directory, TrustStore(trust.ca_cert))
        await asyncio.to_thread(holder.offer, env)
        demo = layout.data["demo"]
        await asyncio.to_thread(
            load_synthetic,
            root,
            cities=(city,),
            seed=int(demo["seed"]),
            enterprises_per_city=int(demo["enterprises_per_city"]),
        )
        answers = await publish(layout, env, operator)
        _require_some_took(answers, d.version)
    except BaseException:
        # Nothing of a failed admission stays behind: network.json was not touched yet.
        shutil.rmtree(ndir, ignore_errors=True)
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for group, entries in identities.items():
        layout.data["identities"].setdefault(group, {}).update(entries)
    layout.data["cities"][div.code] = {
        "endpoint": endpoint,
        "config": str((ndir / "node.json").relative_to(root)),
        "server_name": node_server_name(div.code),
    }
    _write_network(layout)
    agg = AggregatorConfig.load(layout.aggregator_config)
    agg.nodes[city] = endpoint
    agg.save(layout.aggregator_config)
    return MembershipChange(div.code, d, file, answers, endpoint)


async def remove(layout: NetworkLayout, code: str) -> MembershipChange:
    """Remove the city `code`: the next directory version without it, published; network.json updated.

    Its node directory (store, keys) is kept. Refused for a city that is not
    a member, and for the last member.
    """
    _settings(layout)
    if code not in layout.data["cities"]:
        raise InvalidArgument("remove.member", f"{code} is not a member of the network in {layout.root}")
    if len(layout.data["cities"]) == 1:
        raise InvalidArgument("remove.last", f"{code} is the network's last member city")
    base, operator, _trust = await _newest(layout)
    if base.city(code) is None:
        raise InvalidArgument(
            "remove.member", f"{code} is not a member of directory version {base.version} the servers hold"
        )
    d = _next_version(base, tuple(c for c in base.cities if c.code != code))
    env, file = _sign_and_save(layout, d)
    # Every other server; the removed node may still take it, but is no concern any more.
    remaining: list[Target] = [t for t in targets(layout) if t.name != code]
    answers = await publish(layout, env, operator, remaining)
    _require_some_took(answers, d.version)
    del layout.data["cities"][code]
    _write_network(layout)
    agg = AggregatorConfig.load(layout.aggregator_config)
    agg.nodes.pop(City(code), None)
    agg.save(layout.aggregator_config)
    return MembershipChange(code, d, file, answers)
