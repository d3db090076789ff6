"""What only PostgreSQL offers a node: a database outside its process, which
it can restart against and share with another node process of its city."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import create_engine, inspect

from creditnet import query as query_mod
from creditnet.config import NodeConfig
from creditnet.domain import City, Purpose
from creditnet.health import wait_serving
from creditnet.network import InProcessNetwork, NetworkLayout, free_port
from creditnet.node.server import start_node
from creditnet.pki import TrustStore, node_server_name
from creditnet.rpc import secure_channel
from creditnet.store import SchemaNotReady, Store
from creditnet.store.scratch import ScratchDatabases
from creditnet.v1 import envelope_pb2, node_pb2, node_pb2_grpc, query_pb2
from tests.integration.conftest import POSTGRES
from tests.integration.helpers import ask_node, consent

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database", [POSTGRES], indirect=True)]

REPO = Path(__file__).resolve().parents[2]
CITY = City.HEFEI


def query(layout: NetworkLayout, env: envelope_pb2.SignedEnvelope) -> envelope_pb2.SignedEnvelope:
    return query_mod.build(
        layout.bank(), env, enterprise_uscc=layout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
    )


async def test_a_restarted_node_keeps_its_records_answers_and_log(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    city = City.NANJING
    assert network.nodes[city].config.database_url.startswith("postgresql+psycopg://")
    before = await network.nodes[city].store.stats()
    answered = query(layout, consent(layout))
    first = await ask_node(layout, city, answered, layout.bank(), trust)

    await network.stop_node(city)
    await network.start_node(city)

    after = await network.nodes[city].store.stats()
    assert (after.enterprises, after.records_by_category) == (before.enterprises, before.records_by_category)
    assert after.answered_queries == before.answered_queries + 1
    # The answer survived with its query id: the same query gets it again,
    # proven by the same entry; another query under that id is a replay.
    again = await ask_node(layout, city, answered, layout.bank(), trust)
    assert again.answer.SerializeToString() == first.answer.SerializeToString()
    assert again.receipt.index == first.receipt.index
    reused = query_mod.build(
        layout.bank(),
        consent(layout),
        enterprise_uscc=layout.demo_enterprise,
        purpose=Purpose.LOAN_APPLICATION,
        query_id=query_pb2.CreditQuery.FromString(answered.payload).query_id,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ask_node(layout, city, reused, layout.bank(), trust)
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert (refused.value.details() or "").startswith("query.replay")
    # The log goes on from where it was.
    second = await ask_node(layout, city, query(layout, consent(layout)), layout.bank(), trust)
    assert second.receipt.index > first.receipt.index


async def test_a_node_refuses_to_start_on_a_database_without_the_schema(
    layout: NetworkLayout, scratch: ScratchDatabases
) -> None:
    cfg = NodeConfig.load(layout.node_config(CITY))
    cfg.database_url = scratch.create("unmigrated")
    cfg.listen = f"127.0.0.1:{free_port()}"
    with pytest.raises(SchemaNotReady, match=r"has no creditnet schema yet; run `creditnet node migrate"):
        await start_node(cfg)
    engine = create_engine(cfg.database_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@pytest_asyncio.fixture
async def twin_nodes(
    layout: NetworkLayout, scratch: ScratchDatabases, tmp_path: Path
) -> AsyncIterator[list[str]]:
    """Two node processes of one city on one database (the chain off: one
    log has one writer; this is about claims)."""
    url = scratch.create("twins")
    Store.open(url, migrate=True).close()
    endpoints: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            cfg = NodeConfig.load(layout.node_config(CITY))
            cfg.listen = f"127.0.0.1:{free_port()}"
            cfg.database_url = url
            cfg.witnesses = {}
            cfg.quorum = 0
            cfg.chain_enabled = False
            path = tmp_path / f"twin-{i}.json"
            cfg.save(path)
            with open(tmp_path / f"twin-{i}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "creditnet", "node", "run", "--config", str(path)],
                        cwd=REPO,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            # One after the other: each sets up its log's first row at start.
            await wait_serving(
                cfg.listen, node_server_name(CITY), layout.bank(), layout.ca, process=procs[-1]
            )
            endpoints.append(cfg.listen)
        yield endpoints
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


async def _ask(
    endpoint: str, q: envelope_pb2.SignedEnvelope, layout: NetworkLayout, trust: TrustStore
) -> str:
    """Either ok or the rule id of the node's refusal."""
    async with secure_channel(endpoint, layout.bank(), trust, node_server_name(CITY)) as ch:
        try:
            await node_pb2_grpc.CityNodeServiceStub(ch).Query(node_pb2.QueryRequest(query=q), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return (exc.details() or "").split(":")[0]
    return "ok"


async def test_two_node_processes_on_one_database_answer_each_query_once(
    twin_nodes: list[str], layout: NetworkLayout, trust: TrustStore
) -> None:
    # The same query to both processes at once, ten times over.
    same = [query(layout, consent(layout)) for _ in range(10)]
    pairs = [list(await asyncio.gather(*(_ask(ep, q, layout, trust) for ep in twin_nodes))) for q in same]
    # Eight different queries under a consent good for three, split between them.
    limited = consent(layout, max_uses=3)
    spread = [query(layout, limited) for _ in range(8)]
    outcomes = await asyncio.gather(
        *(_ask(twin_nodes[i % 2], q, layout, trust) for i, q in enumerate(spread))
    )
    assert all(sorted(pair) == ["ok", "query.replay"] for pair in pairs), pairs
    assert sorted(outcomes) == ["consent.uses_exhausted"] * 5 + ["ok"] * 3, outcomes
