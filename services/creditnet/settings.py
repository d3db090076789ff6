"""Settings of a city node and of the aggregator, read from environment variables.

Containers are configured through their environment; the JSON files of
`creditnet.config` remain the way to run from a state directory. Every
variable is declared once below, with how it is written, its default and
what it does. docs/deployment.md carries a table generated from these
declarations (``python -m creditnet.settings`` prints it), and a test keeps
the two equal.

Reading collects every problem before it fails, so an operator fixes a broken
environment in one round instead of one variable per restart. Each problem
names its variable; none repeats a database URL, which may hold a password.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from creditnet.config import AggregatorConfig, DirectoryConfig, NodeConfig
from creditnet.domain import City
from creditnet.errors import Error

__all__ = [
    "AGGREGATOR_VARIABLES",
    "MAX_CONCURRENT_RPCS",
    "NODE_VARIABLES",
    "RATE_LIMIT_PER_BANK",
    "AggregatorSettings",
    "LogFormat",
    "NodeSettings",
    "Problems",
    "Rate",
    "ServerSettings",
    "SettingsError",
    "Variable",
    "parse_anchor",
    "parse_city",
    "parse_count",
    "parse_database_url",
    "parse_directory",
    "parse_duration",
    "parse_endpoint",
    "parse_file",
    "parse_log_format",
    "parse_log_level",
    "parse_nodes",
    "parse_port",
    "parse_positive_int",
    "parse_rate",
    "parse_state_file",
    "parse_witnesses",
    "port_of",
    "read_directory",
    "settings_table",
    "unknown_variables",
]

T = TypeVar("T")

PREFIX = "CREDITNET_"
# The aggregator's name among witnesses (creditnet.chain.keys.NATIONAL).
NATIONAL = "national"
MAX_PASSWORD_BYTES = 1024

Problems = list[tuple[str, str]]


class SettingsError(Error, ValueError):
    """One or more variables are missing or malformed; the message names each one."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = "invalid environment" + (f" ({count} problems)" if count > 1 else "")
        super().__init__(head + ":\n" + "\n".join(f"  {name}: {problem}" for name, problem in self.problems))


# --- how values are written ---------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def parse_port(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"expected a port number 1-65535, got {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return port


def parse_endpoint(text: str) -> str:
    """``HOST:PORT`` with a host name, an IPv4 address or a bracketed IPv6 address."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, as [{host}]:{port}")
    elif not _HOSTNAME.match(host):
        raise ValueError(f"{host!r} is not a host name or IPv4 address")
    parse_port(port)
    return text


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def parse_count(text: str) -> int:
    """A whole number ≥ 0."""
    if not text.isdigit():
        raise ValueError(f"expected a whole number ≥ 0, got {text!r}")
    return int(text)


def parse_positive_int(text: str) -> int:
    value = parse_count(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_duration(text: str) -> float:
    """Seconds, written ``10``, ``2.5s``, ``500ms`` or ``1m``; more than 0, at most an hour."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration such as 10s, 500ms or 1m, got {text!r}")
    seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
    if not 0 < seconds <= 3600:
        raise ValueError(f"must be more than 0 and at most 1 hour, got {text!r}")
    return seconds


def _absolute(text: str) -> Path:
    if "\0" in text:
        raise ValueError("a path cannot hold a NUL character")
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def parse_file(text: str) -> Path:
    """A readable file; a relative path is taken from the working directory."""
    path = _absolute(text)
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path} is not readable by this user (uid {os.getuid()})")
    return path


def parse_directory(text: str) -> Path:
    """A directory that exists, or can be created: its nearest existing parent is writable."""
    path = _absolute(text)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{probe} is not writable by this user (uid {os.getuid()})")
    return path


