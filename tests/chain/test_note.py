"""C2SP signed notes: keys, signing, parsing, verification rules, cosignature/v1.

Fixed vectors (vectors/signed_note.json) come from golang.org/x/mod sumdb/note
(note.go, note_test.go) and transparency-dev/formats (note/note_cosigv1_test.go).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from creditnet.chain.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    MAX_SIGNATURES,
    Note,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    Signer,
    VerifierKey,
    cosignature_message,
    key_id,
    open_note,
    sign_note,
    validate_key_name,
)

V: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "signed_note.json").read_text())
TEXT: str = V["text"]
PETER_SIG: str = V["peter_sig_line"]
ENOCH_SIG: str = V["enoch_sig_line"]
PETER = VerifierKey.parse(V["peter_vkey"])
ENOCH = VerifierKey.parse(V["enoch_vkey"])


def tamper_line(line: str) -> str:
    """The Go tests' corruption: insert "ABCD" into the base64 at character 60."""
    return line[:60] + "ABCD" + line[60:]


# --------------------------------------------------------------- keys


def test_verifier_key_vectors() -> None:
    assert PETER.name == "PeterNeumann"
    assert PETER.alg == ALG_ED25519
    assert f"{PETER.key_id:08x}" == V["peter_key_id"]
    assert f"{ENOCH.key_id:08x}" == V["enoch_key_id"]
    assert PETER.encode() == V["peter_vkey"]
    assert key_id(PETER.name, ALG_ED25519, PETER.public_key) == PETER.key_id


def test_vkey_with_plus_in_base64_and_native_cosignature_key() -> None:
    plus = VerifierKey.parse(V["plus_vkey"])
    assert plus.name == "TEST"
    assert plus.encode() == V["plus_vkey"]
    cosigner = VerifierKey.parse(V["cosigv1_vkey"])
    assert cosigner.alg == ALG_COSIGNATURE_V1
    assert cosigner.encode() == V["cosigv1_vkey"]


def test_every_mangled_verifier_key_is_rejected() -> None:
    # golang.org/x/mod sumdb/note TestNewVerifier: every proper substring and
    # every single-byte increment of the key must fail.
    vkey = V["peter_vkey"]
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(NoteError):
                    VerifierKey.parse(vkey[i:j])
    for i in range(len(vkey)):
        with pytest.raises(NoteError):
            VerifierKey.parse(vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :])
    for bad in V["bad_vkeys"]:
        with pytest.raises(NoteError):
            VerifierKey.parse(bad)


def test_every_mangled_signer_key_is_rejected() -> None:
    skey = V["peter_skey"]
    assert Signer.parse(skey).encode() == skey
    for i in range(len(skey) + 1):
        for j in range(i + 1, len(skey) + 1):
            if (i, j) != (0, len(skey)):
                with pytest.raises(NoteError):
                    Signer.parse(skey[i:j])
    for i in range(len(skey)):
        with pytest.raises(NoteError):
            Signer.parse(skey[:i] + chr(ord(skey[i]) + 1) + skey[i + 1 :])


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann++c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f_0a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
        "PeterNeumann+c74f20a3+",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "rekor.sigstore.dev+12345678+AwEB",
    ],
)
def test_malformed_vkeys(vkey: str) -> None:
    with pytest.raises(NoteError):
        VerifierKey.parse(vkey)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\there", "nbsp\u00a0", "ideo\u3000"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(NoteError):
        validate_key_name(name)
    with pytest.raises(NoteError):
        VerifierKey(name, ALG_ED25519, bytes(32))


def test_key_construction_errors() -> None:
    with pytest.raises(NoteError, match="32 bytes"):
        VerifierKey("k", ALG_ED25519, bytes(31))
    with pytest.raises(NoteError, match="not supported"):
        VerifierKey("k", 0x02, bytes(32))
    with pytest.raises(NoteError, match="seed must be 32 bytes"):
        Signer.from_seed("k", bytes(16))


def test_same_key_has_different_ids_per_signature_type() -> None:
    signer = Signer.generate("witness.example/w1")
    pub = signer.verifier.public_key
    as_cosigner = VerifierKey(signer.name, ALG_COSIGNATURE_V1, pub)
    assert as_cosigner.key_id != signer.key_id
    assert as_cosigner.key_id == key_id(signer.name, 0x04, pub)


