"""`creditnet pki revoke` after the governance keys were rotated, on real servers.

The operator rotates the governance keys (gov-1..3 → gov-4..6, a version
signed by 2 of the old and 2 of the new keys, published with `directory
publish`), then publishes a version signed by the new keys only. A
revocation must extend that newest version, signed by the new keys, never
the retired ones; and it refuses to sign when it cannot verify what the
servers hold, or has too few of the current keys. The tests run in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from typer.testing import CliRunner

from creditnet.channels import secure_channel
from creditnet.cli.main import app
from creditnet.dates import utcnow
from creditnet.directory.build import governance_key
from creditnet.directory.model import Directory, Governance
from creditnet.directory.publish import Target, publish, targets
from creditnet.directory.sign import load, save, sign
from creditnet.network import SECOND_BANK, InProcessNetwork, NetworkLayout, provision
from creditnet.pki import Identity, TrustStore, role_of
from creditnet.v2 import directory_service_pb2 as dpb
from creditnet.v2 import directory_service_pb2_grpc as dpb_grpc
from tests.integration.test_certificate_revocation import pki_revoke, refused_everywhere

REFRESH = dt.timedelta(seconds=1)
NEW_KEYS = ("gov-4", "gov-5", "gov-6")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("rotation-network"),
        enterprises_per_city=5,
        seed=11,
        directory_refresh=REFRESH,
    )


@pytest_asyncio.fixture(scope="module")
async def network(layout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(layout)
    await net.start()
    yield net
    await net.stop()


def old_keys(layout: NetworkLayout) -> list[Identity]:
    keys = layout.data["directory"]["governance"]
    return [Identity.load(layout.path(k["cert"]), layout.path(k["key"])) for k in keys.values()]


def governance_dir(layout: NetworkLayout) -> Path:
    return layout.path(layout.data["directory"]["file"]).parent / "governance"


def issue_new_keys(layout: NetworkLayout) -> list[Identity]:
    """The new governance keys, issued by the network CA as an operator does, into the state dir."""
    runner = CliRunner()
    for name in NEW_KEYS:
        out = governance_dir(layout) / name
        done = runner.invoke(
            app,
            [
                *("pki", "issue", "--ca-dir", str(layout.root / "pki"), "--role", "governance"),
                *("--code", name, "--out", str(out)),
            ],
        )
        assert done.exit_code == 0, done.output
    return [
        Identity.load(governance_dir(layout) / f"{n}.pem", governance_dir(layout) / f"{n}.key")
        for n in NEW_KEYS
    ]


async def held(layout: NetworkLayout, target: Target) -> Directory:
    # Asked as an operator: the banks' certificates get revoked here.
    operator = layout.identity("operators", "340100")
    trust = TrustStore.load(layout.ca)
    async with secure_channel(target.endpoint, operator, trust, target.server_name) as channel:
        answer = await dpb_grpc.DirectoryServiceStub(channel).GetDirectory(
            dpb.GetDirectoryRequest(), timeout=5
        )
    return Directory.from_payload(answer.directory.payload)


async def versions(layout: NetworkLayout) -> set[int]:
    return {d.version for d in await asyncio.gather(*(held(layout, t) for t in targets(layout)))}


def successor(d: Directory, **changes: object) -> Directory:
    issued = max(utcnow().replace(microsecond=0), d.issued_at)
    return dataclasses.replace(d, version=d.version + 1, issued_at=issued, **changes)


async def publish_cli(layout: NetworkLayout, file: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "creditnet", "directory", "publish", "--network", str(layout.root), str(file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def signers_of(file: Path) -> set[str]:
    from cryptography import x509

    env = load(file)
    return {role_of(x509.load_der_x509_certificate(s.certificate_chain[0])).subject for s in env.signatures}


def bank_cert(layout: NetworkLayout, code: str) -> str:
    return str(layout.path(layout.data["identities"]["banks"][code]["cert"]))


async def test_revoke_after_a_rotation_extends_the_newest_version_signed_by_the_new_keys(
    layout: NetworkLayout, network: InProcessNetwork, tmp_path: Path
) -> None:
    old = old_keys(layout)
    new = issue_new_keys(layout)
    first = Directory.from_payload(load(layout.path(layout.data["directory"]["file"])).payload)

    rotated = successor(first, governance=Governance(tuple(governance_key(i) for i in new), 2))
    save(sign(rotated, [*old[:2], *new[:2]]), tmp_path / "rotation.json")
    code, out = await publish_cli(layout, tmp_path / "rotation.json")
    assert code == 0, out
    # An ordinary update under the new keys only, published without the CLI:
    # the servers hold it, the state dir has no copy of it.
    after = successor(rotated)
    assert all(a.ok for a in await publish(layout, sign(after, new[1:])))
    assert await versions(layout) == {after.version}

    bank = layout.bank()
    assert not await refused_everywhere(layout, bank)
    code, out = await pki_revoke(layout, "--cert", bank_cert(layout, layout.data["demo"]["bank"]))
    assert code == 0, out
    assert await versions(layout) == {after.version + 1}
    revoked = await held(layout, targets(layout)[0])
    assert revoked.governance == rotated.governance
    assert revoked.is_certificate_revoked(bank.cert)
    assert revoked.cities == after.cities and revoked.policy == after.policy
    file = layout.path(layout.data["directory"]["file"]).parent / f"directory-v{revoked.version}.json"
    assert signers_of(file) <= set(NEW_KEYS) and len(signers_of(file)) == 2
    assert await refused_everywhere(layout, bank)


async def test_revoke_refuses_when_the_rotation_is_not_at_hand(
    layout: NetworkLayout, network: InProcessNetwork, tmp_path: Path
) -> None:
    folder = layout.path(layout.data["directory"]["file"]).parent
    before = await versions(layout)
    rotation = folder / "directory-v2.json"
    assert rotation.is_file(), "directory publish keeps what it published"
    shutil.move(rotation, tmp_path / "v2.json")
    try:
        code, out = await pki_revoke(layout, "--cert", bank_cert(layout, SECOND_BANK))
    finally:
        shutil.move(tmp_path / "v2.json", rotation)
    assert code != 0 and "revoke.chain" in out, out
    (newest,) = before
    assert not (folder / f"directory-v{newest + 1}.json").exists(), "nothing was signed"
    assert await versions(layout) == before
    assert not await refused_everywhere(layout, layout.bank(SECOND_BANK))


async def test_revoke_refuses_with_only_the_retired_keys(
    layout: NetworkLayout, network: InProcessNetwork, tmp_path: Path
) -> None:
    before = await versions(layout)
    for name in NEW_KEYS:
        for ext in (".pem", ".key"):
            shutil.move(governance_dir(layout) / f"{name}{ext}", tmp_path / f"{name}{ext}")
    try:
        code, out = await pki_revoke(layout, "--cert", bank_cert(layout, SECOND_BANK))
    finally:
        for name in NEW_KEYS:
            for ext in (".pem", ".key"):
                shutil.move(tmp_path / f"{name}{ext}", governance_dir(layout) / f"{name}{ext}")
    assert code != 0 and "revoke.signers" in out, out
    assert await versions(layout) == before
    # With the keys back, it works.
    code, out = await pki_revoke(layout, "--cert", bank_cert(layout, SECOND_BANK))
    assert code == 0, out
    assert await refused_everywhere(layout, layout.bank(SECOND_BANK))