def parse_state_file(text: str) -> Path:
    """A file this server may write: in a directory that exists or can be created; readable if it exists."""
    path = _absolute(text)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the file to keep the directory in")
    parse_directory(str(path.parent))
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ValueError(f"{path} is not readable and writable by this user (uid {os.getuid()})")
    return path


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse_anchor(text: str) -> str:
    """The SHA-256 (64 hex digits) of the first directory's payload (`creditnet directory anchor`)."""
    anchor = text.strip().lower()
    if not _HEX64.match(anchor):
        raise ValueError(
            f"expected 64 hex digits (the SHA-256 `creditnet directory anchor FILE` prints), got {text!r}"
        )
    return anchor


def parse_city(text: str) -> City:
    return City.parse(text)


def parse_database_url(text: str) -> str:
    """A SQLAlchemy URL for PostgreSQL (psycopg 3) or a SQLite file; errors never repeat the URL."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError(
            "is not a database URL; expected postgresql+psycopg://USER@HOST:5432/DB or sqlite:////path/node.db"
        ) from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        if url.drivername not in ("postgresql", "postgresql+psycopg"):
            raise ValueError(
                f"PostgreSQL is used through psycopg 3, not {url.drivername!r}; use postgresql+psycopg://"
            )
        if not (url.host and url.database):
            raise ValueError("a PostgreSQL URL needs a host and a database name")
    elif backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("a node needs a SQLite file, not an in-memory database")
    else:
        raise ValueError(f"unsupported database {backend!r}; use PostgreSQL or SQLite")
    return text


def _parse_pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, endpoint = part.partition("=")
        if not sep or not name.strip() or not endpoint.strip():
            raise ValueError(f"expected {what}=HOST:PORT, comma separated; got {part.strip()!r}")
        pairs.append((name.strip(), parse_endpoint(endpoint.strip())))
    if not pairs:
        raise ValueError(f"expected at least one {what}=HOST:PORT")
    return pairs


def parse_nodes(text: str) -> dict[City, str]:
    """``340100=node-340100:7443,320100=…``: where the aggregator reaches each city's node."""
    nodes: dict[City, str] = {}
    for name, endpoint in _parse_pairs(text, "CITY"):
        city = City.parse(name)
        if city in nodes:
            raise ValueError(f"{city.value} is listed twice")
        nodes[city] = endpoint
    return nodes


