"""deploy/healthcheck.py, run as the image runs it, against a real mutual-TLS server."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import pytest_asyncio

from creditnet import pilot
from creditnet.pki import CertificateAuthority, Role, issue_identity
from creditnet.rpc import ServerHandle, start_server

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("creditnet_deploy_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Pki:
    ca: CertificateAuthority
    root: Path

    def identity(self, name: str, role: Role) -> dict[str, str]:
        """The variables a server with this role's identity runs with."""
        identity = issue_identity(self.ca, role)
        identity.save(self.root / f"{name}.pem", self.root / f"{name}.key")
        return {
            "CREDITNET_CERT": str(self.root / f"{name}.pem"),
            "CREDITNET_KEY": str(self.root / f"{name}.key"),
            "CREDITNET_CA": str(self.root / "ca.pem"),
        }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("healthcheck test CA")
    ca.save(root)
    return Pki(ca, root)


@pytest_asyncio.fixture
async def node_server(pki: Pki) -> AsyncIterator[tuple[ServerHandle, dict[str, str]]]:
    env = pki.identity("340100-node", Role.node(pilot.HEFEI))
    from creditnet.pki import Identity, TrustStore

    handle = await start_server(
        listen="127.0.0.1:0",
        identity=Identity.load(Path(env["CREDITNET_CERT"]), Path(env["CREDITNET_KEY"])),
        trust=TrustStore.load(Path(env["CREDITNET_CA"])),
        register=lambda server: None,
        service_names=[],
    )
    try:
        yield handle, {**env, "CREDITNET_LISTEN": f"127.0.0.1:{handle.port}"}
    finally:
        await handle.server.stop(None)


async def run_check(env: dict[str, str]) -> tuple[int, str, str]:
    """Run the script in a fresh interpreter, as Docker's HEALTHCHECK does."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("CREDITNET_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--timeout",
        "5",
        env={**keep, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_serving_node_passes(node_server: tuple[ServerHandle, dict[str, str]]) -> None:
    _, env = node_server
    code, out, err = await run_check(env)
    assert (code, out.strip()) == (0, "SERVING"), err


async def test_a_wildcard_listen_address_is_reached_on_loopback(
    node_server: tuple[ServerHandle, dict[str, str]],
) -> None:
    handle, env = node_server
    code, _, err = await run_check({**env, "CREDITNET_LISTEN": f"0.0.0.0:{handle.port}"})
    assert code == 0, err


async def test_a_draining_node_fails(node_server: tuple[ServerHandle, dict[str, str]]) -> None:
    handle, env = node_server
    await handle.health.enter_graceful_shutdown()
    code, _, err = await run_check(env)
    assert code == 1
    assert "NOT_SERVING" in err


async def test_another_servers_certificate_does_not_pass(
    pki: Pki, node_server: tuple[ServerHandle, dict[str, str]]
) -> None:
    """The check pins the TLS name of its own role: a node answering an aggregator's check fails it."""
    _, env = node_server
    aggregator = pki.identity("aggregator", Role.aggregator())
    code, _, err = await run_check({**aggregator, "CREDITNET_LISTEN": env["CREDITNET_LISTEN"]})
    assert code == 1
    assert "unhealthy: UNAVAILABLE" in err


async def test_nothing_listening_fails(pki: Pki) -> None:
    env = {**pki.identity("320100-node", Role.node(pilot.NANJING)), "CREDITNET_LISTEN": "127.0.0.1:9"}
    code, _, err = await run_check(env)
    assert code == 1
    assert "unhealthy: UNAVAILABLE" in err


async def test_a_client_certificate_is_refused_as_a_server_identity(pki: Pki) -> None:
    env = pki.identity("bank", Role.bank("B0310H231000001"))
    code, _, err = await run_check(env)
    assert code == 1
    assert "is a bank certificate, not a server's" in err


async def test_missing_files_are_named(pki: Pki, tmp_path: Path) -> None:
    env = {
        **pki.identity("330100-node", Role.node(pilot.HANGZHOU)),
        "CREDITNET_KEY": str(tmp_path / "none.key"),
    }
    code, _, err = await run_check(env)
    assert code == 1
    assert "CREDITNET_KEY:" in err and "none.key does not exist" in err


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        ("0.0.0.0:7443", "127.0.0.1:7443"),
        ("[::]:7400", "127.0.0.1:7400"),
        ("10.0.0.7:7443", "10.0.0.7:7443"),
        ("node-340100:7443", "node-340100:7443"),
    ],
)
def test_target(listen: str, target: str) -> None:
    assert load_script().target(listen) == target


