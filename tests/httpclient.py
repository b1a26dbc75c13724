"""A minimal HTTP/1.1 client for the tests, over h11 (the server's own parser's client side)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import h11

READ_TIMEOUT = 30.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


async def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
    ssl: SSLContext | None = None,
) -> Reply:
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
    try:
        conn = h11.Connection(h11.CLIENT)
        sent = {"host": f"{host}:{port}", "connection": "close", **(headers or {})}
        if body or method == "POST":
            sent["content-length"] = str(len(body))
        writer.write(conn.send(h11.Request(method=method, target=path, headers=list(sent.items()))))
        if body:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        status = 0
        got: dict[str, str] = {}
        chunks = bytearray()
        async with asyncio.timeout(READ_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    got = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        return Reply(status, got, bytes(chunks))
    finally:
        writer.close()


async def raw_exchange(port: int, data: bytes, timeout: float = READ_TIMEOUT) -> bytes:
    """Send ``data`` as is and read everything until the server closes (within ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        received = bytearray()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
        return bytes(received)
    finally:
        writer.close()


class EventReader:
    """An open ``/api/events`` stream: ``next_event()`` returns each event's name and data."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)
        self.buffer = ""
        self.status = 0

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None) -> EventReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = cls(reader, writer)
        sent = {"host": f"127.0.0.1:{port}", **(headers or {})}
        writer.write(
            stream.conn.send(
                h11.Request(method="GET", target="/api/events", headers=list(sent.items()))
            )
        )
        writer.write(stream.conn.send(h11.EndOfMessage()))
        return stream

    async def next_event(self, timeout: float = READ_TIMEOUT) -> tuple[str, Any]:
        async with asyncio.timeout(timeout):
            while "\n\n" not in self.buffer:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        raise EOFError("the event stream ended")
                    self.conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    self.status = event.status_code
                elif isinstance(event, h11.Data):
                    self.buffer += bytes(event.data).decode()
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    raise EOFError("the event stream ended")
        block, self.buffer = self.buffer.split("\n\n", 1)
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data += line.removeprefix("data: ")
        if not data:
            return await self.next_event(timeout)
        return name, json.loads(data)

    def close(self) -> None:
        self.writer.close()
