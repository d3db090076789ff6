"""What the deployment tests share: paths, tools, and reading the files under deploy/."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
CITIES = ("310000", "320100", "330100", "340100", "330400")


def tool(name: str) -> str | None:
    """A command from this interpreter's environment (dev extra) or else from PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def env_path(*directories: Path) -> str:
    """PATH with these directories first."""
    return os.pathsep.join([*(str(d) for d in directories), os.environ.get("PATH", "")])
