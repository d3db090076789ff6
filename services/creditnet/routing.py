"""Membership filters: which city nodes may hold records of an enterprise (docs/protocol.md, "Routing").

Each node keeps a Bloom filter over *keyed tags* of the USCCs it holds
records of, signs it with its node certificate and serves it to the
aggregator only; the aggregator asks a city about an enterprise only when it
is the enterprise's registration city or its filter holds the enterprise.

The tags are HMAC-SHA256 under the network's **routing key**, a 32-byte
secret given to the member nodes and the aggregator out of band (``network
up`` writes it next to each server's keys). Whoever holds a filter but not
the key cannot test an enterprise against it: a filter tells them only its
size. The tag is the whole input of the filter, so one key serves every city
and the aggregator tests an enterprise with one HMAC whatever the number of
cities.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from google.protobuf.message import DecodeError

from creditnet.dates import ts_to_proto
from creditnet.domain import City
from creditnet.envelope import MEMBERSHIP_FILTER_TYPE, EnvelopeVerifier, digest, sign
from creditnet.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from creditnet.pki import Identity, RoleKind
from creditnet.v2 import envelope_pb2, routing_pb2

__all__ = [
    "MAX_AGE",
    "MAX_ESTIMATED_FP",
    "MAX_FILTER_BYTES",
    "RESIGN_INTERVAL",
    "BloomFilter",
    "RoutingKey",
    "VerifiedFilter",
    "sign_filter",
    "tag_hashes",
    "verify_filter",
]

KEY_BYTES: Final = 32
TAG_LABEL: Final = b"creditnet/route/v1\x00"
KEY_ID_LABEL: Final = b"creditnet/routing-key-id/v1\x00"
# Bloom parameters: k hash positions; m sized at BITS_PER_ENTRY per entry of
# the capacity, which is GROWTH times the enterprises held when (re)built.
# At capacity the false-positive rate is (1 - e^(-k/10))^k = 0.82%.
HASH_COUNT: Final = 7
BITS_PER_ENTRY: Final = 10
GROWTH: Final = 1.25
MIN_CAPACITY: Final = 1024
# Rebuilt larger once the estimated false-positive rate (fill ratio ^ k) passes this.
MAX_ESTIMATED_FP: Final = 0.0085
# What a verifier accepts.
MAX_HASH_COUNT: Final = 16
MIN_BIT_COUNT: Final = 64
# 6 MiB of payload: about 5 million enterprises at 10 bits each, under the 8 MiB message bound.
MAX_FILTER_BYTES: Final = 6 << 20
# A node re-signs its filter at least this often; an aggregator uses one at most MAX_AGE after issue.
RESIGN_INTERVAL: Final = dt.timedelta(seconds=30)
MAX_AGE: Final = dt.timedelta(seconds=120)
CLOCK_SKEW: Final = dt.timedelta(seconds=60)


class RoutingKey:
    """The network's routing key: HMAC key of the enterprises' tags."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a routing key is {KEY_BYTES} bytes, not {len(key)}")
        self._key = key
        self.key_id = hashlib.sha256(KEY_ID_LABEL + key).digest()[:8]
        # The keyed HMAC state is made once; a tag copies it instead of
        # running the key schedule again.
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def generate(cls) -> RoutingKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def load(cls, path: Path) -> RoutingKey:
        """Read a key file: 64 hex digits (a final newline allowed)."""
        try:
            text = path.read_text(encoding="ascii").strip()
            return cls(bytes.fromhex(text))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(
                "config.routing_key", f"{path} is not a routing key file (64 hex digits): {exc}"
            ) from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(self._key.hex() + "\n")

    def tag(self, uscc: str) -> bytes:
        """HMAC-SHA256(K, TAG_LABEL || USCC)."""
        mac = self._mac.copy()
        mac.update(TAG_LABEL + uscc.encode("ascii"))
        return mac.digest()


def tag_hashes(tag: bytes) -> tuple[int, int]:
    """The two hashes a tag's filter positions derive from (docs/protocol.md, "Routing")."""
    return int.from_bytes(tag[0:8], "big"), int.from_bytes(tag[8:16], "big") | 1


