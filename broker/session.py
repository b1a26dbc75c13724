"""One connection to the broker: decode frames, check them, run the handler.

A :class:`Session` is an ``asyncio.Protocol``. Everything it does is
synchronous: frames in, calls into the :class:`~broker.manager.JobManager`,
frames out. Output is coalesced: whatever a loop turn produces for a peer
leaves in one ``write``. Handlers are looked up by op in one table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from broker.jobs import Job, JobState
from broker.manager import Consumer, QueueFullError
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import ENVELOPE_RESERVE, FrameDecoder, encode_frame
from protocol.job_spec import JobSpec
from protocol.messages import PROTOCOL_VERSION, Op, Role, request_id, validate_request
from protocol.security import proof_matches

if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger("broker.session")

Message = dict[str, Any]

SERVER_NAME = "jobwire"
NONCE_SIZE = 16

# Ops each role may send once the handshake is done.
CLIENT_OPS = frozenset(
    {
        Op.PING,
        Op.SUBMIT,
        Op.WATCH,
        Op.STATUS,
        Op.CANCEL,
        Op.STATS,
        Op.FAILED,
        Op.RETRY,
        Op.PURGE_FAILED,
    }
)
WORKER_OPS = frozenset(
    {Op.PING, Op.STATS, Op.READY, Op.ACK, Op.FAIL, Op.RELEASE, Op.HEARTBEAT, Op.QUIET}
)
DEFAULT_FAILED_LIMIT = 100
# DONE pushes held back from a slow peer go out this many per write.
HELD_BACK_BATCH = 64
# Deliveries are cut into JOBS frames whose payloads add up to at most this
# share of the peer's frame limit, so the envelope always fits too.
DELIVERY_BATCH_SHARE = 2


def done_message(job: Job) -> Message:
    """The DONE push announcing a finished job's outcome."""
    message: Message = {"op": Op.DONE, "id": job.id, "state": job.state.value}
    if job.state is JobState.SUCCEEDED:
        message["result"] = job.result
    else:
        error = job.last_error
        if job.state is JobState.CANCELLED:
            message["error"] = {"type": "Cancelled", "message": "the job was cancelled"}
        elif error is not None:
            message["error"] = {
                "type": error["type"],
                "message": error["message"],
                "traceback": error.get("traceback") or "",
            }
    return message


