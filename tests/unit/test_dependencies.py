"""The dependency rule between the packages (docs/architecture.md, "What may import what").

Every `import` statement in the source counts, including those inside
functions: a deferred import is still a dependency, only a later one. The
pure chain is checked a second way too, by what importing it really loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "services", ROOT / "clients")

# The protocol core: what every party (a bank's SDK included) needs to build and
# check the protocol's messages. Everything else in `creditnet` runs a server
# or a tool.
CORE = (
    "creditnet",  # the package itself (its __init__), not its subpackages
    "creditnet.batches",
    "creditnet.chain",
    "creditnet.channels",
    "creditnet.consent",
    "creditnet.dates",
    "creditnet.deadlines",
    "creditnet.directory",  # its __init__
    "creditnet.directory.build",
    "creditnet.directory.errors",
    "creditnet.directory.model",
    "creditnet.directory.sign",
    "creditnet.directory.verify",
    "creditnet.divisions",
    "creditnet.domain",
    "creditnet.envelope",
    "creditnet.errors",
    "creditnet.pilot",
    "creditnet.pki",
    "creditnet.policy",
    "creditnet.provenance",
    "creditnet.query",
    "creditnet.querycontext",
    "creditnet.records",
    "creditnet.sealing",
    "creditnet.server_certs",
    "creditnet.tracecontext",
    "creditnet.uscc",
    "creditnet.v2",
)
# Packages whose every module is core (the others in CORE are single modules).
CORE_PACKAGES = ("creditnet.chain", "creditnet.v2")

# The chain is formats and proofs only: none of its modules imports these...
CHAIN_MUST_NOT_IMPORT = ("grpc", "sqlalchemy", "sqlmodel", "alembic", "psycopg")
# ...nor does importing one load a database or any of the servers' parts. (grpc
# itself is loaded: the core's error root, creditnet.errors, carries gRPC status codes.)
CHAIN_MUST_NOT_LOAD = (
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "psycopg",
    "creditnet.store",
    "creditnet.ledger",
    "creditnet.witness",
    "creditnet.auditor",
    "creditnet.node",
    "creditnet.aggregator",
    "creditnet.rpc",
)


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_core(name: str) -> bool:
    return name in CORE or _within(name, CORE_PACKAGES)


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every name `module` imports from, absolute (`from a import b`: a, and a.b should b be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{a.name}" for a in node.names)
    return found


def _project_paths() -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for base in SOURCES:
        for path in base.rglob("*.py"):
            name = _module_name(path, base)
            if name.split(".")[0] in ("creditnet", "creditnet_bank", "creditnet_devkit"):
                paths[name] = path
    return paths


def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports."""
    paths = _project_paths()
    return {
        name: {m for m in _imports(path, name) if m in paths and m != name}
        for name, path in sorted(paths.items())
        if not name.startswith("creditnet.v2.")
    }


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    """What breaks the dependency rule, one line per import."""
    found: list[str] = []

    def forbid(module: str, imported: str, why: str) -> None:
        found.append(f"{module} imports {imported}: {why}")

    for module, imports in graph.items():
        for imported in sorted(imports):
            if is_core(module) and not is_core(imported):
                forbid(module, imported, "the protocol core imports only the core")
            if (
                module.startswith("creditnet_bank")
                and imported.startswith("creditnet.")
                and not is_core(imported)
            ):
                forbid(module, imported, "the bank SDK stands on the protocol core alone")
            if imported.startswith("creditnet_bank") and not module.startswith(
                ("creditnet_bank", "creditnet_devkit")
            ):
                if _within(module, ("creditnet.cli", "creditnet_devkit.bench")):
                    continue  # the CLI's bank commands and the benchmark are the SDK's users
                forbid(module, imported, "only tools use the bank SDK")
            if _within(imported, ("creditnet.cli",)) and not _within(
                module, ("creditnet.cli", "creditnet.__main__")
            ):
                forbid(module, imported, "nothing is built on the command line")
            if _within(module, ("creditnet.store",)) and _within(
                imported,
                (
                    "creditnet.node",
                    "creditnet.aggregator",
                    "creditnet.ledger",
                    "creditnet.witness",
                    "creditnet.auditor",
                ),
            ):
                forbid(module, imported, "the store is below the servers that use it")
            if _within(module, ("creditnet.ledger", "creditnet.witness", "creditnet.auditor")) and _within(
                imported, ("creditnet.node", "creditnet.aggregator", "creditnet.network")
            ):
                forbid(module, imported, "the chain's services are parts the servers assemble")
            if _within(module, ("creditnet.witness",)) and _within(
                imported, ("creditnet.ledger", "creditnet.auditor")
            ):
                forbid(module, imported, "a witness knows logs only by what they send it")
            if _within(module, ("creditnet.auditor",)) and _within(
                imported, ("creditnet.store", "creditnet.ledger", "creditnet.witness")
            ):
                forbid(
                    module,
                    imported,
                    "the auditor is an outsider: it trusts the network CA, not a node's parts",
                )
            if _within(module, ("creditnet.node",)) and _within(imported, ("creditnet.aggregator",)):
                forbid(module, imported, "a node does not depend on the aggregator's code")
            if _within(module, ("creditnet.aggregator",)) and _within(imported, ("creditnet.node",)):
                forbid(module, imported, "the aggregator does not depend on a node's code")
    return found


