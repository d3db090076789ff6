"""The threat model names the tests that show each check: every one of them must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `integration/test_x.py::test_y`, or `::test_z` for another test of the file named before it.
REFERENCE = re.compile(r"`((?:[\w/]+\.py)?)::(test_\w+)`")


def referenced_tests(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    current = ""
    for path, name in REFERENCE.findall(text):
        current = path or current
        found.append((current, name))
    return found


def test_every_test_the_threat_model_names_exists() -> None:
    refs = referenced_tests((ROOT / "docs" / "security.md").read_text(encoding="utf-8"))
    assert len(refs) > 30
    missing = []
    for path, name in refs:
        source = ROOT / "tests" / path
        if not source.is_file() or not re.search(rf"^(async )?def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_references_are_read_with_their_file() -> None:
    text = "`unit/test_a.py::test_one`, `::test_two`; `chain/test_b.py::test_three`"
    assert referenced_tests(text) == [
        ("unit/test_a.py", "test_one"),
        ("unit/test_a.py", "test_two"),
        ("chain/test_b.py", "test_three"),
    ]
