"""`creditnet node init` creates the schema; `creditnet node migrate` moves it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from creditnet.cli.main import app
from creditnet.store import Store, head_revision

# DATABASE_URL (which may name the test server) would override every node.json.
runner = CliRunner(env={"DATABASE_URL": None})


def cli(*args: str, code: int = 0) -> Result:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def said(result: Result) -> str:
    """The output as one line (the console wraps long lines)."""
    return " ".join(result.output.split())


@pytest.fixture
def node_json(db_url: str, tmp_path: Path) -> Path:
    node = tmp_path / "340100"
    cli("node", "init", "--city", "340100", "--dir", str(node), "--database-url", db_url, "--no-migrate")
    return node / "node.json"


def test_init_creates_the_schema_unless_told_not_to(db_url: str, tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    cli("node", "init", "--city", "340100", "--dir", a, "--database-url", db_url, "--no-migrate")
    assert Store.revision(db_url) is None
    shown = cli("node", "init", "--city", "340100", "--dir", b, "--database-url", db_url)
    assert f"database schema created: none → {head_revision()}" in said(shown)
    assert Store.revision(db_url) == head_revision()


def test_migrate_reports_current_to_head_and_the_node_tools_follow(node_json: Path) -> None:
    config = str(node_json)
    refused = cli("node", "stats", "--config", config, code=1)
    assert "`creditnet node migrate --config node.json`" in said(refused)

    first = json.loads(cli("node", "migrate", "--config", config, "--json").stdout)
    assert first == {"before": None, "after": head_revision(), "head": head_revision()}
    assert json.loads(cli("node", "stats", "--config", config, "--json").stdout)["records"] == 0
    again = cli("node", "migrate", "--config", config)
    assert f"already at {head_revision()}; nothing to do" in said(again)

    down = cli("node", "migrate", "--config", config, "--to", "0001")
    assert f"database schema migrated: {head_revision()} → 0001" in said(down)
    stale = cli("node", "stats", "--config", config, code=1)
    assert f"is at schema revision 0001, this software needs {head_revision()}" in said(stale)
    up = cli("node", "migrate", "--config", config)
    assert f"database schema migrated: 0001 → {head_revision()}" in said(up)


def test_an_unknown_revision_is_a_usage_error(node_json: Path) -> None:
    out = cli("node", "migrate", "--config", str(node_json), "--to", "0042", code=2)
    assert "'0042' is not a schema revision" in said(out)


def test_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    node = tmp_path / "n"
    url = "postgresql+psycopg://creditnet:secret@127.0.0.1:9/creditnet"
    cli("node", "init", "--city", "340100", "--dir", str(node), "--database-url", url, "--no-migrate")
    out = cli("node", "migrate", "--config", str(node / "node.json"), code=1)
    assert "cannot use the database postgresql+psycopg://creditnet:***@127.0.0.1:9/creditnet" in said(out)
    assert "secret" not in out.output
