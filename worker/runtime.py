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
import inspect
import logging
import math
import os
import ssl as ssl_module
import time
import traceback
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.backoff import Reconnect
from protocol.config import resolve_addresses
from protocol.errors import (
    RETRYABLE_REFUSALS,
    BrokerUnavailable,
    ConnectionLost,
    JobwireError,
    NotLeader,
    ProtocolError,
    RemoteError,
)
from protocol.framing import DEFAULT_MAX_FRAME, ENVELOPE_RESERVE, packb
from protocol.logs import job_extra
from protocol.messages import MAX_PROGRESS_INFO, Op, Role
from protocol.peers import LeaderSearch
from protocol.security import client_ssl_context
from protocol.states import JobState
from protocol.stream import Connection, Message, open_connection
from worker.processes import ProcessPool, ProcessTaskError, TaskHomes, home_of
from worker.registry import TaskDef, TaskRegistry, default_registry
from worker.retry import Retry
from worker.slots import Arrival, Slots, StopReason

log = logging.getLogger("worker")


# Reconnecting (``protocol.backoff.Reconnect``): at once after a connection
# that worked, then 0.1 s doubling to 10 s while attempts fail.
RECONNECT_BASE = 0.1
RECONNECT_CAP = 10.0
# Heartbeats go out at this fraction of the shortest lease held.
HEARTBEAT_FRACTION = 3.0
# At most one PROGRESS per job in this many seconds; in between, the latest
# report waits and replaces the one before it.
PROGRESS_INTERVAL = 0.25


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What a running task can learn about its own job (``worker.current_job()``).

    ``deadline``: when the task's timeout ends, in ``time.time()`` seconds
    (None without a timeout).
    """

    id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: float | None = None


_current_job: contextvars.ContextVar[JobInfo] = contextvars.ContextVar("jobwire_current_job")


def current_job() -> JobInfo:
    """The job the calling task runs for; raises ``LookupError`` outside a task."""
    return _current_job.get()


# The worker's shared context, as its on_startup hook left it (arq's ``ctx``).
Context = dict[str, Any]
# A lifecycle hook: a plain or async function of the context.
Hook = Callable[[Context], Awaitable[None] | None]

_task_context: contextvars.ContextVar[Context] = contextvars.ContextVar("jobwire_task_context")


def task_context() -> Context:
    """The worker's shared context (what ``on_startup`` put there: a database
    pool, an HTTP session), for the calling task; raises ``LookupError``
    outside a task."""
    return _task_context.get()


# The worker and the held job of the running task, for report_progress.
_current_held: contextvars.ContextVar[tuple[Worker, _HeldJob]] = contextvars.ContextVar(
    "jobwire_current_held"
)


class _Reported:
    """What :func:`report_progress` returns: awaiting it does nothing more."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


_REPORTED = _Reported()


def report_progress(fraction: float, info: Mapping[str, Any] | None = None) -> _Reported:
    """Report the running job's progress: ``fraction`` in 0..1 and a small map.

    ``await report_progress(0.4, {"rows": 4000})`` in an ``async def`` task;
    a plain ``def`` task calls it without ``await``. ``info`` must encode to
    at most 1024 bytes of msgpack (``ValueError`` otherwise). Reports are
    rate-limited per job (one every 0.25 s at most; the latest wins), so a
    tight loop may call it freely. Raises ``LookupError`` outside a task.
    """
    worker, held = _current_held.get()
    if type(fraction) not in (int, float) or not 0 <= fraction <= 1:
        raise ValueError(f"progress must be a number in 0..1, not {fraction!r}")
    encoded: bytes | None = None
    if info is not None:
        try:
            encoded = packb(dict(info))
        except Exception as exc:
            raise ValueError(f"progress info cannot be encoded as msgpack: {exc}") from None
        if len(encoded) > MAX_PROGRESS_INFO:
            raise ValueError(
                f"progress info is {len(encoded)} bytes encoded, more than {MAX_PROGRESS_INFO}"
            )
    loop = worker._loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        worker._progress(held, float(fraction), encoded)
    elif loop is not None:  # a plain def task, in its thread
        loop.call_soon_threadsafe(worker._progress, held, float(fraction), encoded)
    return _REPORTED


async def _run_hook(hook: Hook | None, context: Context) -> None:
    if hook is None:
        return
    outcome = hook(context)
    if inspect.isawaitable(outcome):
        await outcome


def error_info(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, ProcessTaskError):  # raised in a task process: its own account
        return dict(exc.info)
    if isinstance(exc.__cause__, ProcessTaskError):  # a Retry raised in a task process
        return dict(exc.__cause__.info)
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


