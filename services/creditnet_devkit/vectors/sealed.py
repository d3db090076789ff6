"""Decrypt-only test vectors for sealed answers (docs/protocol.md, "Sealed answers").

Written with the other vectors by ``python -m creditnet_devkit.vectors`` as
``sealed.json``. The recipient keys are fixed (derived from labels), but
HPKE's encapsulation is randomised and `cryptography` takes no fixed
randomness: each ciphertext was therefore sealed once, by the code the
network runs (`sealing.seal`), and is kept in ``sealed.json`` beside
this module. Generating checks that every kept ciphertext still opens, with
the fixed key and this protocol's info, to exactly the signed answer the
vectors define; if the protocol changed and it no longer does, generating
fails until ``python -m creditnet_devkit.vectors.sealed --reseal`` seals afresh.
Regeneration is therefore byte-identical.

The private keys in the vectors are public knowledge: never trust them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from creditnet import pilot
from creditnet.domain import City
from creditnet.envelope import digest
from creditnet.sealing import (
    DEFAULT_SUITE,
    INFO_LABEL,
    AnswerKeyPair,
    AnswerSuite,
    SealError,
    open_sealed,
    parse_answer_key,
    seal,
    seal_info,
)
from creditnet.v2 import envelope_pb2, query_pb2

__all__ = [
    "SealedCase",
    "answer_key",
    "main",
    "make_cases",
    "render",
    "reseal",
    "seed",
]

RECORDED: Final = Path(__file__).with_name("sealed.json")
_SEED_PREFIX: Final = b"creditnet test vector answer key v1: "
# RFC 9180 / draft-ietf-hpke-pq identifiers of each suite.
_IDS: Final = {
    AnswerSuite.MLKEM768_X25519: {"kem_id": 0x647A, "kdf_id": 0x0001, "aead_id": 0x0002},
    AnswerSuite.X25519: {"kem_id": 0x0020, "kdf_id": 0x0001, "aead_id": 0x0002},
}


def seed(suite: AnswerSuite) -> bytes:
    return _SEED_PREFIX + suite.name.encode("ascii")


def answer_key(suite: AnswerSuite = DEFAULT_SUITE) -> AnswerKeyPair:
    """The fixed answer key pair of a suite's vector query."""
    return AnswerKeyPair.from_seed(suite, seed(suite))


def _private_material(suite: AnswerSuite) -> dict[str, str]:
    # As AnswerKeyPair.from_seed derives them.
    s = seed(suite)
    out = {"x25519_private_key": hashlib.sha256(b"x25519" + s).digest().hex()}
    if suite is AnswerSuite.MLKEM768_X25519:
        out["mlkem768_seed"] = hashlib.sha512(b"mlkem768" + s).digest()[:64].hex()
    return out


@dataclass(frozen=True, slots=True)
class SealedCase:
    suite: AnswerSuite
    query: envelope_pb2.SignedEnvelope
    answer: envelope_pb2.SignedEnvelope
    city: City