def parse_witnesses(text: str) -> dict[str, str]:
    """``national=aggregator:7400,320100=…``: whom a node asks to cosign its checkpoints."""
    witnesses: dict[str, str] = {}
    for name, endpoint in _parse_pairs(text, "NAME"):
        key = NATIONAL if name.lower() == NATIONAL else City.parse(name).value
        if key in witnesses:
            raise ValueError(f"{key} is listed twice")
        witnesses[key] = endpoint
    return witnesses


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: `requests` may be spent at once; they refill evenly over `period` seconds."""

    requests: int
    period: float

    @property
    def per_second(self) -> float:
        return self.requests / self.period


_RATE = re.compile(r"^(\d+)\s*/\s*(s|min|h)$")
_RATE_PERIODS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def parse_rate(text: str) -> Rate | None:
    """``600/min``, ``20/s`` or ``5000/h``; ``off`` for no limit."""
    if text.lower() == "off":
        return None
    match = _RATE.match(text.lower())
    if not match:
        raise ValueError(f"expected a rate such as 600/min, 20/s or 5000/h, or off; got {text!r}")
    requests = int(match[1])
    if requests < 1:
        raise ValueError("a rate must allow at least 1 request; write off for no limit")
    return Rate(requests, _RATE_PERIODS[match[2]])


class LogFormat(enum.Enum):
    JSON = "json"
    TEXT = "text"


def parse_log_format(text: str) -> LogFormat:
    try:
        return LogFormat(text.lower())
    except ValueError:
        raise ValueError(f"expected json or text, got {text!r}") from None


_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def parse_log_level(text: str) -> int:
    try:
        return _LOG_LEVELS[text.lower()]
    except KeyError:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}, got {text!r}") from None


# --- variables ----------------------------------------------------------------

_FAILED: Any = object()


@dataclass(frozen=True, slots=True)
class Variable(Generic[T]):
    """One environment variable: its name, how it is written, its default and what it does.

    `default` is text, parsed exactly like a value the operator sets, so the
    documented default is the one that runs and a default path that does not
    exist is reported under the variable's name. Without a default the
    variable is required, unless `unset` says what leaving it out means.
    """

    name: str
    parse: Callable[[str], T]
    syntax: str
    help: str
    default: str | None = None
    unset: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None and self.unset is None

    def _raw(self, env: Mapping[str, str]) -> str | None:
        raw = env.get(self.name, "").strip()
        return raw or self.default

    def _parse(self, raw: str, env: Mapping[str, str], problems: Problems) -> T:
        try:
            return self.parse(raw)
        except ValueError as exc:
            note = "" if env.get(self.name, "").strip() else f" (the default; set {self.name})"
            problems.append((self.name, f"{exc}{note}"))
            return cast(T, _FAILED)

    def value(self, env: Mapping[str, str], problems: Problems) -> T:
        """The value of a required or defaulted variable; a problem is recorded on failure."""
        assert self.unset is None, f"{self.name} may be unset; read it with .optional()"
        raw = self._raw(env)
        if raw is None:
            problems.append((self.name, f"is required: {self.help[0].lower()}{self.help[1:]}"))
            return cast(T, _FAILED)
        return self._parse(raw, env, problems)

    def optional(self, env: Mapping[str, str], problems: Problems) -> T | None:
        """The value, or None when the variable is unset."""
        assert self.unset is not None, f"{self.name} has no meaning when unset; read it with .value()"
        raw = self._raw(env)
        return None if raw is None else self._parse(raw, env, problems)

    def is_set(self, env: Mapping[str, str]) -> bool:
        return bool(env.get(self.name, "").strip())


# Both servers.
CERT = Variable(
    "CREDITNET_CERT", parse_file, "path",
    "This server's certificate (PEM) from the network CA.",
    default="/etc/creditnet/tls/cert.pem",
)  # fmt: skip
KEY = Variable(
    "CREDITNET_KEY", parse_file, "path",
    "The certificate's private key (PEM).",
    default="/etc/creditnet/tls/cert.key",
)  # fmt: skip
CA = Variable(
    "CREDITNET_CA", parse_file, "path",
    "The network CA certificate (PEM) every peer is checked against.",
    default="/etc/creditnet/tls/ca.pem",
)  # fmt: skip
HEALTH_LISTEN = Variable(
    "CREDITNET_HEALTH_LISTEN", parse_endpoint, "HOST:PORT",
    "Plaintext port that serves only grpc.health.v1.Health, for orchestrator probes.",
    unset="no such port",
)  # fmt: skip
METRICS_PORT = Variable(
    "CREDITNET_METRICS_PORT", parse_port, "port",
    "Port of the Prometheus metrics endpoint.",
    unset="no metrics endpoint",
)  # fmt: skip
LOG_FORMAT = Variable(
    "CREDITNET_LOG_FORMAT", parse_log_format, "json | text",
    "Log lines as JSON objects (for log collectors) or as text.",
    default="text",
)  # fmt: skip
LOG_LEVEL = Variable(
    "CREDITNET_LOG_LEVEL", parse_log_level, "debug | info | warning | error",
    "The least severe level that is logged.",
    default="info",
)  # fmt: skip
MAX_CONCURRENT_RPCS = Variable(
    "CREDITNET_MAX_CONCURRENT_RPCS", parse_positive_int, "integer ≥ 1",
    "Calls served at once; further calls are refused with RESOURCE_EXHAUSTED.",
    default="512",
)  # fmt: skip
RATE_LIMIT_PER_BANK = Variable(
    "CREDITNET_RATE_LIMIT_PER_BANK", parse_rate, "N/s | N/min | N/h | off",
    "Queries one bank may make: a token bucket of N that refills evenly over the period.",
    default="600/min",
)  # fmt: skip
SHUTDOWN_GRACE = Variable(
    "CREDITNET_SHUTDOWN_GRACE", parse_duration, "duration: 10s, 500ms, 1m",
    "On SIGTERM, how long calls in flight may take to finish before the server stops.",
    default="5s",
)  # fmt: skip

# The node's.
CITY = Variable(
    "CREDITNET_CITY", parse_city, "division code",
    "The city this node serves: its six-digit GB/T 2260 code, e.g. 340100 (Hefei).",
)  # fmt: skip
NODE_LISTEN = Variable(
    "CREDITNET_LISTEN", parse_endpoint, "HOST:PORT",
    "Address of the mutual-TLS gRPC server.",
    default="0.0.0.0:7443",
)  # fmt: skip
DATABASE_URL = Variable(
    "DATABASE_URL", parse_database_url, "SQLAlchemy URL",
    "The server's database, e.g. postgresql+psycopg://creditnet@db:5432/creditnet; "
    "aggregator replicas share one.",
)  # fmt: skip
DATABASE_PASSWORD_FILE = Variable(
    "CREDITNET_DATABASE_PASSWORD_FILE", parse_file, "path",
    "File holding the database password (one line), put into DATABASE_URL, which must then carry none.",
    unset="the password, if any, is in DATABASE_URL",
)  # fmt: skip
NODE_LOG_CERT = Variable(
    "CREDITNET_LOG_CERT", parse_file, "path",
    "Certificate of this server's Ed25519 credit-chain log key.",
    default="/etc/creditnet/logkey/logkey.pem",
)  # fmt: skip
NODE_LOG_KEY = Variable(
    "CREDITNET_LOG_KEY", parse_file, "path",
    "The log key (PEM, PKCS#8).",
    default="/etc/creditnet/logkey/logkey.key",
)  # fmt: skip
WITNESSES = Variable(
    "CREDITNET_WITNESSES", parse_witnesses, "NAME=HOST:PORT,…",
    "Who cosigns this node's checkpoints: other cities' nodes and national (the aggregator).",
    unset="no witnesses (then CREDITNET_QUORUM must be 0)",
)  # fmt: skip
QUORUM = Variable(
    "CREDITNET_QUORUM", parse_count, "integer ≥ 0",
    "Cosignatures a checkpoint needs before it is published: a node's from its witnesses, "
    "the aggregator's from the nodes.",
    default="3",
)  # fmt: skip

# The aggregator's.
AGGREGATOR_LISTEN = dataclasses.replace(NODE_LISTEN, default="0.0.0.0:7400")
NODES = Variable(
    "CREDITNET_NODES", parse_nodes, "CITY=HOST:PORT,…",
    "Where the aggregator reaches each city's node.",
)  # fmt: skip
STATE_DIR = Variable(
    "CREDITNET_STATE_DIR", parse_directory, "path",
    "Directory of the aggregator's durable state (its SQLite database unless DATABASE_URL names "
    "one); created if missing.",
    default="/var/lib/creditnet",
)  # fmt: skip
DEFAULT_TIMEOUT = Variable(
    "CREDITNET_DEFAULT_TIMEOUT", parse_duration, "duration: 10s, 500ms, 1m",
    "Longest wait for one node when the caller sets no deadline.",
    default="10s",
)  # fmt: skip
NODE_CONNECTIONS = Variable(
    "CREDITNET_NODE_CONNECTIONS", parse_positive_int, "whole number ≥ 1",
    "TCP connections to each node that queries are spread over (one per worker process of a node "
    "run with --workers).",
    default="1",
)  # fmt: skip
AGGREGATOR_LOG_CERT = dataclasses.replace(
    NODE_LOG_CERT, default=None, unset="no witnessing (set both or neither)"
)
AGGREGATOR_LOG_KEY = dataclasses.replace(
    NODE_LOG_KEY, default=None, unset="no witnessing (set both or neither)"
)
# Replicas of the aggregator share one PostgreSQL database (docs/deployment.md).
AGGREGATOR_DATABASE_URL = dataclasses.replace(
    DATABASE_URL, default=None, unset="a SQLite file in CREDITNET_STATE_DIR (a single aggregator)"
)

# The signed network directory (protocol v2), both servers: all three or none.
DIRECTORY_ANCHOR = Variable(
    "CREDITNET_DIRECTORY_ANCHOR", parse_anchor, "64 hex digits",
    "SHA-256 of the network's first signed directory (creditnet directory anchor FILE), "
    "given out of band with the CA certificate; setting it makes the server hold, serve and "
    "enforce the directory.",
    unset="no network directory: members from the configuration",
)  # fmt: skip
DIRECTORY_BOOTSTRAP = Variable(
    "CREDITNET_DIRECTORY_BOOTSTRAP", parse_file, "path",
    "The network's first signed directory (JSON or binary), read while the state file does not "
    "exist; it must be the one the anchor pins.",
    unset=f"required with {DIRECTORY_ANCHOR.name}",
)  # fmt: skip
DIRECTORY_STATE = Variable(
    "CREDITNET_DIRECTORY_STATE", parse_state_file, "path",
    "This server's copy of the newest directory it took (rewritten atomically); keep it on a "
    "persistent volume.",
    unset=f"required with {DIRECTORY_ANCHOR.name}",
)  # fmt: skip
DIRECTORY_VARIABLES: tuple[Variable[Any], ...] = (DIRECTORY_ANCHOR, DIRECTORY_BOOTSTRAP, DIRECTORY_STATE)

# Routing (docs/protocol.md, "Routing"), both servers.
ROUTING_KEY_FILE = Variable(
    "CREDITNET_ROUTING_KEY_FILE", parse_file, "path",
    "The network's routing key (64 hex digits), given to the member nodes and the aggregator "
    "only, like a private key: nodes publish membership filters under it, the aggregator asks "
    "only the cities whose filter holds the enterprise.",
    unset="no routing: a node publishes no filter; the aggregator asks every city in scope",
)  # fmt: skip

SERVER_VARIABLES: tuple[Variable[Any], ...] = (
    CERT,
    KEY,
    CA,
    HEALTH_LISTEN,
    METRICS_PORT,
    LOG_FORMAT,
    LOG_LEVEL,
    MAX_CONCURRENT_RPCS,
    RATE_LIMIT_PER_BANK,
    SHUTDOWN_GRACE,
    *DIRECTORY_VARIABLES,
    ROUTING_KEY_FILE,
)
NODE_VARIABLES: tuple[Variable[Any], ...] = (
    CITY,
    NODE_LISTEN,
    DATABASE_URL,
    DATABASE_PASSWORD_FILE,
    NODE_LOG_CERT,
    NODE_LOG_KEY,
    WITNESSES,
    QUORUM,
    *SERVER_VARIABLES,
)
AGGREGATOR_VARIABLES: tuple[Variable[Any], ...] = (
    AGGREGATOR_LISTEN,
    NODES,
    STATE_DIR,
    AGGREGATOR_DATABASE_URL,
    DATABASE_PASSWORD_FILE,
    DEFAULT_TIMEOUT,
    NODE_CONNECTIONS,
    AGGREGATOR_LOG_CERT,
    AGGREGATOR_LOG_KEY,
    QUORUM,
    *SERVER_VARIABLES,
)


# --- settings -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What every server needs besides its own purpose: identity, ports, logs and limits."""

    listen: str
    cert: Path
    key: Path
    ca: Path
    health_listen: str | None
    metrics_port: int | None
    log_format: LogFormat
    log_level: int
    max_concurrent_rpcs: int
    rate_limit_per_bank: Rate | None
    shutdown_grace: float

    @classmethod
    def read(cls, env: Mapping[str, str], listen: Variable[str], problems: Problems) -> ServerSettings:
        """Read what a server shares; problems are recorded for the caller, which raises them all."""
        settings = cls(
            listen=listen.value(env, problems),
            cert=CERT.value(env, problems),
            key=KEY.value(env, problems),
            ca=CA.value(env, problems),
            health_listen=HEALTH_LISTEN.optional(env, problems),
            metrics_port=METRICS_PORT.optional(env, problems),
            log_format=LOG_FORMAT.value(env, problems),
            log_level=LOG_LEVEL.value(env, problems),
            max_concurrent_rpcs=MAX_CONCURRENT_RPCS.value(env, problems),
            rate_limit_per_bank=RATE_LIMIT_PER_BANK.value(env, problems),
            shutdown_grace=SHUTDOWN_GRACE.value(env, problems),
        )
        ports: list[tuple[str, object]] = [
            (listen.name, settings.listen),
            (HEALTH_LISTEN.name, settings.health_listen),
            (METRICS_PORT.name, settings.metrics_port),
        ]
        owner: dict[int, str] = {}
        for name, value in ports:
            if value is None or value is _FAILED:
                continue
            port = value if isinstance(value, int) else port_of(str(value))
            if port in owner:
                problems.append((name, f"uses port {port}, as {owner[port]} does"))
            owner.setdefault(port, name)
        return settings


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """A city node, from the environment."""

    city: City
    database_url: str
    log_cert: Path
    log_key: Path
    witnesses: dict[str, str]
    quorum: int
    server: ServerSettings
    directory: DirectoryConfig | None = None
    routing_key: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodeSettings:
        """Read and check every node variable; SettingsError lists all the problems at once."""
        env = os.environ if env is None else env
        problems: Problems = []
        city = CITY.value(env, problems)
        url = DATABASE_URL.value(env, problems)
        password_file = DATABASE_PASSWORD_FILE.optional(env, problems)
        given = WITNESSES.optional(env, problems)
        # After a malformed list, checks against it would only repeat the problem.
        witnesses = given if isinstance(given, dict) else {}
        quorum = QUORUM.value(env, problems)
        server = ServerSettings.read(env, NODE_LISTEN, problems)
        log_cert = NODE_LOG_CERT.value(env, problems)
        log_key = NODE_LOG_KEY.value(env, problems)
        directory = read_directory(env, problems)
        routing_key = ROUTING_KEY_FILE.optional(env, problems)
        if isinstance(city, City) and city.value in witnesses:
            problems.append(
                (WITNESSES.name, f"names this node's own city {city.value}; no log witnesses itself")
            )
        if isinstance(quorum, int) and given is not _FAILED and quorum > len(witnesses):
            have = f"{len(witnesses)} witnesses in {WITNESSES.name}"
            problems.append((QUORUM.name, f"{quorum} cosignatures can never be had from {have}"))
        if password_file is not None and password_file is not _FAILED and url is not _FAILED:
            url = _with_password(url, password_file, problems)
        if problems:
            raise SettingsError(problems)
        return cls(
            city=city,
            database_url=url,
            log_cert=log_cert,
            log_key=log_key,
            witnesses=witnesses,
            quorum=quorum,
            server=server,
            directory=directory,
            routing_key=routing_key,
        )

    def to_config(self) -> NodeConfig:
        return NodeConfig(
            city=self.city,
            listen=self.server.listen,
            cert=self.server.cert,
            key=self.server.key,
            ca=self.server.ca,
            database_url=self.database_url,
            log_cert=self.log_cert,
            log_key=self.log_key,
            witnesses=dict(self.witnesses),
            quorum=self.quorum,
            directory=self.directory,
            routing_key=self.routing_key,
        )


