"""Fake brokers for the peers' side of a cluster, in the test's own event loop.

- :func:`standby`: answers every connection with ``ERR NOT_LEADER`` (naming a
  leader, or not) instead of ``WELCOME``, and closes it, as a cluster's
  standby does (docs/PROTOCOL.md, section 10).
- :func:`dropping_broker`: completes the handshake, then closes the
  connection on the first request, unanswered: a broker that dies with a
  request in flight, at a moment the test chooses.

Each counts the connections it accepted and is closed on the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from protocol.errors import ErrorCode
from protocol.framing import encode_frame
from protocol.messages import PROTOCOL_VERSION, Op
from tests.rawpeer import RawPeer


class FakeBroker:
    def __init__(self, server: asyncio.Server) -> None:
        self.server = server
        port = server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.connections = 0
        # Set at each request a dropping broker received and dropped.
        self.dropped = asyncio.Event()


@asynccontextmanager
async def _serving(
    handle: Callable[[FakeBroker, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[FakeBroker]:
    handlers: set[asyncio.Task[None]] = set()
    fake: FakeBroker | None = None

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert fake is not None
        fake.connections += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handle(fake, reader, writer)
        except (ConnectionError, TimeoutError, EOFError):
            pass  # the peer went away first
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    fake = FakeBroker(server)
    try:
        yield fake
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@asynccontextmanager
async def standby(leader: str | None = None) -> AsyncIterator[FakeBroker]:
    """A standby broker that names ``leader`` (or no leader) to every peer."""
    refusal: dict[str, object] = {
        "op": Op.ERR,
        "code": ErrorCode.NOT_LEADER,
        "message": "this broker is a standby of its shard",
    }
    if leader is not None:
        refusal["leader"] = leader

    async def refuse(_: FakeBroker, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(refusal))
        await writer.drain()

    async with _serving(refuse) as fake:
        yield fake


@asynccontextmanager
async def dropping_broker() -> AsyncIterator[FakeBroker]:
    """A broker that shakes hands, then closes the connection on its first request."""

    async def drop(
        fake: FakeBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        welcome = {
            "op": Op.WELCOME,
            "version": PROTOCOL_VERSION,
            "server": "fake",
            "nonce": bytes(16),
            "auth": False,
        }
        peer = RawPeer(reader, writer)  # the same frames, from the broker's side
        await peer.send(welcome)
        hello = await peer.read()
        await peer.send({"op": Op.OK, "rid": hello["rid"]})
        await peer.read()  # the first request: never answered
        fake.dropped.set()

    async with _serving(drop) as fake:
        yield fake
