"""The five-city network end to end: a bank's federated query, verified."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from creditnet import pilot, policy
from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.consent import ConsentTerms
from creditnet.dates import utcnow
from creditnet.domain import Category, City, Purpose
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout, wait_federated
from creditnet.pki import AGGREGATOR_SERVER_NAME, TrustStore, node_server_name
from creditnet.v2 import consent_pb2, query_pb2
from creditnet_bank import BankClient, QueryRefused, SectionStatus
from tests.integration.helpers import consent


async def test_federated_query_merges_verified_sections_from_several_cities(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    env = consent(layout)
    # Tests before this one stop and restart nodes: the aggregator's channels
    # back off (up to 2 s) before they reach a restarted node again.
    operator = layout.identity("operators", pilot.SHANGHAI.value)
    await wait_federated(layout.aggregator_endpoint, operator, TrustStore.load(layout.ca), 30)
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
    assert [s.city for s in report.sections] == list(pilot.CITIES)
    assert all(s.status in (SectionStatus.OK, SectionStatus.NO_RECORDS) for s in report.sections), [
        (s.city, s.status, s.reason) for s in report.sections
    ]
    with_records = {s.city for s in report.sections if s.records}
    assert len(with_records) >= 3
    assert report.profile is not None and report.profile.uscc == layout.demo_enterprise
    # Every record the bank got is about the enterprise asked about and
    # signed by the node of the city that holds it.
    for s in report.sections:
        assert s.answer is not None
        for rec in s.records:
            assert rec.enterprise_uscc == layout.demo_enterprise
            assert rec.city == s.city.proto
    assert report.record_count == sum(len(v) for cat in report.by_category.values() for v in cat.values())
    assert report.indicators.tax_grade in {"A", "B", "M", "C", "D", ""}


async def test_only_consented_categories_and_cities_leave_the_nodes(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    env = consent(layout, categories=(Category.TAX, Category.UTILITY), cities=(pilot.SHANGHAI, pilot.HEFEI))
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
    assert {s.city for s in report.sections} == {pilot.SHANGHAI, pilot.HEFEI}
    assert set(report.by_category) <= {Category.TAX, Category.UTILITY}


async def test_aggregator_refuses_out_of_scope_query_before_fan_out(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    env = consent(layout, categories=(Category.TAX,))
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        with pytest.raises(QueryRefused) as refused:
            await bank.query(
                layout.demo_enterprise, env, Purpose.LOAN_APPLICATION, categories=[Category.JUDICIAL]
            )
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.reason.startswith("consent.category_not_covered")
        with pytest.raises(QueryRefused) as refused:
            await bank.query(layout.demo_enterprise, env, Purpose.GUARANTEE)
        assert refused.value.reason.startswith("consent.purpose_mismatch")
        # The refusal names the rule, never the data.
        assert layout.demo_enterprise not in refused.value.reason


async def test_another_bank_cannot_use_the_consent(network: InProcessNetwork, layout: NetworkLayout) -> None:
    from creditnet.network import SECOND_BANK

    env = consent(layout)
    async with BankClient.from_network(layout.root / "network.json", SECOND_BANK) as other:
        with pytest.raises(QueryRefused) as refused:
            await other.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.reason.startswith("consent.bank_mismatch")


async def test_a_bank_cannot_send_another_banks_query(
    network: InProcessNetwork, layout: NetworkLayout
) -> None:
    from creditnet.network import SECOND_BANK

    env = consent(layout, max_uses=1, cities=(pilot.NANJING,))
    network_json = layout.root / "network.json"
    async with (
        BankClient.from_network(network_json, DEMO_BANK) as bank,
        BankClient.from_network(network_json, SECOND_BANK) as other,
    ):
        signed = bank.sign_query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        with pytest.raises(QueryRefused) as refused:
            await other.send(signed)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.reason.startswith("query.sender")
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await other.query_node(layout.node_endpoint(pilot.NANJING), pilot.NANJING, signed)
        assert direct.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (direct.value.details() or "").startswith("query.sender")
        # Neither attempt spent the consent's one use: its bank still gets its answer.
        report = await bank.send(signed)
    assert not report.missing_cities and [s.status for s in report.sections] == [SectionStatus.OK]


async def test_use_limit_is_enforced_by_every_node(network: InProcessNetwork, layout: NetworkLayout) -> None:
    env = consent(layout, max_uses=2, cities=(pilot.SHANGHAI, pilot.NANJING))
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        for _ in range(2):
            report = await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
            assert not report.missing_cities
        report = await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
    assert [s.status for s in report.sections] == [SectionStatus.DENIED, SectionStatus.DENIED]
    assert all(s.reason.startswith("consent.uses_exhausted") for s in report.sections)
    assert all(s.code == "PERMISSION_DENIED" for s in report.sections)


# (consent cities, query categories, query cities): the scope the consent policy grants each is the
# cities the aggregator asks, the nodes answer for, and the bank accounts for.
GRANTED = [
    ((pilot.SHANGHAI, pilot.HEFEI), (Category.TAX, Category.UTILITY), ()),
    ((), (Category.TAX,), (pilot.NANJING, pilot.HEFEI)),
    ((), (), ()),
]


@pytest.mark.parametrize(("consented", "categories", "cities"), GRANTED, ids=["consents", "names", "every"])
async def test_the_aggregator_the_nodes_and_the_bank_act_by_the_policys_grant(
    network: InProcessNetwork,
    layout: NetworkLayout,
    consented: tuple[City, ...],
    categories: tuple[Category, ...],
    cities: tuple[City, ...],
) -> None:
    env = consent(layout, categories=(Category.TAX, Category.UTILITY, Category.LOAN), cities=consented)
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        signed = bank.sign_query(
            layout.demo_enterprise, env, Purpose.LOAN_APPLICATION, categories=categories, cities=cities
        )
        report = await bank.send(signed, exhaustive=True)
    terms, _ = query_mod.parse_terms(signed.payload)
    consent_terms = ConsentTerms.from_proto(consent_pb2.Consent.FromString(env.payload))
    granted = policy.permit(consent_terms, terms, city=None, now=utcnow())
    scope = granted.scope(pilot.CITIES)
    assert [s.city for s in report.sections] == list(scope) and not report.unexpected_cities
    for s in report.sections:
        # Asked by the aggregator, authorized by the node, disclosing exactly the grant.
        assert s.status in (SectionStatus.OK, SectionStatus.NO_RECORDS), (s.city, s.status, s.reason)
        assert s.categories == granted.categories
        assert (s.data_from, s.data_to) == (granted.data_from, granted.data_to)


async def test_replayed_query_is_answered_once(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    city = pilot.HANGZHOU
    env = consent(layout, cities=(city,), max_uses=2)
    ledger = network.nodes[city].ledger
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q = bank.sign_query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        first = await bank.send(q)
        logged = ledger.committed_size
        # The same signed query again (a retry after a lost answer): the node
        # sends the answer it gave, proven by the same credit-chain entry; it
        # neither answers nor logs a second time, nor spends a use.
        again = await bank.send(q)
        assert ledger.committed_size == logged
        (one,), (two,) = first.sections, again.sections
        assert one.status in (SectionStatus.OK, SectionStatus.NO_RECORDS) and two.status is one.status
        assert one.answer is not None and two.answer is not None
        assert two.answer.SerializeToString() == one.answer.SerializeToString()
        assert two.ledger_index == one.ledger_index is not None
        # Another query under the same id is a replay.
        other = query_mod.build(
            layout.bank(),
            env,
            enterprise_uscc=layout.demo_enterprise,
            purpose=Purpose.LOAN_APPLICATION,
            categories=(Category.TAX,),
            query_id=query_pb2.CreditQuery.FromString(q.payload).query_id,
        )
        replayed = await bank.send(other)
        assert replayed.sections[0].status is SectionStatus.DENIED
        assert replayed.sections[0].code == "ALREADY_EXISTS"
        assert replayed.sections[0].reason.startswith("query.replay")
        # One use was spent: one more query is answered, the next is not.
        assert not (await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)).missing_cities
        spent = await bank.query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        assert spent.sections[0].reason.startswith("consent.uses_exhausted")


async def test_every_server_serves_health_and_reflection(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    ident = layout.bank()
    targets = [
        (layout.node_endpoint(c), node_server_name(c), "creditnet.v2.CityNodeService") for c in pilot.CITIES
    ]
    targets.append((layout.aggregator_endpoint, AGGREGATOR_SERVER_NAME, "creditnet.v2.AggregatorService"))
    for endpoint, name, service in targets:
        async with secure_channel(endpoint, ident, trust, name) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            services = [s.name async for resp in stream for s in resp.list_services_response.service]
            assert service in services and "grpc.health.v1.Health" in services
            assert "grpc.reflection.v1.ServerReflection" in services
            # grpc.reflection.v1 is the same protocol under its own name (what grpcurl asks first).
            v1 = ch.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            assert services == [s.name async for resp in v1 for s in resp.list_services_response.service]


async def test_query_lifetime_is_bounded(layout: NetworkLayout) -> None:
    import datetime as dt

    from creditnet.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        query_mod.build(
            layout.bank(),
            consent(layout),
            enterprise_uscc=layout.demo_enterprise,
            purpose=Purpose.LOAN_APPLICATION,
            lifetime=dt.timedelta(hours=1),
        )


async def test_bank_reports_cities_the_aggregator_left_out_added_or_doubled(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc

    env = consent(layout, cities=(pilot.SHANGHAI, pilot.HEFEI))
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        q = bank.sign_query(layout.demo_enterprise, env, Purpose.LOAN_APPLICATION)
        # Verifying without sending: the client's network directory is read first.
        await bank.ready_directory()
        async with secure_channel(
            layout.aggregator_endpoint, layout.bank(), trust, AGGREGATOR_SERVER_NAME
        ) as ch:
            resp = await aggregator_pb2_grpc.AggregatorServiceStub(ch).FederatedQuery(
                aggregator_pb2.FederatedQueryRequest(query=q), timeout=10
            )
        assert len(resp.sections) == 2
        honest = bank.verify_response(q, resp)
        assert honest.section(pilot.SHANGHAI) is not None and not honest.missing_cities
        dropped = aggregator_pb2.FederatedQueryResponse()
        dropped.CopyFrom(resp)
        del dropped.sections[1]
        extra = dropped.sections.add()
        extra.CopyFrom(resp.sections[0])
        extra.city = pilot.JIAXING.proto  # a section for a city outside the query's scope
        report = bank.verify_response(q, dropped)
        twice = aggregator_pb2.FederatedQueryResponse()
        twice.CopyFrom(resp)
        twice.sections.add().CopyFrom(resp.sections[0])
        doubled = bank.verify_response(q, twice)
    # Every city of the scope has its row, the one left out MISSING; the extra one is INVALID,
    # out of scope and never opened.
    assert [(s.city, s.in_scope) for s in report.sections] == [
        (pilot.SHANGHAI, True),
        (pilot.HEFEI, True),
        (pilot.JIAXING, False),
    ]
    hefei = report.section(pilot.HEFEI)
    assert hefei is not None and hefei.status is SectionStatus.MISSING
    assert hefei.reason == "the aggregator returned no section for this city"
    assert report.missing_cities == [pilot.HEFEI] and report.unexpected_cities == [pilot.JIAXING]
    jiaxing = report.section(pilot.JIAXING)
    assert jiaxing is not None and jiaxing.status is SectionStatus.INVALID and not jiaxing.records
    # A city sent twice is INVALID: the bank does not pick the copy it likes.
    first = doubled.section(City.from_proto(resp.sections[0].city))
    assert first is not None and first.status is SectionStatus.INVALID and "2 sections" in first.reason
