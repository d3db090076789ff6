"""Sealed answers: HPKE (RFC 9180, base mode) from a node to the asking bank.

The bank puts a fresh per-query recipient key in its signed query; every node
signs its CityAnswer as before and seals the serialised signed envelope to
that key. The seal's HPKE `info` binds the query digest (which commits to
the key itself) and the answering city, so a sealed answer opens only as the
answer of that city to that query. What is sealed is signed: after opening,
the bank verifies the node's signature and that the answer names the query
and the city (docs/protocol.md, "Sealed answers").

Only `cryptography`'s HPKE is used; nothing here is hand-rolled.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)

from creditnet.domain import City
from creditnet.errors import Error, InvalidArgument
from creditnet.v2 import envelope_pb2, query_pb2

__all__ = [
    "DEFAULT_SUITE",
    "INFO_LABEL",
    "OFF_LOOP_BYTES",
    "AnswerKey",
    "AnswerKeyPair",
    "AnswerSuite",
    "PrivateKey",
    "SealError",
    "open_sealed",
    "parse_answer_key",
    "seal",
    "seal_info",
]

INFO_LABEL: Final = b"creditnet sealed answer v2\x00"
X25519_KEY_BYTES: Final = 32
MLKEM768_KEY_BYTES: Final = 1184
MLKEM768_SEED_BYTES: Final = 64
# Answers this large (serialised) are sealed and opened off the event loop.
OFF_LOOP_BYTES: Final = 64 * 1024

PublicKey = x25519.X25519PublicKey | MLKEM768X25519PublicKey
PrivateKey = x25519.X25519PrivateKey | MLKEM768X25519PrivateKey


class AnswerSuite(enum.Enum):
    """The HPKE suites a bank may choose; the wire value is the HpkeSuite number."""

    MLKEM768_X25519 = query_pb2.HPKE_SUITE_MLKEM768_X25519_HKDF_SHA256_AES_256_GCM
    X25519 = query_pb2.HPKE_SUITE_X25519_HKDF_SHA256_AES_256_GCM

    @property
    def proto(self) -> query_pb2.HpkeSuite.ValueType:
        return query_pb2.HpkeSuite.ValueType(self.value)

    @property
    def hpke(self) -> Suite:
        kem = KEM.MLKEM768_X25519 if self is AnswerSuite.MLKEM768_X25519 else KEM.X25519
        return Suite(kem, KDF.HKDF_SHA256, AEAD.AES_256_GCM)

    @property
    def hpke_enc_length(self) -> int:
        """Bytes of the KEM's encapsulation at the head of a ciphertext."""
        return (KEM.MLKEM768_X25519 if self is AnswerSuite.MLKEM768_X25519 else KEM.X25519).enc_length()

    @property
    def key_bytes(self) -> int:
        return (
            MLKEM768_KEY_BYTES + X25519_KEY_BYTES if self is AnswerSuite.MLKEM768_X25519 else X25519_KEY_BYTES
        )

    @classmethod
    def from_proto(cls, value: int) -> AnswerSuite:
        for suite in cls:
            if suite.value == value:
                return suite
        raise InvalidArgument("query.answer_key_suite", f"unknown HPKE suite {value} for the answer key")


DEFAULT_SUITE: Final = AnswerSuite.MLKEM768_X25519


@dataclass(frozen=True, slots=True)
class AnswerKeyPair:
    """The bank's private key for one query's answers, with its public half."""

    suite: AnswerSuite
    private_key: PrivateKey
    public_bytes: bytes

    @classmethod
    def generate(cls, suite: AnswerSuite = DEFAULT_SUITE) -> AnswerKeyPair:
        if suite is AnswerSuite.X25519:
            return cls._x25519(x25519.X25519PrivateKey.generate())
        return cls._hybrid(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, suite: AnswerSuite, seed: bytes) -> AnswerKeyPair:
        """A fixed key pair from a secret seed (test vectors only)."""
        x = x25519.X25519PrivateKey.from_private_bytes(hashlib.sha256(b"x25519" + seed).digest())
        if suite is AnswerSuite.X25519:
            return cls._x25519(x)
        m_seed = hashlib.sha512(b"mlkem768" + seed).digest()[:MLKEM768_SEED_BYTES]
        return cls._hybrid(mlkem.MLKEM768PrivateKey.from_seed_bytes(m_seed), x)

    @classmethod
    def _x25519(cls, key: x25519.X25519PrivateKey) -> AnswerKeyPair:
        return cls(AnswerSuite.X25519, key, key.public_key().public_bytes_raw())

    @classmethod
    def _hybrid(cls, m: mlkem.MLKEM768PrivateKey, x: x25519.X25519PrivateKey) -> AnswerKeyPair:
        public = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
        return cls(AnswerSuite.MLKEM768_X25519, MLKEM768X25519PrivateKey(m, x), public)

    @property
    def proto(self) -> query_pb2.AnswerKey:
        return query_pb2.AnswerKey(suite=self.suite.proto, public_key=self.public_bytes)