class BloomFilter:
    """A Bloom filter over routing tags; thread-safe (adds come from worker threads)."""

    def __init__(self, bit_count: int, hash_count: int, bits: bytearray | None = None, entries: int = 0):
        if bit_count < MIN_BIT_COUNT or bit_count % 8:
            raise ValueError(f"bit_count must be a multiple of 8 and at least {MIN_BIT_COUNT}")
        if not 1 <= hash_count <= MAX_HASH_COUNT:
            raise ValueError(f"hash_count must be 1 to {MAX_HASH_COUNT}")
        self.bit_count = bit_count
        self.hash_count = hash_count
        self.bits = bytearray(bit_count // 8) if bits is None else bits
        if len(self.bits) != bit_count // 8:
            raise ValueError("bits must be bit_count / 8 bytes")
        self.entries = entries
        self.set_bits = int.from_bytes(self.bits, "little").bit_count() if bits is not None else 0
        self._lock = threading.Lock()

    @classmethod
    def sized(cls, enterprises: int) -> BloomFilter:
        """Empty, for `enterprises` now and room to grow (GROWTH) at most MAX_ESTIMATED_FP."""
        capacity = max(MIN_CAPACITY, math.ceil(enterprises * GROWTH))
        return cls(-(-capacity * BITS_PER_ENTRY // 64) * 64, HASH_COUNT)

    def _positions(self, tag: bytes) -> list[int]:
        h1, h2 = tag_hashes(tag)
        m = self.bit_count
        return [(h1 + i * h2) % m for i in range(self.hash_count)]

    def add(self, tag: bytes) -> bool:
        """Insert; True when some bit was newly set (a new entry, as far as the filter can tell)."""
        return self.add_many((tag,)) > 0

    def add_many(self, tags: Iterable[bytes]) -> int:
        """Insert every tag; returns how many set a new bit (new entries, as far as the filter can tell)."""
        bits = self.bits
        m = self.bit_count
        k = range(self.hash_count)
        added = newly = 0
        with self._lock:
            for tag in tags:
                h1, h2 = tag_hashes(tag)
                new = 0
                for i in k:
                    p = (h1 + i * h2) % m
                    mask = 1 << (p & 7)
                    byte = bits[p >> 3]
                    if not byte & mask:
                        bits[p >> 3] = byte | mask
                        new += 1
                if new:
                    added += 1
                    newly += new
            self.set_bits += newly
            self.entries += added
        return added

    def __contains__(self, tag: bytes) -> bool:
        return self.contains_hashes(tag_hashes(tag))

    def contains_hashes(self, hashes: tuple[int, int]) -> bool:
        """Whether the filter holds the tag whose `tag_hashes` these are (stops at the first clear bit)."""
        h1, h2 = hashes
        bits = self.bits
        m = self.bit_count
        for i in range(self.hash_count):
            p = (h1 + i * h2) % m
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True

    @property
    def estimated_fp(self) -> float:
        """The false-positive rate the fill ratio gives: (set bits / m) ^ k."""
        return float((self.set_bits / self.bit_count) ** self.hash_count)

    def snapshot(self) -> tuple[bytes, int]:
        with self._lock:
            return bytes(self.bits), self.entries


def sign_filter(
    bloom: BloomFilter, city: City, version: int, issued_at: dt.datetime, key: RoutingKey, signer: Identity
) -> envelope_pb2.SignedEnvelope:
    """The node's signed filter (call in a worker thread: it copies and hashes megabytes)."""
    bits, entries = bloom.snapshot()
    payload = routing_pb2.MembershipFilter(
        city=city.code,
        version=version,
        issued_at=ts_to_proto(issued_at),
        key_id=key.key_id,
        entries=entries,
        hash_count=bloom.hash_count,
        bit_count=bloom.bit_count,
        bits=bits,
    )
    return sign(MEMBERSHIP_FILTER_TYPE, payload.SerializeToString(deterministic=True), signer)


@dataclass(frozen=True, slots=True)
class VerifiedFilter:
    city: City
    version: int
    issued_at: dt.datetime
    entries: int
    bloom: BloomFilter
    digest: bytes
    size: int

    def fresh(self, now: dt.datetime) -> bool:
        return now - self.issued_at <= MAX_AGE

    def holds(self, tag: bytes) -> bool:
        return tag in self.bloom

    def holds_hashes(self, hashes: tuple[int, int]) -> bool:
        """`holds` for a tag's `tag_hashes`, taken once for every city's filter."""
        return self.bloom.contains_hashes(hashes)


def verify_filter(
    verifier: EnvelopeVerifier,
    env: envelope_pb2.SignedEnvelope,
    *,
    city: City,
    members: frozenset[City],
    key: RoutingKey,
    now: dt.datetime,
    held: VerifiedFilter | None = None,
) -> VerifiedFilter:
    """Verify a filter served for `city` (docs/protocol.md, "Routing"); the first failing rule raises."""
    v = verifier.verify(env, MEMBERSHIP_FILTER_TYPE, what="filter", at=now, max_payload=MAX_FILTER_BYTES)
    if v.signer.role.kind is not RoleKind.NODE or v.signer.role.city != city:
        raise PermissionDenied(
            "filter.signer", f"the filter served for {city.code} is not signed by that city's node"
        )
    msg = routing_pb2.MembershipFilter()
    try:
        msg.ParseFromString(v.payload)
    except DecodeError:
        raise InvalidArgument("filter.malformed", "the payload is not a MembershipFilter") from None
    if msg.city != city.code:
        raise PermissionDenied("filter.city", f"the filter names city {msg.city[:16]!r}, not {city.code}")
    if city not in members:
        raise PermissionDenied("filter.city", f"{city.code} is not a member of the network")
    if (
        not 1 <= msg.hash_count <= MAX_HASH_COUNT
        or msg.bit_count < MIN_BIT_COUNT
        or msg.bit_count % 8
        or len(msg.bits) * 8 != msg.bit_count
        or not msg.HasField("issued_at")
        or msg.version == 0
    ):
        raise InvalidArgument(
            "filter.malformed",
            "hash_count, bit_count, bits, version or issued_at out of bounds or inconsistent",
        )
    if not hmac.compare_digest(msg.key_id, key.key_id):
        raise FailedPrecondition("filter.key", "the filter was made with another routing key")
    issued = msg.issued_at.ToDatetime(tzinfo=dt.UTC)
    if issued > now + CLOCK_SKEW:
        raise FailedPrecondition("filter.future", "the filter is issued in the future: check the clocks")
    if now - issued > MAX_AGE:
        raise FailedPrecondition(
            "filter.stale", f"the filter was issued {int((now - issued).total_seconds())} s ago"
        )
    if held is not None and (
        msg.version < held.version or (msg.version == held.version and digest(v.payload) != held.digest)
    ):
        raise FailedPrecondition(
            "filter.rollback", f"version {msg.version} does not follow the version held, {held.version}"
        )
    bloom = BloomFilter(msg.bit_count, msg.hash_count, bytearray(msg.bits), msg.entries)
    return VerifiedFilter(
        city=city,
        version=msg.version,
        issued_at=issued,
        entries=msg.entries,
        bloom=bloom,
        digest=digest(v.payload),
        size=len(v.payload),
    )
