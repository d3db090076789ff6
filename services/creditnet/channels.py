"""The calling side of the network's gRPC: mutual-TLS channels pinned to a role's name.

Everything a client needs (the bank's SDK included) and nothing of a server's.
"""

from __future__ import annotations

from typing import Any

import grpc

from creditnet.pki import Identity, TrustStore
from creditnet.server_certs import server_certificate_interceptors

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_RECEIVE_BYTES",
    "MAX_SEND_BYTES",
    "secure_channel",
]

# Bounds on what a peer may make us read or buffer.
MAX_RECEIVE_BYTES = 8 * 1024 * 1024
MAX_SEND_BYTES = 32 * 1024 * 1024

# Servers take small requests and may send large answers (a federated report
# holds five cities' records); clients the other way round (`creditnet.rpc`
# holds the servers' side).
CLIENT_LIMITS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_SEND_BYTES),
    ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
]

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *CLIENT_LIMITS,
    # Long-lived channels: notice a dead peer quickly instead of at the next call.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),
]


def secure_channel(
    target: str,
    identity: Identity,
    trust: TrustStore,
    server_name: str,
    *,
    own_connection: bool = False,
) -> grpc.aio.Channel:
    """A mutual-TLS channel that only accepts the server named `server_name`.

    Pinning the TLS target name to the role's DNS name (e.g.
    ``340100.node.creditnet``) means only the certificate the CA issued to
    that role completes the handshake, whatever address `target` is.

    While `trust` has a revocation check (a network directory is held), a
    server whose certificate the directory revokes is refused before each
    call, UNAUTHENTICATED ``cert.revoked`` (`creditnet.server_certs`).

    With `own_connection` the channel opens a TCP connection of its own
    rather than share one with other channels to `target` (a node's
    worker processes each serve the connections the kernel hands them).
    """
    creds = grpc.ssl_channel_credentials(trust.ca_pem, identity.key_pem, identity.cert_pem)
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)]
    if own_connection:
        # gRPC shares one connection between channels to one target unless told not to.
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.secure_channel(
        target,
        creds,
        options=options,
        interceptors=server_certificate_interceptors(target, identity, trust, server_name),
    )