# --------------------------------------------------------------- signing


def test_sign_reproduces_the_go_vector() -> None:
    signer = Signer.parse(V["peter_skey"])
    assert signer.verifier == PETER
    assert sign_note(TEXT, [signer]) == TEXT + "\n" + PETER_SIG


def test_resigning_replaces_the_same_key_and_keeps_others() -> None:
    signer = Signer.parse(V["peter_skey"])
    enoch = NoteSignature.parse_line(ENOCH_SIG)
    stale = NoteSignature("PeterNeumann", PETER.key_id, b"BADSIGN")
    assert sign_note(TEXT, [signer], [stale, enoch]) == TEXT + "\n" + ENOCH_SIG + PETER_SIG


@pytest.mark.parametrize("text", ["no final newline", "bell\x07\n", ""])
def test_sign_rejects_bad_text(text: str) -> None:
    with pytest.raises(NoteError):
        sign_note(text, [Signer.generate("k")])


def test_sign_needs_a_signer() -> None:
    with pytest.raises(NoteError, match="at least one signer"):
        sign_note(TEXT, [])


def test_generated_keys_round_trip_through_text_forms() -> None:
    for alg in (ALG_ED25519, ALG_COSIGNATURE_V1):
        signer = Signer.generate("creditnet.example/yrd/340100", alg)
        again = Signer.parse(signer.encode())
        assert again.verifier == signer.verifier
        assert VerifierKey.parse(signer.verifier.encode()) == signer.verifier
        note = sign_note("line\n", [again])
        assert open_note(note, [signer.verifier]).text == "line\n"


# --------------------------------------------------------------- opening


def test_open_with_one_known_and_one_unknown_key() -> None:
    opened = open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [PETER])
    assert opened.text == TEXT
    assert opened.verified == (NoteSignature.parse_line(PETER_SIG),)
    assert opened.unverified == (NoteSignature.parse_line(ENOCH_SIG),)
    assert opened.verified_by(PETER) is not None
    assert opened.verified_by(ENOCH) is None


def test_open_with_both_keys() -> None:
    opened = open_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode(), [PETER, ENOCH])
    assert [s.name for s in opened.verified] == ["PeterNeumann", "EnochRoot"]
    assert opened.unverified == ()


def test_open_without_trusted_signature_fails() -> None:
    with pytest.raises(NoteVerificationError, match="no valid signature by a trusted key"):
        open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])


def test_name_or_id_alone_matching_is_an_unknown_key() -> None:
    # A key that shares only the name (or only the ID) is not the signer.
    other = Signer.generate("PeterNeumann").verifier
    with pytest.raises(NoteVerificationError, match="no valid signature"):
        open_note(TEXT + "\n" + PETER_SIG, [other])


def test_bad_signature_by_trusted_key_rejects_the_note() -> None:
    with pytest.raises(NoteVerificationError, match=r"PeterNeumann\+c74f20a3 does not verify"):
        open_note(TEXT + "\n" + tamper_line(PETER_SIG), [PETER])
    # Even when another trusted key's signature is fine.
    with pytest.raises(NoteVerificationError):
        open_note(TEXT + "\n" + ENOCH_SIG + tamper_line(PETER_SIG), [PETER, ENOCH])


def test_duplicates_are_dropped() -> None:
    msg = TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + tamper_line(ENOCH_SIG)
    opened = open_note(msg, [PETER])
    assert opened.verified == (NoteSignature.parse_line(PETER_SIG),)
    assert opened.unverified == (
        NoteSignature.parse_line(ENOCH_SIG),
        NoteSignature.parse_line(tamper_line(ENOCH_SIG)),
    )


def test_identical_trusted_keys_may_repeat() -> None:
    assert open_note(TEXT + "\n" + PETER_SIG, [PETER, PETER, ENOCH]).verified


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name")[:-1],
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG.replace("—", "-"),
        TEXT + "\n" + PETER_SIG.replace("x08go", "x08g!"),
        TEXT + "\n" + PETER_SIG.replace("=\n", "\n"),
        TEXT + "\n" + "— PeterNeumann AAAAAA==\n",
        TEXT + "\n" + "— PeterNeumann \n",
        TEXT + "\n" + "— PeterNeumann\n",
        TEXT + "\r\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1),
    ],
)
def test_malformed_notes_are_rejected(msg: str) -> None:
    with pytest.raises(NoteError) as info:
        open_note(msg, [PETER])
    assert not isinstance(info.value, NoteVerificationError)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        Note.parse(b"\xff" + (TEXT + "\n" + PETER_SIG).encode())