@dataclass(frozen=True, slots=True)
class AnswerKey:
    """A query's recipient key, parsed and checked."""

    suite: AnswerSuite
    public_key: PublicKey


def parse_answer_key(msg: query_pb2.CreditQuery) -> AnswerKey:
    """The query's answer key; refused (INVALID_ARGUMENT) when missing, of an unknown suite, or malformed."""
    if not msg.HasField("answer_key"):
        raise InvalidArgument(
            "query.answer_key_missing", "the query carries no answer key: answers are only ever sent sealed"
        )
    suite = AnswerSuite.from_proto(msg.answer_key.suite)
    raw = msg.answer_key.public_key
    if len(raw) != suite.key_bytes:
        raise InvalidArgument(
            "query.answer_key",
            f"an answer key of suite {suite.name} is {suite.key_bytes} bytes, not {len(raw)}",
        )
    try:
        x = x25519.X25519PublicKey.from_public_bytes(raw[-X25519_KEY_BYTES:])
        # A low-order X25519 point gives an all-zero shared secret, which
        # HPKE refuses: refuse it here, before anything is claimed or logged.
        x25519.X25519PrivateKey.generate().exchange(x)
        if suite is AnswerSuite.X25519:
            return AnswerKey(suite, x)
        m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_KEY_BYTES])
    except ValueError:
        raise InvalidArgument("query.answer_key", "the answer key is not a valid public key") from None
    return AnswerKey(suite, MLKEM768X25519PublicKey(m, x))


def seal_info(suite: AnswerSuite, query_digest: bytes, city: City) -> bytes:
    """HPKE info: label, suite, the query's digest and the answering city's code."""
    if len(query_digest) != 32:
        raise ValueError("a query digest is 32 bytes")
    return INFO_LABEL + bytes([suite.value]) + query_digest + city.code.encode("ascii")


def seal(
    key: AnswerKey, answer: envelope_pb2.SignedEnvelope, query_digest: bytes, city: City, *, discloses: bool
) -> query_pb2.SealedAnswer:
    """Seal a node's signed answer to the query's key (blocking: large answers go through a thread)."""
    plaintext = answer.SerializeToString(deterministic=True)
    ciphertext = key.suite.hpke.encrypt(
        plaintext, key.public_key, info=seal_info(key.suite, query_digest, city)
    )
    return query_pb2.SealedAnswer(suite=key.suite.proto, ciphertext=ciphertext, discloses=discloses)


class SealError(Error):
    """A sealed answer that does not open as the answer of this city to this query."""


def open_sealed(
    pair: AnswerKeyPair, sealed: query_pb2.SealedAnswer, query_digest: bytes, city: City
) -> envelope_pb2.SignedEnvelope:
    """Open a sealed answer as `city`'s answer to the query of `query_digest`; SealError otherwise.

    The result is only a signed envelope: the caller still verifies the
    node's signature and that the answer names this query and city.
    """
    if sealed.suite != pair.suite.value:
        raise SealError("the answer is sealed with another suite than the query's")
    try:
        plaintext = pair.suite.hpke.decrypt(
            sealed.ciphertext, pair.private_key, info=seal_info(pair.suite, query_digest, city)
        )
    except (InvalidTag, ValueError) as exc:
        raise SealError(
            f"the sealed answer does not open as this city's answer to this query ({type(exc).__name__})"
        ) from None
    env = envelope_pb2.SignedEnvelope()
    try:
        env.ParseFromString(plaintext)
    except Exception:
        raise SealError("the opened answer is not a signed envelope") from None
    return env
