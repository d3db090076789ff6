"""docs/protocol.md "Protobuf encoding": verifiers check the exact bytes and accept any encoding that
parses; an encoding is an object of its own (its own digest)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf import json_format

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.envelope import QUERY_TYPE, EnvelopeVerifier, digest, sign
from creditnet.pki import TrustStore
from creditnet.v2 import query_pb2
from creditnet_devkit.vectors import core

CAST = core.make_cast()
ENVS = core.make_envelopes(CAST)
CANONICAL = ENVS.query.payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """Top-level (field number, wire type, raw value) of a message using wire types 0 and 2."""
    out = []
    at = 0
    while at < len(data):
        tag, at = _read_varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            start = at
            _, at = _read_varint(data, at)
            out.append((number, wire, data[start:at]))
        else:
            assert wire == 2
            length, at = _read_varint(data, at)
            out.append((number, wire, data[at : at + length]))
            at += length
    return out


def _encode(fields: list[tuple[int, int, bytes]]) -> bytes:
    out = b""
    for number, wire, raw in fields:
        out += _varint(number << 3 | wire) + (raw if wire == 0 else _varint(len(raw)) + raw)
    return out


def _reordered(data: bytes) -> bytes:
    return _encode(list(reversed(_fields(data))))


def _explicit_default(data: bytes) -> bytes:
    # issued_at (field 7) with its nanos (field 2) written as an explicit 0.
    return _encode([(n, w, raw + b"\x10\x00" if n == 7 else raw) for n, w, raw in _fields(data)])


def _unpacked(data: bytes) -> bytes:
    # categories (field 5) as one varint per value instead of one packed field.
    out: list[tuple[int, int, bytes]] = []
    for n, w, raw in _fields(data):
        if n == 5 and w == 2:
            at = 0
            while at < len(raw):
                start = at
                _, at = _read_varint(raw, at)
                out.append((5, 0, raw[start:at]))
        else:
            out.append((n, w, raw))
    return _encode(out)


def _unknown_field(data: bytes) -> bytes:
    return data + _varint(99 << 3) + b"\x00"


VARIANTS: dict[str, Callable[[bytes], bytes]] = {
    "fields-in-reverse-order": _reordered,
    "default-written-explicitly": _explicit_default,
    "repeated-enum-not-packed": _unpacked,
    "unknown-field": _unknown_field,
}


def test_the_reference_signer_writes_the_canonical_encoding() -> None:
    parsed = query_pb2.CreditQuery.FromString(CANONICAL)
    assert parsed.SerializeToString(deterministic=True) == CANONICAL
    assert [n for n, _, _ in _fields(CANONICAL)] == sorted(n for n, _, _ in _fields(CANONICAL))


@pytest.mark.parametrize("encode", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_non_canonical_encoding_is_verified_over_its_exact_bytes_and_accepted(
    encode: Callable[[bytes], bytes],
) -> None:
    payload = encode(CANONICAL)
    assert payload != CANONICAL
    # The same message (what a parser reads; an unknown field is ignored)...
    read = json_format.MessageToDict(query_pb2.CreditQuery.FromString(payload))
    assert read == json_format.MessageToDict(query_pb2.CreditQuery.FromString(CANONICAL))
    env = sign(QUERY_TYPE, payload, CAST.bank.identity)
    verifier = EnvelopeVerifier(TrustStore(CAST.ca.ca.cert))
    got = query_mod.authorize(verifier, env, city=pilot.HEFEI, now=core.VERIFY_AT)
    # ...but another object: named by the digest of the bytes signed.
    assert got.digest == digest(payload) != digest(CANONICAL)
    assert got.terms.query_id == core.QUERY_ID
