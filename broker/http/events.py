"""Live updates: server-sent events pushed to every open ``/api/events`` stream.

One timer, armed only while a stream is open, builds one snapshot
(:func:`~broker.http.api.snapshot`) every ``event_interval`` seconds and
writes the same bytes to every stream, so ten open pages cost one snapshot.
A new stream gets a snapshot at once. The page never polls: it redraws on
each event, and fetches the failed list only when the event says it
changed.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from broker.http.api import snapshot
from broker.state import BrokerState

if TYPE_CHECKING:
    from broker.http.protocol import HttpConnection


def encode_event(name: str, data: Any) -> bytes:
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {name}\ndata: {body}\n\n".encode()


class EventHub:
    def __init__(self, state: BrokerState, interval: float, max_streams: int) -> None:
        self.state = state
        self.interval = interval
        self.max_streams = max_streams
        self.streams: set[HttpConnection] = set()
        self._timer: asyncio.TimerHandle | None = None
        # The broker is stopping: no new stream.
        self.closed = False

    def subscribe(self, stream: HttpConnection) -> bool:
        if self.closed or len(self.streams) >= self.max_streams:
            return False
        self.streams.add(stream)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.interval, self._tick)
        return True

    def unsubscribe(self, stream: HttpConnection) -> None:
        self.streams.discard(stream)
        if not self.streams and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def welcome(self, stream: HttpConnection) -> None:
        stream.send_event(b"retry: 2000\n\n" + encode_event("snapshot", snapshot(self.state)))

    def _tick(self) -> None:
        self._timer = None
        if not self.streams:
            return
        try:
            payload = encode_event("snapshot", snapshot(self.state))
            for stream in list(self.streams):
                stream.send_event(payload)
        finally:
            if self.streams:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream in list(self.streams):
            stream.end_stream()
        self.streams.clear()