async def test_a_node_started_from_its_environment_passes(pki: Pki, tmp_path: Path) -> None:
    """Variables → NodeSettings → NodeConfig → a running node that the image's check finds serving."""
    from creditnet.chain.keys import LogKey
    from creditnet.network import free_port
    from creditnet.node.server import start_node
    from creditnet.settings import NodeSettings
    from creditnet.store import Store

    LogKey.issue(pki.ca, "330400").save(tmp_path / "logkey.pem", tmp_path / "logkey.key")
    env = {
        **pki.identity("330400-node", Role.node(pilot.JIAXING)),
        "CREDITNET_CITY": "330400",
        "CREDITNET_LISTEN": f"127.0.0.1:{free_port()}",
        "CREDITNET_LOG_CERT": str(tmp_path / "logkey.pem"),
        "CREDITNET_LOG_KEY": str(tmp_path / "logkey.key"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'node.db'}",
        "CREDITNET_QUORUM": "0",
    }
    Store.open(env["DATABASE_URL"], migrate=True).close()
    node = await start_node(NodeSettings.from_env(env).to_config())
    try:
        assert env["CREDITNET_LISTEN"].endswith(f":{node.port}")
        code, out, err = await run_check(env)
        assert (code, out.strip()) == (0, "SERVING"), err
    finally:
        await node.stop(grace=0)


async def test_an_aggregator_started_from_its_environment_passes(pki: Pki, tmp_path: Path) -> None:
    from creditnet.aggregator.server import start_aggregator
    from creditnet.network import free_port
    from creditnet.settings import AggregatorSettings

    env = {
        **pki.identity("aggregator-env", Role.aggregator()),
        "CREDITNET_LISTEN": f"127.0.0.1:{free_port()}",
        "CREDITNET_NODES": "340100=127.0.0.1:9,320100=127.0.0.1:9",
        "CREDITNET_STATE_DIR": str(tmp_path / "state"),
    }
    aggregator = await start_aggregator(AggregatorSettings.from_env(env).to_config())
    try:
        code, out, err = await run_check(env)
        assert (code, out.strip()) == (0, "SERVING"), err
    finally:
        await aggregator.stop(grace=0)


async def test_node_run_serves_from_the_environment_as_in_a_container(pki: Pki, tmp_path: Path) -> None:
    """`creditnet node run` with no --config: migrate, then serve with metrics, a probe port and JSON logs."""
    import json
    import signal
    import urllib.request

    from creditnet.chain.keys import LogKey
    from creditnet.network import free_port

    LogKey.issue(pki.ca, "340100").save(tmp_path / "logkey.pem", tmp_path / "logkey.key")
    metrics, probe = free_port(), free_port()
    env = {
        **pki.identity("340100-env", Role.node(pilot.HEFEI)),
        "CREDITNET_CITY": "340100",
        "CREDITNET_LISTEN": f"127.0.0.1:{free_port()}",
        "CREDITNET_HEALTH_LISTEN": f"127.0.0.1:{probe}",
        "CREDITNET_METRICS_PORT": str(metrics),
        "CREDITNET_LOG_CERT": str(tmp_path / "logkey.pem"),
        "CREDITNET_LOG_KEY": str(tmp_path / "logkey.key"),
        "CREDITNET_LOG_FORMAT": "json",
        "CREDITNET_QUORUM": "0",
        "CREDITNET_LISTN": "typo",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'node.db'}",
    }
    keep = {k: v for k, v in os.environ.items() if not k.startswith("CREDITNET_")}
    cli = [sys.executable, "-m", "creditnet"]
    migrate = await asyncio.create_subprocess_exec(*cli, "node", "migrate", env={**keep, **env})
    assert await migrate.wait() == 0
    proc = await asyncio.create_subprocess_exec(
        *cli, "node", "run", env={**keep, **env}, stderr=asyncio.subprocess.PIPE
    )
    try:
        for _ in range(100):
            code, out, _err = await run_check(env)
            if code == 0:
                break
            await asyncio.sleep(0.1)
        assert out.strip() == "SERVING"
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        )
        assert "creditnet_chain_size" in page and "grpc_server_started_total" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any(
        "CREDITNET_LISTN" in line["message"] and "CREDITNET_LISTEN" in line["message"] for line in lines
    )
    assert all(line.get("service") == "node" and line.get("city") == "340100" for line in lines)


async def test_node_run_names_every_bad_variable_and_does_not_start(tmp_path: Path) -> None:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("CREDITNET_") and k != "DATABASE_URL"}
    env = {**keep, "CREDITNET_CITY": "suzhou", "CREDITNET_QUORUM": "many", "DATABASE_URL": "sqlite:///x.db"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "creditnet",
        "node",
        "run",
        env=env,
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    said = " ".join(stderr.decode().split())
    assert proc.returncode == 2
    assert "CREDITNET_CITY" in said and "CREDITNET_QUORUM" in said
    assert not (tmp_path / "x.db").exists()
