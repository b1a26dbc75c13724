"""A hand-driven peer for hostile-input tests: raw bytes out, decoded frames in."""

from __future__ import annotations

import asyncio
from typing import Any

from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import PROTOCOL_VERSION, Op
from protocol.security import auth_proof

READ_TIMEOUT = 10.0


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_frame=64 * 1024 * 1024)
        self.inbox: list[Any] = []
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, address: str, *, read_welcome: bool = True) -> RawPeer:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        peer = cls(reader, writer)
        if read_welcome:
            peer.welcome = await peer.read()
            assert peer.welcome["op"] == Op.WELCOME
        return peer

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_bytes(encode_frame(message))

    async def read(self, timeout: float = READ_TIMEOUT) -> Any:
        """The next frame; raises EOFError if the broker closed first."""
        async with asyncio.timeout(timeout):
            while not self.inbox:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the broker closed the connection")
                self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    async def read_until_closed(self, timeout: float = READ_TIMEOUT) -> list[Any]:
        """Every frame until the broker closes the connection."""
        frames = []
        while True:
            try:
                frames.append(await self.read(timeout))
            except EOFError:
                return frames
            except ConnectionResetError:
                return frames

    async def hello(self, token: str | None = None, role: str = "client", **fields: Any) -> Any:
        message: dict[str, Any] = {"op": Op.HELLO, "rid": 0, "version": PROTOCOL_VERSION}
        message["role"] = role
        if token is not None:
            message["auth"] = auth_proof(token, self.welcome["nonce"])
        message.update(fields)
        await self.send(message)
        return await self.read()

    def close(self) -> None:
        self.writer.close()
