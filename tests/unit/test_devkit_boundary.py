"""The runtime package never loads the developer tooling (creditnet_devkit) when it is imported.

Servers, the CLI and the bank SDK must run without test-data or test-vector
generators; the commands that make demo data import them when they run. Each
check runs in a fresh interpreter, so nothing this test process imported counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

# Modules imported by name in the walk below that cannot be imported on their own.
NOT_IMPORTABLE = (
    # Alembic executes it inside a migration context; it has no meaning outside one.
    "creditnet.store.migrations.env",
)

ENTRY_POINTS = (
    "creditnet.node.server",
    "creditnet.aggregator.server",
    "creditnet.store",
    "creditnet.chain",
    "creditnet.directory.serving",
    "creditnet.cli.main",
    "creditnet_bank",
)

_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    entry_points, skipped = json.loads(sys.argv[1])
    culprits = []

    def load(name):
        importlib.import_module(name)
        if "creditnet_devkit" in sys.modules and not culprits:
            culprits.append(name)

    for name in entry_points:
        load(name)
    import creditnet

    walked = 0
    for info in pkgutil.walk_packages(creditnet.__path__, "creditnet."):
        name = info.name
        if name.rpartition(".")[2] == "__main__" or any(
            name == s or name.startswith(s + ".") for s in skipped
        ):
            continue
        load(name)
        walked += 1
    # The name checked is the package's real name: importing it does put it in sys.modules.
    importlib.import_module("creditnet_devkit.synthetic")
    print(json.dumps({"culprits": culprits, "walked": walked, "seen": "creditnet_devkit" in sys.modules}))
    """
)


def _probe(entry_points: tuple[str, ...], *, path: Path | None = None) -> Any:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(path), env.get("PYTHONPATH"))))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([entry_points, NOT_IMPORTABLE])],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_runtime_module_imports_the_devkit() -> None:
    got = _probe(ENTRY_POINTS)
    assert got["culprits"] == [], f"importing {got['culprits'][0]} loads creditnet_devkit"
    # The walk reached the whole package, and the devkit's name is the one the probe looks for.
    assert got["walked"] > 100
    assert got["seen"] is True


def test_the_probe_names_a_module_that_imports_the_devkit(tmp_path: Path) -> None:
    (tmp_path / "leaky.py").write_text("from creditnet_devkit import synthetic\n")
    got = _probe(("creditnet.pilot", "leaky"), path=tmp_path)
    assert got["culprits"] == ["leaky"]
