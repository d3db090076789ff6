"""The bank SDK holds, refreshes and uses the signed network directory; servers check the servers they call.

One network of real servers on loopback (mTLS) for this module, provisioned
with a one-second refresh interval. Each test gives its bank client a state
file of its own, so what one client took does not leak into another test.
The tests that revoke certificates of the network run last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.dates import utcnow
from creditnet.directory.model import Directory
from creditnet.directory.publish import publish
from creditnet.directory.revoke import revoke
from creditnet.directory.sign import load, sign
from creditnet.domain import City, Purpose
from creditnet.envelope import save_envelope
from creditnet.errors import CreditnetError
from creditnet.network import SECOND_BANK, InProcessNetwork, NetworkLayout, provision
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore, load_cert
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc
from creditnet_bank import BankClient, DirectoryRefused, SectionStatus
from tests.integration.helpers import consent
from tests.integration.test_directory_serving import governance, newest, next_version

REFRESH = dt.timedelta(seconds=1)
PATIENCE = 30
ANSWERED = {SectionStatus.OK, SectionStatus.NO_RECORDS}


@pytest.fixture(scope="module")
def blayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(
        tmp_path_factory.mktemp("bank-directory-network"),
        enterprises_per_city=5,
        seed=11,
        directory_refresh=REFRESH,
    )


@pytest_asyncio.fixture(scope="module")
async def bnetwork(blayout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(blayout)
    await net.start()
    yield net
    await net.stop()


def client(layout: NetworkLayout, state: Path) -> BankClient:
    return BankClient.from_network(layout.root / "network.json", SECOND_BANK, directory_state=state)


async def statuses(bank: BankClient, layout: NetworkLayout) -> dict[City, SectionStatus]:
    report = await bank.query(
        layout.demo_enterprise, consent(layout, bank=SECOND_BANK), Purpose.LOAN_APPLICATION
    )
    return {s.city: s.status for s in report.sections}


async def test_the_sdk_takes_the_pinned_directory_then_the_published_ones_and_keeps_them(
    blayout: NetworkLayout, bnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    state = tmp_path / "bank.directory.binpb"
    async with client(blayout, state) as bank:
        assert set((await statuses(bank, blayout)).values()) <= ANSWERED
        assert bank.directory is not None and state.exists()
        assert bank.directory.require().version == (await newest(blayout)).version

        d = await next_version(blayout)
        assert all(a.ok for a in await publish(blayout, sign(d, governance(blayout)[:2])))
        assert await bank.refresh_directory() == d.version
    # A new client on the same state file starts from what the last one took.
    async with client(blayout, state) as again:
        assert again.directory is not None
        await again.directory.open()
        assert again.directory.require().version == d.version


async def test_the_sdk_refuses_an_expired_directory_and_recovers_when_a_fresh_one_is_published(
    blayout: NetworkLayout, bnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    gov = governance(blayout)
    current = await newest(blayout)
    short = await next_version(
        blayout, policy=dataclasses.replace(current.policy, max_age=dt.timedelta(seconds=3))
    )
    assert all(a.ok for a in await publish(blayout, sign(short, gov[:2])))
    async with client(blayout, tmp_path / "bank.directory.binpb") as bank:
        assert await bank.refresh_directory() == short.version
        for _ in range(PATIENCE * 5):
            if utcnow() > short.expires_at:
                break
            await asyncio.sleep(REFRESH.total_seconds() / 5)
        with pytest.raises(DirectoryRefused) as refused:
            await statuses(bank, blayout)
        assert refused.value.rule == "directory.expired"
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE

        fresh = dataclasses.replace(
            short, version=short.version + 1, issued_at=utcnow().replace(microsecond=0), policy=current.policy
        )
        assert all(a.ok for a in await publish(blayout, sign(fresh, gov[:2])))
        # The same client recovers at its next query: nothing to restart.
        assert set((await statuses(bank, blayout)).values()) <= ANSWERED
        assert bank.directory is not None and bank.directory.require().version == fresh.version


async def test_the_sdk_refuses_a_rolled_back_directory_and_keeps_the_newer_one(
    blayout: NetworkLayout, bnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    state = tmp_path / "bank.directory.binpb"
    async with client(blayout, state) as bank:
        served = await bank.refresh_directory()
        # A newer directory reaches the bank another way; the aggregator still serves the older one.
        ahead = await next_version(blayout)
        assert await bank.offer_directory(sign(ahead, governance(blayout)[:2]))
        with pytest.raises(CreditnetError) as refused:
            await bank.refresh_directory()
        assert refused.value.rule == "directory.rollback"
        assert bank.directory is not None and bank.directory.require().version == ahead.version == served + 1
        # The first directory, validly signed, is a rollback too.
        with pytest.raises(CreditnetError) as first:
            await bank.offer_directory(load(blayout.path(blayout.data["directory"]["file"])))
        assert first.value.rule == "directory.rollback"
        # Queries go on with the newer directory held.
        assert set((await statuses(bank, blayout)).values()) <= ANSWERED
    async with client(blayout, state) as again:
        assert again.directory is not None
        await again.directory.open()
        assert again.directory.require().version == ahead.version


async def test_the_cli_query_holds_the_directory_of_the_state_dir(
    blayout: NetworkLayout, bnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    path = tmp_path / "consent.json"
    save_envelope(consent(blayout, bank=SECOND_BANK), path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "creditnet",
        "query",
        "--network",
        str(blayout.root),
        "--bank",
        SECOND_BANK,
        "--uscc",
        blayout.demo_enterprise,
        "--consent",
        str(path),
        "--purpose",
        Purpose.LOAN_APPLICATION.value,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert {s["status"] for s in json.loads(out)["sections"]} <= {"ok", "no_records"}
    # Kept where `creditnet network up` keeps the bank's files, pinned by the network's anchor.
    held = load(blayout.root / "banks" / f"{SECOND_BANK}.directory.binpb")
    assert Directory.from_payload(held.payload).version >= 1


async def test_the_sdk_refuses_replayed_answers_signed_by_a_revoked_node_certificate_or_log_key(
    blayout: NetworkLayout, bnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    async with client(blayout, tmp_path / "bank.directory.binpb") as bank:
        await bank.refresh_directory()
        query = bank.sign_query(
            blayout.demo_enterprise, consent(blayout, bank=SECOND_BANK), Purpose.LOAN_APPLICATION
        )
        # The raw response, as an aggregator could keep and replay it.
        trust = TrustStore.load(blayout.ca)
        channel = secure_channel(blayout.aggregator_endpoint, bank.identity, trust, AGGREGATOR_SERVER_NAME)
        async with channel:
            resp = await aggregator_pb2_grpc.AggregatorServiceStub(channel).FederatedQuery(
                aggregator_pb2.FederatedQueryRequest(query=query), timeout=10
            )
        before = {s.city: s for s in bank.verify_response(query, resp).sections}
        assert {s.status for s in before.values()} <= ANSWERED, [s.reason for s in before.values()]

        for cert in (
            blayout.root / "nodes" / "340100" / "node.pem",
            blayout.root / "nodes" / "320100" / "logkey.pem",
        ):
            done = await revoke(blayout, load_cert(cert))
            assert all(a.ok for a in done.answers), done
        await bank.refresh_directory()

        after = {s.city: s for s in bank.verify_response(query, resp).sections}
    hefei, nanjing = after.pop(pilot.HEFEI), after.pop(pilot.NANJING)
    assert hefei.status is SectionStatus.INVALID and "answer.cert.revoked" in hefei.reason, hefei.reason
    assert not hefei.records and hefei.answer is None
    assert nanjing.status is SectionStatus.INVALID and "receipt" in nanjing.reason, nanjing.reason
    assert "no valid log-key certificate for 320100" in nanjing.reason
    # The other cities' answers still verify; a receipt whose checkpoint
    # nanjing cosigned as a witness now lacks that cosignature, and nothing else.
    for s in after.values():
        assert s.status in ANSWERED or (
            s.status is SectionStatus.INVALID
            and "witness key certificates, 3 cosignatures needed" in s.reason
        ), (s.city, s.reason)


async def test_the_aggregator_refuses_as_a_client_a_node_whose_server_certificate_is_revoked(
    blayout: NetworkLayout, bnetwork: InProcessNetwork, tmp_path: Path
) -> None:
    done = await revoke(blayout, load_cert(blayout.root / "nodes" / "330400" / "node.pem"))
    assert all(a.ok for a in done.answers), done
    async with client(blayout, tmp_path / "bank.directory.binpb") as bank:
        sections = {
            s.city: s
            for s in (
                await bank.query(
                    blayout.demo_enterprise, consent(blayout, bank=SECOND_BANK), Purpose.LOAN_APPLICATION
                )
            ).sections
        }
        # Its health checks too: the node still serves, the aggregator will not talk to it.
        for _ in range(PATIENCE * 5):
            (status,) = [n for n in (await bank.nodes()).nodes if n.city == pilot.JIAXING.proto]
            if "cert.revoked" in status.last_error:
                break
            await asyncio.sleep(REFRESH.total_seconds() / 5)
        else:
            raise AssertionError(f"the aggregator's health checks of 330400 say {status.last_error!r}")
    jiaxing = sections[pilot.JIAXING]
    # Refused by the aggregator before any call reaches the node (not the node's chain.unpublished).
    assert jiaxing.status is not SectionStatus.OK and jiaxing.reason.startswith("cert.revoked:"), (
        jiaxing.status,
        jiaxing.reason,
    )