@dataclass(frozen=True, slots=True)
class AggregatorSettings:
    """The national aggregator, from the environment."""

    nodes: dict[City, str]
    state_dir: Path
    default_timeout: float
    log_cert: Path | None
    log_key: Path | None
    quorum: int
    server: ServerSettings
    directory: DirectoryConfig | None = None
    routing_key: Path | None = None
    database_url: str | None = None
    node_connections: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AggregatorSettings:
        """Read and check every aggregator variable; SettingsError lists all the problems at once."""
        env = os.environ if env is None else env
        problems: Problems = []
        nodes = NODES.value(env, problems)
        quorum = QUORUM.value(env, problems)
        url = AGGREGATOR_DATABASE_URL.optional(env, problems)
        password_file = DATABASE_PASSWORD_FILE.optional(env, problems)
        if password_file is not None and password_file is not _FAILED:
            if url is None:
                problems.append(
                    (DATABASE_PASSWORD_FILE.name, f"needs {DATABASE_URL.name} to put the password in")
                )
            elif url is not _FAILED:
                url = _with_password(url, password_file, problems)
        settings = cls(
            nodes=nodes,
            state_dir=STATE_DIR.value(env, problems),
            default_timeout=DEFAULT_TIMEOUT.value(env, problems),
            log_cert=AGGREGATOR_LOG_CERT.optional(env, problems),
            log_key=AGGREGATOR_LOG_KEY.optional(env, problems),
            quorum=quorum,
            server=ServerSettings.read(env, AGGREGATOR_LISTEN, problems),
            directory=read_directory(env, problems),
            routing_key=ROUTING_KEY_FILE.optional(env, problems),
            database_url=url if isinstance(url, str) else None,
            node_connections=NODE_CONNECTIONS.value(env, problems),
        )
        cert_set, key_set = AGGREGATOR_LOG_CERT.is_set(env), AGGREGATOR_LOG_KEY.is_set(env)
        if cert_set != key_set:
            given, missing = (
                (AGGREGATOR_LOG_CERT, AGGREGATOR_LOG_KEY)
                if cert_set
                else (AGGREGATOR_LOG_KEY, AGGREGATOR_LOG_CERT)
            )
            problems.append((missing.name, f"must be set together with {given.name}"))
        if cert_set and isinstance(nodes, dict) and isinstance(quorum, int) and quorum > len(nodes):
            problems.append(
                (
                    QUORUM.name,
                    f"{quorum} cosignatures can never be had from the {len(nodes)} nodes in {NODES.name}",
                )
            )
        if problems:
            raise SettingsError(problems)
        return settings

    def to_config(self) -> AggregatorConfig:
        return AggregatorConfig(
            listen=self.server.listen,
            cert=self.server.cert,
            key=self.server.key,
            ca=self.server.ca,
            nodes=dict(self.nodes),
            state_dir=self.state_dir,
            default_timeout=self.default_timeout,
            log_cert=self.log_cert,
            log_key=self.log_key,
            quorum=self.quorum,
            directory=self.directory,
            routing_key=self.routing_key,
            database_url=self.database_url,
            node_connections=self.node_connections,
        )


