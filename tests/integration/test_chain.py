"""The credit chain on the running network: receipts, histories, audits, tampering.

Other tests query the same network, so every check here is about accesses
this test made (its own query ids, its own enterprise) or holds whatever
else is in the logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import update

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.auditor.audit import audit
from creditnet.auditor.checks import ProblemKind
from creditnet.auditor.history import HistoryError, Outcome, build_request, fetch_history, verify_history
from creditnet.auditor.state import AuditState
from creditnet.auditor.survey import survey
from creditnet.chain.keys import log_origin
from creditnet.chain.network import NetworkCheckpointError, verify_network_checkpoint, verify_network_response
from creditnet.chain.note import Note
from creditnet.chain.receipts import verify_receipt
from creditnet.channels import secure_channel
from creditnet.domain import Category, City, Purpose
from creditnet.ledger.log import Appended, Ledger
from creditnet.ledger.sqlstore import SqlLog
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout
from creditnet.pki import (
    AGGREGATOR_SERVER_NAME,
    CertificateAuthority,
    Role,
    TrustStore,
    issue_identity,
    node_server_name,
)
from creditnet.store import Store
from creditnet.store.models import CHAIN_ENTRIES, CHAIN_HASHES, CHAIN_META
from creditnet.v2 import (
    aggregator_pb2,
    aggregator_pb2_grpc,
    chain_pb2,
    chain_pb2_grpc,
    consent_pb2,
    node_pb2,
    node_pb2_grpc,
)
from creditnet_bank import BankClient, SectionStatus
from creditnet_devkit import synthetic
from tests.integration.helpers import ask_node, consent, node_refusal


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def cli(*args: str) -> Ran:
    """`creditnet chain ARGS` in a child process.

    The servers run in this process's event loop and grpc.aio serves one
    loop per process, so the command (which runs its own loop) cannot run in
    this process, not even in a thread; a child process talks to them like
    any client would.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from creditnet.cli.chain_cmds import app; app(prog_name='creditnet chain')",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def endpoints(layout: NetworkLayout) -> dict[City, str]:
    return {c: layout.node_endpoint(c) for c in pilot.CITIES}


def quorum(layout: NetworkLayout) -> int:
    return int(layout.data["chain"]["quorum"])


def query_id(env: Any) -> str:
    return query_mod.parse_terms(env.payload)[0].query_id


async def settled(network: InProcessNetwork, city: City) -> Ledger:
    """The city's ledger once everything it committed is in a published checkpoint."""
    ledger = network.nodes[city].ledger
    if ledger.committed_size:
        assert await ledger.wait_published(ledger.committed_size - 1, 10) is not None
    return ledger


async def test_every_answered_section_carries_a_receipt_that_verifies(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)
    assert not report.missing_cities and len(report.sections) == 5
    for section in report.sections:
        assert section.status in (SectionStatus.OK, SectionStatus.NO_RECORDS)
        assert section.receipt is not None and section.ledger_index is not None
        # The SDK checked it; an independent check against the CA only agrees.
        vr = verify_receipt(trust, section.receipt, section.city.value)
        assert vr.index == section.ledger_index
        assert vr.entry.query_id == report.query_id
        assert vr.entry.kind == chain_pb2.ENTRY_KIND_QUERY_ANSWERED
        assert vr.entry.records_disclosed == len(section.records)
        assert len(vr.checkpoint.cosignatures) >= quorum(layout)


