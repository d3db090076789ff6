"""The client side of revocation: the certificate of a server we call, checked against the directory.

A server holding the network directory refuses revoked certificates of its
callers (`creditnet.directory.serving.DirectoryGate`); this module makes the
caller refuse a server whose certificate the directory revokes: the
aggregator calling a node, a node calling a witness, a refresh round, the
bank SDK calling the aggregator.

grpc python gives a client neither the server's certificate of a call nor a
verification callback, so the certificate is read by a TLS handshake of its
own (`probe`): the same address, the same client identity, the same CA, the
same pinned server name, ALPN h2 — off the event loop. What it learnt is
kept per channel and re-read every `PROBE_TTL` seconds and after a call that
failed UNAVAILABLE (the connection was lost: the server may have restarted
with another certificate); the revocation check itself runs at every call,
so a directory that revokes the certificate takes effect at the next call.

Fail closed: while the trust store has a revocation check (a directory is
held) and the server's certificate could not be read, calls are refused
UNAVAILABLE ``peer.unverified``; a revoked one UNAUTHENTICATED
``cert.revoked``. Without a revocation check (a server holding no directory) calls pass
untouched.

Known limit: the probe and gRPC's own connection are two TCP connections. An
attacker who holds a revoked key and can route the two differently (serve
the probe from the real server) is not stopped by this check alone; every
signed object it would relay is still checked (`<what>.cert.revoked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from creditnet.errors import CreditnetError, Unauthenticated
from creditnet.pki import Identity, TrustStore, VerifiedCert

__all__ = [
    "ServerCertificate",
    "probe",
    "server_certificate_interceptors",
    "tls_context",
]

# Re-read a server's certificate at least this often (seconds).
PROBE_TTL = 60.0
# The probe's connect and handshake bound (seconds) for a call without a deadline;
# a call with one gives its probe all of it.
PROBE_TIMEOUT = 10.0


def _split_target(target: str) -> tuple[str, int]:
    """host and port of ``host:port``, ``[v6]:port`` or ``ipv4:host:port``; ValueError otherwise."""
    rest = target.removeprefix("ipv4:").removeprefix("ipv6:").removeprefix("dns:///")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cannot read host:port from target {target!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path that reads `data` (the client's key and certificate), for `SSLContext.load_cert_chain`.

    An anonymous in-memory file where the system has one, so the private key
    never touches a disk; elsewhere a file readable only by us in a private
    temporary directory, removed at once.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and Path("/proc/self/fd").is_dir():
        fd = memfd_create("creditnet-tls-identity", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="creditnet-tls-") as tmp:
        path = Path(tmp) / "identity.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        yield str(path)


def tls_context(identity: Identity, trust: TrustStore) -> ssl.SSLContext:
    """A client TLS context like gRPC's: our certificate, the network CA only, ALPN h2."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=trust.ca_pem.decode("ascii"))
    ctx.set_alpn_protocols(["h2"])
    with _pem_file(identity.cert_pem + b"\n" + identity.key_pem) as path:
        ctx.load_cert_chain(path)
    return ctx


def probe(
    target: str, server_name: str, context: ssl.SSLContext, trust: TrustStore, timeout: float
) -> VerifiedCert:
    """The certificate the server at `target` presents as `server_name`, verified (blocking).

    Raises Unauthenticated (``cert.*``, including ``cert.revoked``) for a
    certificate the trust store refuses, OSError when the server cannot be
    reached or the handshake fails.
    """
    host, port = _split_target(target)
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise Unauthenticated("cert.chain", f"{server_name} presented no certificate")
    # The handshake checked the chain to the network CA and the pinned name;
    # this reads the role and asks the revocation check.
    return trust.verify_chain([der])


def _refused(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class ServerCertificate:
    """What one channel knows of its server's certificate; `require` before every call."""

    def __init__(self, target: str, identity: Identity, trust: TrustStore, server_name: str) -> None:
        self.target = target
        self.identity = identity
        self.trust = trust
        self.server_name = server_name
        self._verified: VerifiedCert | None = None
        self._read_at = 0.0
        self._context: ssl.SSLContext | None = None
        self._lock: asyncio.Lock | None = None

    def forget(self) -> None:
        """Read the certificate again before the next call (the connection was lost)."""
        self._verified = None

    def _stale(self) -> bool:
        return self._verified is None or time.monotonic() - self._read_at > PROBE_TTL

    def _probe(self, timeout: float) -> VerifiedCert:
        if self._context is None:
            self._context = tls_context(self.identity, self.trust)
        return probe(self.target, self.server_name, self._context, self.trust, timeout)

    async def require(self, timeout: float | None) -> None:
        """Raise AioRpcError unless the server's certificate is known and not revoked now."""
        if self.trust.revocation is None:
            return
        verified = self._verified
        if verified is None or self._stale():
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                verified = self._verified
                if verified is None or self._stale():
                    # The call's whole deadline: on a loaded machine a handshake may
                    # take seconds, and a probe cut short would refuse a call that
                    # would have gone through.
                    bound = PROBE_TIMEOUT if timeout is None else max(timeout, 0.05)
                    try:
                        verified = await asyncio.to_thread(self._probe, bound)
                    except CreditnetError as exc:
                        self._verified = None
                        raise _refused(exc.code, exc.reason) from None
                    except (OSError, ValueError) as exc:
                        self._verified = None
                        raise _refused(
                            grpc.StatusCode.UNAVAILABLE,
                            f"peer.unverified: could not read the certificate of {self.server_name} "
                            f"at {self.target} ({type(exc).__name__})",
                        ) from None
                    self._verified, self._read_at = verified, time.monotonic()
        try:
            self.trust.require_unrevoked(verified)
        except CreditnetError as exc:
            raise _refused(exc.code, exc.reason) from None


class _Check:
    """Check the server's certificate before each call; read it again after a call found the server
    unavailable (it may have restarted with another certificate)."""

    def __init__(self, server: ServerCertificate) -> None:
        self.server = server
        self._watching: set[asyncio.Future[None]] = set()

    async def _before(self, details: grpc.aio.ClientCallDetails) -> None:
        await self.server.require(details.timeout)

    def _forgetting(self, call: Any) -> Any:
        """`call` itself, watched: if it ends UNAVAILABLE, the certificate is read again before the next.

        For calls whose caller reads their response headers as they come (the
        bank's hedged calls to the aggregator): awaiting the call here would
        hold them back until the whole call had ended.
        """
        watch = asyncio.ensure_future(self._forget_if_unavailable(call))
        self._watching.add(watch)
        watch.add_done_callback(self._watching.discard)
        return call

    async def _forget_if_unavailable(self, call: Any) -> None:
        if await call.code() == grpc.StatusCode.UNAVAILABLE:
            self.server.forget()


class _UnaryUnary(_Check, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        await self._before(client_call_details)
        call = await continuation(client_call_details, request)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.server.forget()
            raise


class _UnaryStream(_Check, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        await self._before(client_call_details)
        return self._forgetting(await continuation(client_call_details, request))


class _StreamUnary(_Check, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Any,
    ) -> Any:
        await self._before(client_call_details)
        return await continuation(client_call_details, request_iterator)


class _StreamStream(_Check, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Any,
    ) -> Any:
        await self._before(client_call_details)
        return await continuation(client_call_details, request_iterator)


def server_certificate_interceptors(
    target: str, identity: Identity, trust: TrustStore, server_name: str
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for every kind of call on one channel, sharing what they learn of its server."""
    server = ServerCertificate(target, identity, trust, server_name)
    return [_UnaryUnary(server), _UnaryStream(server), _StreamUnary(server), _StreamStream(server)]
