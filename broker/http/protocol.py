"""One HTTP connection: an ``asyncio.Protocol`` over h11's sans-I/O ``Connection``.

The same shape as the TCP side's session over its frame decoder: bytes in,
h11 turns them into events, a whole request goes to the application
(:class:`~broker.http.app.App`), and what it answers goes out through h11.
Limits as on the wire: the request line and headers are bounded by h11's
``max_incomplete_event_size``, the body by ``max_body_bytes`` (checked on
``Content-Length`` before it arrives, and as it arrives), and a request must
arrive whole within ``request_timeout`` (slow clients are cut off). A
live-update stream (``/api/events``) stays open and is written to by the
:class:`~broker.http.events.EventHub`; a stream whose reader falls behind by
``max_output_bytes`` is dropped. Nothing here can raise into the loop: a
broken client closes its own connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl, urlsplit

import h11

from broker.http.config import HttpConfig

if TYPE_CHECKING:
    from broker.http.app import App

# A stream whose reader is this many snapshots behind (about 30 s at the
# default interval, as --output-stall-timeout on the TCP side) is dropped.
EVENTS_SKIPPED_BEFORE_DROP = 30

log = logging.getLogger("broker.http")

SERVER_HEADER = (b"server", b"jobwire")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    # Lower-case names; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes
    peer: str
    secure: bool


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class EventStream:
    """What a handler returns to keep the connection open as a server-sent event stream."""


EVENT_STREAM = EventStream()


def text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode())


class HttpConnection(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.app = app
        self.config: HttpConfig = app.config
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes
        )
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.secure = False
        self.loop = asyncio.get_running_loop()
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.streaming = False
        # A response waits for the journal: read no further request until it leaves.
        self._waiting = False
        self._closed = False
        self._pipeline_limit = self.config.max_header_bytes + self.config.max_body_bytes
        # The broker is stopping: close after the response in progress.
        self._stopping = False
        # The client reads slower than we write (the transport said so), and the
        # stream's snapshots skipped since.
        self._write_paused = False
        self._events_skipped = 0

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.secure = transport.get_extra_info("sslcontext") is not None
        if not self.app.connection_opened(self):
            self._reply_and_close(text(503, "too many HTTP connections"))
            return
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._closed or self.streaming:
            return  # a stream's client has nothing more to say
        # A new request's clock starts at its first byte, not at the last answer.
        starting = self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]
        try:
            self.conn.receive_data(data)
        except h11.RemoteProtocolError:
            self._protocol_error(400, "bad request")
            return
        if starting and not self._waiting:
            self._arm_timer()
        if self._waiting and len(self.conn.trailing_data[0]) > self._pipeline_limit:
            # Requests piling up behind one that waits for the journal: bounded too.
            log.info("HTTP client %s: too much pipelined behind a waiting request", self.peer)
            self._close()
            return
        self._process()

    def eof_received(self) -> bool | None:
        if not self._closed and not self.streaming:
            with contextlib.suppress(h11.RemoteProtocolError):
                self.conn.receive_data(b"")
            self._process()
        # Half-closed while a response waits for the journal: keep the transport for it.
        return self._waiting

    def pause_writing(self) -> None:
        # The client does not read its answers: read no more of its requests,
        # and send a stream no more snapshots (each is whole: skipping loses nothing).
        self._write_paused = True
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._events_skipped = 0
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        self.app.connection_closed(self)

    # -- requests -------------------------------------------------------------------

    def _process(self) -> None:
        while not self._closed and not self.streaming and not self._waiting:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self._protocol_error(
                    status, "request line or headers too large" if status == 431 else "bad request"
                )
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                # h11 bounds a request head that arrives in pieces; this bounds one
                # that arrived whole in a single read.
                head = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if head > self.config.max_header_bytes:
                    self._protocol_error(431, "request line or headers too large")
                    return
                self._request = event
                self._body = bytearray()
                length = _header(event.headers, b"content-length")
                if length is not None and (
                    not length.isdigit() or int(length) > self.config.max_body_bytes
                ):
                    self._reply_and_close(
                        text(413, f"the body may be at most {self.config.max_body_bytes} bytes")
                    )
                    return
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.config.max_body_bytes:
                    self._reply_and_close(
                        text(413, f"the body may be at most {self.config.max_body_bytes} bytes")
                    )
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _respond(self) -> None:
        raw = self._request
        assert raw is not None
        self._request = None
        target = raw.target.decode("latin-1")
        parts = urlsplit(target)
        request = Request(
            method=raw.method.decode("ascii", "replace").upper(),
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query)),
            headers={
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in raw.headers
            },
            body=bytes(self._body),
            peer=self.peer,
            secure=self.secure,
        )
        self._body = bytearray()
        try:
            answer = self.app.handle(request)
        except Exception:
            log.exception("bug: HTTP %s %s failed", request.method, request.path)
            answer = text(500, "internal error")
        if isinstance(answer, EventStream):
            self._start_stream()
            return
        if request.method == "POST":
            # As on the TCP side: what acknowledges a change waits until it is durable.
            gate = self.app.state.gate
            mark = gate.appended
            if not gate.is_durable(mark):
                self._waiting = True
                # The request is whole: its timeout no longer applies (the change
                # is made; only its answer waits). _finish re-arms it.
                self._cancel_timer()
                gate.when_durable(mark, lambda: self._finish(answer, request.method, True))
                return
        self._finish(answer, request.method)

    def _finish(self, answer: Response, method: str, deferred: bool = False) -> None:
        """Send the answer and get ready for the next request (read on by ``_process``;
        after an answer that waited, this resumes it)."""
        self._waiting = False
        if self._closed:
            return
        self._send_response(answer, head=method == "HEAD")
        if self._stopping:
            self._close()
            return
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            self._close()
            return
        try:
            self.conn.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        self._arm_timer()
        if deferred:
            self._process()  # requests pipelined behind it wait in h11's buffer

    def _send_response(self, response: Response, head: bool = False) -> None:
        headers = [
            SERVER_HEADER,
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
            *(
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in response.headers
            ),
        ]
        try:
            self._write(
                self.conn.send(
                    h11.Response(
                        status_code=response.status,
                        headers=headers,
                        reason=_reason(response.status),
                    )
                )
            )
            if response.body and not head:
                self._write(self.conn.send(h11.Data(data=response.body)))
            self._write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            self._close()

    def _reply_and_close(self, response: Response) -> None:
        """Answer (if h11 still may) and close: the client broke a limit or the protocol."""
        response.headers.append(("connection", "close"))
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send_response(response)
        self._close()

    def _protocol_error(self, status: int, message: str) -> None:
        log.info("HTTP client %s: %d %s", self.peer, status, message)
        self._reply_and_close(text(status, message))

    # -- server-sent events -----------------------------------------------------------

    def _start_stream(self) -> None:
        self._cancel_timer()
        if self._stopping or not self.app.events.subscribe(self):
            self._reply_and_close(text(503, "too many event streams, or the broker is stopping"))
            return
        self.streaming = True
        headers = [
            SERVER_HEADER,
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self._write(self.conn.send(h11.Response(status_code=200, headers=headers)))
        self.app.events.welcome(self)

    def send_event(self, payload: bytes) -> None:
        """One event, already in ``text/event-stream`` form; drops a reader that fell behind."""
        if self._closed:
            return
        if self._write_paused:
            self._events_skipped += 1
            if self._events_skipped >= EVENTS_SKIPPED_BEFORE_DROP:
                log.info("HTTP client %s: its event stream is not read; dropped", self.peer)
                self.abort()  # closing would wait for it to read
            return
        try:
            self._write(self.conn.send(h11.Data(data=payload)))
        except h11.LocalProtocolError:
            self._close()  # this connection's state allows no body: end just it

    def end_stream(self) -> None:
        """The broker is stopping: end the stream cleanly and close."""
        if self.streaming and not self._closed:
            with contextlib.suppress(h11.LocalProtocolError):
                self._write(self.conn.send(h11.EndOfMessage()))
        self._close()

    def close_when_idle(self) -> None:
        """Close now if no request is in progress, else after its response."""
        self._stopping = True
        if self._waiting or self._closed:
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self._close()

    def abort(self) -> None:
        self._closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- plumbing ---------------------------------------------------------------------

    def _write(self, data: bytes | None) -> None:
        transport = self.transport
        if data and transport is not None and not self._closed:
            transport.write(data)
            if transport.get_write_buffer_size() > self.config.max_output_bytes:
                log.info("HTTP client %s does not read its answers: dropped", self.peer)
                self.abort()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(self.config.request_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._closed or self.streaming:
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self._close()  # an idle keep-alive connection: just close it
            return
        log.info(
            "HTTP client %s: no whole request within %gs", self.peer, self.config.request_timeout
        )
        self._reply_and_close(text(408, "request timeout"))

    def _close(self) -> None:
        self._closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