def read_directory(env: Mapping[str, str], problems: Problems) -> DirectoryConfig | None:
    """The directory settings (all three variables or none); problems are recorded for the caller.

    The bootstrap file must be the signed directory the anchor pins: a
    mismatch is found here, under the variable's name, not at the first start
    that needs it.
    """
    given = [v for v in DIRECTORY_VARIABLES if v.is_set(env)]
    if not given:
        return None
    for missing in (v for v in DIRECTORY_VARIABLES if v not in given):
        problems.append((missing.name, f"must be set together with {given[0].name}"))
    anchor = DIRECTORY_ANCHOR.optional(env, problems)
    bootstrap = DIRECTORY_BOOTSTRAP.optional(env, problems)
    state = DIRECTORY_STATE.optional(env, problems)
    if anchor is None or bootstrap is None or state is None:
        return None
    if anchor is _FAILED or bootstrap is _FAILED or state is _FAILED:
        return None
    if problem := _bootstrap_problem(bootstrap, anchor):
        problems.append((DIRECTORY_BOOTSTRAP.name, problem))
        return None
    return DirectoryConfig(state=state, anchor=anchor, bootstrap=bootstrap)


def _bootstrap_problem(bootstrap: Path, anchor: str) -> str | None:
    """Why `bootstrap` is not the signed directory `anchor` pins, or None when it is."""
    import hashlib
    import hmac

    from creditnet.directory.sign import DIRECTORY_TYPE, load
    from creditnet.errors import CreditnetError

    try:
        env = load(bootstrap)
    except (CreditnetError, OSError, ValueError) as exc:
        return f"{bootstrap} is not a signed network directory ({exc})"
    if env.payload_type != DIRECTORY_TYPE:
        return f"{bootstrap} is not a signed network directory (payload type {env.payload_type[:80]!r})"
    digest = hashlib.sha256(env.payload).hexdigest()
    if not hmac.compare_digest(digest, anchor):
        return (
            f"{bootstrap} is not the directory {DIRECTORY_ANCHOR.name} pins "
            f"(the SHA-256 of its payload is {digest}); directory.anchor"
        )
    return None


