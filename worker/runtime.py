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
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
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
from protocol.stream import DEFAULT_CONNECT_TIMEOUT, Connection, Message, open_connection
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
# Automatic prefetch (the default): once this many jobs in a row (at least)
# each ran under AUTO_PREFETCH_SHORT seconds, the worker takes up to
# AUTO_PREFETCH_PER_SLOT more jobs per slot, so a freed slot never waits a
# round trip; the first job that runs longer turns it off again. A job that
# waits for a slot longer than PREFETCH_MAX_WAIT seconds (the slots are all
# taken by long jobs) is handed back with every other waiting one, for an
# idle worker to take.
AUTO_PREFETCH_SHORT = 0.002
AUTO_PREFETCH_STREAK = 16
AUTO_PREFETCH_PER_SLOT = 4
AUTO_PREFETCH_MAX = 256
PREFETCH_MAX_WAIT = 0.25


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


class _Running:
    """What a running task's context holds: one context variable, set once per job."""

    __slots__ = ("context", "held", "job", "worker")

    def __init__(
        self, job: JobInfo, context: Context, worker: Worker, held: _HeldJob | None
    ) -> None:
        self.job = job
        self.context = context
        self.worker = worker
        self.held = held


_running: contextvars.ContextVar[_Running] = contextvars.ContextVar("jobwire_running")


def current_job() -> JobInfo:
    """The job the calling task runs for; raises ``LookupError`` outside a task."""
    return _running.get().job


# The worker's shared context, as its on_startup hook left it (arq's ``ctx``).
Context = dict[str, Any]
# A lifecycle hook: a plain or async function of the context.
Hook = Callable[[Context], Awaitable[None] | None]


