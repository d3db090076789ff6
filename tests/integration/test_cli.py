"""The command line end to end, through real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creditnet import pilot
from creditnet.domain import Category

CLI = [sys.executable, "-m", "creditnet"]
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def run(*args: str, check: int | None = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    if check is not None:
        assert proc.returncode == check, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["pki"],
        ["node"],
        ["aggregator"],
        ["network"],
        ["consent"],
        ["data"],
        ["provider"],
        ["chain"],
        ["node", "run"],
        ["node", "migrate"],
        ["aggregator", "run"],
        ["query"],
        ["demo"],
        ["node", "ingest"],
        ["consent", "grant"],
        ["network", "up"],
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    proc = run(*command, "--help")
    assert "Usage" in proc.stdout


def test_operator_and_enterprise_workflow(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    run("pki", "init", "--ca-dir", str(ca))
    run("pki", "init", "--ca-dir", str(ca), check=1)  # never overwrites a CA
    node = tmp_path / "340100"
    run("node", "init", "--city", "340100", "--dir", str(node), "--ca-dir", str(ca))
    shown = json.loads(run("pki", "show", str(node / "node.pem"), "--json").stdout)
    assert shown["role"] == "creditnet://node/340100"

    data = tmp_path / "340100.jsonl"
    run("data", "generate", "--out", str(data), "--enterprises", "15", "--seed", "3", "--city", "340100")
    rows = data.read_text(encoding="utf-8").count("\n")
    assert rows > 0
    # The city's data provider signs what the operator loads (protocol.md, "Records signed at their source").
    provider = tmp_path / "exchange"
    categories = ",".join(c.value for c in Category)
    run(
        *("pki", "issue", "--ca-dir", str(ca), "--role", "provider", "--city", "340100"),
        *("--provider-id", "exchange", "--categories", categories, "--out", str(provider)),
    )
    signer = (
        "--provider-cert",
        str(provider.with_suffix(".pem")),
        "--provider-key",
        str(provider.with_suffix(".key")),
    )
    first = json.loads(
        run("node", "ingest", str(data), "--config", str(node / "node.json"), "--json", *signer).stdout
    )
    assert first["accepted"] == rows and first["rejected"] == 0
    again = json.loads(
        run("node", "ingest", str(data), "--config", str(node / "node.json"), "--json", *signer).stdout
    )
    assert (again["accepted"], again["duplicates"]) == (0, rows)
    stats = json.loads(run("node", "stats", "--config", str(node / "node.json"), "--json").stdout)
    assert stats["records"] == rows

    # A file with one broken line and one invalid record: the rest is stored, exit code 3.
    lines = data.read_text(encoding="utf-8").splitlines()
    bad_record = json.loads(lines[0])
    bad_record["record_id"] = "new-row-bad-uscc"
    bad_record["enterprise_uscc"] = "91340100ABCDEFGHI0"
    good_record = json.loads(lines[1])
    good_record["record_id"] = "new-row-good"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        "\n".join([json.dumps(good_record, ensure_ascii=False), "{not json", json.dumps(bad_record)]) + "\n"
    )
    out = run("node", "ingest", str(mixed), "--config", str(node / "node.json"), "--json", *signer, check=3)
    summary = json.loads(out.stdout)
    assert (summary["accepted"], summary["rejected"]) == (1, 2)
    assert [r["line"] for r in summary["rejections"]] == [2, 3]

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(2048))
    proc = run("node", "ingest", str(garbage), "--config", str(node / "node.json"), *signer, check=None)
    assert proc.returncode != 0 and "error" in proc.stderr
    assert (
        json.loads(run("node", "stats", "--config", str(node / "node.json"), "--json").stdout)["records"]
        == rows + 1
    )

    ent = tmp_path / "ent"
    run(
        "pki",
        "issue",
        "--ca-dir",
        str(ca),
        "--role",
        "enterprise",
        "--uscc",
        "91310000MA1FL8XQ37",
        "--out",
        str(ent),
    )
    consent_file = tmp_path / "c.json"
    run(
        "consent",
        "grant",
        "--bank",
        "B0310H231000001",
        "--purpose",
        "loan_application",
        "--categories",
        "tax,utility",
        "--cert",
        str(ent) + ".pem",
        "--key",
        str(ent) + ".key",
        "--out",
        str(consent_file),
        "--max-uses",
        "3",
    )
    info = json.loads(run("consent", "show", str(consent_file), "--ca", str(ca / "ca.pem"), "--json").stdout)
    assert info["categories"] == ["utility", "tax"] and info["signature_verified"] and info["max_uses"] == 3
    bad = run(
        "consent",
        "grant",
        "--bank",
        "B1",
        "--purpose",
        "gambling",
        "--cert",
        str(ent) + ".pem",
        "--key",
        str(ent) + ".key",
        "--out",
        str(tmp_path / "x.json"),
        check=2,
    )
    assert "purpose" in bad.stderr


@pytest.mark.slow
def test_network_up_query_status_revoke(tmp_path: Path) -> None:
    state = tmp_path / "net"
    up = subprocess.Popen(
        [*CLI, "network", "up", "--state-dir", str(state), "--enterprises", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (state / "network.json").exists() and run(
                "network", "status", "--network", str(state), "--json", check=None
            ).returncode == 0:
                break
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            time.sleep(0.5)
        net = json.loads((state / "network.json").read_text())
        assert set(net["cities"]) == {"310000", "320100", "330100", "340100", "330400"}
        assert set(net["identities"]) >= {"banks", "enterprises", "operators", "nodes", "aggregator"}
        status = json.loads(run("network", "status", "--network", str(state), "--json").stdout)
        assert [n["health"] for n in status["nodes"]] == ["serving"] * 5

        uscc = net["demo"]["enterprise"]
        ent = net["identities"]["enterprises"][uscc]
        consent_file = tmp_path / "consent.json"
        run(
            "consent",
            "grant",
            "--bank",
            net["demo"]["bank"],
            "--purpose",
            "loan_application",
            "--cert",
            str(state / ent["cert"]),
            "--key",
            str(state / ent["key"]),
            "--out",
            str(consent_file),
        )
        report = json.loads(
            run(
                "query",
                "--network",
                str(state),
                "--uscc",
                uscc,
                "--consent",
                str(consent_file),
                "--purpose",
                "loan_application",
                "--json",
            ).stdout
        )
        assert [s["status"] for s in report["sections"]].count("ok") >= 3
        assert report["profile"]["uscc"] == uscc
        # `network up` routes: each city asked or not, and why.
        reasons = {"registration", "holds_records", "asked_for", "not_asked"}
        assert {s["routing"] for s in report["sections"]} <= reasons
        assert all(s["asked"] == (s["status"] != "not_asked") for s in report["sections"])
        # Every city of the scope (the directory's five members) is accounted for, nothing else.
        assert len(report["scope"]) == 5 and report["scope"] == [s["city"] for s in report["sections"]]
        assert report["missing_cities"] == report["unexpected_cities"] == []
        everyone = json.loads(
            run(
                "query",
                "--network",
                str(state),
                "--uscc",
                uscc,
                "--consent",
                str(consent_file),
                "--purpose",
                "loan_application",
                "--exhaustive",
                "--json",
            ).stdout
        )
        assert len(everyone["sections"]) == 5 and all(s["asked"] for s in everyone["sections"])
        assert {s["status"] for s in everyone["sections"]} <= {"ok", "no_records"}
        human = run(
            "query",
            "--network",
            str(state),
            "--uscc",
            uscc,
            "--consent",
            str(consent_file),
            "--purpose",
            "loan_application",
        ).stdout
        assert "key indicators" in human and "per-city answers" in human

        refused = run(
            "query",
            "--network",
            str(state),
            "--uscc",
            uscc,
            "--consent",
            str(consent_file),
            "--purpose",
            "guarantee",
            check=1,
        )
        assert "consent.purpose_mismatch" in refused.stderr

        run(
            "consent",
            "revoke",
            "--consent",
            str(consent_file),
            "--cert",
            str(state / ent["cert"]),
            "--key",
            str(state / ent["key"]),
            "--out",
            str(tmp_path / "rev.json"),
            "--aggregator",
            net["aggregator"]["endpoint"],
            "--ca",
            str(state / net["ca"]),
        )
        refused = run(
            "query",
            "--network",
            str(state),
            "--uscc",
            uscc,
            "--consent",
            str(consent_file),
            "--purpose",
            "loan_application",
            check=1,
        )
        assert "consent.revoked" in refused.stderr
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0


def children(parent: int) -> dict[int, str]:
    """The processes whose parent is `parent`, with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        # The command name in parentheses may hold spaces: the fields after it are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found[int(entry.name)] = cmdline
    return found


