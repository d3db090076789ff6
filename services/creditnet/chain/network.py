"""The network checkpoint: the aggregator's signed head of the credit chain, and its verification.

:func:`verify_network_checkpoint` checks the national signature on the note
and parses it; :func:`verify_network_response` checks a whole
`GetNetworkCheckpoint` response against the network CA alone. The response
carries the aggregator's signed network note, the cosigned city checkpoints
it was built from and every log-key certificate needed for both (the
national key, each city's log key and the witnesses that cosigned). A
verifier checks the national signature, then each city checkpoint's log
signature and witness quorum, and that the note names exactly the size and
root of each checkpoint given; a city the note names at a non-zero size must
come with its checkpoint (docs/chain.md, "Network checkpoint").
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from creditnet.chain.checkpoint import CosignedCheckpoint
from creditnet.chain.keys import NATIONAL, NETWORK_ORIGIN, known_keys, name_of_origin
from creditnet.chain.merkle import EMPTY_ROOT, HASH_SIZE
from creditnet.chain.note import ALG_ED25519, Note, NoteError, VerifierKey, open_note
from creditnet.chain.receipts import DEFAULT_QUORUM, ReceiptError, verify_checkpoint
from creditnet.domain import City
from creditnet.errors import CreditnetError, Error
from creditnet.pki import TrustStore
from creditnet.v2 import aggregator_pb2

__all__ = [
    "NetworkCheckpoint",
    "NetworkCheckpointError",
    "VerifiedNetwork",
    "verify_network_checkpoint",
    "verify_network_response",
]

_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class NetworkCheckpointError(Error, ValueError):
    """A network checkpoint that is malformed or not signed by the aggregator's log key."""


@dataclass(frozen=True, slots=True)
class NetworkCheckpoint:
    """The aggregator's signed head of the credit chain."""

    sequence: int
    previous: bytes
    cities: Mapping[str, tuple[int, bytes]]
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "previous": base64.b64encode(self.previous).decode(),
            "cities": {
                c: {"size": s, "root": base64.b64encode(r).decode()} for c, (s, r) in self.cities.items()
            },
            "note": self.note,
        }


def verify_network_checkpoint(
    trust: TrustStore, note: str, certificates: Sequence[bytes]
) -> NetworkCheckpoint:
    """Check the aggregator's signature (log key ``creditnet://logkey/national``) and parse."""
    keys = known_keys(trust, certificates)
    national = keys.get(NATIONAL)
    if national is None:
        raise NetworkCheckpointError(
            f"no valid log-key certificate for {NATIONAL} (creditnet://logkey/{NATIONAL}) came with it"
        )
    key = VerifierKey(NETWORK_ORIGIN, ALG_ED25519, national.log.public_key)
    try:
        opened = open_note(note, [key])
    except NoteError as exc:
        raise NetworkCheckpointError(f"the network checkpoint does not verify: {exc}") from None
    lines = opened.text[:-1].split("\n")
    if len(lines) < 3 or lines[0] != NETWORK_ORIGIN:
        raise NetworkCheckpointError(
            f"a network checkpoint starts with {NETWORK_ORIGIN}, a sequence and a hash"
        )
    if not _DECIMAL.fullmatch(lines[1]):
        raise NetworkCheckpointError(f"sequence {lines[1]!r} is not a decimal number")
    previous = _b64_hash(lines[2], "previous note hash")
    cities: dict[str, tuple[int, bytes]] = {}
    for line in lines[3:]:
        parts = line.split(" ")
        if len(parts) != 3 or not _DECIMAL.fullmatch(parts[1]):
            raise NetworkCheckpointError(f"city line {line!r} is not '<city> <size> <base64 root>'")
        try:
            name = City(parts[0]).value
        except ValueError as exc:
            raise NetworkCheckpointError(f"unknown city in the network checkpoint: {exc}") from None
        if name in cities:
            raise NetworkCheckpointError(f"{name} appears twice in the network checkpoint")
        if cities and name < max(cities):
            raise NetworkCheckpointError("the network checkpoint's cities are not in ascending code order")
        cities[name] = (int(parts[1]), _b64_hash(parts[2], f"root of {name}"))
    return NetworkCheckpoint(int(lines[1]), previous, cities, note)


def _b64_hash(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise NetworkCheckpointError(f"{what} is not base64") from None
    if len(raw) != HASH_SIZE:
        raise NetworkCheckpointError(f"{what} must be {HASH_SIZE} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class VerifiedNetwork:
    network: NetworkCheckpoint
    cities: dict[str, CosignedCheckpoint]


def verify_network_response(
    trust: TrustStore,
    response: aggregator_pb2.GetNetworkCheckpointResponse,
    quorum: int = DEFAULT_QUORUM,
    *,
    members: Iterable[City] | None = None,
) -> VerifiedNetwork:
    """Every signature and cosignature in the response; raises NetworkCheckpointError.

    `members`, the network's member cities as the verifier's directory
    names them, must be exactly the cities the checkpoint names; without
    them every name must at least be a city code.
    """
    certificates = list(response.key_certificates)
    network = verify_network_checkpoint(trust, response.checkpoint, certificates)
    for name in network.cities:
        try:
            City(name)
        except ValueError:
            raise NetworkCheckpointError(
                f"the network checkpoint names {name[:16]!r}, which is not a city code"
            ) from None
    if members is not None and set(network.cities) != {c.value for c in members}:
        raise NetworkCheckpointError(
            "the network checkpoint does not name exactly the directory's member cities"
        )
    cities: dict[str, CosignedCheckpoint] = {}
    for note in response.city_checkpoints:
        try:
            name = name_of_origin(Note.parse(note).text.split("\n", 1)[0])
        except (NoteError, CreditnetError) as exc:
            raise NetworkCheckpointError(f"a city checkpoint is not a log checkpoint: {exc}") from None
        if name in cities or name not in network.cities:
            raise NetworkCheckpointError(f"the checkpoint of {name} is not expected here, or comes twice")
        try:
            cp = verify_checkpoint(trust, note, certificates, name, quorum)
        except ReceiptError as exc:
            raise NetworkCheckpointError(f"the checkpoint of {name} does not verify: {exc}") from None
        if network.cities[name] != (cp.checkpoint.size, cp.checkpoint.root_hash):
            raise NetworkCheckpointError(f"the network checkpoint does not name {name}'s checkpoint")
        cities[name] = cp
    for name, (size, root) in network.cities.items():
        if name not in cities and (size, root) != (0, EMPTY_ROOT):
            raise NetworkCheckpointError(f"the cosigned checkpoint of {name} is missing")
    return VerifiedNetwork(network, cities)
