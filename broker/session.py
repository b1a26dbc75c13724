"""One connection to the broker: frames in, the handshake, then routed requests.

A :class:`Session` is an ``asyncio.Protocol`` over the sans-I/O pieces:
:class:`~protocol.framing.FrameDecoder` and the message validator turn bytes
into checked messages; the handshake (``WELCOME``, ``HELLO``, the token's
proof, the role) is here; every later request goes through the one table
:data:`~broker.handlers.ROUTES` to the handler object of the peer's role;
everything the broker says goes through the connection's one writer,
:class:`~broker.output.Output`. A session is given the config and the
shared :class:`~broker.state.BrokerState`, never the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, cast

from broker.handlers import (
    ROUTES,
    BoundRoute,
    ClientHandlers,
    PeerHandlers,
    WorkerHandlers,
    routes_for,
    schedule_from_wire,
)
from broker.manager import QueueFullError, UnknownParentError
from broker.output import Output
from broker.state import BrokerState
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import ENVELOPE_RESERVE, FrameDecoder
from protocol.messages import PROTOCOL_VERSION, Op, Role, request_id, validate_request
from protocol.security import proof_matches

log = logging.getLogger("broker.session")

Message = dict[str, Any]

SERVER_NAME = "jobwire"
NONCE_SIZE = 16


class Session(asyncio.Protocol):
    def __init__(self, state: BrokerState) -> None:
        self.state = state
        self.config = config = state.config
        self.manager = state.manager
        self.loop = asyncio.get_running_loop()
        self.decoder = FrameDecoder(config.max_frame)
        self.output: Output
        self.peer = "?"
        self.role: str | None = None
        self.name = ""
        self.nonce = os.urandom(NONCE_SIZE)
        # The role's handlers, from the handshake on.
        self.handlers: PeerHandlers | None = None
        self.worker: WorkerHandlers | None = None
        # ROUTES the role may take, bound to its handlers (set with them).
        self._routes: dict[str, BoundRoute] = {}
        self._closing = False
        self._last_seen = time.monotonic()
        self.connected_at = time.time()
        self._timer: asyncio.TimerHandle | None = None
        # A payload or result must leave room for the envelope around it in
        # a JOBS or DONE frame, which must fit the peer's frame limit.
        self.payload_limit = config.max_frame - ENVELOPE_RESERVE

    def __repr__(self) -> str:
        return f"<Session {self.role or 'new'} {self.name or self.peer}>"

    @property
    def is_worker(self) -> bool:
        return self.role == Role.WORKER

    @property
    def is_closing(self) -> bool:
        return self._closing

    @property
    def is_client(self) -> bool:
        return self.role == Role.CLIENT

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.output = Output(
            transport,
            self.loop,
            self.config,
            self.state.gate,
            self.__repr__,
            self.state.flush_later,
        )
        state = self.state
        state.register(self)
        if len(state.sessions) > self.config.max_connections:
            self.fail_connection(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the broker serves at most {self.config.max_connections} connections",
            )
            return
        if state.shutting_down:
            self.fail_connection(ErrorCode.SHUTTING_DOWN, "the broker is shutting down")
            return
        self.send(
            {
                "op": Op.WELCOME,
                "version": PROTOCOL_VERSION,
                "server": SERVER_NAME,
                "nonce": self.nonce,
                "auth": self.config.token is not None,
            },
            durable=False,
        )
        self._timer = self.loop.call_later(self.config.handshake_timeout, self._check_timeouts)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_seen = time.monotonic()
        state = self.state
        state.reading = True  # every output this read queues is flushed at its end
        try:
            try:
                messages = self.decoder.feed(data)
            except ProtocolError as exc:
                self.fail_connection(exc.code, exc.message)
                return
            now = time.time()
            handle = self.handle
            for message in messages:
                handle(message, now)
                if self._closing:
                    break
        finally:
            state.reading = False
            state.flush_outputs()
        state.arm_timer()  # after the writes: the peers need not wait for it

    def handle(self, message: Any, now: float) -> None:
        """Run one decoded message; reply with an error rather than raise."""
        try:
            op = validate_request(message)
        except ProtocolError as exc:
            if self.handlers is None:
                self.fail_connection(exc.code, exc.message, request_id(message))
            else:
                self.reply_error(request_id(message), exc.code, exc.message)
            return
        route = self._routes.get(op)
        if route is None:
            self._off_route(op, message)
            return
        handler, changes_jobs = route
        if changes_jobs:
            failure = self.state.gate.failure
            if failure is not None:
                self.reply_error(message["rid"], ErrorCode.STORAGE_FAILED, failure.describe())
                return
        try:
            handler(message, now)
        except QueueFullError as exc:
            self.reply_error(message.get("rid"), ErrorCode.QUEUE_FULL, str(exc))
        except UnknownParentError as exc:
            self.reply_error(message.get("rid"), ErrorCode.NOT_FOUND, f"no job {exc.args[0]!r}")
        except Exception:
            log.exception("bug: handling %s from %s failed", op, self)
            self.reply_error(message.get("rid"), ErrorCode.INTERNAL, f"internal error in {op}")

    def _off_route(self, op: str, message: Message) -> None:
        """A valid message with no route for this session: the HELLO, anything before
        it, a second HELLO, an op of the other role."""
        if self.handlers is None:
            if op == Op.HELLO:
                self._on_hello(message)
            else:
                code = (
                    ErrorCode.AUTH_REQUIRED if self.config.token else ErrorCode.HANDSHAKE_REQUIRED
                )
                self.fail_connection(code, f"{op} before the HELLO handshake", message.get("rid"))
        elif op not in ROUTES:  # HELLO, the only op without a route
            self.fail_connection(ErrorCode.BAD_REQUEST, "a second HELLO", message["rid"])
        else:
            self.reply_error(
                message.get("rid"), ErrorCode.FORBIDDEN, f"a {self.role} may not send {op}"
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self.output.connection_lost()
        if self.worker is not None:
            self.worker.detach(time.time(), "worker connection closed")
            self.state.arm_timer()
            log.info("worker %s disconnected", self.name or self.peer)
        self.state.unregister(self)

    def pause_writing(self) -> None:
        # The peer reads slower than we produce: stop reading its requests
        # until it catches up (the output holds its DONE pushes back).
        if not self._closing:
            self.output.pause()

    def resume_writing(self) -> None:
        self.output.resume()

    # -- output ---------------------------------------------------------------------

    def send(self, message: Message, durable: bool = True) -> None:
        self.output.send(message, durable)

    def send_frame(self, frame: bytes) -> None:
        self.output.send_frame(frame)

    def push_outcome(self, frame: bytes) -> None:
        """A watched job finished (the state's fan-out calls this)."""
        self.output.push_outcome(frame)

    def flush(self) -> None:
        self.output.flush()

    def reply(self, rid: int, fields: Message | None = None, durable: bool = True) -> None:
        if fields:
            self.output.send({"op": Op.OK, "rid": rid, **fields}, durable)
        else:
            self.output.send({"op": Op.OK, "rid": rid}, durable)

    def reply_error(self, rid: int | None, code: ErrorCode, text: str) -> None:
        log.info("%s: %s %s", self, code.value, text)
        self.output.send({"op": Op.ERR, "rid": rid, "code": code.value, "message": text}, False)

    def fail_connection(self, code: ErrorCode, text: str, rid: int | None = None) -> None:
        """Send a last error and close: the peer broke the protocol or may not stay."""
        log.warning("closing %s: %s %s", self, code.value, text)
        if self.output.transport is None or self._closing:
            return
        self.reply_error(rid, code, text)
        self.close()

    def close(self) -> None:
        """Stop reading, send what is queued (after the gate, if it must wait), then close."""
        self._closing = True
        self.output.close()

    def abort(self) -> None:
        self._closing = True
        self.output.abort()

    # -- timeouts ---------------------------------------------------------------

    def _check_timeouts(self) -> None:
        self._timer = None
        if self._closing:
            return
        if self.handlers is None:
            self.fail_connection(
                ErrorCode.TIMEOUT,
                f"no handshake within {self.config.handshake_timeout:g} seconds",
            )
            return
        if self.output.reading_paused:
            self._last_seen = time.monotonic()  # we stopped listening, not the peer
        idle = time.monotonic() - self._last_seen
        if idle >= self.config.idle_timeout:
            self.fail_connection(
                ErrorCode.TIMEOUT, f"nothing received for {self.config.idle_timeout:g} seconds"
            )
            return
        self._timer = self.loop.call_later(self.config.idle_timeout - idle, self._check_timeouts)

    # -- the handshake ------------------------------------------------------------

    def _on_hello(self, message: Message) -> None:
        rid = message["rid"]
        if message["version"] != PROTOCOL_VERSION:
            self.fail_connection(
                ErrorCode.VERSION_MISMATCH,
                f"this broker speaks protocol version {PROTOCOL_VERSION}, not {message['version']}",
                rid,
            )
            return
        token = self.config.token
        if token is not None and not proof_matches(token, self.nonce, message.get("auth")):
            self.fail_connection(ErrorCode.AUTH_FAILED, "authentication failed", rid)
            return
        role = message["role"]
        if role not in (Role.CLIENT, Role.WORKER):
            self.fail_connection(ErrorCode.BAD_REQUEST, f"unknown role {role!r}", rid)
            return
        self.name = message.get("name") or ""
        if role == Role.WORKER:
            tasks = message.get("tasks")
            if tasks:
                self.manager.announce_tasks(tasks)  # checked by the schema
            try:
                schedules = [schedule_from_wire(s) for s in message.get("schedules") or ()]
            except ValueError as exc:
                self.fail_connection(ErrorCode.BAD_REQUEST, f"HELLO.schedules: {exc}", rid)
                return
            for schedule in schedules:
                self.manager.set_schedule(schedule, time.time())
            queues = message.get("queues") or ["default"]
            self.worker = WorkerHandlers(
                self, self.state, queues, bool(message.get("burst")), message.get("task_names")
            )
            self.handlers = self.worker
            task_names = self.worker.consumer.tasks
            log.info(
                "worker %s connected from %s, queues %s, tasks %s",
                self.name or "?",
                self.peer,
                ",".join(self.worker.consumer.queues),
                "(every task)" if task_names is None else ",".join(sorted(task_names)),
            )
        else:
            self.handlers = ClientHandlers(self, self.state)
        self.role = role
        self._routes = routes_for(role, self.handlers)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.config.idle_timeout, self._check_timeouts)
        self.reply(
            rid,
            {
                "server": SERVER_NAME,
                "idle_timeout": self.config.idle_timeout,
                "max_frame": self.config.max_frame,
            },
            durable=False,
        )
