"""The worker: connect, take jobs up to its concurrency, run them, report.

Flow control is by credit: the worker tells the broker how many more jobs
it can take (``READY n``) and the broker never delivers more. A finished
job gives its slot back. The numbers and decisions (slots, prefetch, credit,
what a stopped job needs) are :class:`worker.slots.Slots`'s; this module
does the I/O. Leases are renewed by a heartbeat loop while jobs are held.
Every task the worker starts is owned (by its :class:`_HeldJob` in
``self._slots``) and awaited or cancelled before the worker returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import ssl as ssl_module
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.backoff import backoff_delay
from protocol.errors import ConnectionLost, JobwireError, ProtocolError, RemoteError
from protocol.framing import DEFAULT_MAX_FRAME, ENVELOPE_RESERVE, packb
from protocol.messages import Op, Role
from protocol.states import JobState
from protocol.stream import Connection, Message, open_connection
from worker.registry import TaskRegistry, default_registry
from worker.retry import Retry
from worker.slots import Arrival, Slots, StopReason

log = logging.getLogger("worker")


RECONNECT_BASE = 0.1
RECONNECT_CAP = 10.0
# Heartbeats go out at this fraction of the shortest lease held.
HEARTBEAT_FRACTION = 3.0


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What a running task can learn about its own job (``worker.current_job()``)."""

    id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int


_current_job: contextvars.ContextVar[JobInfo] = contextvars.ContextVar("jobwire_current_job")


def current_job() -> JobInfo:
    """The job the calling task runs for; raises ``LookupError`` outside a task."""
    return _current_job.get()


def error_info(exc: BaseException) -> dict[str, str]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


class _HeldJob:
    """A job this worker holds (executing, or waiting for a slot): its delivery, its
    task once started, and why it was stopped."""

    __slots__ = ("delivery", "lease", "outcome", "started", "stop_reason", "task")

    def __init__(self, delivery: Message) -> None:
        self.delivery = delivery
        self.lease: float = delivery["lease"]
        self.started = time.perf_counter()
        self.task: asyncio.Task[None] | None = None
        # Set before the task is cancelled.
        self.stop_reason: StopReason | None = None
        # How it ended, for the log: set by whoever ends it.
        self.outcome: str | None = None


