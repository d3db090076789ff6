"""The client side of a witness: the link a log asks for cosignatures, and what its refusals say."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from creditnet.channels import secure_channel
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.v2 import chain_pb2_grpc
from creditnet.witness.hedge import WitnessHealth

__all__ = ["SIZE_TRAILER", "WitnessLink", "held_size"]

# The trailer in which a witness that refuses a checkpoint for a wrong old size says the size it holds.
SIZE_TRAILER = "creditnet-witness-size"


@dataclass
class WitnessLink:
    """A witness this log asks for cosignatures, and what it last cosigned."""

    name: str
    endpoint: str
    stub: chain_pb2_grpc.WitnessServiceStub
    channel: grpc.aio.Channel
    size: int | None = None
    last_error: str = ""
    health: WitnessHealth = field(default_factory=WitnessHealth)
    # When set, the witness's key certificate is checked at every cosignature
    # (validity and the directory's revocations): a revoked witness key's
    # cosignature does not count towards the quorum.
    trust: TrustStore | None = None
    # The calls of this log in flight to it: the checkpoint's size, and when it was sent.
    sending: list[tuple[int, float]] = field(default_factory=list)

    def late(self, now: float, delay: float) -> bool:
        """Holding a call of this log for longer than `delay`: stuck, or far slower than usual."""
        return any(now - sent > delay for _, sent in self.sending)

    @classmethod
    def connect(
        cls, name: str, endpoint: str, identity: Identity, trust: TrustStore, server_name: str | None = None
    ) -> WitnessLink:
        from creditnet.domain import City

        server = server_name or (
            AGGREGATOR_SERVER_NAME if name == "national" else node_server_name(City.parse(name))
        )
        channel = secure_channel(endpoint, identity, trust, server)
        return cls(
            name=name,
            endpoint=endpoint,
            stub=chain_pb2_grpc.WitnessServiceStub(channel),
            channel=channel,
            trust=trust,
        )


def held_size(exc: grpc.aio.AioRpcError) -> int | None:
    """The size a witness that refused for a wrong old size says it holds (its trailer)."""
    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    known = dict(_trailing(exc)).get(SIZE_TRAILER)
    return int(known) if known is not None and known.isdigit() else None


def _trailing(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    md = exc.trailing_metadata() or ()
    return [(str(k), v.decode() if isinstance(v, bytes) else str(v)) for k, v in md]
