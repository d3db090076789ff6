"""Regenerate the Python code for protos/creditnet/vN into services/creditnet/vN.

Every protocol version listed in VERSIONS (today only v2; a next version is
built beside it) is generated into its own package, and so is each package
of INTERNAL (between the processes of one node, never on the network). Generated code lives only
there, is never edited by hand, and is not committed: `make proto` (and every
make target that needs it) runs this script.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "services"
VERSIONS = ("v2",)
# Not the protocol: the leader and worker processes of one node (creditnet.node.leader).
INTERNAL = ("internal/v1",)


def main() -> int:
    for version in (*VERSIONS, *INTERNAL):
        code = generate(version)
        if code != 0:
            return code
    return 0


def generate(version: str) -> int:
    package = OUT / "creditnet" / version
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "creditnet" / version).glob("*.proto"))
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for parent in package.relative_to(OUT / "creditnet").parents:
        init = OUT / "creditnet" / parent / "__init__.py"
        if parent != Path(".") and not init.exists():
            init.write_text(
                f'"""Generated from protos/creditnet/{parent} by protos/generate.py. Do not edit."""\n'
            )
    # protoc finds the mypy plugins next to this interpreter (the venv's bin).
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        "--include_imports",
        f"--descriptor_set_out={package / 'descriptors.binpb'}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return int(code)
    (package / "__init__.py").write_text(
        f'"""Generated from protos/creditnet/{version} by protos/generate.py. Do not edit."""\n'
    )
    (package / "py.typed").write_text("")
    print(f"generated {len(sources)} protos into {package.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