def _recorded() -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads(RECORDED.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    return data


def _ciphertext(case: SealedCase, recorded: dict[str, str]) -> bytes:
    pair = answer_key(case.suite)
    text = recorded.get(case.suite.name)
    if text is None:
        raise SystemExit(
            f"no recorded sealed answer for {case.suite.name}:"
            " run python -m creditnet_devkit.vectors.sealed --reseal"
        )
    ciphertext = base64.b64decode(text)
    sealed = query_pb2.SealedAnswer(suite=case.suite.proto, ciphertext=ciphertext)
    try:
        opened = open_sealed(pair, sealed, digest(case.query.payload), case.city)
    except SealError:
        opened = None
    if opened is None or opened.SerializeToString(deterministic=True) != _plaintext(case):
        raise SystemExit(
            f"the recorded sealed answer for {case.suite.name} no longer opens to the vector answer"
            " (the protocol changed?): run python -m creditnet_devkit.vectors.sealed --reseal"
        )
    return ciphertext


def _plaintext(case: SealedCase) -> bytes:
    return case.answer.SerializeToString(deterministic=True)


def reseal(cases: Sequence[SealedCase]) -> dict[str, str]:
    """Seal every case afresh (random encapsulation) with the network's own code."""
    out: dict[str, str] = {}
    for case in cases:
        q = query_pb2.CreditQuery.FromString(case.query.payload)
        sealed = seal(parse_answer_key(q), case.answer, digest(case.query.payload), case.city, discloses=True)
        out[case.suite.name] = base64.b64encode(sealed.ciphertext).decode("ascii")
    return out


def render(cases: Sequence[SealedCase], message_json: Any) -> dict[str, Any]:
    recorded = _recorded()
    vectors: list[Any] = []
    negatives: list[Any] = []
    other_city = pilot.NANJING
    for case in cases:
        qd = digest(case.query.payload)
        ct = _ciphertext(case, recorded)
        pair = answer_key(case.suite)
        name = f"sealed-answer-{case.suite.name.lower().replace('_', '-')}"
        vectors.append(
            {
                "name": name,
                "suite": query_pb2.HpkeSuite.Name(case.suite.proto),
                **_IDS[case.suite],
                "mode": "base",
                "recipient": {**_private_material(case.suite), "public_key": pair.public_bytes.hex()},
                "query_envelope_json": message_json(case.query),
                "query_digest": qd.hex(),
                "city": case.city.code,
                "info": seal_info(case.suite, qd, case.city).hex(),
                "enc_length": case.suite.hpke_enc_length,
                "ciphertext": ct.hex(),
                "plaintext": _plaintext(case).hex(),
                "answer_payload_digest": digest(case.answer.payload).hex(),
            }
        )
        negatives.append(
            {
                "name": f"{name}-as-another-city",
                "vector": name,
                "description": f"Opened as the {other_city.code} node's answer: it does not open.",
                "info": seal_info(case.suite, qd, other_city).hex(),
                "expect": "open fails",
            }
        )
        negatives.append(
            {
                "name": f"{name}-for-another-query",
                "vector": name,
                "description": "Opened as the answer to another query: it does not open.",
                "info": seal_info(case.suite, hashlib.sha256(b"another query").digest(), case.city).hex(),
                "expect": "open fails",
            }
        )
    return {
        "format_version": 1,
        "spec": "docs/protocol.md#sealed-answers",
        "warning": "TEST KEYS: these private keys are published; never trust them outside tests.",
        "description": (
            "Decrypt-only vectors: HPKE (RFC 9180) base-mode single-shot open of `ciphertext` (enc"
            " followed by the AEAD ciphertext, no AAD) with the recipient's private key and `info`"
            " gives `plaintext`, the serialised SignedEnvelope of the node's answer. info is"
            f" {INFO_LABEL!r} || suite (1 byte) || query_digest || city (ASCII). The ML-KEM-768 +"
            " X25519 private key is the ML-KEM-768 seed (FIPS 203 d || z) and the X25519 private"
            " key; its public key is the ML-KEM encapsulation key followed by the X25519 key."
        ),
        "vectors": vectors,
        "negative": negatives,
    }


def make_cases(cast: Any, consent: envelope_pb2.SignedEnvelope) -> list[SealedCase]:
    """`cast` is the vectors' `Cast`: its bank asks, its node answers."""
    from creditnet.envelope import ANSWER_TYPE, sign
    from creditnet_devkit.vectors import core

    cases = []
    node = cast.node.identity
    for suite in AnswerSuite:
        q = core.query_envelope(cast.bank.identity, consent, suite=suite)
        answer = sign(ANSWER_TYPE, core.answer_payload(q, cast), node)
        cases.append(SealedCase(suite, q, answer, pilot.HEFEI))
    return cases


def main(argv: Sequence[str] | None = None) -> int:
    from creditnet import consent as consent_mod
    from creditnet_devkit.vectors import core

    parser = argparse.ArgumentParser(prog="python -m creditnet_devkit.vectors.sealed")
    parser.add_argument("--reseal", action="store_true", help="seal the vector answers afresh")
    args = parser.parse_args(argv)
    if not args.reseal:
        parser.error("nothing to do: pass --reseal (python -m creditnet_devkit.vectors writes the vectors)")
    cast = core.make_cast()
    consent = consent_mod.grant(cast.enterprise.identity, core.consent_terms())
    recorded = reseal(make_cases(cast, consent))
    RECORDED.write_text(json.dumps(recorded, indent=2) + "\n", "utf-8")
    print(RECORDED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