def test_the_packages_keep_the_dependency_rule() -> None:
    graph = import_graph()
    # The walk saw the whole project: an empty graph would pass vacuously.
    assert {
        "creditnet.chain.merkle",
        "creditnet.ledger.log",
        "creditnet.auditor.audit",
        "creditnet_bank.client",
    } <= set(graph)
    assert "creditnet.chain.merkle" in graph["creditnet.chain.tree"]
    assert violations(graph) == []


def test_the_rule_names_an_import_that_breaks_it() -> None:
    graph = {
        "creditnet.chain.merkle": {"creditnet.store.models"},
        "creditnet.envelope": {"creditnet.ledger.log"},
        "creditnet_bank.client": {"creditnet.node.service"},
        "creditnet.auditor.audit": {"creditnet.witness.server"},
        "creditnet.witness.link": {"creditnet.ledger.log"},
        "creditnet.store.store": {"creditnet.ledger.sqlstore"},
        "creditnet.ledger.log": {"creditnet.chain.merkle", "creditnet.store"},
    }
    assert [v.split(":")[0] for v in violations(graph)] == [
        "creditnet.chain.merkle imports creditnet.store.models",
        "creditnet.envelope imports creditnet.ledger.log",
        "creditnet_bank.client imports creditnet.node.service",
        "creditnet.auditor.audit imports creditnet.witness.server",
        "creditnet.witness.link imports creditnet.ledger.log",
        "creditnet.store.store imports creditnet.ledger.sqlstore",
    ]


def test_no_chain_module_imports_rpc_or_database_code() -> None:
    chain = {n: p for n, p in _project_paths().items() if _within(n, ("creditnet.chain",))}
    assert "creditnet.chain.tree" in chain
    found = {
        n: sorted(m for m in _imports(p, n) if _within(m, CHAIN_MUST_NOT_IMPORT)) for n, p in chain.items()
    }
    assert {n: got for n, got in found.items() if got} == {}
    # The check sees such an import where there is one.
    ledger = _project_paths()["creditnet.ledger.log"]
    assert {"grpc", "sqlalchemy"} <= set(_imports(ledger, "creditnet.ledger.log"))


def test_importing_any_chain_module_loads_no_database_or_server_code() -> None:
    modules = sorted(m for m in import_graph() if _within(m, ("creditnet.chain",)))
    assert "creditnet.chain.receipts" in modules and "creditnet.chain.network" in modules
    # One fresh interpreter per module: each must stand on its own.
    script = (
        "import importlib, json, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        f"bad = {CHAIN_MUST_NOT_LOAD!r}\n"
        "hits = [m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in bad)]\n"
        "print(json.dumps(sorted(hits)))\n"
    )
    loaded = {
        m: json.loads(
            subprocess.run(
                [sys.executable, "-c", script, m], check=True, capture_output=True, text=True
            ).stdout
        )
        for m in modules
    }
    assert {m: got for m, got in loaded.items() if got} == {}
    # The probe does see what a server module loads.
    probe = subprocess.run(
        [sys.executable, "-c", script, "creditnet.ledger.sqlstore"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert {"sqlalchemy", "creditnet.store"} <= set(json.loads(probe.stdout))
