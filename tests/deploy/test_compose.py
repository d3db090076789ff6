"""deploy/compose.yaml: valid by the official Compose schema, and the network it describes is right."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy.engine import make_url

from creditnet import settings
from tests.deploy.helpers import CITIES, COMPOSE, SCHEMAS, load_compose

FILE_PARSERS = (settings.parse_file, settings.parse_directory)
AGGREGATORS = ("aggregator", "aggregator-2")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_valid_by_the_compose_specification(
    validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    assert errors(validator, compose) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "node-340100", "depends_on", "db-340100", "condition"), "service_done"),
        (("services", "node-340100", "restrat"), "always"),
        (("services", "db-340100", "healthcheck", "test"), 42),
        (("services", "aggregator", "volumes", 1, "volume", "subpth"), "aggregator"),
    ],
)
def test_the_schema_catches_mistakes(
    validator: jsonschema.protocols.Validator, compose: dict[str, Any], path: tuple[Any, ...], value: Any
) -> None:
    broken = copy.deepcopy(compose)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert errors(validator, broken), f"the schema accepted {path} = {value!r}"


def test_every_city_has_a_node_and_its_own_database(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "pki",
        *AGGREGATORS,
        "db-national",
        *(f"node-{c}" for c in CITIES),
        *(f"db-{c}" for c in CITIES),
    }
    assert set(services) == expected
    for city in CITIES:
        node, db = services[f"node-{city}"], services[f"db-{city}"]
        assert node["environment"]["CREDITNET_CITY"] == city
        assert make_url(node["environment"]["DATABASE_URL"]).host == f"db-{city}"
        assert node["depends_on"] == {
            "pki": {"condition": "service_completed_successfully"},
            f"db-{city}": {"condition": "service_healthy"},
        }
        assert db["depends_on"] == {"pki": {"condition": "service_completed_successfully"}}
        assert "pg_isready" in db["healthcheck"]["test"]
        assert db["volumes"][0] == f"pgdata-{city}:/var/lib/postgresql/data"
    for name in AGGREGATORS:
        assert services[name]["depends_on"] == {
            "pki": {"condition": "service_completed_successfully"},
            "db-national": {"condition": "service_healthy"},
        }


def test_the_aggregator_replicas_share_the_national_database_and_its_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    (network,) = services["db-national"]["networks"]
    assert compose["networks"][network] == {"internal": True}
    on_it = sorted(name for name, s in services.items() if network in s.get("networks", []))
    assert on_it == sorted([*AGGREGATORS, "db-national"])
    urls = {services[name]["environment"]["DATABASE_URL"] for name in AGGREGATORS}
    (url,) = urls
    assert make_url(url).host == "db-national"
    # One identity and log key for both (the same pki mount); state volumes of their own.
    mounts = [[v for v in services[name]["volumes"] if not isinstance(v, str)] for name in AGGREGATORS]
    assert mounts[0] == mounts[1]


def test_each_database_is_reachable_from_its_own_node_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for city in CITIES:
        (network,) = services[f"db-{city}"]["networks"]
        assert compose["networks"][network] == {"internal": True}
        on_it = sorted(name for name, s in services.items() if network in s.get("networks", []))
        assert on_it == [f"db-{city}", f"node-{city}"]


def test_endpoints_name_real_services_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    listen = {
        name: service["environment"]["CREDITNET_LISTEN"]
        for name, service in services.items()
        if "CREDITNET_LISTEN" in service.get("environment", {})
    }
    nodes = settings.parse_nodes(services["aggregator"]["environment"]["CREDITNET_NODES"])
    assert {c.value for c in nodes} == set(CITIES)
    for city, endpoint in nodes.items():
        assert endpoint == f"node-{city.value}:{settings.port_of(listen[f'node-{city.value}'])}"
    for city in CITIES:
        witnesses = settings.parse_witnesses(services[f"node-{city}"]["environment"]["CREDITNET_WITNESSES"])
        assert set(witnesses) == (set(CITIES) - {city}) | {"national"}
        for name, endpoint in witnesses.items():
            service = "aggregator" if name == "national" else f"node-{name}"
            assert endpoint == f"{service}:{settings.port_of(listen[service])}"
        quorum = int(services[f"node-{city}"]["environment"]["CREDITNET_QUORUM"])
        assert 1 <= quorum <= len(witnesses)


@pytest.mark.parametrize("service", [*AGGREGATORS, *(f"node-{c}" for c in CITIES)])
def test_server_environments_are_settings_that_parse(compose: dict[str, Any], service: str) -> None:
    variables = settings.AGGREGATOR_VARIABLES if service in AGGREGATORS else settings.NODE_VARIABLES
    declared = {v.name: v for v in variables}
    env = compose["services"][service]["environment"]
    assert settings.unknown_variables(env) == []
    assert set(env) <= set(declared), set(env) - set(declared)
    for name, value in env.items():
        if declared[name].parse not in FILE_PARSERS:
            declared[name].parse(str(value))
    assert {v.name for v in variables if v.required} <= set(env)


def test_no_secret_is_written_inline() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    for name, service in load_compose()["services"].items():
        env = service.get("environment", {})
        for key in env:
            if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")):
                assert key.endswith("_FILE"), f"{name}: {key} must name a file, not hold the secret"
        if "DATABASE_URL" in env:
            assert make_url(env["DATABASE_URL"]).password is None, f"{name}: DATABASE_URL holds a password"


def test_the_pki_job_runs_once_offline_and_builds_the_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pki = services["pki"]
    assert pki["restart"] == "no"
    assert pki["network_mode"] == "none"
    assert pki["healthcheck"] == {"disable": True}
    assert pki["pull_policy"] == "build"
    assert [n for n, s in services.items() if "build" in s] == ["pki"]


def test_servers_are_locked_down(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name.startswith("db-"):
            continue
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "user" not in service, f"{name} must run as the image's unprivileged user"
        assert "healthcheck" not in service or name == "pki", f"{name} must keep the image's health check"
    published = [p.split(":")[0] for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)) == len(CITIES) + len(AGGREGATORS)


def test_the_vendored_schema_is_the_recorded_one() -> None:
    readme = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", readme)
    assert recorded is not None
    assert hashlib.sha256((SCHEMAS / "compose-spec.json").read_bytes()).hexdigest() == recorded[1]


PIN_ANCHOR = (
    "CREDITNET_DIRECTORY_ANCHOR=$(cat /etc/creditnet/tls/anchor.sha256)"
    " && export CREDITNET_DIRECTORY_ANCHOR && "
)


def test_every_node_migrates_its_database_before_serving(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name.startswith("node-"):
            # yaml keeps Compose's $$ escape; Compose hands the shell a single $.
            assert [part.replace("$$", "$") for part in service["entrypoint"]] == [
                "/bin/sh",
                "-c",
                PIN_ANCHOR + "creditnet node migrate && exec creditnet node run",
            ], name


def test_every_server_holds_the_directory_on_its_own_volume(compose: dict[str, Any]) -> None:
    """The bootstrap directory and the anchor come from the server's pki mount; its state from its volume."""
    services = compose["services"]
    servers = {**dict.fromkeys(AGGREGATORS, "aggregator run"), **{f"node-{c}": "node run" for c in CITIES}}
    volumes_of: dict[str, set[str]] = {}
    for name, run in servers.items():
        service = services[name]
        env = service["environment"]
        # yaml keeps Compose's $$ escape; Compose hands the shell a single $.
        command = service["entrypoint"][2].replace("$$", "$")
        assert command.startswith(PIN_ANCHOR) and command.endswith(f"exec creditnet {run}"), name
        assert env["CREDITNET_DIRECTORY_BOOTSTRAP"] == "/etc/creditnet/tls/directory.json", name
        state = Path(env["CREDITNET_DIRECTORY_STATE"])
        named = {
            v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if isinstance(v, str) and ":" in v
        }
        assert str(state.parent) in named, f"{name}: the directory state is not on a volume"
        volumes_of[name] = {named[str(state.parent)]}
        assert named[str(state.parent)] in compose["volumes"], name
    # No two servers share a state volume.
    owners = [v for vs in volumes_of.values() for v in vs]
    assert len(owners) == len(set(owners))