def task_context() -> Context:
    """The worker's shared context (what ``on_startup`` put there: a database
    pool, an HTTP session), for the calling task; raises ``LookupError``
    outside a task."""
    return _running.get().context


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
    job = _running.get()
    worker, held = job.worker, job.held
    if held is None:
        raise LookupError("the job is no longer held by this worker")
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
        "arrived",
        "delivery",
        "lease",
        "outcome",
        "progress_pending",
        "progress_sent",
        "progress_timer",
        "running",
        "started",
        "stop_reason",
        "task",
    )

    def __init__(self, delivery: Message) -> None:
        self.delivery = delivery
        self.lease: float = delivery["lease"]
        self.arrived = self.started = time.perf_counter()
        # The asyncio task it goes on in, once its first step waited.
        self.task: asyncio.Task[Message | None] | None = None
        # True during its first step, which runs outside any task.
        self.running = False
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
        prefetch: int | None = None,
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

        ``prefetch``: how many jobs beyond ``concurrency`` the worker may hold,
        waiting for a slot. None (the default) is automatic: none while jobs
        take long, ``4 x concurrency`` (at most 256) while they are short
        (each under 2 ms); a job kept waiting over 0.25 s is handed back.

        ``processes``: the size of the process pool, and with it every plain
        ``def`` task runs in a process (``--processes``). Without it, only
        ``@task(process=True)`` tasks do, in a pool of ``min(concurrency,
        os.cpu_count())`` processes started only if the registry has one.
        """
        # Jobs taken beyond the executing ones, so that a freed slot never waits a
        # round trip for its next job (see worker.slots). Raises ValueError early.
        self._slots: Slots[_HeldJob] = Slots(concurrency, prefetch or 0)
        self._auto_prefetch = prefetch is None
        self._auto_prefetch_on = min(AUTO_PREFETCH_MAX, AUTO_PREFETCH_PER_SLOT * concurrency)
        self._short_streak = 0
        self._wait_check: asyncio.TimerHandle | None = None
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
        # The next HEARTBEAT: a timer, moved earlier when a job with a shorter
        # lease arrives, never woken per job.
        self._heartbeat: asyncio.TimerHandle | None = None
        self._idle_timeout = 300.0
        self._log_jobs = False
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
                    await self._sleep_unless_stopped(peers.wait(reconnect.delay()))
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
                    if not peers.failed(leader, standby=isinstance(exc, NotLeader)):
                        # Another address (or the leader a standby named) is next.
                        log.info("cannot use the broker at %s (%s); trying the next", address, exc)
                        continue
                    delay = peers.round_over(reconnect)
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
            timeout=self._peers.attempt_timeout(DEFAULT_CONNECT_TIMEOUT),
        )
        self._idle_timeout = float(reply.get("idle_timeout") or 300.0)
        return connection

    async def _serve(self, connection: Connection) -> None:
        self._connection = connection
        connection.before_flush = self._send_ready
        self._log_jobs = log.isEnabledFor(logging.INFO)
        log.info(
            "connected to %s: queues %s, concurrency %d, tasks %s",
            self.address,
            ",".join(self.queues),
            self.concurrency,
            ",".join(self.registry.names()),
        )
        self._arm_heartbeat(self._idle_timeout / HEARTBEAT_FRACTION)
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
            if self._wait_check is not None:
                self._wait_check.cancel()
                self._wait_check = None
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                self._heartbeat = None
            stopped.cancel()
            await asyncio.gather(stopped, return_exceptions=True)
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
        else:
            if self._auto_prefetch and self._wait_check is None:
                self._wait_check = asyncio.get_running_loop().call_later(
                    PREFETCH_MAX_WAIT, self._check_waiting
                )
            if self._log_jobs:
                log.info("job %s %s waits for a slot", delivery["id"], delivery["task"])
        self._arm_heartbeat(held.lease / HEARTBEAT_FRACTION)

    # -- running one job ---------------------------------------------------------

    def _launch(self, held: _HeldJob, connection: Connection) -> None:
        """Start a job; its slot is taken already.

        Its first step runs here, at once, in a context of its own: a task
        that finishes without waiting (most short async tasks) costs no
        asyncio task, and its report leaves in this turn's write. One that
        waits goes on in a task, from where it stopped.
        """
        held.started = time.perf_counter()
        context = contextvars.copy_context()
        run = self._run_job(held)
        step: Coroutine[Any, Any, Message | None] = run
        if asyncio.current_task() is None:  # else the first step would run in that task
            held.running = True
            report: Message | None = None
            try:
                awaiting = context.run(run.send, None)
            except StopIteration as finished:
                report = finished.value
            except asyncio.CancelledError:  # raised by the task itself: as if cancelled
                pass
            else:
                step = _resume(run, awaiting)
            finally:
                held.running = False
            if step is run:  # it finished in its first step
                self._job_done(held, connection, report)
                return
        task = held.task = asyncio.get_running_loop().create_task(step, context=context)
        # A callback, not a finally: it runs even if the task is cancelled
        # before it goes on (say, a REVOKE in the same read as the JOBS).
        task.add_done_callback(functools.partial(self._task_done, held, connection))

    def _task_done(
        self, held: _HeldJob, connection: Connection, task: asyncio.Task[Message | None]
    ) -> None:
        report = None
        if not task.cancelled():
            error = task.exception()
            if error is None:
                report = task.result()
            else:  # _run_job reports every Exception: this is a bug, or an exit
                log.error("bug: job %s ended with", held.delivery["id"], exc_info=error)
        self._job_done(held, connection, report)

    async def _run_job(self, held: _HeldJob) -> Message | None:
        """Run the task; return its report (None: nothing to say). :meth:`_job_done`
        sends it and settles the slot."""
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
            return None  # _job_done settles it by the reason
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
        return report

    def _job_done(self, held: _HeldJob, connection: Connection, report: Message | None) -> None:
        """A job ended, however (even cancelled before it began): report, settle its slot."""
        if report is not None and connection.is_open:
            connection.send(report)
        delivery = held.delivery
        job_id: str = delivery["id"]
        reason = held.stop_reason
        # The same job may be redelivered here while this attempt winds down:
        # the slots hold on to the newer one.
        self._slots.ended(job_id, held, reason)
        self.jobs_done += 1
        if self._auto_prefetch and reason is None:
            self._adapt_prefetch(time.perf_counter() - held.started)
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

    def _adapt_prefetch(self, ran_for: float) -> None:
        """Automatic prefetch: on after a streak of short jobs, off after a long one."""
        slots = self._slots
        if ran_for < AUTO_PREFETCH_SHORT:
            self._short_streak += 1
            if (
                not slots.prefetch
                and self._short_streak >= max(AUTO_PREFETCH_STREAK, self.concurrency)
                and not slots.stopping
            ):
                slots.set_prefetch(self._auto_prefetch_on)
        else:
            self._short_streak = 0
            if slots.prefetch:
                slots.set_prefetch(0)

    def _check_waiting(self) -> None:
        """Automatic prefetch: jobs wait for a slot too long, the slots are taken
        by long jobs. Hand the waiting ones back, for another worker to take,
        and stop prefetching. (``--prefetch N`` keeps its jobs waiting.)"""
        self._wait_check = None
        slots = self._slots
        waiting = slots.waiting()
        if not waiting:
            return
        waited = time.perf_counter() - waiting[0].arrived
        if waited < PREFETCH_MAX_WAIT:
            self._wait_check = asyncio.get_running_loop().call_later(
                PREFETCH_MAX_WAIT - waited, self._check_waiting
            )
            return
        self._short_streak = 0
        slots.set_prefetch(0)
        handed_back = slots.hand_back_waiting()
        log.info(
            "handing back %d job(s) that waited over %gs for a slot",
            len(handed_back),
            PREFETCH_MAX_WAIT,
        )
        for held in handed_back:
            self._release(held.delivery)
        self._schedule_ready()

    def _schedule_ready(self) -> None:
        """Credit the freed slots back: those freed in one loop turn go as one
        READY, in the same write as the reports that freed them."""
        connection = self._connection
        if self._slots.credit_owed and connection is not None:
            connection.flush_soon()

    def _send_ready(self) -> None:
        """Before each write: the READY for the slots freed since the last one."""
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
        in_process = self._pool is not None and self._runs_in_process(definition)
        if (timeout is not None or in_process) and asyncio.current_task() is None:
            await asyncio.sleep(0)  # asyncio.timeout needs a task: go on in one (see _launch)
        if in_process:
            assert self._pool is not None
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
        job = JobInfo(
            delivery["id"],
            delivery["task"],
            delivery["queue"],
            delivery["attempt"],
            delivery["max_attempts"],
            None if timeout is None else time.time() + timeout,
        )
        _running.set(_Running(job, self.context, self, self._slots.get(delivery["id"])))
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
        if not held.running and (held.task is None or held.task.done()):
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

    def _arm_heartbeat(self, within: float) -> None:
        """Make sure a HEARTBEAT goes out within ``within`` seconds."""
        heartbeat = self._heartbeat
        loop = asyncio.get_running_loop()
        due = loop.time() + within
        if heartbeat is not None:
            if heartbeat.when() <= due:
                return
            heartbeat.cancel()
        if self._connection is not None:
            self._heartbeat = loop.call_at(due, self._send_heartbeat)

    def _send_heartbeat(self) -> None:
        """Renew the leases of every job held (or only say "alive" when none is),
        then come back at a third of the shortest lease held, or of the idle timeout."""
        self._heartbeat = None
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        connection.send({"op": Op.HEARTBEAT, "ids": self._slots.held_ids()})
        keepalive = self._idle_timeout / HEARTBEAT_FRACTION
        leases = [held.lease for held in self._slots.held()]
        self._arm_heartbeat(
            min(keepalive, min(leases) / HEARTBEAT_FRACTION) if leases else keepalive
        )


async def _resume(run: Coroutine[Any, Any, Message | None], awaiting: Any) -> Message | None:
    """Go on with a coroutine whose first step ran outside a task; it waits on ``awaiting``."""
    return await _Resumed(run, awaiting)


class _Resumed:
    """Drive a started coroutine from inside a task: what it yields goes to the
    task (the future it waits on), what the task sends or throws (the result,
    a cancellation) goes to it."""

    __slots__ = ("_awaiting", "_run")

    def __init__(self, run: Coroutine[Any, Any, Message | None], awaiting: Any) -> None:
        self._run = run
        self._awaiting = awaiting

    def __await__(self) -> Generator[Any, Any, Message | None]:
        run, awaiting = self._run, self._awaiting
        self._awaiting = None
        while True:
            try:
                sent = yield awaiting
            except GeneratorExit:
                run.close()
                raise
            except BaseException as exc:  # every throw goes on to the coroutine
                try:
                    awaiting = run.throw(exc)
                except StopIteration as finished:
                    return finished.value  # type: ignore[no-any-return]
            else:
                try:
                    awaiting = run.send(sent)
                except StopIteration as finished:
                    return finished.value  # type: ignore[no-any-return]


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
