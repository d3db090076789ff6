"""What only PostgreSQL offers a node: a database outside its process, which
it can restart against.

A second node process on the same database is refused at start-up (one node
process per database: `test_node_processes.py`); claims racing across
processes on one database are shown at the store level
(`tests/store/test_claims.py::test_processes_claiming_the_same_ids_get_one_ok_each`)."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import create_engine, inspect

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.config import NodeConfig
from creditnet.domain import Purpose
from creditnet.network import InProcessNetwork, NetworkLayout, free_port
from creditnet.node.server import start_node
from creditnet.pki import TrustStore
from creditnet.store import SchemaNotReady
from creditnet.store.scratch import ScratchDatabases
from creditnet.v2 import envelope_pb2, query_pb2
from tests.integration.conftest import POSTGRES
from tests.integration.helpers import ask_node, consent, opened_answer

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database", [POSTGRES], indirect=True)]

CITY = pilot.HEFEI


def query(layout: NetworkLayout, env: envelope_pb2.SignedEnvelope) -> envelope_pb2.SignedEnvelope:
    return query_mod.build(
        layout.bank(), env, enterprise_uscc=layout.demo_enterprise, purpose=Purpose.LOAN_APPLICATION
    )


async def test_a_restarted_node_keeps_its_records_answers_and_log(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    city = pilot.NANJING
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
    # Sealed afresh each time, the same signed answer inside.
    assert opened_answer(again, answered, city) == opened_answer(first, answered, city)
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
