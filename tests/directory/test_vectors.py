"""The published directory test vectors are current and the real verifier concludes what they say."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509

from creditnet.directory import verify
from creditnet.directory.model import Directory
from creditnet.errors import CreditnetError
from creditnet.pki import TrustStore
from creditnet.v2 import envelope_pb2
from creditnet_devkit.vectors.directory import FILE_NAME, generate

PATH = Path(__file__).resolve().parents[2] / "docs" / "test-vectors" / "v2" / FILE_NAME
DOC = json.loads(PATH.read_text(encoding="utf-8"))


def test_the_directory_vectors_are_what_the_generator_makes() -> None:
    assert generate()[FILE_NAME] == PATH.read_bytes(), "run: python -m creditnet_devkit.vectors"


def test_the_vectors_cover_the_cases_the_issue_names() -> None:
    names = {c["name"] for c in DOC["cases"]}
    assert {
        "valid-first",
        "below-threshold",
        "rolled-back",
        "expired",
        "rotated-valid",
        "rotated-new-keys-only",
    } <= names


@pytest.mark.parametrize("case", DOC["cases"], ids=lambda c: c["name"])
def test_each_directory_vector_verifies_as_published(case: dict[str, object]) -> None:
    trust = TrustStore(x509.load_pem_x509_certificate(DOC["ca_certificate_pem"].encode()))
    at = dt.datetime.fromisoformat(DOC["verify_at"].replace("Z", "+00:00"))
    trusted = None
    if case["trusted_envelope_b64"]:
        env = envelope_pb2.SignedEnvelope.FromString(base64.b64decode(str(case["trusted_envelope_b64"])))
        issued = Directory.from_payload(env.payload).issued_at
        trusted = verify(env, trust=trust, anchor_sha256=hashlib.sha256(env.payload).digest(), at=issued)
    candidate = base64.b64decode(str(case["candidate_envelope_b64"]))
    anchor = bytes.fromhex(str(case["anchor_sha256"])) if case["anchor_sha256"] else None
    expected = case["expected"]
    assert isinstance(expected, dict)
    if expected["valid"]:
        assert (
            verify(candidate, trust=trust, trusted=trusted, anchor_sha256=anchor, at=at).version
            == expected["version"]
        )
    else:
        with pytest.raises(CreditnetError) as err:
            verify(candidate, trust=trust, trusted=trusted, anchor_sha256=anchor, at=at)
        assert err.value.rule == expected["rule"]