async def test_an_enterprise_sees_exactly_the_accesses_to_its_data(
    network: InProcessNetwork,
    layout: NetworkLayout,
    trust: TrustStore,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    # An enterprise of its own, so that no other test's queries are in its history.
    uscc = synthetic.plan_enterprise(7, pilot.HANGZHOU, 17).uscc
    me = issue_identity(ca, Role.enterprise(uscc))
    env = consent(layout, enterprise=me, uscc=uscc)
    terms = consent_pb2.Consent()
    terms.ParseFromString(env.payload)

    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        everywhere = await bank.query(uscc, env, Purpose.LOAN_APPLICATION)
        two = await bank.query(
            uscc,
            env,
            Purpose.LOAN_APPLICATION,
            cities=[pilot.HEFEI, pilot.HANGZHOU],
            categories=[Category.TAX],
        )
    assert not everywhere.missing_cities and not two.missing_cities
    # A purpose the consent does not cover, sent straight to the Nanjing node.
    wrong = query_mod.build(layout.bank(), env, enterprise_uscc=uscc, purpose=Purpose.GUARANTEE)
    code, reason = await node_refusal(layout, pilot.NANJING, wrong, layout.bank(), trust)
    assert code == grpc.StatusCode.PERMISSION_DENIED and reason.startswith("consent.purpose_mismatch")
    # A query whose bank signature does not verify is refused and not logged:
    # no peer can write entries in a bank's name.
    forged = query_mod.build(layout.bank(), env, enterprise_uscc=uscc, purpose=Purpose.LOAN_APPLICATION)
    flipped = bytearray(forged.signatures[0].signature)
    flipped[-1] ^= 1
    forged.signatures[0].signature = bytes(flipped)
    code, reason = await node_refusal(layout, pilot.NANJING, forged, layout.bank(), trust)
    assert code == grpc.StatusCode.UNAUTHENTICATED and reason.startswith("query.signature")

    history = await fetch_history(
        me, trust, endpoints(layout), aggregator=layout.aggregator_endpoint, quorum=quorum(layout)
    )
    assert history.uscc == uscc and not history.failures
    expected = {(s.city, everywhere.query_id, Outcome.ANSWERED) for s in everywhere.sections}
    expected |= {(s.city, two.query_id, Outcome.ANSWERED) for s in two.sections}
    expected |= {(pilot.NANJING, query_id(wrong), Outcome.REFUSED)}
    got = [(i.city, i.query_id, i.outcome) for i in history.items]
    assert sorted(got, key=str) == sorted(expected, key=str)  # each access once, nothing else

    sections = {(everywhere.query_id, s.city): s for s in everywhere.sections}
    sections |= {(two.query_id, s.city): s for s in two.sections}
    for item in history.items:
        assert item.bank == DEMO_BANK
        if item.outcome is Outcome.REFUSED:
            assert item.purpose is Purpose.GUARANTEE
            assert item.refusal == "PERMISSION_DENIED consent.purpose_mismatch"
            assert item.refusal_rule == "consent.purpose_mismatch"
            continue
        section = sections[(item.query_id, item.city)]
        assert item.index == section.ledger_index
        assert item.records_disclosed == len(section.records)
        assert item.purpose is Purpose.LOAN_APPLICATION and item.consent_id == terms.consent_id
        assert item.checkpoint_size > item.index and len(item.witnesses) >= quorum(layout)
        want = (Category.TAX,) if item.query_id == two.query_id else tuple(Category)
        assert item.categories == want
    assert any(i.records_disclosed for i in history.items)  # Hangzhou holds its records

    # Any doctored item is refused: another salt, another entry, another city, another order.
    raw, wanted = await read_history(layout, me, trust, pilot.HANGZHOU)
    items, summary = verify_history(trust, pilot.HANGZHOU, raw, wanted)
    assert len(items) == 2 and summary is not None and summary.verified
    assert (summary.answered, summary.refused, summary.revoked) == (2, 0, 0)

    def doctored(change: Any) -> list[chain_pb2.GetHistoryResponse]:
        copy = [chain_pb2.GetHistoryResponse.FromString(r.SerializeToString()) for r in raw]
        change(copy)
        return copy

    def salt(rs: list[chain_pb2.GetHistoryResponse]) -> None:
        rs[0].items[0].salt = b"\x00" * 16

    def swap(rs: list[chain_pb2.GetHistoryResponse]) -> None:
        rs[0].items[0].receipt.entry = rs[0].items[1].receipt.entry

    def reorder(rs: list[chain_pb2.GetHistoryResponse]) -> None:
        first, second = list(rs[0].items)
        del rs[0].items[:]
        rs[0].items.extend([second, first])

    def drop(rs: list[chain_pb2.GetHistoryResponse]) -> None:
        del rs[0].items[1]

    with pytest.raises(HistoryError, match="commitment is not to"):
        verify_history(trust, pilot.HANGZHOU, doctored(salt), wanted)
    with pytest.raises(HistoryError, match="receipt"):
        verify_history(trust, pilot.HANGZHOU, doctored(swap), wanted)
    with pytest.raises(HistoryError, match="out of order"):
        verify_history(trust, pilot.HANGZHOU, doctored(reorder), wanted)
    with pytest.raises(HistoryError, match="summary counts"):
        verify_history(trust, pilot.HANGZHOU, doctored(drop), wanted)
    with pytest.raises(HistoryError, match="answered as another city"):
        verify_history(trust, pilot.HEFEI, raw, wanted)
    # Only the enterprise itself can ask.
    with pytest.raises(HistoryError, match="cannot ask"):
        build_request(layout.enterprise(), pilot.HANGZHOU, uscc)
    with pytest.raises(HistoryError, match="enterprise's own certificate"):
        build_request(layout.bank(), pilot.HANGZHOU, uscc)

    # The command line shows the same history.
    me.save(tmp_path / "me.pem", tmp_path / "me.key")
    result = await cli(
        "history",
        "--cert",
        str(tmp_path / "me.pem"),
        "--key",
        str(tmp_path / "me.key"),
        "--network",
        str(layout.root),
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["enterprise"] == uscc and data["failures"] == {}
    assert sorted((i["city"], i["query_id"], i["outcome"]) for i in data["items"]) == sorted(
        (c.value, q, o.value) for c, q, o in expected
    )
    human = await cli(
        "history",
        "--cert",
        str(tmp_path / "me.pem"),
        "--key",
        str(tmp_path / "me.key"),
        "--network",
        str(layout.root),
    )
    assert human.exit_code == 0 and "consent.purpose_mismatch" in human.stdout


async def read_history(
    layout: NetworkLayout,
    caller: Any,
    trust: TrustStore,
    city: City,
    request: Any = None,
    **options: Any,
) -> tuple[list[chain_pb2.GetHistoryResponse], chain_pb2.HistoryRequest]:
    """Call `city`'s GetHistory as `caller` with `request` (default: a fresh one signed by `caller`)."""
    request = request if request is not None else build_request(caller, city, **options)
    async with secure_channel(layout.node_endpoint(city), caller, trust, node_server_name(city)) as ch:
        call = chain_pb2_grpc.ChainServiceStub(ch).GetHistory(
            chain_pb2.GetHistoryRequest(request=request), timeout=10
        )
        responses = [r async for r in call]
    return responses, chain_pb2.HistoryRequest.FromString(request.payload)


async def test_chain_verify_passes_on_a_healthy_node_and_remembers_checkpoints(
    network: InProcessNetwork, layout: NetworkLayout, tmp_path: Path
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        await bank.query(
            layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION, cities=[pilot.HEFEI]
        )
    state = tmp_path / "audit.json"
    args = ["verify", "--city", "340100", "--network", str(layout.root), "--state", str(state)]
    first = await cli(*args, "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["ok"] and report["problem"] is None
    size = report["checkpoint"]["size"]
    assert size >= 1 and report["entries"] >= size and len(report["cosignatures"]) >= quorum(layout)
    assert report["evidence"] == [] and report["witness_errors"] == {}
    remembered = AuditState.load(state).seen(log_origin("340100"))
    assert [c.size for c in remembered] == [size]

    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        await bank.query(
            layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION, cities=[pilot.HEFEI]
        )
    second = await cli(*args)
    assert second.exit_code == 0, second.output
    assert "the 340100 log is sound" in second.stdout
    sizes = [c.size for c in AuditState.load(state).seen(log_origin("340100"))]
    assert sizes[0] == size and len(sizes) == 2 and sizes[1] > size

    # A state file that is not one is refused, and left as it was.
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    refused = await cli("verify", "--city", "340100", "--network", str(layout.root), "--state", str(bad))
    assert refused.exit_code == 2 and "not a version 1" in refused.output
    assert bad.read_text() == "[]"


async def test_the_network_checkpoint_is_signed_and_heads_every_city(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        await bank.query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)
    published = (await settled(network, pilot.HEFEI)).published
    assert published is not None
    async with secure_channel(layout.aggregator_endpoint, layout.bank(), trust, AGGREGATOR_SERVER_NAME) as ch:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(ch)
        # The aggregator re-reads the city logs every few seconds.
        for _ in range(100):
            resp = await stub.GetNetworkCheckpoint(aggregator_pb2.GetNetworkCheckpointRequest(), timeout=5)
            head = verify_network_checkpoint(trust, resp.checkpoint, list(resp.key_certificates))
            if head.cities["340100"][0] >= published.size:
                break
            await asyncio.sleep(0.1)
    assert head.sequence >= 1 and set(head.cities) == {c.value for c in pilot.CITIES}
    for c in pilot.CITIES:
        size, root = head.cities[c.value]
        assert network.nodes[c].ledger.log.tree.root(size) == root
    assert head.cities["340100"][0] >= published.size

    result = await cli("status", "--network", str(layout.root), "--json")
    data = json.loads(result.stdout)
    # The whole response verified: the national note and every city checkpoint it names.
    assert data["network_error"] == "" and data["network"]["sequence"] >= head.sequence
    assert [n["city"] for n in data["nodes"]] == [c.value for c in pilot.CITIES]
    assert all(n["error"] == "" and n["size"] >= 1 for n in data["nodes"])
    assert all(len(n["cosignatures"]) >= quorum(layout) for n in data["nodes"])
    # Exit 3 exactly when some witness holds evidence (a later test makes some).
    direct = []
    witnesses = [(layout.node_endpoint(c), node_server_name(c)) for c in pilot.CITIES]
    for endpoint, name in [*witnesses, (layout.aggregator_endpoint, AGGREGATOR_SERVER_NAME)]:
        async with secure_channel(endpoint, layout.bank(), trust, name) as ch:
            resp = await chain_pb2_grpc.WitnessServiceStub(ch).ListEvidence(
                chain_pb2.ListEvidenceRequest(), timeout=5
            )
            direct.extend(resp.evidence)
    assert len(data["evidence"]) == len(direct)
    assert result.exit_code == (3 if direct else 0), result.output
    human = await cli("status", "--network", str(layout.root))
    assert "signed by the aggregator" in human.stdout


async def test_the_network_checkpoint_verifies_from_its_own_response_and_the_ca_alone(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        await bank.query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)
    published = (await settled(network, pilot.HEFEI)).published
    assert published is not None
    # Nothing but the CA certificate, as a verifier in another language would have.
    only_ca = TrustStore.load(layout.ca)
    async with secure_channel(
        layout.aggregator_endpoint, layout.bank(), only_ca, AGGREGATOR_SERVER_NAME
    ) as ch:
        stub = aggregator_pb2_grpc.AggregatorServiceStub(ch)
        for _ in range(100):
            resp = await stub.GetNetworkCheckpoint(aggregator_pb2.GetNetworkCheckpointRequest(), timeout=5)
            verified = verify_network_response(only_ca, resp, quorum(layout))
            if verified.network.cities["340100"][0] >= published.size:
                break
            await asyncio.sleep(0.1)
    assert sorted(verified.cities) == sorted(c.value for c in pilot.CITIES)
    for name, cp in verified.cities.items():
        assert verified.network.cities[name] == (cp.checkpoint.size, cp.checkpoint.root_hash)
        assert len(cp.cosignatures) >= quorum(layout)
    assert [Note.parse(n).text.split("\n")[0] for n in resp.city_checkpoints] == [
        log_origin(c.value) for c in pilot.CITIES
    ]
    # Each part of the response is needed: without the witnesses' certificates
    # no city checkpoint reaches its quorum; a city left out is noticed.
    national = resp.key_certificates[0]
    bare = aggregator_pb2.GetNetworkCheckpointResponse()
    bare.CopyFrom(resp)
    bare.key_certificates[:] = [national, *(c for c in resp.key_certificates[1:] if c != national)][:2]
    with pytest.raises(NetworkCheckpointError, match="does not verify"):
        verify_network_response(only_ca, bare, quorum(layout))
    del bare.key_certificates[:]
    bare.key_certificates.extend(resp.key_certificates)
    del bare.city_checkpoints[0]
    with pytest.raises(NetworkCheckpointError, match="missing"):
        verify_network_response(only_ca, bare, quorum(layout))


async def test_a_node_that_answers_without_logging_is_caught_by_the_bank(
    network: InProcessNetwork, layout: NetworkLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        await bank.query(
            layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION, cities=[pilot.HEFEI]
        )
        ledger = await settled(network, pilot.HEFEI)
        before = ledger.committed_size

        async def append_nothing(
            entry: chain_pb2.LedgerEntry, uscc: str | None = None, **kept: object
        ) -> Appended:
            # Claims the newest logged slot for this answer but writes nothing.
            return Appended(index=ledger.committed_size - 1, salt=b"", entry=entry.SerializeToString())

        monkeypatch.setattr(network.nodes[pilot.HEFEI].service.ledger, "append", append_nothing)
        report = await bank.query(layout.demo_enterprise, consent(layout), Purpose.LOAN_APPLICATION)
    hefei = report.section(pilot.HEFEI)
    assert hefei is not None and hefei.status is SectionStatus.INVALID
    assert "receipt" in hefei.reason and hefei.receipt is None and not hefei.records
    assert report.missing_cities == [pilot.HEFEI]
    assert ledger.committed_size == before


async def node_info(
    layout: NetworkLayout, city: City, reader: Any, trust: TrustStore
) -> node_pb2.GetNodeInfoResponse:
    async with secure_channel(layout.node_endpoint(city), reader, trust, node_server_name(city)) as ch:
        info: node_pb2.GetNodeInfoResponse = await node_pb2_grpc.CityNodeServiceStub(ch).GetNodeInfo(
            node_pb2.GetNodeInfoRequest(), timeout=10
        )
    return info


async def list_nodes(
    layout: NetworkLayout, reader: Any, trust: TrustStore
) -> aggregator_pb2.ListNodesResponse:
    async with secure_channel(layout.aggregator_endpoint, reader, trust, AGGREGATOR_SERVER_NAME) as ch:
        listed: aggregator_pb2.ListNodesResponse = await aggregator_pb2_grpc.AggregatorServiceStub(
            ch
        ).ListNodes(aggregator_pb2.ListNodesRequest(), timeout=10)
    return listed


async def test_a_healthy_node_reports_its_chain_and_no_evidence(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    reader = layout.bank()
    city = pilot.HANGZHOU
    await ask_node(
        layout,
        city,
        query_mod.build(
            reader,
            consent(layout, cities=(city,)),
            enterprise_uscc=layout.demo_enterprise,
            purpose=Purpose.LOAN_APPLICATION,
            cities=(city,),
        ),
        reader,
        trust,
    )
    info = await node_info(layout, city, reader, trust)
    ledger = network.nodes[city].ledger
    assert info.log_size == ledger.committed_size >= 1
    assert ledger.published is not None and info.published_size == ledger.published.size >= 1
    assert list(info.evidence_against) == []
    listed = await list_nodes(layout, reader, trust)
    assert {City.from_proto(n.city): n.evidence for n in listed.nodes} == dict.fromkeys(pilot.CITIES, 0)


def sqlite_path(network: InProcessNetwork, city: City) -> Path:
    url = network.nodes[city].config.database_url
    assert url.startswith("sqlite:///")
    return Path(url.removeprefix("sqlite:///"))


def copy_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        target = dst.with_name(dst.name + suffix)
        target.unlink(missing_ok=True)
        source = src.with_name(src.name + suffix)
        if source.exists():
            shutil.copy2(source, target)


async def test_tampering_with_a_nodes_log_is_found_and_refused(
    database: str, network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, tmp_path: Path
) -> None:
    if database != "sqlite":
        pytest.skip("edits a node's SQLite file in place; the audit it checks does not depend on the backend")
    city = pilot.JIAXING
    reader = layout.bank()
    nodes = endpoints(layout)
    q = quorum(layout)

    def direct_query() -> Any:
        return query_mod.build(
            reader, consent(layout), enterprise_uscc=layout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
        )

    await ask_node(layout, city, direct_query(), reader, trust)
    ledger = await settled(network, city)
    state = AuditState()
    before = await audit(
        city, nodes, reader, trust, aggregator=layout.aggregator_endpoint, state=state, quorum=q
    )
    assert before.ok, before.problem
    assert before.checkpoint is not None and before.checkpoint.size == ledger.committed_size
    target = (await ask_node(layout, city, direct_query(), reader, trust)).receipt.index
    assert target == before.checkpoint.size
    after = await audit(
        city, nodes, reader, trust, aggregator=layout.aggregator_endpoint, state=state, quorum=q
    )
    assert after.ok and after.checkpoint is not None and after.checkpoint.size == target + 1
    # Every witness (the other nodes and the aggregator) must have cosigned past
    # the target entry: one still behind it could not tell a rewritten history
    # from the real one, would cosign it, and then refuse the restored log.
    for _ in range(10):
        if all(w.size is not None and w.size > target for w in ledger.witnesses):
            break
        await ask_node(layout, city, direct_query(), reader, trust)
    assert all(w.size is not None and w.size > target for w in ledger.witnesses)
    top = (await settled(network, city)).committed_size

    db = sqlite_path(network, city)
    backup = tmp_path / "backup.db"
    await network.stop_node(city)
    copy_db(db, backup)
    try:
        # The operator hides which bank looked: one entry edited in place.
        store = Store.open(f"sqlite:///{db}")
        with store.engine.connect() as conn:
            original = conn.execute(CHAIN_ENTRIES.select().where(CHAIN_ENTRIES.c.idx == target)).one().entry
        forged = chain_pb2.LedgerEntry()
        forged.ParseFromString(original)
        forged.bank_code = "B0302H232000001"
        with store.write_transaction() as conn:
            conn.execute(
                update(CHAIN_ENTRIES)
                .where(CHAIN_ENTRIES.c.idx == target)
                .values(entry=forged.SerializeToString(deterministic=True))
            )
        store.close()
        await network.start_node(city)

        # A fresh auditor (no state) finds the entry by the node's own proofs.
        fresh = await audit(city, nodes, reader, trust, aggregator=layout.aggregator_endpoint, quorum=q)
        assert fresh.problem is not None and fresh.problem.kind is ProblemKind.ENTRY_MISMATCH
        assert fresh.problem.index == target
        assert fresh.problem.message.startswith(
            f"entry {target} does not match: the root recomputed at size {top} differs from "
            "the checkpoint the witnesses cosigned"
        )
        shown = await cli("verify", "--city", "330400", "--network", str(layout.root), "--json")
        assert shown.exit_code == 1
        assert json.loads(shown.stdout)["problem"]["index"] == target

        # The operator also rebuilds every hash from the edited entries.
        await network.stop_node(city)
        store = Store.open(f"sqlite:///{db}")
        with store.write_transaction() as conn:
            conn.execute(CHAIN_HASHES.delete())
            conn.execute(update(CHAIN_META).values(size=0))
        log = SqlLog(store)
        entries = [e for _, e in log.entries(0, top)]
        assert len(entries) == top
        log.tree.append_many(entries)
        store.close()
        await network.start_node(city)

        # Its proofs now agree with the edited entries, so a fresh auditor can
        # only bound the change; one that saw the checkpoints around it names it.
        rebuilt = await audit(city, nodes, reader, trust, aggregator=layout.aggregator_endpoint, quorum=q)
        assert rebuilt.problem is not None and rebuilt.problem.kind is ProblemKind.HISTORY_REWRITTEN
        assert rebuilt.problem.first is not None and rebuilt.problem.first <= target
        assert "history was rebuilt" in rebuilt.problem.message
        seen = await audit(
            city, nodes, reader, trust, aggregator=layout.aggregator_endpoint, state=state, quorum=q
        )
        assert seen.problem is not None and seen.problem.kind is ProblemKind.ENTRY_MISMATCH
        assert (seen.problem.index, seen.problem.size) == (target, target + 1)

        # The witnesses refuse the node's next checkpoint: the answer gets no receipt.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ask_node(layout, city, direct_query(), reader, trust, timeout=2.0)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert network.nodes[city].ledger.published is not None
        assert network.nodes[city].ledger.published.size == top
        status = await survey(nodes, reader, trust, aggregator=layout.aggregator_endpoint, quorum=q)
        against = [e for e in status.evidence if e.origin == log_origin(city.value)]
        assert against and {e.kind for e in against} == {"inconsistent"}
        assert all(e.verified for e in against)  # both checkpoints carry Jiaxing's own signature
        assert not status.healthy
        cli_status = await cli("status", "--network", str(layout.root), "--json")
        assert cli_status.exit_code == 3
        assert any(e["origin"] == log_origin("330400") for e in json.loads(cli_status.stdout)["evidence"])
        # The witnesses' health says so too: each node's info and the aggregator's directory.
        holders = {e.witness for e in against}
        for other in pilot.CITIES:
            if other != city:
                info = await node_info(layout, other, reader, trust)
                assert (log_origin(city.value) in info.evidence_against) == (other.value in holders)
                assert all(o == log_origin(city.value) for o in info.evidence_against)
        listed = await list_nodes(layout, reader, trust)
        shown = {City.from_proto(n.city): n.evidence for n in listed.nodes}
        assert (shown[city] > 0) == ("national" in holders)
        assert all(n == 0 for c, n in shown.items() if c != city)
    finally:
        if city in network.nodes:
            await network.stop_node(city)
        copy_db(backup, db)
        await network.start_node(city)

    # Restored, the node's log extends what the witnesses cosigned again.
    resp = await ask_node(layout, city, direct_query(), reader, trust)
    assert verify_receipt(trust, resp.receipt, city.value).index == top
    restored = await audit(
        city, nodes, reader, trust, aggregator=layout.aggregator_endpoint, state=state, quorum=q
    )
    # The witnesses still hold the evidence of what was signed meanwhile.
    assert restored.problem is not None and restored.problem.kind is ProblemKind.EVIDENCE
    assert restored.checkpoint is not None and restored.checkpoint.size == top + 1