class Session(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.manager = broker.manager
        self.loop = broker.loop
        self.decoder = FrameDecoder(self.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.role: str | None = None
        self.name = ""
        self.nonce = os.urandom(NONCE_SIZE)
        self.consumer: Consumer | None = None
        self.burst = False
        self.empty_sent = False
        self._out: list[bytes] = []
        self._deliveries: list[tuple[Job, int]] = []
        self._flush_scheduled = False
        self._reading_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._awaiting_disk = False
        self._held_back: deque[bytes] = deque()
        self._held_back_bytes = 0
        self._close_after_flush = False
        self._closing = False
        self._last_seen = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        # A payload or result must leave room for the envelope around it in
        # a JOBS or DONE frame, which must fit the peer's frame limit.
        self.payload_limit = self.config.max_frame - ENVELOPE_RESERVE
        self._handlers: dict[str, Callable[[Message, float], None]] = {
            Op.HELLO: self._on_hello,
            Op.PING: self._on_ping,
            Op.SUBMIT: self._on_submit,
            Op.WATCH: self._on_watch,
            Op.STATUS: self._on_status,
            Op.CANCEL: self._on_cancel,
            Op.STATS: self._on_stats,
            Op.FAILED: self._on_failed,
            Op.RETRY: self._on_retry,
            Op.PURGE_FAILED: self._on_purge_failed,
            Op.READY: self._on_ready,
            Op.ACK: self._on_ack,
            Op.FAIL: self._on_fail,
            Op.RELEASE: self._on_release,
            Op.HEARTBEAT: self._on_heartbeat,
            Op.QUIET: self._on_quiet,
        }

    def __repr__(self) -> str:
        return f"<Session {self.role or 'new'} {self.name or self.peer}>"

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        transport.set_write_buffer_limits(high=self.config.output_pause_bytes)
        self.broker.sessions.add(self)
        if len(self.broker.sessions) > self.config.max_connections:
            self.fail_connection(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the broker serves at most {self.config.max_connections} connections",
            )
            return
        if self.broker.shutting_down:
            self.fail_connection(ErrorCode.SHUTTING_DOWN, "the broker is shutting down")
            return
        self.send(
            {
                "op": Op.WELCOME,
                "version": PROTOCOL_VERSION,
                "server": SERVER_NAME,
                "nonce": self.nonce,
                "auth": self.config.token is not None,
            }
        )
        self._timer = self.loop.call_later(self.config.handshake_timeout, self._check_timeouts)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_seen = time.monotonic()
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail_connection(exc.code, exc.message)
            return
        now = time.time()
        for message in messages:
            self.handle(message, now)
            if self._closing:
                break
        self.broker.arm_timer()

    def handle(self, message: Any, now: float) -> None:
        """Run one decoded message; reply with an error rather than raise."""
        try:
            op = validate_request(message)
        except ProtocolError as exc:
            if self.role is None:
                self.fail_connection(exc.code, exc.message, request_id(message))
            else:
                self.reply_error(request_id(message), exc.code, exc.message)
            return
        if self.role is None and op != Op.HELLO:
            code = ErrorCode.AUTH_REQUIRED if self.config.token else ErrorCode.HANDSHAKE_REQUIRED
            self.fail_connection(code, f"{op} before the HELLO handshake", message.get("rid"))
            return
        if self.role is not None:
            if op == Op.HELLO:
                self.fail_connection(ErrorCode.BAD_REQUEST, "a second HELLO", message["rid"])
                return
            allowed = WORKER_OPS if self.role == Role.WORKER else CLIENT_OPS
            if op not in allowed:
                self.reply_error(
                    message.get("rid"), ErrorCode.FORBIDDEN, f"a {self.role} may not send {op}"
                )
                return
        try:
            self._handlers[op](message, now)
        except QueueFullError as exc:
            self.reply_error(message.get("rid"), ErrorCode.QUEUE_FULL, str(exc))
        except Exception:
            log.exception("bug: handling %s from %s failed", op, self)
            self.reply_error(message.get("rid"), ErrorCode.INTERNAL, f"internal error in {op}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._held_back.clear()
        self.broker.sessions.discard(self)
        if self.consumer is not None:
            self.manager.detach(self.consumer, time.time(), "worker connection closed")
            self.broker.burst_sessions.discard(self)
            self.broker.arm_timer()
            log.info("worker %s disconnected", self.name or self.peer)
        self.transport = None
        self.broker.session_closed(self)

    def pause_writing(self) -> None:
        # The peer reads slower than we produce. Stop reading its requests
        # until it catches up, hold its DONE pushes back as job references
        # (the results are stored anyway), and drop it if it stays stuck.
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
            self._stall_timer = self.loop.call_later(
                self.config.output_stall_timeout, self._drop_stalled
            )

    def resume_writing(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            self.transport.resume_reading()
            self._send_held_back_outcomes()

    def _on_durable(self) -> None:
        self._awaiting_disk = False
        self.flush()

    def _drop_stalled(self) -> None:
        self._stall_timer = None
        if self.transport is None or self._closing:
            return
        log.warning(
            "dropping %s: it reads too slowly (no progress for %gs, %d bytes and %d results "
            "waiting)",
            self,
            self.config.output_stall_timeout,
            self.transport.get_write_buffer_size(),
            len(self._held_back),
        )
        self.abort()

    def push_outcome(self, frame: bytes) -> None:
        """Send a watched job's DONE now, or once a slow peer has caught up.

        Held-back frames are the outcome as it was when the job finished (it
        may be retried since); they count against ``output_drop_bytes``.
        """
        if self.transport is None or self._closing:
            return  # the watcher went away
        if not self._reading_paused:
            self.send_frame(frame)
            return
        self._held_back.append(frame)
        self._held_back_bytes += len(frame)
        waiting = self._held_back_bytes + self.transport.get_write_buffer_size()
        if waiting > self.config.output_drop_bytes:
            log.warning("dropping %s: it reads too slowly (%d bytes waiting)", self, waiting)
            self.abort()

    def _send_held_back_outcomes(self) -> None:
        held = self._held_back
        while held and not self._reading_paused and not self._closing:
            for _ in range(min(len(held), HELD_BACK_BATCH)):
                frame = held.popleft()
                self._held_back_bytes -= len(frame)
                self._out.append(frame)
            self.flush()  # write() calls pause_writing() again once the buffer is full

    # -- output -----------------------------------------------------------------

    def send(self, message: Message) -> None:
        self.send_frame(encode_frame(message))

    def send_frame(self, frame: bytes) -> None:
        if self.transport is None or self._closing:
            return
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._deliveries:
            self._encode_deliveries()
        transport = self.transport
        if transport is None:
            return
        if not self._out:
            if self._close_after_flush:
                transport.close()
            return
        journal = self.broker.journal
        if journal is not None:
            # What we are about to say may acknowledge changes: they go to the
            # journal first, and in fsync=always mode we wait for the disk.
            journal.flush_writes()
            upto = journal.appended
            if not journal.is_durable(upto):
                if not self._awaiting_disk:
                    self._awaiting_disk = True
                    journal.when_durable(upto, self._on_durable)
                return
        out = self._out
        self._out = []
        transport.write(b"".join(out) if len(out) > 1 else out[0])
        if self._close_after_flush:
            transport.close()
        elif transport.get_write_buffer_size() > self.config.output_drop_bytes:
            log.warning(
                "dropping %s: it reads too slowly (%d bytes waiting)",
                self,
                transport.get_write_buffer_size(),
            )
            self._closing = True
            transport.abort()

    def _encode_deliveries(self) -> None:
        budget = self.config.max_frame // DELIVERY_BATCH_SHARE
        batch: list[Message] = []
        size = 0
        for job, attempt in self._deliveries:
            if (
                job.owner is not self.consumer
                or job.state is not JobState.RUNNING
                or job.attempts != attempt
            ):
                continue  # revoked, cancelled or delivered again before it left
            # Room for the fields around the payload, 4 bytes a character at worst.
            cost = len(job.payload) + 64 + 4 * (len(job.id) + len(job.task) + len(job.queue))
            if batch and size + cost > budget:
                self._out.append(encode_frame({"op": Op.JOBS, "jobs": batch}))
                batch, size = [], 0
            batch.append(
                {
                    "id": job.id,
                    "task": job.task,
                    "payload": job.payload,
                    "queue": job.queue,
                    "attempt": job.attempts,
                    "max_attempts": job.max_attempts,
                    "lease": job.lease,
                    "timeout": job.timeout,
                }
            )
            size += cost
        if batch:
            self._out.append(encode_frame({"op": Op.JOBS, "jobs": batch}))
        self._deliveries = []

    def reply(self, rid: int, fields: Message | None = None) -> None:
        message: Message = {"op": Op.OK, "rid": rid}
        if fields:
            message.update(fields)
        self.send(message)

    def reply_error(self, rid: int | None, code: ErrorCode, text: str) -> None:
        log.info("%s: %s %s", self, code.value, text)
        self.send({"op": Op.ERR, "rid": rid, "code": code.value, "message": text})

    def fail_connection(self, code: ErrorCode, text: str, rid: int | None = None) -> None:
        """Send a last error and close: the peer broke the protocol or may not stay."""
        log.warning("closing %s: %s %s", self, code.value, text)
        if self.transport is None or self._closing:
            return
        self.send({"op": Op.ERR, "rid": rid, "code": code.value, "message": text})
        self.close()

    def close(self) -> None:
        """Stop reading, send what is queued (after the journal, if it must wait), then close."""
        if self.transport is not None and not self._closing:
            self._closing = True
            self._close_after_flush = True
            self.flush()

    def abort(self) -> None:
        if self.transport is not None:
            self._closing = True
            self.transport.abort()

    # -- consumer sink (called by the manager) --------------------------------------

    def deliver(self, job: Job) -> None:
        self.empty_sent = False
        self._deliveries.append((job, job.attempts))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def revoke(self, job: Job) -> None:
        self.send({"op": Op.REVOKE, "id": job.id, "attempt": job.attempts})

    # -- timeouts ---------------------------------------------------------------

    def _check_timeouts(self) -> None:
        self._timer = None
        if self._closing:
            return
        if self.role is None:
            self.fail_connection(
                ErrorCode.TIMEOUT,
                f"no handshake within {self.config.handshake_timeout:g} seconds",
            )
            return
        if self._reading_paused:
            self._last_seen = time.monotonic()  # we stopped listening, not the peer
        idle = time.monotonic() - self._last_seen
        if idle >= self.config.idle_timeout:
            self.fail_connection(
                ErrorCode.TIMEOUT, f"nothing received for {self.config.idle_timeout:g} seconds"
            )
            return
        self._timer = self.loop.call_later(self.config.idle_timeout - idle, self._check_timeouts)

    # -- handlers ---------------------------------------------------------------

    def _on_hello(self, message: Message, now: float) -> None:
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
        self.role = role
        self.name = message.get("name") or ""
        if role == Role.WORKER:
            tasks = message.get("tasks")
            if tasks:
                error = self.manager.announce_tasks(tasks)
                if error is not None:
                    self.role = None
                    self.fail_connection(ErrorCode.BAD_REQUEST, f"HELLO.tasks: {error}", rid)
                    return
            self.consumer = Consumer(self, message.get("queues") or ["default"], self.name)
            self.manager.attach(self.consumer)
            self.burst = bool(message.get("burst"))
            if self.burst:
                self.broker.burst_sessions.add(self)
            log.info(
                "worker %s connected from %s, queues %s",
                self.name or "?",
                self.peer,
                ",".join(self.consumer.queues),
            )
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
        )

    def _on_ping(self, message: Message, now: float) -> None:
        self.reply(message["rid"])

    def _on_submit(self, message: Message, now: float) -> None:
        rid = message["rid"]
        if self.broker.shutting_down:
            self.reply_error(rid, ErrorCode.SHUTTING_DOWN, "the broker is shutting down")
            return
        specs = message["jobs"]
        manager = self.manager
        known = manager.jobs
        limit = self.payload_limit
        new = 0
        for index, spec in enumerate(specs):
            if len(spec["payload"]) > limit:
                self.reply_error(
                    rid,
                    ErrorCode.BAD_REQUEST,
                    f"SUBMIT.jobs[{index}].payload: {len(spec['payload'])} bytes is more than "
                    f"the {limit} a delivery can carry",
                )
                return
            job_id = spec.get("id")
            if job_id is None or job_id not in known:
                new += 1
        manager.check_capacity(new)
        submit = manager.submit
        ids: list[str] = []
        already_done: list[Job] = []
        watch = message.get("watch", False)
        for spec in specs:
            job, _ = submit(JobSpec.from_wire(spec), now)
            ids.append(job.id)
            if watch:
                if job.state.finished:
                    already_done.append(job)
                else:
                    job.add_watcher(self)
        self.reply(rid, {"ids": ids})
        for job in already_done:
            self.send(done_message(job))

    def _on_watch(self, message: Message, now: float) -> None:
        unknown: list[str] = []
        already_done: list[Job] = []
        for job_id in message["ids"]:
            job = self.manager.get(job_id)
            if job is None:
                unknown.append(job_id)
            elif job.state.finished:
                already_done.append(job)
            else:
                job.add_watcher(self)
        self.reply(message["rid"], {"unknown": unknown})
        for job in already_done:
            self.send(done_message(job))

    def _on_status(self, message: Message, now: float) -> None:
        job = self.manager.get(message["id"])
        if job is None:
            self.reply_error(message["rid"], ErrorCode.NOT_FOUND, f"no job {message['id']!r}")
            return
        described = job.describe()
        errors = described["errors"]
        # Many long errors in non-ASCII text could pass the frame limit: the
        # oldest go first, and the reply says how many were left out.
        budget = self.config.max_frame // 2
        kept = len(errors)
        while errors and len(encode_frame(described)) > budget:
            del errors[: max(1, len(errors) // 2)]
            described["errors_left_out"] = kept - len(errors)
        self.reply(message["rid"], {"job": described})

    def _on_cancel(self, message: Message, now: float) -> None:
        outcome = self.manager.cancel(message["id"], now)
        if outcome is None:
            self.reply_error(message["rid"], ErrorCode.NOT_FOUND, f"no job {message['id']!r}")
            return
        self.reply(message["rid"], {"cancelled": outcome})

    def _on_stats(self, message: Message, now: float) -> None:
        self.reply(message["rid"], {"stats": self.broker.stats()})

    def _on_failed(self, message: Message, now: float) -> None:
        described: list[Message] = []
        budget = self.config.max_frame // 2
        limit = message.get("limit")
        for job in self.manager.failed_jobs(DEFAULT_FAILED_LIMIT if limit is None else limit):
            entry = job.describe(last_error_only=True)
            budget -= len(encode_frame(entry))
            if budget < 0:
                break  # the reply must fit in one frame: the oldest are left out
            described.append(entry)
        self.reply(message["rid"], {"jobs": described})

    def _on_retry(self, message: Message, now: float) -> None:
        ids = message.get("ids")
        if ids is None and not message.get("all"):
            self.reply_error(message["rid"], ErrorCode.BAD_REQUEST, "RETRY needs 'ids' or 'all'")
            return
        count = self.manager.retry_failed(None if message.get("all") else ids, now)
        self.reply(message["rid"], {"retried": count})

    def _on_purge_failed(self, message: Message, now: float) -> None:
        self.reply(message["rid"], {"purged": self.manager.purge_failed()})

    def _on_ready(self, message: Message, now: float) -> None:
        assert self.consumer is not None
        if not self.broker.shutting_down:
            self.manager.grant(self.consumer, message["n"], now)
        self.check_burst_empty()

    def _on_ack(self, message: Message, now: float) -> None:
        assert self.consumer is not None
        result = message["result"]
        if len(result) > self.payload_limit:
            self.manager.fail(
                self.consumer,
                message["id"],
                message["attempt"],
                {
                    "type": "ResultTooLarge",
                    "message": f"the result of {len(result)} bytes is more than the "
                    f"{self.payload_limit} a DONE frame can carry",
                    "traceback": "",
                },
                now,
            )
            return
        self.manager.ack(self.consumer, message["id"], message["attempt"], result, now)

    def _on_fail(self, message: Message, now: float) -> None:
        assert self.consumer is not None
        self.manager.fail(
            self.consumer,
            message["id"],
            message["attempt"],
            message["error"],
            now,
            message.get("retry_in"),
        )

    def _on_release(self, message: Message, now: float) -> None:
        assert self.consumer is not None
        self.manager.release(self.consumer, message["id"], message["attempt"], now)

    def _on_heartbeat(self, message: Message, now: float) -> None:
        assert self.consumer is not None
        self.manager.heartbeat(self.consumer, message["ids"], now)

    def _on_quiet(self, message: Message, now: float) -> None:
        assert self.consumer is not None
        self.manager.quiet(self.consumer)

    def check_burst_empty(self) -> None:
        """Tell a burst worker with nothing left to do that its queues are empty."""
        consumer = self.consumer
        if (
            self.burst
            and consumer is not None
            and not self.empty_sent
            and not consumer.jobs
            and self.manager.queues_idle(consumer.queues)
        ):
            self.empty_sent = True
            self.send({"op": Op.EMPTY})
