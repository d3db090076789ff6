"""Settings from the environment: parsing, every problem named, configs, the documented table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from creditnet import pilot, settings
from creditnet.settings import (
    AggregatorSettings,
    LogFormat,
    NodeSettings,
    Rate,
    SettingsError,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"
BEGIN, END = "<!-- settings-table:begin -->", "<!-- settings-table:end -->"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("cert.pem", "cert.key", "ca.pem", "logkey.pem", "logkey.key", "password"):
        out[name] = tmp_path / name
        out[name].write_text("x\n")
    return out


@pytest.fixture
def node_env(files: dict[str, Path]) -> dict[str, str]:
    return {
        "CREDITNET_CITY": " 340100 ",
        "CREDITNET_LISTEN": "0.0.0.0:7443",
        "CREDITNET_CERT": str(files["cert.pem"]),
        "CREDITNET_KEY": str(files["cert.key"]),
        "CREDITNET_CA": str(files["ca.pem"]),
        "CREDITNET_LOG_CERT": str(files["logkey.pem"]),
        "CREDITNET_LOG_KEY": str(files["logkey.key"]),
        "DATABASE_URL": "postgresql+psycopg://creditnet@db-340100:5432/creditnet",
        "CREDITNET_WITNESSES": "320100=node-320100:7443, national=aggregator:7400,310000=10.0.0.5:7443",
        "CREDITNET_QUORUM": "2",
    }


@pytest.fixture
def aggregator_env(files: dict[str, Path], tmp_path: Path) -> dict[str, str]:
    return {
        "CREDITNET_CERT": str(files["cert.pem"]),
        "CREDITNET_KEY": str(files["cert.key"]),
        "CREDITNET_CA": str(files["ca.pem"]),
        "CREDITNET_NODES": "340100=node-340100:7443,320100=[fd00::1]:7443",
        "CREDITNET_STATE_DIR": str(tmp_path / "state" / "aggregator"),
        "CREDITNET_QUORUM": "1",
    }


def problems_of(exc: pytest.ExceptionInfo[SettingsError]) -> dict[str, str]:
    return dict(exc.value.problems)


# --- the node -------------------------------------------------------------------


def test_node_settings_from_a_complete_environment(node_env: dict[str, str], files: dict[str, Path]) -> None:
    s = NodeSettings.from_env(node_env)
    assert s.city == pilot.HEFEI
    assert s.witnesses == {
        "320100": "node-320100:7443",
        "national": "aggregator:7400",
        "310000": "10.0.0.5:7443",
    }
    assert s.quorum == 2
    assert s.server.listen == "0.0.0.0:7443"
    assert s.server.cert == files["cert.pem"]
    # Unset variables take their documented defaults.
    assert s.server.health_listen is None
    assert s.server.metrics_port is None
    assert s.server.log_format is LogFormat.TEXT
    assert s.server.max_concurrent_rpcs == 512
    assert s.server.rate_limit_per_bank == Rate(600, 60.0)
    assert s.server.shutdown_grace == 5.0

    config = s.to_config()
    assert config.city == pilot.HEFEI
    assert config.listen == "0.0.0.0:7443"
    assert (config.cert, config.key, config.ca) == (files["cert.pem"], files["cert.key"], files["ca.pem"])
    assert (config.log_cert, config.log_key) == (files["logkey.pem"], files["logkey.key"])
    assert config.database_url == node_env["DATABASE_URL"]
    assert config.witnesses == s.witnesses
    assert config.quorum == 2


def test_every_problem_is_reported_at_once_and_named(node_env: dict[str, str]) -> None:
    node_env["CREDITNET_CITY"] = "320000"
    node_env["CREDITNET_LISTEN"] = "7443"
    del node_env["DATABASE_URL"]
    node_env["CREDITNET_LOG_FORMAT"] = "yaml"
    with pytest.raises(SettingsError) as exc:
        NodeSettings.from_env(node_env)
    found = problems_of(exc)
    assert set(found) == {"CREDITNET_CITY", "CREDITNET_LISTEN", "DATABASE_URL", "CREDITNET_LOG_FORMAT"}
    assert "320000" in found["CREDITNET_CITY"] and "prefecture-level" in found["CREDITNET_CITY"]
    assert "HOST:PORT" in found["CREDITNET_LISTEN"]
    assert found["DATABASE_URL"].startswith("is required")
    message = str(exc.value)
    assert "4 problems" in message
    assert all(name in message for name in found)


def test_a_default_path_that_is_missing_is_reported_under_its_variable(node_env: dict[str, str]) -> None:
    del node_env["CREDITNET_CA"]
    with pytest.raises(SettingsError) as exc:
        NodeSettings.from_env(node_env)
    assert problems_of(exc) == {
        "CREDITNET_CA": "/etc/creditnet/tls/ca.pem does not exist or is not a file "
        "(the default; set CREDITNET_CA)"
    }


def test_every_declared_variable_is_read(node_env: dict[str, str], aggregator_env: dict[str, str]) -> None:
    """A declared variable that from_env forgot would be documented yet silently ignored."""
    for variables, env, read in (
        (settings.NODE_VARIABLES, node_env, NodeSettings.from_env),
        (settings.AGGREGATOR_VARIABLES, aggregator_env, AggregatorSettings.from_env),
    ):
        for variable in variables:
            broken = {**env, variable.name: "\0broken"}
            with pytest.raises(SettingsError) as exc:
                read(broken)
            assert variable.name in problems_of(exc), variable.name


@pytest.mark.parametrize(
    ("changes", "variable", "fragment"),
    [
        (
            {"CREDITNET_WITNESSES": "340100=node-340100:7443,national=aggregator:7400"},
            "CREDITNET_WITNESSES",
            "own city",
        ),
        ({"CREDITNET_WITNESSES": "national=a:1,National=b:2"}, "CREDITNET_WITNESSES", "listed twice"),
        ({"CREDITNET_WITNESSES": "wuhan=node:7443"}, "CREDITNET_WITNESSES", "wuhan"),
        ({"CREDITNET_QUORUM": "4"}, "CREDITNET_QUORUM", "never be had from 3 witnesses"),
        ({"CREDITNET_QUORUM": "-1"}, "CREDITNET_QUORUM", "whole number"),
        ({"CREDITNET_HEALTH_LISTEN": "0.0.0.0:7443"}, "CREDITNET_HEALTH_LISTEN", "uses port 7443"),
        ({"CREDITNET_METRICS_PORT": "70000"}, "CREDITNET_METRICS_PORT", "outside 1-65535"),
        ({"CREDITNET_MAX_CONCURRENT_RPCS": "0"}, "CREDITNET_MAX_CONCURRENT_RPCS", "at least 1"),
        ({"CREDITNET_RATE_LIMIT_PER_BANK": "10/day"}, "CREDITNET_RATE_LIMIT_PER_BANK", "600/min"),
        ({"CREDITNET_SHUTDOWN_GRACE": "2h"}, "CREDITNET_SHUTDOWN_GRACE", "duration"),
        ({"CREDITNET_LOG_LEVEL": "verbose"}, "CREDITNET_LOG_LEVEL", "debug, info"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL", "unsupported database 'mysql'"),
        ({"DATABASE_URL": "sqlite://"}, "DATABASE_URL", "SQLite file"),
        ({"DATABASE_URL": "postgresql+psycopg://u@/db"}, "DATABASE_URL", "host and a database"),
    ],
)
def test_bad_node_values(
    node_env: dict[str, str], changes: dict[str, str], variable: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as exc:
        NodeSettings.from_env({**node_env, **changes})
    found = problems_of(exc)
    assert list(found) == [variable]
    assert fragment in found[variable]


def test_no_witnesses_needs_quorum_zero(node_env: dict[str, str]) -> None:
    del node_env["CREDITNET_WITNESSES"]
    with pytest.raises(SettingsError) as exc:
        NodeSettings.from_env(node_env)
    assert "never be had from 0 witnesses" in problems_of(exc)["CREDITNET_QUORUM"]
    s = NodeSettings.from_env({**node_env, "CREDITNET_QUORUM": "0"})
    assert (s.witnesses, s.quorum) == ({}, 0)


def test_database_errors_never_repeat_the_url(node_env: dict[str, str]) -> None:
    for url in (
        "postgresql+psycopg2://u:hunter2@h/db",
        "hunter2 is not a url",
        "postgresql+psycopg://u:hunter2@/db",
    ):
        with pytest.raises(SettingsError) as exc:
            NodeSettings.from_env({**node_env, "DATABASE_URL": url})
        assert "hunter2" not in str(exc.value)


@given(password=st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=("Cs",)), min_size=1))
def test_the_password_file_goes_into_the_url_exactly(
    password: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = {n: tmp_path_factory.mktemp("f") / n for n in ("c", "k", "a", "lc", "lk", "pw")}
    for f in files.values():
        f.write_text("x")
    files["pw"].write_bytes(password.encode() + b"\n")
    env = {
        "CREDITNET_CITY": "330400",
        "CREDITNET_CERT": str(files["c"]),
        "CREDITNET_KEY": str(files["k"]),
        "CREDITNET_CA": str(files["a"]),
        "CREDITNET_LOG_CERT": str(files["lc"]),
        "CREDITNET_LOG_KEY": str(files["lk"]),
        "CREDITNET_QUORUM": "0",
        "DATABASE_URL": "postgresql+psycopg://creditnet@db-330400:5432/creditnet?sslmode=require",
        "CREDITNET_DATABASE_PASSWORD_FILE": str(files["pw"]),
    }
    url = make_url(NodeSettings.from_env(env).database_url)
    assert url.password == password
    assert (url.username, url.host, url.port, url.database) == ("creditnet", "db-330400", 5432, "creditnet")
    assert url.query == {"sslmode": "require"}


@pytest.mark.parametrize(
    ("url", "content", "variable", "fragment"),
    [
        ("postgresql+psycopg://u:inline@h/db", b"secret\n", "DATABASE_URL", "keep only one"),
        ("sqlite:////tmp/node.db", b"secret\n", "CREDITNET_DATABASE_PASSWORD_FILE", "no password"),
        ("postgresql+psycopg://u@h/db", b"\n", "CREDITNET_DATABASE_PASSWORD_FILE", "one line"),
        ("postgresql+psycopg://u@h/db", b"two\nlines\n", "CREDITNET_DATABASE_PASSWORD_FILE", "one line"),
        ("postgresql+psycopg://u@h/db", b"\xff\xfe", "CREDITNET_DATABASE_PASSWORD_FILE", "UTF-8"),
    ],
)
def test_bad_password_files(
    node_env: dict[str, str], files: dict[str, Path], url: str, content: bytes, variable: str, fragment: str
) -> None:
    files["password"].write_bytes(content)
    env = {**node_env, "DATABASE_URL": url, "CREDITNET_DATABASE_PASSWORD_FILE": str(files["password"])}
    with pytest.raises(SettingsError) as exc:
        NodeSettings.from_env(env)
    found = problems_of(exc)
    assert list(found) == [variable]
    assert fragment in found[variable]
    assert "inline" not in str(exc.value) and "secret" not in str(exc.value)


# --- the aggregator -------------------------------------------------------------


def test_aggregator_settings_and_config(aggregator_env: dict[str, str], files: dict[str, Path]) -> None:
    s = AggregatorSettings.from_env(aggregator_env)
    assert s.nodes == {pilot.HEFEI: "node-340100:7443", pilot.NANJING: "[fd00::1]:7443"}
    assert s.server.listen == "0.0.0.0:7400"
    assert s.default_timeout == 10.0
    assert (s.log_cert, s.log_key) == (None, None)
    config = s.to_config()
    assert config.nodes == s.nodes
    assert config.state_dir == Path(aggregator_env["CREDITNET_STATE_DIR"])
    assert (config.listen, config.cert, config.ca) == ("0.0.0.0:7400", files["cert.pem"], files["ca.pem"])

    with_keys = {
        **aggregator_env,
        "CREDITNET_LOG_CERT": str(files["logkey.pem"]),
        "CREDITNET_LOG_KEY": str(files["logkey.key"]),
        "CREDITNET_DEFAULT_TIMEOUT": "2500ms",
    }
    s = AggregatorSettings.from_env(with_keys)
    assert (s.to_config().log_cert, s.to_config().log_key) == (files["logkey.pem"], files["logkey.key"])
    assert s.default_timeout == 2.5


def test_aggregator_replicas_take_one_database_url_with_its_password_file(
    aggregator_env: dict[str, str], files: dict[str, Path]
) -> None:
    # Alone: no URL, the state directory's SQLite file (the config says None).
    assert AggregatorSettings.from_env(aggregator_env).to_config().database_url is None
    files["password"].write_bytes(b"hunter2\n")
    env = {
        **aggregator_env,
        "DATABASE_URL": "postgresql+psycopg://creditnet@db-national:5432/creditnet",
        "CREDITNET_DATABASE_PASSWORD_FILE": str(files["password"]),
    }
    url = make_url(AggregatorSettings.from_env(env).to_config().database_url or "")
    assert (url.host, url.password) == ("db-national", "hunter2")
    # A password file with no URL to put it in is a mistake, named.
    without_url = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    with pytest.raises(SettingsError) as exc:
        AggregatorSettings.from_env(without_url)
    assert list(problems_of(exc)) == ["CREDITNET_DATABASE_PASSWORD_FILE"]
    assert "hunter2" not in str(exc.value)


def test_aggregator_log_key_needs_both_files(aggregator_env: dict[str, str], files: dict[str, Path]) -> None:
    with pytest.raises(SettingsError) as exc:
        AggregatorSettings.from_env({**aggregator_env, "CREDITNET_LOG_CERT": str(files["logkey.pem"])})
    assert problems_of(exc) == {"CREDITNET_LOG_KEY": "must be set together with CREDITNET_LOG_CERT"}


@pytest.mark.parametrize(
    ("changes", "variable", "fragment"),
    [
        ({"CREDITNET_NODES": "340100=a:1, 340100=b:2"}, "CREDITNET_NODES", "listed twice"),
        ({"CREDITNET_NODES": "340100"}, "CREDITNET_NODES", "CITY=HOST:PORT"),
        ({"CREDITNET_NODES": " , "}, "CREDITNET_NODES", "at least one"),
        ({"CREDITNET_NODES": "340100=fd00::1:7443"}, "CREDITNET_NODES", "brackets"),
        ({"CREDITNET_DEFAULT_TIMEOUT": "0s"}, "CREDITNET_DEFAULT_TIMEOUT", "more than 0"),
    ],
)
def test_bad_aggregator_values(
    aggregator_env: dict[str, str], changes: dict[str, str], variable: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as exc:
        AggregatorSettings.from_env({**aggregator_env, **changes})
    found = problems_of(exc)
    assert list(found) == [variable]
    assert fragment in found[variable]


def test_state_dir_under_a_file_is_refused(aggregator_env: dict[str, str], files: dict[str, Path]) -> None:
    env = {**aggregator_env, "CREDITNET_STATE_DIR": str(files["ca.pem"] / "state")}
    with pytest.raises(SettingsError) as exc:
        AggregatorSettings.from_env(env)
    assert problems_of(exc) == {"CREDITNET_STATE_DIR": f"{files['ca.pem']} is not a directory"}


# --- single values --------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["node-340100:7443", "10.1.2.3:1", "[::1]:65535", "a.b.example:80", "0.0.0.0:7443"]
)
def test_good_endpoints(text: str) -> None:
    assert settings.parse_endpoint(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "node",
        ":7443",
        "host:0",
        "host:65536",
        "host:x",
        "::1:7443",
        "[nothost]:1",
        "ho st:1",
        "-a:1",
        "a_b:1",
    ],
)
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        settings.parse_endpoint(text)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("600/min", Rate(600, 60.0)), ("20/s", Rate(20, 1.0)), ("5000 / h", Rate(5000, 3600.0)), ("OFF", None)],
)
def test_rates(text: str, rate: Rate | None) -> None:
    assert settings.parse_rate(text) == rate


def test_rate_per_second() -> None:
    assert Rate(600, 60.0).per_second == 10.0


@pytest.mark.parametrize(("text", "seconds"), [("10", 10.0), ("2.5s", 2.5), ("500ms", 0.5), ("1m", 60.0)])
def test_durations(text: str, seconds: float) -> None:
    assert settings.parse_duration(text) == seconds


# --- typos and documentation ----------------------------------------------------


def test_unknown_variables_name_the_likely_intent() -> None:
    env = {
        "CREDITNET_LISTN": "0.0.0.0:1",
        "CREDITNET_RATE_LIMIT_PER_BANKS": "1/s",
        "CREDITNET_SOMETHING_ELSE": "x",
        # Kubernetes service links for a Service named creditnet-aggregator:
        "CREDITNET_AGGREGATOR_SERVICE_HOST": "10.0.0.1",
        "CREDITNET_AGGREGATOR_SERVICE_PORT_GRPC": "7400",
        "CREDITNET_AGGREGATOR_PORT": "tcp://10.0.0.1:7400",
        "CREDITNET_AGGREGATOR_PORT_7400_TCP_ADDR": "10.0.0.1",
        "CREDITNET_CITY": "340100",
        "PATH": "/usr/bin",
    }
    assert settings.unknown_variables(env) == [
        "CREDITNET_LISTN is not a creditnet setting and is ignored; did you mean CREDITNET_LISTEN?",
        "CREDITNET_RATE_LIMIT_PER_BANKS is not a creditnet setting and is ignored; "
        "did you mean CREDITNET_RATE_LIMIT_PER_BANK?",
        "CREDITNET_SOMETHING_ELSE is not a creditnet setting and is ignored",
    ]


def test_the_documented_table_is_the_declared_one() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{DOC} must hold the table markers once"
    documented = text.split(BEGIN)[1].split(END)[0].strip("\n") + "\n"
    assert documented == settings.settings_table(), (
        "docs/deployment.md is out of date: put the output of `python -m creditnet.settings` "
        "between the markers"
    )


def test_the_table_lists_every_variable_once() -> None:
    table = settings.settings_table()
    names = re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.M)
    declared = {v.name for v in (*settings.NODE_VARIABLES, *settings.AGGREGATOR_VARIABLES)}
    assert sorted(names) == sorted(declared)
    row = next(line for line in table.splitlines() if line.startswith("| `CREDITNET_LISTEN`"))
    assert "node: `0.0.0.0:7443`<br>aggregator: `0.0.0.0:7400`" in row
    assert all(line.count(" | ") == 4 for line in table.splitlines()), "a cell holds an unescaped |"
