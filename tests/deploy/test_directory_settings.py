"""The network directory from the environment: CREDITNET_DIRECTORY_*, checked and run for real."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from creditnet import pilot
from creditnet.chain.keys import LogKey
from creditnet.channels import secure_channel
from creditnet.config import DirectoryConfig
from creditnet.directory.model import Directory, Policy
from creditnet.directory.provision import init_directory
from creditnet.network import free_port
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.settings import AggregatorSettings, NodeSettings, SettingsError
from creditnet.v2 import directory_service_pb2 as dpb
from creditnet.v2 import directory_service_pb2_grpc as dpb_grpc

ANCHOR = "CREDITNET_DIRECTORY_ANCHOR"
BOOTSTRAP = "CREDITNET_DIRECTORY_BOOTSTRAP"
STATE = "CREDITNET_DIRECTORY_STATE"


@dataclass
class Network:
    """A CA, a signed first directory and the identities of a node and the aggregator."""

    root: Path
    ca: CertificateAuthority
    anchor: str
    bootstrap: Path

    def server_env(self, name: str, role: Role) -> dict[str, str]:
        identity = issue_identity(self.ca, role)
        identity.save(self.root / f"{name}.pem", self.root / f"{name}.key")
        return {
            "CREDITNET_CERT": str(self.root / f"{name}.pem"),
            "CREDITNET_KEY": str(self.root / f"{name}.key"),
            "CREDITNET_CA": str(self.root / "ca" / "ca.pem"),
        }


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    root = tmp_path_factory.mktemp("directory-env")
    ca = CertificateAuthority.create("directory settings test CA")
    ca.save(root / "ca")
    made = init_directory(
        ca,
        root / "governance",
        codes=["340100", "320100"],
        endpoints={},
        aggregator_endpoint=None,
        governance=["gov-1", "gov-2"],
        threshold=2,
        policy=Policy(),
    )
    return Network(root, ca, made.anchor, made.file)


def node_env(network: Network, tmp_path: Path) -> dict[str, str]:
    LogKey.issue(network.ca, "340100").save(tmp_path / "logkey.pem", tmp_path / "logkey.key")
    return {
        **network.server_env("340100-node", Role.node(pilot.HEFEI)),
        "CREDITNET_CITY": "340100",
        "CREDITNET_LISTEN": f"127.0.0.1:{free_port()}",
        "CREDITNET_LOG_CERT": str(tmp_path / "logkey.pem"),
        "CREDITNET_LOG_KEY": str(tmp_path / "logkey.key"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'node.db'}",
        "CREDITNET_QUORUM": "0",
        ANCHOR: network.anchor,
        BOOTSTRAP: str(network.bootstrap),
        STATE: str(tmp_path / "state" / "directory.binpb"),
    }


def aggregator_env(network: Network, tmp_path: Path) -> dict[str, str]:
    return {
        **network.server_env("aggregator", Role.aggregator()),
        "CREDITNET_LISTEN": f"127.0.0.1:{free_port()}",
        "CREDITNET_NODES": "340100=127.0.0.1:9",
        "CREDITNET_STATE_DIR": str(tmp_path / "agg"),
        ANCHOR: network.anchor.upper(),
        BOOTSTRAP: str(network.bootstrap),
        STATE: str(tmp_path / "agg" / "directory.binpb"),
    }


def problems(env: dict[str, str], reader: type[NodeSettings] | type[AggregatorSettings]) -> dict[str, str]:
    with pytest.raises(SettingsError) as exc:
        reader.from_env(env)
    return dict(exc.value.problems)


def test_the_three_variables_become_the_servers_directory_config(network: Network, tmp_path: Path) -> None:
    env = node_env(network, tmp_path)
    expected = DirectoryConfig(
        state=tmp_path / "state" / "directory.binpb", anchor=network.anchor, bootstrap=network.bootstrap
    )
    node = NodeSettings.from_env(env)
    assert node.directory == expected and node.to_config().directory == expected
    agg = AggregatorSettings.from_env(aggregator_env(network, tmp_path))
    assert agg.directory is not None and agg.directory.anchor == network.anchor  # upper case accepted
    assert agg.to_config().directory == agg.directory


def test_without_them_a_server_has_no_directory(network: Network, tmp_path: Path) -> None:
    env = {k: v for k, v in node_env(network, tmp_path).items() if not k.startswith("CREDITNET_DIRECTORY_")}
    assert NodeSettings.from_env(env).directory is None


@pytest.mark.parametrize(
    "anchor",
    ["abc", "z" * 64, "0" * 63, "0" * 65, "sha256:" + "0" * 64],
)
def test_a_malformed_anchor_is_named(network: Network, tmp_path: Path, anchor: str) -> None:
    found = problems({**node_env(network, tmp_path), ANCHOR: anchor}, NodeSettings)
    assert set(found) == {ANCHOR}
    assert "64 hex digits" in found[ANCHOR]


def test_an_anchor_that_is_not_the_bootstraps_is_named_under_the_bootstrap(
    network: Network, tmp_path: Path
) -> None:
    found = problems({**node_env(network, tmp_path), ANCHOR: "ab" * 32}, NodeSettings)
    assert set(found) == {BOOTSTRAP}
    assert "directory.anchor" in found[BOOTSTRAP] and ANCHOR in found[BOOTSTRAP]


def test_a_missing_bootstrap_file_is_named(network: Network, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "directory.json"
    for reader, env in (
        (NodeSettings, node_env(network, tmp_path)),
        (AggregatorSettings, aggregator_env(network, tmp_path)),
    ):
        found = problems({**env, BOOTSTRAP: str(missing)}, reader)
        assert set(found) == {BOOTSTRAP}
        assert str(missing) in found[BOOTSTRAP] and "does not exist" in found[BOOTSTRAP]


def test_a_bootstrap_that_is_not_a_signed_directory_is_named(network: Network, tmp_path: Path) -> None:
    garbage = tmp_path / "directory.json"
    garbage.write_text('{"payload": "not base64!"}')
    found = problems({**node_env(network, tmp_path), BOOTSTRAP: str(garbage)}, NodeSettings)
    assert set(found) == {BOOTSTRAP} and "not a signed network directory" in found[BOOTSTRAP]


@pytest.mark.parametrize("given", [ANCHOR, BOOTSTRAP, STATE])
def test_one_without_the_others_names_the_missing_ones(network: Network, tmp_path: Path, given: str) -> None:
    env = node_env(network, tmp_path)
    for name in (ANCHOR, BOOTSTRAP, STATE):
        if name != given:
            del env[name]
    found = problems(env, NodeSettings)
    assert set(found) == {ANCHOR, BOOTSTRAP, STATE} - {given}
    assert all(f"set together with {given}" in p for p in found.values())


def test_a_state_file_where_it_cannot_be_written_is_named(network: Network, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for state in (a_file / "directory.binpb", tmp_path):
        found = problems({**node_env(network, tmp_path), STATE: str(state)}, NodeSettings)
        assert set(found) == {STATE}, state


async def test_a_node_run_from_the_environment_serves_the_pinned_directory(
    network: Network, tmp_path: Path
) -> None:
    """`creditnet node run` as in a container, with the directory variables: it serves the directory."""
    import asyncio
    import signal

    env = node_env(network, tmp_path)
    keep = {k: v for k, v in os.environ.items() if not k.startswith("CREDITNET_") and k != "DATABASE_URL"}
    cli = [sys.executable, "-m", "creditnet"]
    migrate = await asyncio.create_subprocess_exec(*cli, "node", "migrate", env={**keep, **env})
    assert await migrate.wait() == 0
    proc = await asyncio.create_subprocess_exec(
        *cli, "node", "run", env={**keep, **env}, stderr=asyncio.subprocess.PIPE
    )
    caller = issue_identity(network.ca, Role.bank("B0310H231000001"))
    trust = TrustStore(network.ca.cert)
    got: Directory | None = None
    try:
        for _ in range(150):
            async with secure_channel(env["CREDITNET_LISTEN"], caller, trust, "340100.node.creditnet") as ch:
                try:
                    answer = await dpb_grpc.DirectoryServiceStub(ch).GetDirectory(
                        dpb.GetDirectoryRequest(), timeout=2
                    )
                except Exception:
                    await asyncio.sleep(0.2)
                    continue
            got = Directory.from_payload(answer.directory.payload)
            break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert got is not None, stderr.decode()[-2000:]
    assert got.version == 1 and {c.code for c in got.cities} == {"340100", "320100"}
    # It kept the directory in its state file, as the variable said.
    assert Path(env[STATE]).is_file()


async def test_node_run_refuses_to_start_with_a_bootstrap_the_anchor_does_not_pin(
    network: Network, tmp_path: Path
) -> None:
    import asyncio

    env = {**node_env(network, tmp_path), ANCHOR: "cd" * 32}
    keep = {k: v for k, v in os.environ.items() if not k.startswith("CREDITNET_") and k != "DATABASE_URL"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "creditnet", "node", "run", env={**keep, **env}, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    said = " ".join(stderr.decode().split())
    assert proc.returncode == 2, said
    assert BOOTSTRAP in said and "directory.anchor" in said
    assert not Path(env[STATE]).exists()
