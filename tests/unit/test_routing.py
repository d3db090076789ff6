"""Membership filters: false positives measured, no false negatives, and every refusal of a bad filter."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import random
from pathlib import Path

import pytest

from creditnet import pilot
from creditnet import uscc as uscc_mod
from creditnet.dates import ts_to_proto, utcnow
from creditnet.domain import City
from creditnet.envelope import MEMBERSHIP_FILTER_TYPE, QUERY_TYPE, EnvelopeVerifier, sign
from creditnet.errors import CreditnetError
from creditnet.node.membership import MembershipPublisher, build_filter
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.routing import (
    MAX_AGE,
    MAX_FILTER_BYTES,
    BloomFilter,
    RoutingKey,
    VerifiedFilter,
    sign_filter,
    verify_filter,
)
from creditnet.store import AsyncStore, Store
from creditnet.v2 import envelope_pb2, routing_pb2
from tests.store.factories import record

HEFEI, NANJING = pilot.HEFEI, pilot.NANJING
MEMBERS = frozenset(pilot.CITIES)
# A realistic city: Hefei has about 400,000 registered enterprises; one node
# holds records of those with activity there.
REALISTIC = 200_000
PROBES = 200_000


def usccs(city: City, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [uscc_mod.make_uscc(rng, city, serial=seed * 10_000_000 + i) for i in range(n)]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("routing unit-test CA")


@pytest.fixture(scope="module")
def hefei(ca: CertificateAuthority) -> Identity:
    return issue_identity(ca, Role.node(HEFEI))


@pytest.fixture(scope="module")
def nanjing(ca: CertificateAuthority) -> Identity:
    return issue_identity(ca, Role.node(NANJING))


@pytest.fixture(scope="module")
def verifier(ca: CertificateAuthority) -> EnvelopeVerifier:
    return EnvelopeVerifier(TrustStore(ca.cert))


@pytest.fixture(scope="module")
def key() -> RoutingKey:
    return RoutingKey.generate()


def test_false_positive_rate_at_a_realistic_size_is_at_most_one_percent(key: RoutingKey) -> None:
    held = usccs(HEFEI, REALISTIC, 1)
    others = usccs(NANJING, PROBES, 2)
    # As built (room to grow), and at its worst: filled to the capacity it
    # was sized for, the moment before a node rebuilds it larger.
    built = BloomFilter.sized(len(held))
    built.add_many(key.tag(u) for u in held)
    full = BloomFilter.sized(int(REALISTIC / 1.25))
    full.add_many(key.tag(u) for u in held)
    assert all(key.tag(u) in built and key.tag(u) in full for u in held)  # no false negatives
    for name, bloom in (("as built", built), ("at capacity", full)):
        fp = sum(key.tag(u) in bloom for u in others) / PROBES
        size = bloom.bit_count // 8
        print(
            f"\n{name}: {REALISTIC} enterprises, {size} bytes ({size * 8 / REALISTIC:.2f} bits each, "
            f"{size * 1_000_000 / REALISTIC / 2**20:.2f} MiB per million), false positives "
            f"{100 * fp:.3f}% measured, {100 * bloom.estimated_fp:.3f}% estimated"
        )
        assert fp <= 0.01, (name, fp)


def test_a_filter_built_from_a_store_holds_every_enterprise_with_records(
    tmp_path: Path, key: RoutingKey
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'node.db'}", migrate=True)
    try:
        held = usccs(HEFEI, 3000, 3)
        for i in range(0, len(held), 1000):
            store.ingest([record(f"r{j}", uscc=u) for j, u in enumerate(held[i : i + 1000], i)], "p:1")
        bloom, total = build_filter(store, key)
    finally:
        store.close()
    assert total == 3000
    assert bloom.entries == 3000
    assert all(key.tag(u) in bloom for u in held)


async def test_the_node_keeps_its_filter_current_with_every_commit_in_and_out_of_process(
    tmp_path: Path, key: RoutingKey, hefei: Identity, verifier: EnvelopeVerifier
) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    store = await AsyncStore.open(url, migrate=True)
    publisher = MembershipPublisher(city=HEFEI, identity=hefei, key=key, store=store, check_interval=3600)
    try:
        await publisher.rebuild()
        first = publisher.current
        assert first is not None
        # In process (SubmitRecords): in the filter before the commit, signed after.
        a, b = usccs(HEFEI, 2, 4)
        async with publisher.ingesting({a}):
            result = await store.ingest([record("in-1", uscc=a)], "p:1")
            publisher.committed(result.accepted)
        signed = await publisher.publish()
        v = verify_filter(verifier, signed, city=HEFEI, members=MEMBERS, key=key, now=utcnow())
        assert v.holds(key.tag(a)) and not v.holds(key.tag(b))
        assert (
            v.version
            > verify_filter(verifier, first, city=HEFEI, members=MEMBERS, key=key, now=utcnow()).version
        )
        # Out of process (`creditnet node ingest` on the same database): the
        # record total differs from what the filter accounts for, so it is rebuilt.
        outside = Store.open(url)
        try:
            outside.ingest([record("out-1", uscc=b)], "p:2")
        finally:
            outside.close()
        await publisher.check()
        assert publisher.current is not None
        v2 = verify_filter(verifier, publisher.current, city=HEFEI, members=MEMBERS, key=key, now=utcnow())
        assert v2.holds(key.tag(a)) and v2.holds(key.tag(b))
    finally:
        await publisher.stop()
        await store.close()


async def test_no_committed_enterprise_is_lost_when_rebuilds_race_with_ingestion(
    tmp_path: Path, key: RoutingKey, hefei: Identity, verifier: EnvelopeVerifier
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'node.db'}", migrate=True)
    publisher = MembershipPublisher(city=HEFEI, identity=hefei, key=key, store=store, check_interval=3600)
    committed: list[str] = []

    async def ingest(uscc: str, n: int) -> None:
        async with publisher.ingesting({uscc}):
            result = await store.ingest([record(f"race-{n}", uscc=uscc)], "p:1")
            publisher.committed(result.accepted)
        committed.append(uscc)
        await publisher.publish()

    try:
        await publisher.rebuild()
        batch = usccs(HEFEI, 60, 8)
        jobs = [ingest(u, n) for n, u in enumerate(batch)]
        rebuilds = [publisher.rebuild() for _ in range(5)] + [publisher.check() for _ in range(5)]
        await asyncio.gather(*jobs, *rebuilds)
        assert publisher.current is not None
        v = verify_filter(verifier, publisher.current, city=HEFEI, members=MEMBERS, key=key, now=utcnow())
        assert sorted(committed) == sorted(batch)
        assert all(v.holds(key.tag(u)) for u in committed)
        assert publisher.accounted == await store.record_total() == 60
    finally:
        await publisher.stop()
        await store.close()


# -- refusals ------------------------------------------------------------------


def small(key: RoutingKey, members: list[str]) -> BloomFilter:
    bloom = BloomFilter.sized(len(members))
    bloom.add_many(key.tag(u) for u in members)
    return bloom


def signed(
    identity: Identity,
    key: RoutingKey,
    *,
    city: City = HEFEI,
    version: int = 10,
    issued_at: dt.datetime | None = None,
    bloom: BloomFilter | None = None,
) -> envelope_pb2.SignedEnvelope:
    return sign_filter(
        bloom or small(key, usccs(city, 10, 5)), city, version, issued_at or utcnow(), key, identity
    )


def refusal(
    verifier: EnvelopeVerifier, env: envelope_pb2.SignedEnvelope, ours: RoutingKey, **kw: object
) -> str:
    args: dict[str, object] = {"city": HEFEI, "members": MEMBERS, "key": ours, "now": utcnow()} | kw
    with pytest.raises(CreditnetError) as err:
        verify_filter(verifier, env, **args)  # type: ignore[arg-type]
    return err.value.rule


def test_a_good_filter_verifies(verifier: EnvelopeVerifier, hefei: Identity, key: RoutingKey) -> None:
    held = usccs(HEFEI, 10, 5)
    v = verify_filter(verifier, signed(hefei, key), city=HEFEI, members=MEMBERS, key=key, now=utcnow())
    assert isinstance(v, VerifiedFilter) and v.version == 10 and v.entries == 10
    assert all(v.holds(key.tag(u)) for u in held)


def test_a_filter_signed_by_another_city_is_refused(
    verifier: EnvelopeVerifier, nanjing: Identity, key: RoutingKey
) -> None:
    # Nanjing's node signs a filter naming Hefei, or its own, served as Hefei's.
    assert refusal(verifier, signed(nanjing, key, city=HEFEI), key) == "filter.signer"
    assert refusal(verifier, signed(nanjing, key, city=NANJING), key) == "filter.signer"


def test_a_filter_naming_another_city_or_a_non_member_is_refused(
    verifier: EnvelopeVerifier, hefei: Identity, key: RoutingKey
) -> None:
    env = signed(hefei, key)
    assert refusal(verifier, env, key, members=frozenset({NANJING})) == "filter.city"
    payload = routing_pb2.MembershipFilter.FromString(env.payload)
    payload.city = NANJING.code
    forged = sign(MEMBERSHIP_FILTER_TYPE, payload.SerializeToString(), hefei)
    assert refusal(verifier, forged, key) == "filter.city"


def test_stale_future_rolled_back_and_foreign_key_filters_are_refused(
    verifier: EnvelopeVerifier, hefei: Identity, key: RoutingKey
) -> None:
    now = utcnow()
    old = signed(hefei, key, issued_at=now - MAX_AGE - dt.timedelta(seconds=1))
    assert refusal(verifier, old, key, now=now) == "filter.stale"
    ahead = signed(hefei, key, issued_at=now + dt.timedelta(minutes=5))
    assert refusal(verifier, ahead, key, now=now) == "filter.future"
    assert refusal(verifier, signed(hefei, key), key, key=RoutingKey.generate()) == "filter.key"
    newer = verify_filter(
        verifier, signed(hefei, key, version=20), city=HEFEI, members=MEMBERS, key=key, now=now
    )
    assert refusal(verifier, signed(hefei, key, version=19), key, held=newer) == "filter.rollback"
    # The same version with other contents is no newer either.
    other = signed(hefei, key, version=20, bloom=small(key, usccs(HEFEI, 3, 9)))
    assert refusal(verifier, other, key, held=newer) == "filter.rollback"


def test_oversized_malformed_and_mistyped_filters_are_refused(
    verifier: EnvelopeVerifier, hefei: Identity, key: RoutingKey
) -> None:
    huge = BloomFilter((MAX_FILTER_BYTES + 64) * 8, 7)
    assert refusal(verifier, signed(hefei, key, bloom=huge), key) == "filter.size"
    payload = routing_pb2.MembershipFilter(
        city=HEFEI.code,
        version=1,
        issued_at=ts_to_proto(utcnow()),
        key_id=key.key_id,
        hash_count=7,
        bit_count=1024,
        bits=b"\0" * 64,  # 512 bits, not 1024
    )
    bad = sign(MEMBERSHIP_FILTER_TYPE, payload.SerializeToString(), hefei)
    assert refusal(verifier, bad, key) == "filter.malformed"
    payload.bits, payload.hash_count = b"\0" * 128, 40
    bad = sign(MEMBERSHIP_FILTER_TYPE, payload.SerializeToString(), hefei)
    assert refusal(verifier, bad, key) == "filter.malformed"
    garbage = sign(MEMBERSHIP_FILTER_TYPE, b"\xff\xff\xff", hefei)
    assert refusal(verifier, garbage, key) == "filter.malformed"
    typed = sign(QUERY_TYPE, signed(hefei, key).payload, hefei)
    assert refusal(verifier, typed, key) == "filter.type"
    unsigned = envelope_pb2.SignedEnvelope(payload_type=MEMBERSHIP_FILTER_TYPE, payload=b"x")
    assert refusal(verifier, unsigned, key) == "filter.signature"
    assert refusal(verifier, envelope_pb2.SignedEnvelope(), key) == "filter.type"


def test_outsiders_cannot_test_membership_without_the_key(key: RoutingKey) -> None:
    held = usccs(HEFEI, 1000, 6)
    bloom = small(key, held)
    guess = RoutingKey.generate()
    # With any other key, the enterprises held look like everything else:
    # they match at the false-positive rate (about 0.3% here), not at 100%.
    assert sum(guess.tag(u) in bloom for u in held) <= 20
    # Tags are keyed: the same USCC under two keys has unrelated tags.
    assert key.tag(held[0]) != guess.tag(held[0])


def test_routing_key_files_round_trip_and_refuse_garbage(tmp_path: Path, key: RoutingKey) -> None:
    key.save(tmp_path / "routing.key")
    assert RoutingKey.load(tmp_path / "routing.key").key_id == key.key_id
    assert (tmp_path / "routing.key").stat().st_mode & 0o077 == 0
    (tmp_path / "bad.key").write_text("not hex\n")
    with pytest.raises(CreditnetError) as err:
        RoutingKey.load(tmp_path / "bad.key")
    assert err.value.rule == "config.routing_key"


def test_the_worked_example_of_protocol_md() -> None:
    key = RoutingKey(bytes(range(32)))
    assert key.key_id.hex() == "3bbd6b558e905325"
    tag = key.tag("91340100MA2N0U3E6T")
    assert tag.hex() == "b6b7b1a90cc56ef585e574cb542d7dd9cc50d4de3de7a282fde7ed4f39de2814"
    h1, h2 = int.from_bytes(tag[:8], "big"), int.from_bytes(tag[8:16], "big") | 1
    assert (h1, h2) == (13166187375262789365, 9648246193350606297)
    assert [(h1 + i * h2) % 1024 for i in range(7)] == [757, 206, 679, 128, 601, 50, 523]
    bloom = BloomFilter(1024, 7)
    bloom.add(tag)
    assert {i: b for i, b in enumerate(bloom.bits) if b} == {
        6: 0x04, 16: 0x01, 25: 0x40, 65: 0x08, 75: 0x02, 84: 0x80, 94: 0x20,
    }  # fmt: skip
    # The tag is HMAC-SHA256 as RFC 2104 defines it.
    assert tag == hmac.digest(bytes(range(32)), b"creditnet/route/v1\x0091340100MA2N0U3E6T", "sha256")
