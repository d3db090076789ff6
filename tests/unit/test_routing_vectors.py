"""docs/test-vectors/v2/routing.json, checked the way a client in another language would."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography import x509

from creditnet.domain import City
from creditnet.envelope import EnvelopeVerifier
from creditnet.errors import CreditnetError
from creditnet.pki import TrustStore
from creditnet.routing import RoutingKey, verify_filter
from creditnet.v2 import envelope_pb2, routing_pb2
from creditnet_devkit.vectors.cli import default_directory

DIR = default_directory()
DOC: dict[str, Any] = json.loads((DIR / "routing.json").read_text(encoding="utf-8"))
KEYS: dict[str, Any] = json.loads((DIR / "keys.json").read_text(encoding="utf-8"))


def trust() -> TrustStore:
    entries = KEYS["certificate_authorities"] + KEYS["participants"]
    anchor = next(e for e in entries if e["label"] == KEYS["trust_anchor"])
    return TrustStore(x509.load_der_x509_certificate(bytes.fromhex(anchor["certificate_der_hex"])))


def envelope(hex_: str) -> envelope_pb2.SignedEnvelope:
    return envelope_pb2.SignedEnvelope.FromString(bytes.fromhex(hex_))


def check(env: envelope_pb2.SignedEnvelope, city: str, at: str) -> str | None:
    try:
        verify_filter(
            EnvelopeVerifier(trust()),
            env,
            city=City(city),
            members=frozenset(City(c) for c in DOC["members"]),
            key=RoutingKey(bytes.fromhex(DOC["routing_key_hex"])),
            now=dt.datetime.fromisoformat(at),
        )
    except CreditnetError as exc:
        return exc.rule
    return None


def test_tags_and_positions_follow_the_documented_algorithm() -> None:
    key = bytes.fromhex(DOC["routing_key_hex"])
    assert hashlib.sha256(b"creditnet/routing-key-id/v1\x00" + key).digest()[:8].hex() == DOC["key_id_hex"]
    f = routing_pb2.MembershipFilter.FromString(envelope(DOC["filter"]["envelope_hex"]).payload)
    for t in DOC["tags"]:
        tag = hmac.new(key, b"creditnet/route/v1\x00" + t["uscc"].encode(), hashlib.sha256).digest()
        assert tag.hex() == t["tag_hex"]
        h1, h2 = int.from_bytes(tag[:8], "big"), int.from_bytes(tag[8:16], "big") | 1
        positions = [(h1 + i * h2) % f.bit_count for i in range(f.hash_count)]
        assert positions == t["positions"]
        holds = all(f.bits[p >> 3] & (1 << (p & 7)) for p in positions)
        assert holds == t["filter_holds"]
        if t["held"]:
            assert holds, "a filter has no false negatives"


def test_the_valid_filter_verifies() -> None:
    assert check(envelope(DOC["filter"]["envelope_hex"]), DOC["filter"]["city"], DOC["verify_at"]) is None


@pytest.mark.parametrize("case", DOC["negative"], ids=lambda c: c["name"])
def test_each_negative_filter_is_refused_with_its_rule(case: dict[str, Any]) -> None:
    assert (
        check(envelope(case["envelope_hex"]), case["served_for_city"], case["verify_at"])
        == case["expected_rule"]
    )
