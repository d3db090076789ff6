"""On-disk configuration of a node and of the aggregator (JSON files).

Paths inside a config file are relative to the file's directory, so a state
directory can be moved or mounted elsewhere as a whole. ``DATABASE_URL`` in
the environment overrides a node's database.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from creditnet.domain import City
from creditnet.errors import InvalidArgument

__all__ = [
    "AggregatorConfig",
    "DirectoryConfig",
    "NodeConfig",
    "parse_nodes",
    "parse_nodes_generic",
]


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def _rel(base: Path, p: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p.resolve())


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(
            "config.missing", f"{path} does not exist; run the matching `init` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument("config.malformed", f"{path} is not a valid config file: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("config.malformed", f"{path} must hold a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """Where a server keeps the signed network directory (protocol v2), and how it got the first one.

    `state` is the holder's file (rewritten on every accepted update);
    `bootstrap` the first signed directory, taken only while `state` does not
    exist yet and only if the SHA-256 of its payload is `anchor` (hex).
    """

    state: Path
    anchor: str
    bootstrap: Path

    @classmethod
    def from_json(cls, base: Path, data: Any) -> DirectoryConfig | None:
        if data is None:
            return None
        anchor = str(data["anchor"]).strip().lower()
        if len(anchor) != 64 or any(ch not in "0123456789abcdef" for ch in anchor):
            raise ValueError("'directory.anchor' must be 64 hex digits")
        return cls(
            state=_resolve(base, str(data["state"])),
            anchor=anchor,
            bootstrap=_resolve(base, str(data["bootstrap"])),
        )

    def to_json(self, base: Path) -> dict[str, str]:
        return {
            "state": _rel(base, self.state),
            "anchor": self.anchor,
            "bootstrap": _rel(base, self.bootstrap),
        }


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(slots=True)
class NodeConfig:
    city: City
    listen: str
    cert: Path
    key: Path
    ca: Path
    database_url: str
    # The credit chain: this node's Ed25519 log key, and the witnesses
    # (name -> endpoint: the other cities and "national") that cosign.
    log_cert: Path
    log_key: Path
    witnesses: dict[str, str] = field(default_factory=dict)
    quorum: int = 3
    # False only for the benchmark's no-chain baseline: answers then carry no
    # receipt and every bank client refuses them.
    chain_enabled: bool = True
    # None: no network directory (members from this configuration).
    directory: DirectoryConfig | None = None
    # The network's routing key (docs/protocol.md, "Routing"); None: the
    # node publishes no membership filter and is asked about every enterprise.
    routing_key: Path | None = None

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        data = _read(path)
        base = path.parent
        try:
            url = os.environ.get("DATABASE_URL") or str(data["database_url"])
            if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
                url = "sqlite:///" + str(_resolve(base, url.removeprefix("sqlite:///")))
            return cls(
                city=City.parse(str(data["city"])),
                listen=str(data["listen"]),
                cert=_resolve(base, str(data["cert"])),
                key=_resolve(base, str(data["key"])),
                ca=_resolve(base, str(data["ca"])),
                database_url=url,
                log_cert=_resolve(base, str(data["log_cert"])),
                log_key=_resolve(base, str(data["log_key"])),
                witnesses={str(k): str(v) for k, v in dict(data.get("witnesses", {})).items()},
                quorum=int(data.get("quorum", 3)),
                chain_enabled=bool(data.get("chain_enabled", True)),
                directory=DirectoryConfig.from_json(base, data.get("directory")),
                routing_key=_resolve(base, str(data["routing_key"])) if data.get("routing_key") else None,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidArgument("config.malformed", f"{path}: missing or invalid field {exc}") from None

    def save(self, path: Path) -> None:
        base = path.parent
        url = self.database_url
        if url.startswith("sqlite:///"):
            url = "sqlite:///" + _rel(base, Path(url.removeprefix("sqlite:///")))
        _write(
            path,
            {
                "city": self.city.value,
                "listen": self.listen,
                "cert": _rel(base, self.cert),
                "key": _rel(base, self.key),
                "ca": _rel(base, self.ca),
                "database_url": url,
                "log_cert": _rel(base, self.log_cert),
                "log_key": _rel(base, self.log_key),
                "witnesses": dict(self.witnesses),
                "quorum": self.quorum,
                "chain_enabled": self.chain_enabled,
                "directory": self.directory.to_json(base) if self.directory else None,
                "routing_key": _rel(base, self.routing_key) if self.routing_key else None,
            },
        )


@dataclass(slots=True)
class AggregatorConfig:
    listen: str
    cert: Path
    key: Path
    ca: Path
    nodes: dict[City, str]
    state_dir: Path
    # Upper bound on one node call when the caller sets no deadline.
    default_timeout: float = 10.0
    # The aggregator's log key: it witnesses every city and signs network checkpoints.
    log_cert: Path | None = None
    log_key: Path | None = None
    quorum: int = 3
    extra: dict[str, Any] = field(default_factory=dict)
    directory: DirectoryConfig | None = None
    # The network's routing key; None: every city in scope is asked.
    routing_key: Path | None = None
    # Where the aggregator keeps its state (network checkpoints, revocations,
    # witness state); None: a SQLite file in state_dir. Replicas share one
    # PostgreSQL database (docs/deployment.md, "Aggregator replicas").
    database_url: str | None = None
    # TCP connections to each node that queries are spread over: a node run
    # with --workers N serves each connection from one worker process.
    node_connections: int = 1

    @classmethod
    def load(cls, path: Path) -> AggregatorConfig:
        data = _read(path)
        base = path.parent
        try:
            return cls(
                listen=str(data["listen"]),
                cert=_resolve(base, str(data["cert"])),
                key=_resolve(base, str(data["key"])),
                ca=_resolve(base, str(data["ca"])),
                nodes={City.parse(k): str(v) for k, v in dict(data["nodes"]).items()},
                state_dir=_resolve(base, str(data.get("state_dir", "."))),
                default_timeout=float(data.get("default_timeout", 10.0)),
                log_cert=_resolve(base, str(data["log_cert"])) if data.get("log_cert") else None,
                log_key=_resolve(base, str(data["log_key"])) if data.get("log_key") else None,
                quorum=int(data.get("quorum", 3)),
                directory=DirectoryConfig.from_json(base, data.get("directory")),
                routing_key=_resolve(base, str(data["routing_key"])) if data.get("routing_key") else None,
                database_url=str(data["database_url"]) if data.get("database_url") else None,
                node_connections=_at_least_one(int(data.get("node_connections", 1)), "node_connections"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidArgument("config.malformed", f"{path}: missing or invalid field {exc}") from None

    def save(self, path: Path) -> None:
        base = path.parent
        _write(
            path,
            {
                "listen": self.listen,
                "cert": _rel(base, self.cert),
                "key": _rel(base, self.key),
                "ca": _rel(base, self.ca),
                "nodes": {c.value: ep for c, ep in self.nodes.items()},
                "state_dir": _rel(base, self.state_dir),
                "default_timeout": self.default_timeout,
                "log_cert": _rel(base, self.log_cert) if self.log_cert else None,
                "log_key": _rel(base, self.log_key) if self.log_key else None,
                "quorum": self.quorum,
                "directory": self.directory.to_json(base) if self.directory else None,
                "routing_key": _rel(base, self.routing_key) if self.routing_key else None,
                "database_url": self.database_url,
                "node_connections": self.node_connections,
            },
        )


def _at_least_one(value: int, name: str) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1")
    return value


def parse_nodes_generic(spec: str) -> dict[str, str]:
    """``340100=127.0.0.1:7004,national=...`` → {"340100": "127.0.0.1:7004", ...}."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, endpoint = part.partition("=")
        if not sep or not endpoint.strip() or not name.strip():
            raise InvalidArgument("config.nodes", f"expected NAME=HOST:PORT, got {part!r}")
        out[name.strip().lower()] = endpoint.strip()
    return out


def parse_nodes(spec: str) -> dict[City, str]:
    """``340100=127.0.0.1:7004,320100=...`` → {pilot.HEFEI: "127.0.0.1:7004", ...}."""
    nodes: dict[City, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, endpoint = part.partition("=")
        if not sep or not endpoint.strip():
            raise InvalidArgument("config.nodes", f"expected CITY=HOST:PORT, got {part!r}")
        nodes[City.parse(name)] = endpoint.strip()
    return nodes
