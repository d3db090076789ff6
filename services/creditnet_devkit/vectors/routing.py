"""Test vectors for routing's membership filters (docs/protocol.md, "Routing").

Written with the other vectors by ``python -m creditnet_devkit.vectors`` as
``routing.json``: a fixed routing key, the tags of a few USCCs and the bit
positions each sets, one filter holding some of them signed by the vector
node (Hefei) with deterministic ECDSA, and negative filters, each with the
rule id a verifier must answer. Every input is fixed, so regeneration is
byte-identical. The routing key here is public knowledge: never use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, Final

from creditnet import pilot
from creditnet.domain import City
from creditnet.envelope import MEMBERSHIP_FILTER_TYPE, EnvelopeVerifier, sign
from creditnet.errors import CreditnetError
from creditnet.pki import TrustStore
from creditnet.routing import (
    BloomFilter,
    RoutingKey,
    sign_filter,
    verify_filter,
)
from creditnet.v2 import routing_pb2

__all__ = [
    "render",
]

KEY: Final = RoutingKey(hashlib.sha256(b"creditnet test vector routing key v1").digest())
OTHER_KEY: Final = RoutingKey(hashlib.sha256(b"creditnet test vector routing key v1: another").digest())
HELD: Final = ("91340100MA2N0U3E6T", "91340104MA8P2LQU1X", "91310000132211588C")
NOT_HELD: Final = ("91330100716105852F",)
MEMBERS: Final = frozenset(pilot.CITIES)


def _bloom(key: RoutingKey) -> BloomFilter:
    bloom = BloomFilter.sized(len(HELD))
    bloom.add_many(key.tag(u) for u in HELD)
    return bloom


def _mutated(env: Any, signer: Any, change: Any) -> Any:
    msg = routing_pb2.MembershipFilter.FromString(env.payload)
    change(msg)
    return sign(MEMBERSHIP_FILTER_TYPE, msg.SerializeToString(deterministic=True), signer)


def render(cast: Any, verify_at: dt.datetime, other_node: Any) -> dict[str, Any]:
    """The vectors' JSON document; every case is checked against `verify_filter` as it is made."""
    issued = verify_at - dt.timedelta(seconds=10)
    node = cast.node.identity
    env = sign_filter(_bloom(KEY), pilot.HEFEI, 3, issued, KEY, node)
    verifier = EnvelopeVerifier(TrustStore(cast.ca.ca.cert))

    def check(e: Any, *, city: City = pilot.HEFEI, at: dt.datetime = verify_at) -> str | None:
        try:
            verify_filter(verifier, e, city=city, members=MEMBERS, key=KEY, now=at)
        except CreditnetError as exc:
            return exc.rule
        return None

    assert check(env) is None
    probe = _bloom(KEY)
    tags = [
        {
            "uscc": u,
            "tag_hex": KEY.tag(u).hex(),
            "positions": probe._positions(KEY.tag(u)),
            "held": u in HELD,
            "filter_holds": KEY.tag(u) in probe,
        }
        for u in (*HELD, *NOT_HELD)
    ]
    negatives = []

    def negative(name: str, description: str, e: Any, rule: str, **kw: Any) -> None:
        got = check(e, **kw)
        assert got == rule, (name, got)
        negatives.append(
            {
                "name": name,
                "description": description,
                "served_for_city": kw.get("city", pilot.HEFEI).code,
                "verify_at": kw.get("at", verify_at).isoformat(),
                "envelope_hex": e.SerializeToString(deterministic=True).hex(),
                "expected_rule": rule,
            }
        )

    negative(
        "filter-signed-by-another-city",
        "Hefei's filter served as Nanjing's: the signer is not that city's node.",
        env,
        "filter.signer",
        city=pilot.NANJING,
    )
    negative(
        "filter-names-another-city",
        "Signed by the Hefei node but naming 320100 in its payload.",
        _mutated(env, node, lambda m: setattr(m, "city", pilot.NANJING.code)),
        "filter.city",
    )
    negative(
        "filter-another-key",
        "Made under another routing key (its key_id differs).",
        sign_filter(_bloom(OTHER_KEY), pilot.HEFEI, 3, issued, OTHER_KEY, node),
        "filter.key",
    )
    negative(
        "filter-stale",
        "Verified more than 120 s after it was issued.",
        env,
        "filter.stale",
        at=issued + dt.timedelta(seconds=121),
    )
    negative(
        "filter-from-the-future",
        "Issued more than 60 s after the verifier's clock.",
        env,
        "filter.future",
        at=issued - dt.timedelta(seconds=61),
    )
    negative(
        "filter-bits-inconsistent",
        "bit_count is not 8 times the length of bits.",
        _mutated(env, node, lambda m: setattr(m, "bit_count", m.bit_count + 8)),
        "filter.malformed",
    )
    negative(
        "filter-signed-by-another-node-certificate",
        "Signed by the Nanjing node's certificate although served for Hefei.",
        sign(MEMBERSHIP_FILTER_TYPE, env.payload, other_node.identity),
        "filter.signer",
    )
    msg = routing_pb2.MembershipFilter.FromString(env.payload)
    return {
        "see": "docs/protocol.md#routing",
        "routing_key_hex": KEY._key.hex(),
        "key_id_hex": KEY.key_id.hex(),
        "tag": "HMAC-SHA256(routing key, 'creditnet/route/v1' || 0x00 || USCC)",
        "positions": "h1 = tag[0:8] big-endian, h2 = tag[8:16] big-endian | 1, "
        "position i = (h1 + i * h2) mod bit_count for i in 0..hash_count-1; "
        "bit p is bit (p mod 8) of byte p div 8 (least significant first)",
        "members": sorted(c.code for c in MEMBERS),
        "verify_at": verify_at.isoformat(),
        "tags": tags,
        "filter": {
            "city": msg.city,
            "version": msg.version,
            "entries": msg.entries,
            "hash_count": msg.hash_count,
            "bit_count": msg.bit_count,
            "envelope_hex": env.SerializeToString(deterministic=True).hex(),
        },
        "negative": negatives,
    }