def _with_password(url_text: str, password_file: Path, problems: Problems) -> str:
    url = make_url(url_text)
    if url.get_backend_name() == "sqlite":
        problems.append((DATABASE_PASSWORD_FILE.name, "a SQLite database takes no password"))
        return url_text
    if url.password is not None:
        problems.append(
            (
                DATABASE_URL.name,
                f"carries a password and {DATABASE_PASSWORD_FILE.name} gives one; keep only one",
            )
        )
        return url_text
    raw = password_file.read_bytes()[: MAX_PASSWORD_BYTES + 1]
    try:
        password = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        password = ""
    if not password or len(raw) > MAX_PASSWORD_BYTES or any(c in password for c in "\r\n\0"):
        problems.append((DATABASE_PASSWORD_FILE.name, f"{password_file} must hold one line of UTF-8 text"))
        return url_text
    return url.set(password=password).render_as_string(hide_password=False)


# --- checks and documentation -------------------------------------------------

# Kubernetes gives every pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_… for each
# Service of its namespace; a Service named creditnet-… yields CREDITNET_… names.
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$")


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for CREDITNET_* variables that nothing reads (usually typos), naming the likely intent."""
    env = os.environ if env is None else env
    known = sorted({v.name for v in (*NODE_VARIABLES, *AGGREGATOR_VARIABLES)})
    warnings = []
    for name in sorted(env):
        if not name.startswith(PREFIX) or name in known or _SERVICE_LINK.search(name):
            continue
        # Compared without the shared prefix, which would make every name look alike.
        stems = {k.removeprefix(PREFIX): k for k in known if k.startswith(PREFIX)}
        close = difflib.get_close_matches(name.removeprefix(PREFIX), list(stems), n=1, cutoff=0.75)
        hint = f"; did you mean {stems[close[0]]}?" if close else ""
        warnings.append(f"{name} is not a creditnet setting and is ignored{hint}")
    return warnings


def _default_cell(variable: Variable[Any]) -> str:
    if variable.required:
        return "**required**"
    if variable.default is not None:
        return f"`{variable.default}`"
    return f"unset: {variable.unset}"


def settings_table() -> str:
    """The Markdown table of every variable, as docs/deployment.md carries it."""
    users: dict[str, dict[str, Variable[Any]]] = {}
    for who, variables in (("node", NODE_VARIABLES), ("aggregator", AGGREGATOR_VARIABLES)):
        for variable in variables:
            users.setdefault(variable.name, {})[who] = variable
    lines = ["| variable | used by | written as | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, by in users.items():
        first = next(iter(by.values()))
        cells = {who: _default_cell(v) for who, v in by.items()}
        if len(set(cells.values())) == 1:
            default = next(iter(cells.values()))
        else:
            default = "<br>".join(f"{who}: {cell}" for who, cell in cells.items())
        cells_text = (f"`{name}`", ", ".join(by), first.syntax, default, first.help)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells_text) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
