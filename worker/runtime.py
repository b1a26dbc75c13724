"""The worker: connect, take jobs up to its concurrency, run them, report.

Flow control is by credit: the worker tells the broker how many more jobs
it can take (``READY n``) and the broker never delivers more. A finished
job gives its slot back. Leases are renewed by a heartbeat loop while jobs
run. Every task the worker starts is owned (``self._running``) and awaited
or cancelled before the worker returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import ssl as ssl_module
import time
import traceback
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import ConnectionLost, JobwireError, ProtocolError, RemoteError
from protocol.framing import DEFAULT_MAX_FRAME, ENVELOPE_RESERVE, packb
from protocol.messages import Op, Role
from protocol.stream import Connection, Message, open_connection
from worker.registry import TaskRegistry, default_registry
from worker.retry import Retry

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


class _Running:
    """A job this worker runs: its delivery, its task, and why it was stopped."""

    __slots__ = ("delivery", "lease", "outcome", "started", "stop_reason", "task")

    def __init__(self, delivery: Message) -> None:
        self.delivery = delivery
        self.lease: float = delivery["lease"]
        self.started = time.perf_counter()
        self.task: asyncio.Task[None] | None = None
        # Set before the task is cancelled: "revoked", "shutdown" or "lost".
        self.stop_reason: str | None = None
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
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch < 0:
            raise ValueError("prefetch must be at least 0")
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
        # Jobs taken beyond the running ones, so that a freed slot never waits a
        # round trip for its next job. They count as running at the broker (their
        # leases are renewed like the others') and wait here in arrival order.
        self.prefetch = prefetch
        self.jobs_done = 0
        # Every job this worker holds, executing or waiting for a slot.
        self._running: dict[str, _Running] = {}
        self._waiting: deque[_Running] = deque()
        self._executing = 0
        self._connection: Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._burst_done = False
        self._heartbeat_wake: asyncio.Event | None = None
        self._heartbeat_interval = 0.0
        self._idle_timeout = 300.0
        self._log_jobs = False
        self._slots_freed = 0

    # -- control ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`stop` (or, in burst mode, until the queues are empty)."""
        self._stopped = asyncio.Event()
        self._heartbeat_wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="jobwire-task")
        try:
            failures = 0
            while not self._stopping:
                try:
                    connection = await self._connect()
                except (OSError, TimeoutError, ConnectionLost) as exc:
                    failures += 1
                    delay = min(RECONNECT_CAP, RECONNECT_BASE * 2 ** min(failures - 1, 20))
                    delay *= random.uniform(0.5, 1.0)
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
            await self._cancel_all("shutdown")
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            log.info("stopped after %d job(s)", self.jobs_done)

    def stop(self) -> None:
        """Begin a graceful stop: no new jobs; running ones get ``grace`` seconds."""
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping: %d job(s) running, waiting up to %gs", self._executing, self.grace)
        if self._connection is not None and self._connection.is_open:
            self._connection.send({"op": Op.QUIET})
        for waiting in list(self._waiting):
            self._stop_job(waiting, "shutdown")  # never started: hand back at once
        if self._stopped is not None:
            self._stopped.set()

    def stop_now(self) -> None:
        """Stop at once: running jobs are cancelled and handed back to the broker."""
        self.grace = 0.0
        self.stop()
        for running in list(self._running.values()):
            self._stop_job(running, "shutdown")

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
        }
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
        self._slots_freed = 0
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
            free = self.concurrency + self.prefetch - len(self._running)
            if free > 0 and not self._stopping:
                connection.send({"op": Op.READY, "n": free})
            closed: asyncio.Future[Any] = connection.closed
            await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
            if self._stopping and connection.is_open:
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
            await self._cancel_all("lost")
        reason = connection.closed.result() if connection.closed.done() else None
        if not self._stopping and not self._burst_done:
            log.warning("connection to the broker lost (%s); reconnecting", reason or "closed")

    async def _wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def _drain_gracefully(self) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.grace)
        await self._cancel_all("shutdown")

    async def _cancel_all(self, reason: str) -> None:
        running = list(self._running.values())
        for job in running:
            self._stop_job(job, reason)
        tasks = [job.task for job in running if job.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _stop_job(self, running: _Running, reason: str) -> None:
        if running.task is not None:
            if not running.task.done():
                running.stop_reason = running.stop_reason or reason
                running.task.cancel()
            return
        # Still waiting for a slot: nothing to cancel, only the slot to settle.
        if running not in self._waiting:
            return
        self._waiting.remove(running)
        job_id = running.delivery["id"]
        if self._running.get(job_id) is running:
            del self._running[job_id]
        connection = self._connection
        if connection is None or not connection.is_open or reason == "lost":
            return
        if reason == "shutdown":
            connection.send(
                {"op": Op.RELEASE, "id": job_id, "attempt": running.delivery["attempt"]}
            )
        elif not self._stopping:
            self._give_back_slot(connection)

    # -- pushes from the broker --------------------------------------------------

    def _on_push(self, message: Message) -> None:
        op = message["op"]
        if op == Op.JOBS:
            for delivery in message["jobs"]:
                self._start(delivery)
        elif op == Op.REVOKE:
            running = self._running.get(message["id"])
            if running is not None and running.delivery["attempt"] == message["attempt"]:
                log.info("job %s revoked by the broker", message["id"])
                self._stop_job(running, "revoked")
        elif op == Op.EMPTY:
            if self.burst and not self._running:
                log.info("burst mode: queues are empty, exiting")
                self._burst_done = True
                self._stopping = True
                if self._stopped is not None:
                    self._stopped.set()
        elif op == Op.SHUTDOWN:
            log.warning("the broker is shutting down")

    def _start(self, delivery: Message) -> None:
        connection = self._connection
        if self._stopping or connection is None:
            if connection is not None and connection.is_open:
                connection.send(
                    {"op": Op.RELEASE, "id": delivery["id"], "attempt": delivery["attempt"]}
                )
            return
        running = _Running(delivery)
        previous = self._running.get(delivery["id"])
        if previous is not None:
            self._stop_job(previous, "revoked")  # an older attempt, already given away
        self._running[delivery["id"]] = running
        if self._executing < self.concurrency:
            self._launch(running, connection)
        else:
            self._waiting.append(running)
            if self._log_jobs:
                log.info("job %s %s waits for a slot", delivery["id"], delivery["task"])
        if self._heartbeat_wake is not None and (
            running.lease / HEARTBEAT_FRACTION < self._heartbeat_interval
        ):
            self._heartbeat_wake.set()

    # -- running one job ---------------------------------------------------------

    def _launch(self, running: _Running, connection: Connection) -> None:
        self._executing += 1
        running.started = time.perf_counter()
        task = running.task = asyncio.create_task(self._run_job(running, connection))
        # A callback, not a finally: it runs even if the task is cancelled
        # before it starts (say, a REVOKE in the same read as the JOBS).
        task.add_done_callback(lambda _: self._job_done(running, connection))

    def _launch_waiting(self, connection: Connection) -> None:
        """A slot is free: start the job that has waited longest for one."""
        if self._waiting and not self._stopping and connection.is_open:
            self._launch(self._waiting.popleft(), connection)

    async def _run_job(self, running: _Running, connection: Connection) -> None:
        """Run the task and report; the bookkeeping after it is :meth:`_job_done`'s."""
        delivery = running.delivery
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
            running.outcome = "succeeded"
        except asyncio.CancelledError:
            if running.stop_reason is None:
                raise  # not ours: the worker itself is being torn down
            return  # _job_done settles it by the reason
        except Retry as exc:
            running.outcome = f"retry in {exc.delay:g}s"
            report = {
                "op": Op.FAIL,
                "id": job_id,
                "attempt": attempt,
                "error": error_info(exc),
                "retry_in": exc.delay,
            }
        except Exception as exc:
            running.outcome = f"failed: {type(exc).__name__}: {exc}"
            report = {"op": Op.FAIL, "id": job_id, "attempt": attempt, "error": error_info(exc)}
        if connection.is_open:
            connection.send(report)

    def _job_done(self, running: _Running, connection: Connection) -> None:
        """A job's task ended, however (even cancelled before it began): settle its slot."""
        delivery = running.delivery
        job_id: str = delivery["id"]
        # The same job may be redelivered here while this attempt winds down.
        if self._running.get(job_id) is running:
            del self._running[job_id]
        self._executing -= 1
        self.jobs_done += 1
        reason = running.stop_reason
        if running.outcome is None and reason is not None:
            running.outcome = reason
            if reason == "shutdown" and connection.is_open:
                # Cancelled unfinished: hand it back to run again elsewhere, uncounted.
                connection.send({"op": Op.RELEASE, "id": job_id, "attempt": delivery["attempt"]})
            # Revoked (cancelled, or lease lost) or connection lost: the broker
            # has moved on and expects nothing for this attempt.
        if self._log_jobs:
            log.info(
                "job %s %s %s in %.3fs",
                job_id,
                delivery["task"],
                running.outcome or "ended",
                time.perf_counter() - running.started,
            )
        self._launch_waiting(connection)
        if connection.is_open and not self._stopping and reason != "lost":
            self._give_back_slot(connection)

    def _give_back_slot(self, connection: Connection) -> None:
        """Credit one slot back to the broker; the slots freed in one loop turn go as one READY."""
        self._slots_freed += 1
        if self._slots_freed == 1:
            asyncio.get_running_loop().call_soon(self._send_ready, connection)

    def _send_ready(self, connection: Connection) -> None:
        freed, self._slots_freed = self._slots_freed, 0
        if freed and connection.is_open and not self._stopping:
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
            leases = [r.lease for r in self._running.values()]
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
                connection.send({"op": Op.HEARTBEAT, "ids": list(self._running)})


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
