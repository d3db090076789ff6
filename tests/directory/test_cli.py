"""`creditnet directory init | sign | verify | show | anchor` on files, with their exit codes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from creditnet import pilot
from creditnet.cli.main import app
from creditnet.directory.model import Directory
from creditnet.directory.sign import load, save, unsigned
from creditnet.pki import Identity

runner = CliRunner()


def cli(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def made(tmp_path: Path) -> Path:
    assert cli("pki", "init", "--ca-dir", tmp_path / "ca").exit_code == 0
    result = cli("directory", "init", "--ca-dir", tmp_path / "ca", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    return tmp_path


def test_init_makes_a_directory_of_the_five_pilot_cities_that_verifies_against_its_anchor(made: Path) -> None:
    d = made / "d"
    anchor = (d / "anchor.sha256").read_text().strip()
    assert cli("directory", "anchor", d / "directory.json").output.strip() == anchor
    ok = cli(
        "directory",
        "verify",
        d / "directory.json",
        "--ca",
        made / "ca" / "ca.pem",
        "--anchor",
        anchor,
        "--json",
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["version"] == 1
    shown = json.loads(cli("directory", "show", d / "directory.json", "--json").output)
    assert [c["code"] for c in shown["cities"]] == ["310000", "320100", "330100", "330400", "340100"]
    assert shown["governance"]["threshold"] == 2
    assert len(shown["signatures_by"]) == 2
    assert sorted(p.name for p in (d / "governance").iterdir()) == [
        "gov-1.key",
        "gov-1.pem",
        "gov-2.key",
        "gov-2.pem",
        "gov-3.key",
        "gov-3.pem",
    ]
    table = cli("directory", "show", d / "directory.json")
    assert table.exit_code == 0 and "Suzhou" not in table.output and "Jiaxing" in table.output


def test_init_refuses_to_overwrite_and_refuses_a_county_code(made: Path) -> None:
    again = cli("directory", "init", "--ca-dir", made / "ca", "--out", made / "d")
    assert again.exit_code == 1
    county = cli("directory", "init", "--ca-dir", made / "ca", "--out", made / "e", "--cities", "320582")
    assert county.exit_code == 1
    assert "division.not_city" in county.output


def test_a_newer_directory_signed_with_the_sign_command_verifies_and_an_unsigned_one_does_not(
    made: Path,
) -> None:
    d = made / "d"
    v1 = Directory.from_payload(load(d / "directory.json").payload)
    save(unsigned(dataclasses.replace(v1, version=2)), made / "v2.json")
    ca = made / "ca" / "ca.pem"
    refused = cli(
        "directory", "verify", made / "v2.json", "--ca", ca, "--trusted", d / "directory.json", "--json"
    )
    assert refused.exit_code == 1
    assert json.loads(refused.output)["rule"] == "directory.threshold"
    for name in ("gov-2", "gov-3"):
        signed = cli(
            "directory",
            "sign",
            made / "v2.json",
            "--cert",
            d / "governance" / f"{name}.pem",
            "--key",
            d / "governance" / f"{name}.key",
        )
        assert signed.exit_code == 0, signed.output
    ok = cli("directory", "verify", made / "v2.json", "--ca", ca, "--trusted", d / "directory.json")
    assert ok.exit_code == 0, ok.output
    back = cli("directory", "verify", d / "directory.json", "--ca", ca, "--trusted", made / "v2.json")
    assert back.exit_code == 1
    assert "directory.rollback" in back.output
    twice = cli(
        "directory",
        "sign",
        made / "v2.json",
        "--cert",
        d / "governance" / "gov-2.pem",
        "--key",
        d / "governance" / "gov-2.key",
    )
    assert twice.exit_code == 1
    gov = Identity.load(d / "governance" / "gov-1.pem", d / "governance" / "gov-1.key")
    assert gov.role.uri == "creditnet://governance/gov-1"


def test_verify_needs_exactly_one_of_anchor_or_trusted(made: Path) -> None:
    result = cli("directory", "verify", made / "d" / "directory.json", "--ca", made / "ca" / "ca.pem")
    assert result.exit_code == 2


def test_the_directory_command_has_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "creditnet", "directory", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("init", "show", "verify", "sign", "anchor"):
        assert command in out


def test_init_from_a_network_state_dir_takes_its_ca_and_endpoints(tmp_path: Path) -> None:
    from creditnet.network import NetworkLayout, provision

    layout: NetworkLayout = provision(tmp_path / "net", enterprises_per_city=5, seed=11)
    result = cli("directory", "init", "--network", tmp_path / "net", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("directory", "show", tmp_path / "d" / "directory.json", "--json").output)
    endpoints = {c["code"]: c["endpoints"] for c in shown["cities"]}
    assert endpoints["320100"] == [layout.node_endpoint(pilot.NANJING)]
    assert endpoints["310000"] == [layout.node_endpoint(pilot.SHANGHAI)]
    assert shown["aggregators"][0]["endpoints"] == [layout.aggregator_endpoint]
    anchor = (tmp_path / "d" / "anchor.sha256").read_text().strip()
    ok = cli("directory", "verify", tmp_path / "d" / "directory.json", "--ca", layout.ca, "--anchor", anchor)
    assert ok.exit_code == 0, ok.output


def test_a_governance_key_issued_with_pki_issue_can_sign(made: Path) -> None:
    issued = cli(
        "pki",
        "issue",
        "--ca-dir",
        made / "ca",
        "--role",
        "governance",
        "--code",
        "gov-9",
        "--out",
        made / "gov-9",
    )
    assert issued.exit_code == 0, issued.output
    signed = cli(
        "directory",
        "sign",
        made / "d" / "directory.json",
        "--cert",
        made / "gov-9.pem",
        "--key",
        made / "gov-9.key",
        "--out",
        made / "more.json",
    )
    assert signed.exit_code == 0, signed.output
    shown = json.loads(cli("directory", "show", made / "more.json", "--json").output)
    assert shown["signatures_by"][-1] == "creditnet://governance/gov-9"
