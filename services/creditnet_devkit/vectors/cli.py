"""``python -m creditnet_devkit.vectors [DIRECTORY] [--check]``: write, or compare, every vector file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from creditnet_devkit.vectors import core, directory

__all__ = ["default_directory", "generate", "main"]


def default_directory() -> Path:
    # services/creditnet_devkit/vectors/cli.py -> the repository's docs/test-vectors/v2.
    return Path(__file__).resolve().parents[3] / "docs" / "test-vectors" / "v2"


def generate() -> dict[str, bytes]:
    """Every file of docs/test-vectors/v2, by name."""
    protocol = core.generate()
    directory_files = directory.generate()
    # Two generators, one directory: neither may silently overwrite the other's file.
    if clash := protocol.keys() & directory_files.keys():
        raise RuntimeError(f"both vector generators write {sorted(clash)}")
    return protocol | directory_files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m creditnet_devkit.vectors", description="Write (or check) the protocol test vectors."
    )
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument(
        "--check", action="store_true", help="compare with the files on disk; exit 1 if any differ"
    )
    args = parser.parse_args(argv)
    out: Path = args.directory or default_directory()
    files = generate()
    if args.check:
        stale = [n for n, data in files.items() if _read(out / n) != data]
        for name in stale:
            print(f"{out / name} is missing or out of date", file=sys.stderr)
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
        print(out / name)
    return 0


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
