"""Every importable module of the network, the bank SDK and the developer kit, for tests that walk them."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import creditnet
import creditnet_bank
import creditnet_devkit

# Not walked: the generated protobuf code, scripts that run when imported
# (`__main__`), and Alembic's migration scripts, which Alembic loads by path
# with its own context.
SKIPPED_PREFIXES = (
    "creditnet.v2",
    "creditnet.internal",
    "creditnet.store.migrations.env",
    "creditnet.store.migrations.versions",
)


def project_module_names() -> list[str]:
    names = []
    for package in (creditnet, creditnet_bank, creditnet_devkit):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.startswith(SKIPPED_PREFIXES) or info.name.rpartition(".")[2] == "__main__":
                continue
            names.append(info.name)
    return names


def project_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in project_module_names()]
