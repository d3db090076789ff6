"""The declared public surface: every module says in `__all__` what other modules and users may use."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import creditnet_bank
from tests.unit.modules import project_modules

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_declares_its_public_names() -> None:
    problems: list[str] = []
    modules = project_modules()
    # The walk reaches the core, the servers and the SDK: an empty walk would pass vacuously.
    assert {"creditnet.errors", "creditnet.node.service", "creditnet_bank.client"} <= {
        m.__name__ for m in modules
    }
    for module in modules:
        name = module.__name__
        declared = getattr(module, "__all__", None)
        if declared is None:
            problems.append(f"{name}: no __all__")
            continue
        problems += [
            f"{name}: __all__ names {n!r}, which it does not have" for n in declared if not hasattr(module, n)
        ]
        problems += [
            f"{name}: {n!r} is in __all__ twice" for n in set(declared) if list(declared).count(n) > 1
        ]
        # A public class or function defined here is either declared or named private (leading underscore).
        problems += [
            f"{name}: public {n!r} is not in __all__ (declare it, or name it _{n} if only used here)"
            for n, value in vars(module).items()
            if not n.startswith("_")
            and (inspect.isclass(value) or inspect.isfunction(value))
            and value.__module__ == name
            and n not in declared
        ]
    assert problems == []


def _documented_sdk_names() -> set[str]:
    """What the README and docs/ take from the SDK (`creditnet_bank.X`, `from creditnet_bank import …`)."""
    names: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for imported in re.findall(r"from creditnet_bank import ([\w, ]+)", text):
            names |= {n.strip() for n in imported.split(",") if n.strip()}
        names |= set(re.findall(r"\bcreditnet_bank\.([A-Za-z]\w*)\b(?!\.)", text))
    return names


def test_the_sdk_surface_is_what_the_docs_use_and_the_docs_name_all_of_it() -> None:
    documented = _documented_sdk_names()
    surface = set(creditnet_bank.__all__)
    assert "BankClient" in documented
    assert documented - surface == set()
    docs = "\n".join(
        p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    )
    assert [n for n in sorted(surface) if not re.search(rf"`[^`]*\b{n}\b[^`]*`", docs)] == []
