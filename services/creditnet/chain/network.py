"""Verifying a whole `GetNetworkCheckpoint` response against the network CA alone.

The response carries the aggregator's signed network note, the cosigned city
checkpoints it was built from and every log-key certificate needed for both
(the national key, each city's log key and the witnesses that cosigned). A
verifier checks the national signature, then each city checkpoint's log
signature and witness quorum, and that the note names exactly the size and
root of each checkpoint given; a city the note names at a non-zero size must
come with its checkpoint (docs/chain.md, "Network checkpoint").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from creditnet.chain.audit import NetworkCheckpoint, NetworkCheckpointError, verify_network_checkpoint
from creditnet.chain.checkpoint import CosignedCheckpoint
from creditnet.chain.keys import name_of_origin
from creditnet.chain.merkle import EMPTY_ROOT
from creditnet.chain.note import Note, NoteError
from creditnet.chain.receipts import DEFAULT_QUORUM, ReceiptError, verify_checkpoint
from creditnet.domain import City
from creditnet.errors import CreditnetError
from creditnet.pki import TrustStore
from creditnet.v2 import aggregator_pb2

__all__ = ["VerifiedNetwork", "verify_network_response"]


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
