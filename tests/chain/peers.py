"""Peers for chain tests that misbehave the way real processes do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def unresponsive_endpoint() -> AsyncIterator[str]:
    """A peer that accepts connections and never says a word, as a frozen process does."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