class Worker:
    def __init__(
        self,
        address: str = "127.0.0.1:7878",
        *,
        registry: TaskRegistry | None = None,
        concurrency: int = 4,
        queues: Iterable[str] | None = None,
        burst: bool = False,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        name: str = "",
        grace: float = 30.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        prefetch: int = 0,
    ) -> None:
        # Jobs taken beyond the executing ones, so that a freed slot never waits a
        # round trip for its next job (see worker.slots). Raises ValueError early.
        self._slots: Slots[_HeldJob] = Slots(concurrency, prefetch)
        self.address = address
        self.registry = registry if registry is not None else default_registry
        self.concurrency = concurrency
        self.queues = list(queues or self.registry.queues() or ["default"])
        self.burst = burst
        self.token = token
        self.ssl = ssl
        self.name = name
        self.grace = grace
        self.max_frame = max_frame
        self.prefetch = prefetch
        self.jobs_done = 0
        self._connection: Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopped: asyncio.Event | None = None
        self._burst_done = False
        self._heartbeat_wake: asyncio.Event | None = None
        self._heartbeat_interval = 0.0
        self._idle_timeout = 300.0
        self._log_jobs = False
        # A READY is scheduled for the end of this loop turn.
        self._ready_scheduled = False

    # -- control ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`stop` (or, in burst mode, until the queues are empty)."""
        self._stopped = asyncio.Event()
        self._heartbeat_wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="jobwire-task")
        try:
            failures = 0
            while not self._slots.stopping:
                try:
                    connection = await self._connect()
                except (OSError, TimeoutError, ConnectionLost) as exc:
                    failures += 1
                    delay = backoff_delay(failures, RECONNECT_BASE, RECONNECT_CAP)
                    log.warning(
                        "cannot reach the broker at %s (%s); attempt %d, retrying in %.1fs",
                        self.address,
                        exc or type(exc).__name__,
                        failures,
                        delay,
                    )
                    await self._sleep_unless_stopped(delay)
                    continue
                except (RemoteError, ProtocolError) as exc:
                    # Refused (bad token, other version): retrying would not help.
                    raise WorkerRefused(f"the broker at {self.address} refused: {exc}") from exc
                if failures:
                    log.info("reconnected to the broker at %s", self.address)
                failures = 0
                await self._serve(connection)
                if self._burst_done:
                    break
        finally:
            await self._cancel_all(StopReason.SHUTDOWN)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            log.info("stopped after %d job(s)", self.jobs_done)

    def stop(self) -> None:
        """Begin a graceful stop: no new jobs; running ones get ``grace`` seconds."""
        if self._slots.stopping:
            return
        log.info(
            "stopping: %d job(s) running, waiting up to %gs", self._slots.executing, self.grace
        )
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.send({"op": Op.QUIET})
        for waiting in self._slots.stop():  # never started: hand back at once
            waiting.stop_reason = StopReason.SHUTDOWN
            self._release(waiting.delivery)
        if self._stopped is not None:
            self._stopped.set()

    def stop_now(self) -> None:
        """Stop at once: running jobs are cancelled and handed back to the broker."""
        self.grace = 0.0
        self.stop()
        for held in self._slots.held():
            self._stop_job(held, StopReason.SHUTDOWN)

    async def _sleep_unless_stopped(self, delay: float) -> None:
        assert self._stopped is not None
        try:
            async with asyncio.timeout(delay):
                await self._stopped.wait()
        except TimeoutError:
            pass

    async def _connect(self) -> Connection:
        hello: Message = {
            "role": Role.WORKER,
            "name": self.name,
            "queues": self.queues,
            "burst": self.burst,
            "tasks": {t.name: t.defaults() for t in self.registry if t.defaults()},
            # Routing by task: the broker sends this worker only jobs it can run.
            "task_names": self.registry.names(),
        }
        schedules = self.registry.schedules()
        if schedules:
            hello["schedules"] = schedules
        connection, reply = await open_connection(
            self.address,
            hello,
            on_push=self._on_push,
            token=self.token,
            ssl=self.ssl,
            max_frame=self.max_frame,
        )
        self._idle_timeout = float(reply.get("idle_timeout") or 300.0)
        return connection

    async def _serve(self, connection: Connection) -> None:
        self._connection = connection
        self._log_jobs = log.isEnabledFor(logging.INFO)
        log.info(
            "connected to %s: queues %s, concurrency %d, tasks %s",
            self.address,
            ",".join(self.queues),
            self.concurrency,
            ",".join(self.registry.names()),
        )
        heartbeat = asyncio.create_task(self._heartbeat_loop(connection))
        stopped = asyncio.create_task(self._wait_stopped())
        try:
            credit = self._slots.connected()
            if credit:
                connection.send({"op": Op.READY, "n": credit})
            closed: asyncio.Future[Any] = connection.closed
            await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
            if self._slots.stopping and connection.is_open:
                await self._drain_gracefully()
                await connection.close()
        finally:
            heartbeat.cancel()
            stopped.cancel()
            await asyncio.gather(heartbeat, stopped, return_exceptions=True)
            self._connection = None
            if not connection.closed.done():
                connection.abort()
            # The broker requeues whatever this connection held; results
            # of those attempts would be ignored, so stop computing them.
            await self._cancel_all(StopReason.LOST)
        reason = connection.closed.result() if connection.closed.done() else None
        if not self._slots.stopping and not self._burst_done:
            log.warning("connection to the broker lost (%s); reconnecting", reason or "closed")

    async def _wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def _drain_gracefully(self) -> None:
        tasks = [held.task for held in self._slots.held() if held.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.grace)
        await self._cancel_all(StopReason.SHUTDOWN)

    async def _cancel_all(self, reason: StopReason) -> None:
        held = self._slots.held()
        for job in held:
            self._stop_job(job, reason)
        tasks = [job.task for job in held if job.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _stop_job(self, held: _HeldJob, reason: StopReason) -> None:
        if held.task is not None:
            if not held.task.done():
                held.stop_reason = held.stop_reason or reason
                held.task.cancel()
            return
        # Still waiting for a slot: nothing to cancel, only the slot to settle.
        held.stop_reason = held.stop_reason or reason
        if self._slots.drop(held.delivery["id"], held, reason):
            self._release(held.delivery)
        self._schedule_ready()

    def _release(self, delivery: Message) -> None:
        """Hand a job back unfinished, to run again elsewhere, its attempt uncounted."""
        connection = self._connection
        if connection is not None and connection.is_open:
            release = {"op": Op.RELEASE, "id": delivery["id"], "attempt": delivery["attempt"]}
            connection.send(release)

    # -- pushes from the broker --------------------------------------------------

    def _on_push(self, message: Message) -> None:
        op = message["op"]
        if op == Op.JOBS:
            for delivery in message["jobs"]:
                self._start(delivery)
        elif op == Op.REVOKE:
            held = self._slots.get(message["id"])
            if held is not None and held.delivery["attempt"] == message["attempt"]:
                log.info("job %s revoked by the broker", message["id"])
                self._stop_job(held, StopReason.REVOKED)
        elif op == Op.EMPTY:
            if self.burst and not self._slots:
                log.info("burst mode: queues are empty, exiting")
                self._burst_done = True
                self._slots.stop()  # holds nothing: nothing to hand back
                if self._stopped is not None:
                    self._stopped.set()
        elif op == Op.SHUTDOWN:
            log.warning("the broker is shutting down")

    def _start(self, delivery: Message) -> None:
        connection = self._connection
        if connection is None:
            return
        previous = self._slots.get(delivery["id"])
        if previous is not None:
            self._stop_job(previous, StopReason.REVOKED)  # an older attempt, given away
        held = _HeldJob(delivery)
        arrival = self._slots.arrive(delivery["id"], held)
        if arrival is Arrival.HAND_BACK:
            self._release(delivery)
            return
        if arrival is Arrival.START:
            self._launch(held, connection)
        elif self._log_jobs:
            log.info("job %s %s waits for a slot", delivery["id"], delivery["task"])
        if self._heartbeat_wake is not None and (
            held.lease / HEARTBEAT_FRACTION < self._heartbeat_interval
        ):
            self._heartbeat_wake.set()

    # -- running one job ---------------------------------------------------------

    def _launch(self, held: _HeldJob, connection: Connection) -> None:
        """Start a job's task; its slot is taken already."""
        held.started = time.perf_counter()
        task = held.task = asyncio.create_task(self._run_job(held, connection))
        # A callback, not a finally: it runs even if the task is cancelled
        # before it starts (say, a REVOKE in the same read as the JOBS).
        task.add_done_callback(lambda _: self._job_done(held, connection))

    async def _run_job(self, held: _HeldJob, connection: Connection) -> None:
        """Run the task and report; the bookkeeping after it is :meth:`_job_done`'s."""
        delivery = held.delivery
        job_id: str = delivery["id"]
        attempt: int = delivery["attempt"]
        report: Message
        if self._log_jobs:
            log.info("job %s %s started (attempt %d)", job_id, delivery["task"], attempt)
        try:
            result = await self._call_task(delivery)
            report = {
                "op": Op.ACK,
                "id": job_id,
                "attempt": attempt,
                "result": _encode_result(result, self.max_frame - ENVELOPE_RESERVE),
            }
            held.outcome = JobState.SUCCEEDED
        except asyncio.CancelledError:
            if held.stop_reason is None:
                raise  # not ours: the worker itself is being torn down
            return  # _job_done settles it by the reason
        except Retry as exc:
            held.outcome = f"retry in {exc.delay:g}s"
            report = {
                "op": Op.FAIL,
                "id": job_id,
                "attempt": attempt,
                "error": error_info(exc),
                "retry_in": exc.delay,
            }
        except Exception as exc:
            held.outcome = f"failed: {type(exc).__name__}: {exc}"
            report = {"op": Op.FAIL, "id": job_id, "attempt": attempt, "error": error_info(exc)}
        if connection.is_open:
            connection.send(report)

    def _job_done(self, held: _HeldJob, connection: Connection) -> None:
        """A job's task ended, however (even cancelled before it began): settle its slot."""
        delivery = held.delivery
        job_id: str = delivery["id"]
        reason = held.stop_reason
        # The same job may be redelivered here while this attempt winds down:
        # the slots hold on to the newer one.
        self._slots.ended(job_id, held, reason)
        self.jobs_done += 1
        if held.outcome is None and reason is not None:
            held.outcome = reason.value
            if reason is StopReason.SHUTDOWN and connection.is_open:
                # Cancelled unfinished: hand it back to run again elsewhere, uncounted.
                connection.send({"op": Op.RELEASE, "id": job_id, "attempt": delivery["attempt"]})
            # Revoked (cancelled, or lease lost) or connection lost: the broker
            # has moved on and expects nothing for this attempt.
        if self._log_jobs:
            log.info(
                "job %s %s %s in %.3fs",
                job_id,
                delivery["task"],
                held.outcome or "ended",
                time.perf_counter() - held.started,
            )
        if connection.is_open:
            waiting = self._slots.start_next()
            if waiting is not None:
                self._launch(waiting, connection)
        self._schedule_ready()

    def _schedule_ready(self) -> None:
        """Credit the freed slots back: those freed in one loop turn go as one READY."""
        if self._slots.credit_owed and not self._ready_scheduled:
            self._ready_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_ready)

    def _send_ready(self) -> None:
        self._ready_scheduled = False
        connection = self._connection
        if connection is None or not connection.is_open:
            return  # the next connection announces its credit afresh
        freed = self._slots.take_credit()
        if freed:
            connection.send({"op": Op.READY, "n": freed})

    async def _call_task(self, delivery: Message) -> Any:
        definition = self.registry.get(delivery["task"])
        if definition is None:
            raise UnknownTask(
                f"no task {delivery['task']!r} on this worker "
                f"(it has: {', '.join(self.registry.names()) or 'none'})"
            )
        try:
            args, kwargs = msgpack.unpackb(delivery["payload"], raw=False, strict_map_key=False)
            args = list(args)
            kwargs = dict(kwargs)
        except Exception as exc:
            raise BadPayload(f"cannot decode the job's arguments: {exc}") from None
        timeout = delivery.get("timeout") or definition.timeout
        _current_job.set(
            JobInfo(
                delivery["id"],
                delivery["task"],
                delivery["queue"],
                delivery["attempt"],
                delivery["max_attempts"],
            )
        )
        if definition.is_async:
            call = definition.func(*args, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            call = loop.run_in_executor(
                self._executor, functools.partial(context.run, definition.func, *args, **kwargs)
            )
        if timeout is None:
            return await call
        try:
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError:
            raise JobTimeout(f"the task ran longer than its timeout of {timeout:g}s") from None

    # -- leases ------------------------------------------------------------------

    async def _heartbeat_loop(self, connection: Connection) -> None:
        assert self._heartbeat_wake is not None
        keepalive = self._idle_timeout / HEARTBEAT_FRACTION
        while connection.is_open:
            leases = [held.lease for held in self._slots.held()]
            self._heartbeat_interval = (
                min(keepalive, min(leases) / HEARTBEAT_FRACTION) if leases else keepalive
            )
            self._heartbeat_wake.clear()
            try:
                async with asyncio.timeout(self._heartbeat_interval):
                    await self._heartbeat_wake.wait()
                continue  # a shorter lease arrived: recompute the interval
            except TimeoutError:
                pass
            if connection.is_open:
                connection.send({"op": Op.HEARTBEAT, "ids": self._slots.held_ids()})


class WorkerRefused(JobwireError):
    """The broker refused the worker's handshake (token, TLS, protocol version)."""


class UnknownTask(JobwireError):
    """The job names a task this worker does not have."""


class BadPayload(JobwireError):
    """The job's payload is not the ``[args, kwargs]`` msgpack array."""


class JobTimeout(JobwireError, TimeoutError):
    """The task ran longer than its timeout."""


class UnencodableResult(JobwireError, TypeError):
    """The task returned something msgpack cannot encode."""


def _encode_result(result: Any, limit: int) -> bytes:
    try:
        encoded: bytes = packb(result)
    except Exception as exc:
        raise UnencodableResult(
            f"the task's return value of type {type(result).__name__} cannot be encoded "
            f"as msgpack: {exc}"
        ) from None
    if len(encoded) > limit:
        raise UnencodableResult(
            f"the task's return value is {len(encoded)} bytes encoded, more than the "
            f"{limit} a frame can carry"
        )
    return encoded


__all__ = [
    "BadPayload",
    "JobInfo",
    "JobTimeout",
    "UnencodableResult",
    "UnknownTask",
    "Worker",
    "WorkerRefused",
    "current_job",
]