class _HeldJob:
    """A job this worker holds (executing, or waiting for a slot): its delivery, its
    task once started, and why it was stopped."""

    __slots__ = (
        "delivery",
        "lease",
        "outcome",
        "progress_pending",
        "progress_sent",
        "progress_timer",
        "started",
        "stop_reason",
        "task",
    )

    def __init__(self, delivery: Message) -> None:
        self.delivery = delivery
        self.lease: float = delivery["lease"]
        self.started = time.perf_counter()
        self.task: asyncio.Task[None] | None = None
        # Set before the task is cancelled.
        self.stop_reason: StopReason | None = None
        # How it ended, for the log: set by whoever ends it.
        self.outcome: str | None = None
        # Progress: the report waiting for its turn, when the last one left,
        # and the timer that sends the waiting one (see PROGRESS_INTERVAL).
        self.progress_pending: tuple[float, bytes | None] | None = None
        self.progress_sent = -math.inf
        self.progress_timer: asyncio.TimerHandle | None = None


class Worker:
    def __init__(
        self,
        address: str | Sequence[str] | None = None,
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
        connect_timeout: float | None = None,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
        context: Context | None = None,
        processes: int | None = None,
    ) -> None:
        """``address``: as :class:`broker.Client`'s (``host:port`` or a ``jobwire://``
        or ``jobwires://`` URL; by default ``JOBWIRE_URL``, else 127.0.0.1:7878).
        Several (a cluster shard's brokers), as a list or separated by commas:
        the worker serves whichever leads, and follows it after a failover.

        ``connect_timeout``: how long the broker may stay unreachable (at start,
        or after a lost connection) before :meth:`run` raises
        :class:`BrokerUnavailable`; None (the default) retries for ever.

        ``on_startup(context)`` runs in :meth:`run` before the worker connects
        (an exception from it ends :meth:`run`); ``on_shutdown(context)`` runs
        once every job has finished or been handed back. Either may be async.
        Tasks read ``context`` with :func:`task_context`; it starts as
        ``context`` (or an empty dict) with ``"worker"`` set to this worker.

        ``processes``: the size of the process pool, and with it every plain
        ``def`` task runs in a process (``--processes``). Without it, only
        ``@task(process=True)`` tasks do, in a pool of ``min(concurrency,
        os.cpu_count())`` processes started only if the registry has one.
        """
        # Jobs taken beyond the executing ones, so that a freed slot never waits a
        # round trip for its next job (see worker.slots). Raises ValueError early.
        self._slots: Slots[_HeldJob] = Slots(concurrency, prefetch)
        addresses, tls = resolve_addresses(address)
        self._peers = LeaderSearch(addresses)
        if tls and ssl is None:
            ssl = client_ssl_context()
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
        self.connect_timeout = connect_timeout
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.context: Context = context if context is not None else {}
        self.context.setdefault("worker", self)
        if processes is not None and processes < 0:
            raise ValueError("processes must be 0 or more")
        self.processes = processes
        self._pool: ProcessPool | None = None
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
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        """The broker's address: the one connected to, else the one tried last."""
        return self._peers.current

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address the worker was given, in order."""
        return self._peers.addresses

    # -- control ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`stop` (or, in burst mode, until the queues are empty)."""
        self._stopped = asyncio.Event()
        self._heartbeat_wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        homes = self._process_homes()  # a task no process can find: ValueError, before anything
        await _run_hook(self.on_startup, self.context)
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="jobwire-task")
        reconnect = Reconnect(RECONNECT_BASE, RECONNECT_CAP)
        loop = asyncio.get_running_loop()
        unreachable_since: float | None = None
        try:
            if homes:
                size = self.processes or min(self.concurrency, os.cpu_count() or 1)
                self._pool = ProcessPool(size, homes)
                log.info("process pool: %d processes for %s", size, ", ".join(sorted(homes)))
                await self._pool.start()
            peers = self._peers
            while not self._slots.stopping:
                # At once after a connection that worked; backoff while rounds of
                # attempts (one per address) fail.
                if peers.round_start:
                    await self._sleep_unless_stopped(reconnect.delay())
                if self._slots.stopping:
                    break
                address = peers.next()
                try:
                    connection = await self._connect(address)
                except (OSError, TimeoutError, ConnectionLost, RemoteError) as exc:
                    if isinstance(exc, RemoteError) and exc.code not in RETRYABLE_REFUSALS:
                        # Refused (bad token, other version): retrying would not help.
                        raise WorkerRefused(f"the broker at {address} refused: {exc}") from exc
                    now = loop.time()
                    if unreachable_since is None:
                        unreachable_since = now
                    if (
                        self.connect_timeout is not None
                        and now - unreachable_since >= self.connect_timeout
                    ):
                        raise BrokerUnavailable(
                            f"cannot reach the broker at {peers} within "
                            f"{self.connect_timeout:g}s: {exc or type(exc).__name__}"
                        ) from exc
                    leader = exc.leader if isinstance(exc, NotLeader) else None
                    if not peers.failed(leader):
                        # Another address (or the leader a standby named) is next.
                        log.info("cannot use the broker at %s (%s); trying the next", address, exc)
                        continue
                    delay = reconnect.failed()
                    log.warning(
                        "cannot reach the broker at %s (%s); attempt %d, retrying in %.1fs",
                        address,
                        exc or type(exc).__name__,
                        reconnect.failures,
                        delay,
                    )
                    continue
                except ProtocolError as exc:
                    # Another protocol version: retrying would not help.
                    raise WorkerRefused(f"the broker at {address} refused: {exc}") from exc
                if reconnect.failures or not peers.round_start:
                    log.info("reconnected to the broker at %s", address)
                peers.connected()
                reconnect.connected()
                unreachable_since = None
                await self._serve(connection)
                if self._burst_done:
                    break
        finally:
            await self._cancel_all(StopReason.SHUTDOWN)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
            try:
                await _run_hook(self.on_shutdown, self.context)
            except Exception:
                log.exception("the on_shutdown hook failed")
            log.info("stopped after %d job(s)", self.jobs_done)

    def check(self) -> None:
        """Raise ``ValueError`` for a setting :meth:`run` would refuse (a process
        task that no process could import)."""
        self._process_homes()

    def _runs_in_process(self, definition: TaskDef) -> bool:
        return definition.process or (bool(self.processes) and not definition.is_async)

    def _process_homes(self) -> TaskHomes:
        """The tasks this worker runs in processes, and where a child finds each."""
        return {d.name: home_of(d.name, d.func) for d in self.registry if self._runs_in_process(d)}

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

    async def _connect(self, address: str) -> Connection:
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
            address,
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
            log.info(
                "job %s %s started (attempt %d)",
                job_id,
                delivery["task"],
                attempt,
                extra=job_extra(job_id, delivery["queue"], delivery["task"]),
            )
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
        if held.progress_timer is not None:  # the job's end says more
            held.progress_timer.cancel()
            held.progress_timer = None
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
                extra=job_extra(job_id, delivery["queue"], delivery["task"]),
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
        timeout = delivery.get("timeout") or definition.timeout
        if self._pool is not None and self._runs_in_process(definition):
            # Only the bytes cross to the process, which decodes them itself.
            try:
                return _Encoded(await self._pool.run(definition.name, delivery["payload"], timeout))
            except TimeoutError:
                raise JobTimeout(
                    f"the task ran longer than its timeout of {timeout:g}s; its process was killed"
                ) from None
            except ProcessTaskError as exc:
                if exc.retry_in is not None:
                    raise Retry(exc.retry_in, exc.info.get("message", "")) from exc
                raise
        try:
            args, kwargs = msgpack.unpackb(delivery["payload"], raw=False, strict_map_key=False)
            args = list(args)
            kwargs = dict(kwargs)
        except Exception as exc:
            raise BadPayload(f"cannot decode the job's arguments: {exc}") from None
        _current_job.set(
            JobInfo(
                delivery["id"],
                delivery["task"],
                delivery["queue"],
                delivery["attempt"],
                delivery["max_attempts"],
                None if timeout is None else time.time() + timeout,
            )
        )
        _task_context.set(self.context)
        held = self._slots.get(delivery["id"])
        if held is not None:
            _current_held.set((self, held))
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

    # -- progress ----------------------------------------------------------------

    def _progress(self, held: _HeldJob, fraction: float, info: bytes | None) -> None:
        """A report from the job's task: send it now, or when its interval has passed."""
        if held.task is None or held.task.done():
            return  # it ended meanwhile (a report from a thread can arrive late)
        held.progress_pending = (fraction, info)
        if held.progress_timer is not None:
            return  # the scheduled send takes the latest
        loop = asyncio.get_running_loop()
        wait = held.progress_sent + PROGRESS_INTERVAL - loop.time()
        if wait <= 0:
            self._send_progress(held)
        else:
            held.progress_timer = loop.call_later(wait, self._send_progress, held)

    def _send_progress(self, held: _HeldJob) -> None:
        held.progress_timer = None
        pending, held.progress_pending = held.progress_pending, None
        connection = self._connection
        if pending is None or connection is None or not connection.is_open:
            return
        held.progress_sent = asyncio.get_running_loop().time()
        fraction, info = pending
        delivery = held.delivery
        report: Message = {
            "op": Op.PROGRESS,
            "id": delivery["id"],
            "attempt": delivery["attempt"],
            "fraction": fraction,
        }
        if info is not None:
            report["info"] = info
        connection.send(report)

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


class _Encoded(bytes):
    """A result a task process encoded already."""


def _encode_result(result: Any, limit: int) -> bytes:
    try:
        encoded: bytes = result if type(result) is _Encoded else packb(result)
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
    "report_progress",
    "task_context",
]
