"""The asyncio adapter over the sans-I/O core, shared by the client and the worker.

:class:`Connection` is an ``asyncio.Protocol``: bytes in go through
:class:`~protocol.framing.FrameDecoder` and the push validator; replies
resolve the future of the request with the same ``rid``; everything else
goes to the ``on_push`` callback, synchronously, in arrival order. Frames
sent within one turn of the event loop leave in one ``write``.

This is the only module of :mod:`protocol` that knows asyncio.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, cast

from protocol.errors import (
    RETRYABLE_REFUSALS,
    ConnectionLost,
    ErrorCode,
    ProtocolError,
    RemoteError,
    remote_error,
)
from protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from protocol.messages import PROTOCOL_VERSION, Op, validate_push
from protocol.security import auth_proof

log = logging.getLogger("protocol.stream")

Message = dict[str, Any]
PushHandler = Callable[[Message], None]
# Runs synchronously when a reply arrives, before any later frame is handled.
ReplyHook = Callable[[Message], None]

DEFAULT_PORT = 7878
# The pushes on the hot path are not walked through the schema: the broker
# built them, and the frame-level limits hold already. A malformed one that
# breaks its handler still closes the connection as a protocol error.
TRUSTED_PUSHES = frozenset({Op.OK, Op.DONE, Op.JOBS})
DEFAULT_CONNECT_TIMEOUT = 10.0


def install_uvloop() -> bool:
    """Make uvloop the event loop policy, if it is installed; return whether it is.

    The CLIs call this; an application that embeds the client, a worker or
    the broker decides for itself whether to call it.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional at import time
    except ImportError:  # pragma: no cover - a dependency on POSIX
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` or ``"[v6]:port"`` to ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        host, port = address, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad port in address {address!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in address {address!r}")
    return host, number


class Connection(asyncio.Protocol):
    """One framed connection to the broker, from the peer's side."""

    def __init__(self, on_push: PushHandler | None = None, max_frame: int = DEFAULT_MAX_FRAME):
        self._on_push = on_push
        self._decoder = FrameDecoder(max_frame)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._rids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Message], ReplyHook | None]] = {}
        # Frames to write at the end of the turn; a dict is a message still
        # open to additions (see ``request(deferred=True)``), encoded then.
        self._out: list[bytes | Message] = []
        self._deferred = False
        # Counts writes: a deferred message can take additions while this is
        # what it was when the message was queued.
        self.flushes = 0
        self._flush_scheduled = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._welcome: asyncio.Future[Message] = self._loop.create_future()
        self.closed: asyncio.Future[Exception | None] = self._loop.create_future()
        self.close_reason: Exception | None = None
        self.last_error: Exception | None = None
        self._last_sent = self._loop.time()
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_interval = 0.0
        # Runs just before each write and may send frames into it: a worker's
        # READY for every slot freed in the turn joins the reports that freed them.
        self.before_flush: Callable[[], None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
            for message in messages:
                if type(message) is dict and message.get("op") in TRUSTED_PUSHES:
                    self._dispatch_trusted(message)
                else:
                    validate_push(message)
                    self._dispatch(message)
        except ProtocolError as exc:
            log.error("broker broke the protocol: %s", exc)
            self.abort(exc)
        if self._flush_scheduled:
            self._flush()  # what the handlers sent leaves now, not a loop turn later

    def _dispatch_trusted(self, message: Message) -> None:
        # The broker checks what it sends; a frame that breaks the handler
        # anyway is the broker's fault, not a bug here.
        try:
            self._dispatch(message)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            log.error(
                "malformed %s from the broker (or a bug handling it)", message["op"], exc_info=True
            )
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"malformed {message['op']} from the broker: {exc!r}"
            ) from None

    def _dispatch(self, message: Message) -> None:
        op = message["op"]
        if op in (Op.OK, Op.ERR):
            rid = message.get("rid")
            pending = self._pending.pop(rid, None) if rid is not None else None
            if pending is None:
                if op == Op.ERR:
                    # Tied to no request: about a notification we sent, or the
                    # broker's last word before it closes.
                    self.last_error = remote_error(
                        message["code"], message["message"], message.get("leader")
                    )
                    log.warning("broker error: %s", self.last_error)
                return
            future, on_reply = pending
            if on_reply is not None and op == Op.OK:
                on_reply(message)
            if not future.done():
                future.set_result(message)
        elif op == Op.WELCOME:
            if not self._welcome.done():
                self._welcome.set_result(message)
        elif self._on_push is not None:
            self._on_push(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        reason = self.close_reason or exc or self.last_error
        error = ConnectionLost(f"connection to the broker lost{f': {reason}' if reason else ''}")
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        if not self._welcome.done():
            refusal = self.last_error
            if isinstance(refusal, RemoteError) and refusal.code in RETRYABLE_REFUSALS:
                # Sent instead of WELCOME (a standby naming its leader, say):
                # the handshake raises it, for the peer to act on.
                self._welcome.set_exception(refusal)
            else:
                self._welcome.set_exception(error)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(reason)
        self._transport = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- sending ----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, message: Message) -> None:
        """Queue one frame; frames queued in one loop turn leave in one write."""
        if self._transport is None:
            raise ConnectionLost("connection to the broker is closed")
        self._out.append(encode_frame(message))
        self._last_sent = self._loop.time()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def flush_soon(self) -> None:
        """Make sure a write happens this loop turn (``before_flush`` may add to it)."""
        if not self._flush_scheduled and self._transport is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if not self._flush_scheduled:
            return  # flushed already in this turn
        before_flush = self.before_flush
        if before_flush is not None:
            before_flush()  # its frames join this write
        self._flush_scheduled = False
        self.flushes += 1
        out = self._out
        if not out:
            return
        self._out = []
        if self._deferred:
            self._deferred = False
            out = [frame if type(frame) is bytes else encode_frame(frame) for frame in out]
        if self._transport is not None:
            frames = cast(list[bytes], out)
            self._transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    def request(
        self, message: Message, on_reply: ReplyHook | None = None, *, deferred: bool = False
    ) -> asyncio.Future[Message]:
        """Send a request with a fresh ``rid``; the future gets the OK or ERR reply.

        ``on_reply`` runs on an OK reply as soon as it is decoded, before the
        frames after it: state that those frames need (a result future for a
        job id the reply names) must be set up there, not after an ``await``.

        ``deferred``: encode ``message`` only when this turn's frames are
        written, so that it can still grow until then (while ``flushes`` is
        what it was): a producer's concurrent submits share one SUBMIT.
        """
        rid = next(self._rids)
        message["rid"] = rid
        future: asyncio.Future[Message] = self._loop.create_future()
        if deferred:
            if self._transport is None:
                raise ConnectionLost("connection to the broker is closed")
            self._out.append(message)
            self._deferred = True
            self._last_sent = self._loop.time()
            self.flush_soon()
        else:
            self.send(message)
        self._pending[rid] = (future, on_reply)
        return future

    @property
    def write_paused(self) -> bool:
        """The transport's buffer is over its high-water mark: :meth:`drain` waits."""
        return self._write_paused

    async def call(self, message: Message, on_reply: ReplyHook | None = None) -> Message:
        """Send a request and return its OK reply; an ERR reply raises :class:`RemoteError`."""
        if self._write_paused:
            await self.drain()
        reply = await self.request(message, on_reply)
        if reply["op"] == Op.ERR:
            raise remote_error(reply["code"], reply["message"], reply.get("leader"))
        return reply

    def start_keepalive(self, idle_timeout: float) -> None:
        """PING whenever nothing was sent for a third of the broker's idle timeout.

        A producer that only waits for results sends nothing for long
        stretches; without this the broker would take it for dead.
        """
        self._keepalive_interval = idle_timeout / 3
        self._keepalive = self._loop.call_later(self._keepalive_interval, self._keep_alive)

    def _keep_alive(self) -> None:
        if self._transport is None:
            return
        quiet_for = self._loop.time() - self._last_sent
        if quiet_for >= self._keepalive_interval:
            self.request({"op": Op.PING}).add_done_callback(_ignore_outcome)
            quiet_for = 0.0
        self._keepalive = self._loop.call_later(
            self._keepalive_interval - quiet_for, self._keep_alive
        )

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if not self._write_paused:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await asyncio.shield(self._drained)

    def abort(self, reason: Exception | None = None) -> None:
        if reason is not None and self.close_reason is None:
            self.close_reason = reason
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        """Flush what is queued, close, and wait until the transport is gone."""
        if self._transport is not None:
            self._flush()
            self._transport.close()
        await asyncio.shield(self.closed)

    # -- opening ----------------------------------------------------------------

    async def handshake(self, hello: Message, token: str | None, timeout: float) -> Message:
        """Wait for WELCOME, answer HELLO (with the auth proof if asked), return the OK reply."""
        async with asyncio.timeout(timeout):
            welcome = await self._welcome
            if welcome["version"] != PROTOCOL_VERSION:
                raise ProtocolError(
                    ErrorCode.VERSION_MISMATCH,
                    f"broker speaks protocol version {welcome['version']}, "
                    f"this peer speaks {PROTOCOL_VERSION}",
                )
            message = {"op": Op.HELLO, "version": PROTOCOL_VERSION, **hello}
            if welcome["auth"]:
                if token is None:
                    raise remote_error(
                        ErrorCode.AUTH_FAILED, "the broker requires a token and none was given"
                    )
                message["auth"] = auth_proof(token, welcome["nonce"])
            reply = await self.call(message)
        idle_timeout = reply.get("idle_timeout")
        if isinstance(idle_timeout, (int, float)) and idle_timeout > 0:
            self.start_keepalive(float(idle_timeout))
        return reply


def _ignore_outcome(future: asyncio.Future[Message]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a lost connection is reported elsewhere


async def open_connection(
    address: str,
    hello: Message,
    *,
    on_push: PushHandler | None = None,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> tuple[Connection, Message]:
    """Connect to the broker at ``address`` and complete the handshake.

    Returns the connection and the broker's reply to HELLO. Raises
    ``OSError`` when the broker cannot be reached, ``TimeoutError``,
    :class:`ProtocolError` or :class:`RemoteError` (bad token, version; or
    a refusal sent instead of WELCOME, such as :class:`NotLeader`).
    """
    host, port = parse_address(address)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, connection = await loop.create_connection(
            lambda: Connection(on_push, max_frame), host, port, ssl=ssl
        )
    try:
        reply = await connection.handshake(hello, token, timeout)
    except BaseException:
        connection.abort()
        raise
    return connection, reply