def test_text_may_contain_blank_lines_the_last_one_separates() -> None:
    signer = Signer.generate("k")
    text = "para one\n\npara two\n"
    note = Note.parse(sign_note(text, [signer]))
    assert note.text == text
    assert open_note(note, [signer.verifier]).text == text


def test_sixteen_signatures_are_accepted() -> None:
    signers = [Signer.generate(f"k{i}") for i in range(16)]
    note = sign_note(TEXT, signers)
    opened = open_note(note, [s.verifier for s in signers])
    assert len(opened.verified) == 16


def test_any_change_to_the_text_breaks_the_signature() -> None:
    note = TEXT + "\n" + PETER_SIG
    for i in range(len(TEXT)):
        if TEXT[i] == "\n":
            continue
        changed = note[:i] + ("X" if note[i] != "X" else "Y") + note[i + 1 :]
        with pytest.raises(NoteVerificationError):
            open_note(changed, [PETER])


# --------------------------------------------------------------- cosignature/v1


def test_cosignature_signs_the_spec_message() -> None:
    private = Ed25519PrivateKey.generate()
    signer = Signer("witness.example/w1", private, ALG_COSIGNATURE_V1)
    text = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    sig = signer.sign(text, timestamp=1679315147)
    assert sig.timestamp == 1679315147
    assert sig.signature[:8] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + text
    assert cosignature_message(1679315147, text) == message
    private.public_key().verify(sig.signature[8:], message)  # raises if not over that message
    assert signer.verifier.verify(text, sig.signature)
    assert not signer.verifier.verify(text + b"x\n", sig.signature)
    tampered = (1679315148).to_bytes(8, "big") + sig.signature[8:]
    assert not signer.verifier.verify(text, tampered)


def test_cosignature_timestamp_defaults_to_the_clock() -> None:
    signer = Signer("w", Ed25519PrivateKey.generate(), ALG_COSIGNATURE_V1, clock=lambda: 1_700_000_000.9)
    assert signer.sign(b"a\nb\nc\n").timestamp == 1_700_000_000


def test_signature_types_do_not_verify_each_other() -> None:
    private = Ed25519PrivateKey.generate()
    plain = Signer("k", private, ALG_ED25519)
    cosigner = Signer("k", private, ALG_COSIGNATURE_V1)
    text = b"a\nb\nc\n"
    assert not plain.verifier.verify(text, cosigner.sign(text).signature)
    assert not cosigner.verifier.verify(text, plain.sign(text).signature)
    with pytest.raises(NoteError, match="timestamp"):
        plain.sign(text, timestamp=1)


def test_cosignature_timestamps_from_published_signatures() -> None:
    raw = base64.b64decode(V["cosig_timestamp_b64"])
    sig = NoteSignature("remora.n621.de", int.from_bytes(raw[:4], "big"), raw[4:])
    assert sig.timestamp == V["cosig_timestamp"]
    assert NoteSignature.parse_line(V["spec_cosig_line"]).timestamp == V["spec_cosig_timestamp"]
    with pytest.raises(NoteError, match="not a cosignature"):
        _ = NoteSignature.parse_line(PETER_SIG).timestamp


@pytest.mark.parametrize("timestamp", [-1, 2**63])
def test_cosignature_timestamp_range(timestamp: int) -> None:
    signer = Signer.generate("w", ALG_COSIGNATURE_V1)
    with pytest.raises(NoteError, match="outside"):
        signer.sign(b"a\nb\nc\n", timestamp=timestamp)


def test_cosignature_with_timestamp_above_int63_does_not_verify() -> None:
    signer = Signer.generate("w", ALG_COSIGNATURE_V1)
    sig = signer.sign(b"a\nb\nc\n", timestamp=5).signature
    assert not signer.verifier.verify(b"a\nb\nc\n", (2**63).to_bytes(8, "big") + sig[8:])
