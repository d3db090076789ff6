"""The bank's SDK stands on the protocol core alone: importing it loads no server code."""

from __future__ import annotations

import json
import subprocess
import sys

# What a bank embedding the SDK must never pay for (or be exposed through):
# databases, migrations, metrics, the tracing SDK, gRPC's server add-ons and
# the network's own servers and tools.
FORBIDDEN = (
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "psycopg",
    "prometheus_client",
    "opentelemetry.sdk",
    # grpc's own __init__ imports the bare grpc_health/grpc_reflection packages;
    # their servers are what a server-side module would pull in.
    "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection",
    "creditnet.store",
    "creditnet.node",
    "creditnet.aggregator",
    "creditnet.observability",
    "creditnet.cli",
    "creditnet.rpc",
    "creditnet.limits",
    "creditnet.settings",
    "creditnet.ledger",
    "creditnet.witness",
    "creditnet.auditor",
)


def _loaded_by(statement: str) -> list[str]:
    # A fresh interpreter: this test process has long since imported everything.
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def _hits(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_importing_the_sdk_loads_no_database_metrics_or_server_code() -> None:
    loaded = _loaded_by("import creditnet_bank")
    assert "creditnet_bank.client" in loaded
    assert _hits(loaded) == []


def test_the_check_sees_server_code_when_it_is_loaded() -> None:
    # The same check against a server module must fail: otherwise a renamed
    # module would let the SDK test pass without checking anything.
    hits = _hits(_loaded_by("import creditnet_bank, creditnet.node.server"))
    for expected in (
        "sqlalchemy",
        "alembic",
        "prometheus_client",
        "creditnet.store",
        "creditnet.observability",
    ):
        assert any(h == expected or h.startswith(expected + ".") for h in hits), expected