def node_process(up: subprocess.Popen[str], city: str) -> int | None:
    config = f"{os.sep}{city}{os.sep}node.json"
    return next((pid for pid, cmd in children(up.pid).items() if "node run" in cmd and config in cmd), None)


@pytest.mark.slow
def test_network_up_restarts_a_node_that_was_killed(tmp_path: Path) -> None:
    from creditnet.health import wait_serving
    from creditnet.network import NetworkLayout
    from creditnet.pki import node_server_name

    state = tmp_path / "net"
    up = subprocess.Popen(
        [*CLI, "network", "up", "--state-dir", str(state), "--enterprises", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (state / "network.json").exists() and run(
                "network", "status", "--network", str(state), "--json", check=None
            ).returncode == 0:
                break
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            time.sleep(0.5)
        layout = NetworkLayout.load(state)
        victim = node_process(up, "340100")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (again := node_process(up, "340100")) in (None, victim) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert again not in (None, victim)
        # The new process serves the city, with its data and chain as they were.
        operator = layout.identity("operators", "340100")
        asyncio.run(
            wait_serving(
                layout.node_endpoint(pilot.HEFEI),
                node_server_name(pilot.HEFEI),
                operator,
                layout.ca,
                timeout=60,
            )
        )
        status = json.loads(run("network", "status", "--network", str(state), "--json").stdout)
        assert [n["health"] for n in status["nodes"]] == ["serving"] * 5
        assert up.poll() is None
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    output = up.stdout.read() if up.stdout else ""
    assert "340100 stopped unexpectedly (exit -9); restarted it" in output, output
    assert up.returncode == 0


def aggregator_process(up: subprocess.Popen[str], config: str) -> int | None:
    return next(
        (
            pid
            for pid, cmd in children(up.pid).items()
            if "aggregator run" in cmd and cmd.strip().endswith(config)
        ),
        None,
    )


@pytest.mark.slow
def test_network_up_runs_aggregator_replicas_and_a_bank_is_answered_when_one_is_killed(
    tmp_path: Path,
) -> None:
    state = tmp_path / "net"
    up = subprocess.Popen(
        [
            *CLI,
            "network",
            "up",
            "--state-dir",
            str(state),
            "--enterprises",
            "5",
            "--aggregator-replicas",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (state / "network.json").exists() and run(
                "network", "status", "--network", str(state), "--json", check=None
            ).returncode == 0:
                break
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            time.sleep(0.5)
        net = json.loads((state / "network.json").read_text())
        endpoints = net["aggregator"]["endpoints"]
        assert len(endpoints) == 2 and len(set(endpoints)) == 2
        uscc = net["demo"]["enterprise"]
        ent = net["identities"]["enterprises"][uscc]
        consent_file = tmp_path / "consent.json"
        run(
            *("consent", "grant", "--bank", net["demo"]["bank"], "--purpose", "loan_application"),
            *(
                "--cert",
                str(state / ent["cert"]),
                "--key",
                str(state / ent["key"]),
                "--out",
                str(consent_file),
            ),
        )
        query = (
            *("query", "--network", str(state), "--uscc", uscc, "--consent", str(consent_file)),
            *("--purpose", "loan_application", "--json"),
        )
        assert json.loads(run(*query).stdout)["missing_cities"] == []
        # The replica a bank asks first (network.json's first endpoint) dies: the bank is answered
        # by the other, and `network up` starts the dead one again.
        victim = aggregator_process(up, f"{os.sep}aggregator.json")
        assert victim is not None and aggregator_process(up, f"{os.sep}replica-1.json") is not None
        os.kill(victim, signal.SIGKILL)
        report = json.loads(run(*query).stdout)
        assert report["missing_cities"] == []
        assert all(s["status"] in ("ok", "no_records", "not_asked") for s in report["sections"]), report
        deadline = time.monotonic() + 60
        while aggregator_process(up, f"{os.sep}aggregator.json") in (None, victim):
            assert time.monotonic() < deadline, "the killed replica was not started again"
            time.sleep(0.2)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    output = up.stdout.read() if up.stdout else ""
    assert "2 aggregator replicas" in output and "aggregator 2" in output, output
    assert "aggregator stopped unexpectedly (exit -9); restarted it" in output, output
    # A network that exists keeps its aggregators: the option is for new networks only.
    again = run("network", "up", "--state-dir", str(state), "--aggregator-replicas", "3", check=2)
    assert "new networks only" in again.stdout + again.stderr
