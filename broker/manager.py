"""The job lifecycle: enqueue, reserve, ack, fail, retry, cancel, reap expired.

:class:`JobManager` is a plain synchronous object. It owns every job, the
ready heaps, the delayed and lease timers and the finished-job results. It
knows nothing of sockets or event loops: time is passed in as ``now``
(seconds since the epoch), and its effects on the outside world go through
the :class:`Consumer` sinks and the ``on_finished`` callback the server
gives it. That makes every transition unit-testable with plain calls.

Workers appear here as :class:`Consumer` objects: the queues they serve, how
many more jobs they can take (``credit``), and the jobs they hold.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from broker.jobs import Job, JobState, order_key, sequence_of
from protocol.job_spec import JobSpec

log = logging.getLogger("broker.manager")

# Idle queues are kept (for stats) while there are at most this many queues.
MAX_QUEUES_KEPT = 1000
# Task and queue names shared between jobs, and tasks with announced
# defaults: at most this many of each.
MAX_INTERNED_NAMES = 10_000


@dataclass(slots=True)
class ManagerConfig:
    result_ttl: float = 3600.0
    # Finished (succeeded or cancelled) jobs kept at most; the oldest go first.
    max_results: int = 1_000_000
    max_attempts: int = 3
    lease: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    max_failed: int = 10_000
    # Most unfinished (queued, delayed, running) jobs held at once; None: no limit.
    max_jobs: int | None = None


class Sink(Protocol):
    """Where a consumer's effects go (the worker's session in the server)."""

    def deliver(self, job: Job) -> None: ...

    def revoke(self, job: Job) -> None: ...


class JournalSink(Protocol):
    """Where the manager records every change that recovery needs (``broker.journal``).

    Called synchronously, after the change, in the order the changes happen.
    """

    def job_submitted(self, job: Job) -> None: ...

    def job_changed(self, job: Job) -> None: ...

    def job_reserved(self, job: Job) -> None:
        """The most frequent change, worth a record of its own: queued to running."""

    def job_deleted(self, job_id: str) -> None: ...


class Consumer:
    """A worker connection as the manager sees it."""

    __slots__ = ("credit", "jobs", "name", "queues", "sink")

    def __init__(self, sink: Sink, queues: Iterable[str], name: str = "") -> None:
        self.sink = sink
        self.queues = tuple(dict.fromkeys(queues))
        self.name = name
        self.credit = 0
        self.jobs: dict[str, Job] = {}

    def __repr__(self) -> str:
        return f"<Consumer {self.name or id(self)} credit={self.credit} jobs={len(self.jobs)}>"


class ReadyQueue:
    """One queue's ready jobs: a FIFO per priority, and a heap of the priorities in use.

    Push and pop are O(1) for a priority already in use (O(log p) in the
    number of distinct priorities otherwise), and a queued job costs one
    deque slot. A job cancelled while queued stays in its deque until it
    reaches the front, where it is skipped.
    """

    __slots__ = ("levels", "priorities")

    def __init__(self) -> None:
        self.levels: dict[int, deque[Job]] = {}
        # Negated priorities, so the heap's smallest is the highest priority.
        self.priorities: list[int] = []

    def push(self, job: Job, front: bool = False) -> None:
        level = self.levels.get(job.priority)
        if level is None:
            level = self.levels[job.priority] = deque()
            heapq.heappush(self.priorities, -job.priority)
        if front:
            level.appendleft(job)
        else:
            level.append(job)

    def peek(self) -> Job | None:
        """The job that runs next, or None."""
        priorities = self.priorities
        levels = self.levels
        while priorities:
            level = levels[-priorities[0]]
            while level:
                job = level[0]
                if job.state is JobState.QUEUED:
                    return job
                level.popleft()  # cancelled while it waited
            del levels[-heapq.heappop(priorities)]
        return None

    def pop(self) -> Job:
        """The job :meth:`peek` returned (call it right after)."""
        return self.levels[-self.priorities[0]].popleft()


class QueueFullError(Exception):
    """Accepting the jobs would pass ``max_jobs``."""


class QueueCounts:
    __slots__ = ("delayed", "queued", "running")

    def __init__(self) -> None:
        self.queued = 0
        self.delayed = 0
        self.running = 0

    def as_dict(self) -> dict[str, int]:
        return {"queued": self.queued, "delayed": self.delayed, "running": self.running}


class JobManager:
    def __init__(
        self,
        config: ManagerConfig | None = None,
        *,
        on_finished: Callable[[Job], None] | None = None,
        rng: random.Random | None = None,
        id_prefix: str | None = None,
    ) -> None:
        self.config = config or ManagerConfig()
        self.on_finished = on_finished
        self._rng = rng or random.Random()
        self._id_prefix = id_prefix if id_prefix is not None else os.urandom(5).hex()
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._tiebreak = itertools.count()
        self.jobs: dict[str, Job] = {}
        self._ready: dict[str, ReadyQueue] = {}
        self._waiting: dict[str, dict[Consumer, None]] = {}
        self._delayed: list[tuple[float, int, Job]] = []
        self._leases: list[tuple[float, int, Job, int]] = []
        self._results: deque[tuple[float, Job]] = deque()
        self._failed: OrderedDict[str, Job] = OrderedDict()
        self.queues: dict[str, QueueCounts] = {}
        self.consumers: set[Consumer] = set()
        self.journal: JournalSink | None = None
        self._names: dict[str, str] = {}
        self.unfinished = 0
        # Jobs held by consumers (the same as the sum of the queues' running counts).
        self.running = 0
        # Per-task defaults announced by workers ({task: {"max_attempts", "lease"}}).
        self.task_defaults: dict[str, dict[str, Any]] = {}
        self.counters = {
            "submitted": 0,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
            "retried": 0,
            "requeued": 0,
            "expired": 0,
            "late_reports": 0,
        }

    # -- submitting ---------------------------------------------------------

    def announce_tasks(self, tasks: dict[Any, Any]) -> str | None:
        """Record workers' per-task defaults; return a message if they are malformed.

        They apply to jobs submitted from now on that leave those fields unset.
        """
        checked: dict[str, dict[str, Any]] = {}
        for name, defaults in tasks.items():
            if not isinstance(name, str) or not isinstance(defaults, dict):
                return "expected a map of task name to map"
            entry: dict[str, Any] = {}
            attempts = defaults.get("max_attempts")
            if attempts is not None:
                if type(attempts) is not int or not 1 <= attempts <= 1_000_000:
                    return f"{name[:50]!r}: max_attempts must be an integer in 1..1000000"
                entry["max_attempts"] = attempts
            lease = defaults.get("lease")
            if lease is not None:
                if type(lease) not in (int, float) or not 0 < lease <= 10 * 365 * 86400:
                    return f"{name[:50]!r}: lease must be a positive number of seconds"
                entry["lease"] = float(lease)
            checked[name] = entry
        for name, entry in checked.items():
            if name in self.task_defaults or len(self.task_defaults) < MAX_INTERNED_NAMES:
                self.task_defaults.setdefault(name, {}).update(entry)
        return None

    def check_capacity(self, count: int) -> None:
        limit = self.config.max_jobs
        if limit is not None and self.unfinished + count > limit:
            raise QueueFullError(
                f"the broker holds {self.unfinished} unfinished jobs; "
                f"{count} more would pass the limit of {limit}"
            )

    def submit(self, spec: JobSpec, now: float) -> tuple[Job, bool]:
        """Accept a job; return it and whether it is new.

        A ``spec.job_id`` the manager still knows returns the existing job
        unchanged (idempotent submit). Raises :class:`QueueFullError`.
        """
        job_id = spec.job_id
        max_attempts = spec.max_attempts
        lease = spec.lease
        delay = spec.delay
        priority = spec.priority
        if job_id is not None:
            existing = self.jobs.get(job_id)
            if existing is not None:
                return existing, False
        else:
            job_id = f"{self._id_prefix}-{next(self._ids):x}"
            while job_id in self.jobs:  # a client chose this id for its own job
                job_id = f"{self._id_prefix}-{next(self._ids):x}"
        self.check_capacity(1)
        # Every job's task and queue name arrives as a new string; share one.
        names = self._names
        task = names.get(spec.task) or self._intern(spec.task)
        queue = names.get(spec.queue) or self._intern(spec.queue)
        if max_attempts is None or lease is None:
            defaults = self.task_defaults.get(task)
            if defaults is not None:
                max_attempts = max_attempts or defaults.get("max_attempts")
                lease = lease or defaults.get("lease")
        job = Job(
            job_id,
            task,
            spec.payload,
            queue,
            priority,
            order_key(priority, next(self._seq)),
            max(1, max_attempts or self.config.max_attempts),
            spec.timeout or None,
            lease or self.config.lease,
            now,
        )
        self.jobs[job_id] = job
        self.unfinished += 1
        self.counters["submitted"] += 1
        counts = self.queues.get(queue)
        if counts is None:
            counts = self.queues[queue] = QueueCounts()
        if delay > 0:
            job.run_at = now + delay
        if self.journal is not None:
            self.journal.job_submitted(job)
        if delay > 0:
            self._delay(job, now + delay, counts)
        else:
            counts.queued += 1
            self._make_ready(job, now)
        return job, True

    def _counts(self, queue: str) -> QueueCounts:
        counts = self.queues.get(queue)
        if counts is None:
            counts = self.queues[queue] = QueueCounts()
        return counts

    def _forget_queue_if_idle(self, queue: str) -> None:
        """Past MAX_QUEUES_KEPT queues, an idle one is forgotten (it comes back on use)."""
        counts = self.queues.get(queue)
        if (
            counts is not None
            and not (counts.queued or counts.delayed or counts.running)
            and not self._waiting.get(queue)
        ):
            del self.queues[queue]
            self._ready.pop(queue, None)
            self._waiting.pop(queue, None)

    def _intern(self, name: str) -> str:
        if len(self._names) < MAX_INTERNED_NAMES:
            self._names[name] = name
        return name

    def _delay(self, job: Job, run_at: float, counts: QueueCounts) -> None:
        job.state = JobState.DELAYED
        job.run_at = run_at
        counts.delayed += 1
        heapq.heappush(self._delayed, (run_at, next(self._tiebreak), job))

    def _make_ready(self, job: Job, now: float, front: bool = False) -> None:
        """Hand a queued job to a waiting consumer, or put it on its queue's heap.

        The caller has set ``job.state`` to QUEUED (or left it there) and
        counted it in its queue's ``queued``.
        """
        job.state = JobState.QUEUED
        waiting = self._waiting.get(job.queue)
        if waiting:
            consumer = next(iter(waiting))
            self._reserve(job, consumer, now)
            if consumer.credit > 0:
                # Round robin: the consumer goes to the back of the line.
                del waiting[consumer]
                waiting[consumer] = None
            else:
                self._stop_waiting(consumer)
            return
        ready = self._ready.get(job.queue)
        if ready is None:
            ready = self._ready[job.queue] = ReadyQueue()
        ready.push(job, front)

    # -- consumers ------------------------------------------------------------

    def attach(self, consumer: Consumer) -> None:
        self.consumers.add(consumer)

    def detach(self, consumer: Consumer, now: float, reason: str) -> None:
        """The consumer is gone: every job it held goes back to its queue."""
        self._stop_waiting(consumer)
        self.consumers.discard(consumer)
        consumer.credit = 0
        # Newest first: each goes to the front, so the oldest ends up first.
        for job in sorted(consumer.jobs.values(), key=lambda held: held.key, reverse=True):
            self._lose_lease(job, now, reason)

    def grant(self, consumer: Consumer, n: int, now: float) -> None:
        """The consumer can take ``n`` more jobs."""
        consumer.credit += n
        self._feed(consumer, now)

    def quiet(self, consumer: Consumer) -> None:
        """The consumer takes no more jobs (until it grants credit again)."""
        consumer.credit = 0
        self._stop_waiting(consumer)

    def _feed(self, consumer: Consumer, now: float) -> None:
        ready = self._ready
        queues = consumer.queues
        while consumer.credit > 0:
            best: Job | None = None
            best_queue: ReadyQueue | None = None
            for queue in queues:
                candidates = ready.get(queue)
                if candidates is None:
                    continue
                head = candidates.peek()
                # Highest priority first; equal priorities in submission order.
                if head is not None and (
                    best is None
                    or head.priority > best.priority
                    or (head.priority == best.priority and head.key < best.key)
                ):
                    best = head
                    best_queue = candidates
            if best is None or best_queue is None:
                for queue in queues:
                    waiting = self._waiting.get(queue)
                    if waiting is None:
                        waiting = self._waiting[queue] = {}
                    waiting[consumer] = None
                return
            best_queue.pop()
            self._reserve(best, consumer, now)

    def _rebuild_leases(self) -> None:
        """Drop the entries of leases that ended (jobs done), which would pile up until due."""
        self._leases = [
            (job.lease_deadline, next(self._tiebreak), job, job.attempts)
            for consumer in self.consumers
            for job in consumer.jobs.values()
        ]
        heapq.heapify(self._leases)

    def _stop_waiting(self, consumer: Consumer) -> None:
        for queue in consumer.queues:
            waiting = self._waiting.get(queue)
            if waiting is not None:
                waiting.pop(consumer, None)

    def _reserve(self, job: Job, consumer: Consumer, now: float) -> None:
        job.state = JobState.RUNNING
        job.attempts += 1
        job.owner = consumer
        job.started_at = now
        deadline = now + job.lease
        job.lease_deadline = deadline
        counts = self.queues[job.queue]
        counts.queued -= 1
        counts.running += 1
        consumer.credit -= 1
        consumer.jobs[job.id] = job
        self.running += 1
        leases = self._leases
        heapq.heappush(leases, (deadline, next(self._tiebreak), job, job.attempts))
        if len(leases) > 2 * self.running + 1024:
            self._rebuild_leases()
        if self.journal is not None:
            self.journal.job_reserved(job)
        consumer.sink.deliver(job)

    # -- reports from workers -------------------------------------------------

    def _held(self, consumer: Consumer, job_id: str, attempt: int, what: str) -> Job | None:
        """The job if this consumer holds this attempt of it; else log and None."""
        job = consumer.jobs.get(job_id)
        if job is not None and job.attempts == attempt and job.state is JobState.RUNNING:
            return job
        self.counters["late_reports"] += 1
        current = self.jobs.get(job_id)
        log.info(
            "ignored %s of job %s attempt %d from %s: %s",
            what,
            job_id,
            attempt,
            consumer.name or "a worker",
            "job unknown"
            if current is None
            else f"job is {current.state.value} at attempt {current.attempts}",
        )
        return None

    def _release_hold(self, job: Job) -> None:
        owner: Consumer = job.owner
        del owner.jobs[job.id]
        job.owner = None
        self.queues[job.queue].running -= 1
        self.running -= 1

    def ack(self, consumer: Consumer, job_id: str, attempt: int, result: bytes, now: float) -> bool:
        job = self._held(consumer, job_id, attempt, "success")
        if job is None:
            return False
        self._release_hold(job)
        job.result = result
        self._finish(job, JobState.SUCCEEDED, now)
        return True

    def fail(
        self,
        consumer: Consumer,
        job_id: str,
        attempt: int,
        error: dict[str, Any],
        now: float,
        retry_in: float | None = None,
    ) -> bool:
        """A failed attempt: retry after backoff (or ``retry_in``) while attempts remain."""
        job = self._held(consumer, job_id, attempt, "failure")
        if job is None:
            return False
        self._release_hold(job)
        self._failed_attempt(job, dict(error, attempt=attempt, at=now), now, retry_in)
        return True

    def release(self, consumer: Consumer, job_id: str, attempt: int, now: float) -> bool:
        """The worker hands a job back unrun: it goes back to its queue, attempt not counted."""
        job = self._held(consumer, job_id, attempt, "release")
        if job is None:
            return False
        self._release_hold(job)
        job.attempts -= 1
        self.queues[job.queue].queued += 1
        job.state = JobState.QUEUED
        if self.journal is not None:
            self.journal.job_changed(job)
        self._make_ready(job, now, front=True)  # it keeps its place at the front
        return True

    def heartbeat(self, consumer: Consumer, job_ids: Iterable[str], now: float) -> int:
        """Renew the leases of the listed jobs this consumer holds; return how many."""
        renewed = 0
        for job_id in job_ids:
            job = consumer.jobs.get(job_id)
            if job is not None:
                job.lease_deadline = now + job.lease
                renewed += 1
        return renewed

    def _failed_attempt(
        self, job: Job, error: dict[str, Any], now: float, retry_in: float | None
    ) -> None:
        job.add_error(error)
        if job.attempts >= job.max_attempts:
            self._finish(job, JobState.FAILED, now)
            return
        if retry_in is None:
            retry_in = self.backoff(job.attempts)
        self.counters["retried"] += 1
        self._requeue(job, now, retry_in)

    def _requeue(self, job: Job, now: float, delay: float = 0.0, front: bool = True) -> None:
        """Back to its queue (after ``delay``), recorded before it can be delivered again.

        Without a delay it goes to the front of its priority: it was at the
        front when it was taken, ahead of everything submitted since.
        """
        counts = self._counts(job.queue)
        if delay > 0:
            self._delay(job, now + delay, counts)
            if self.journal is not None:
                self.journal.job_changed(job)
        else:
            counts.queued += 1
            job.state = JobState.QUEUED
            job.run_at = now
            if self.journal is not None:
                self.journal.job_changed(job)
            self._make_ready(job, now, front)

    def backoff(self, attempts: int) -> float:
        """Delay before the next attempt: exponential, capped, jittered over its upper half."""
        ceiling: float = min(
            self.config.backoff_cap, self.config.backoff_base * 2 ** min(attempts - 1, 60)
        )
        jitter: float = self._rng.uniform(0.5, 1.0)
        return ceiling * jitter

    def _lose_lease(self, job: Job, now: float, reason: str) -> None:
        owner: Consumer = job.owner
        self._release_hold(job)
        job.add_error(
            {
                "type": "JobLost",
                "message": f"the worker lost the job: {reason}",
                "traceback": "",
                "attempt": job.attempts,
                "at": now,
            }
        )
        if job.attempts >= job.max_attempts:
            log.warning(
                "job %s lost its worker (%s) on its last attempt %d: failed",
                job.id,
                reason,
                job.attempts,
            )
            self._finish(job, JobState.FAILED, now)
        else:
            self.counters["requeued"] += 1
            log.warning(
                "requeued job %s after attempt %d: %s (worker %s)",
                job.id,
                job.attempts,
                reason,
                owner.name or "?",
            )
            self._requeue(job, now)

    # -- finishing --------------------------------------------------------------

    def _finish(self, job: Job, state: JobState, now: float) -> None:
        job.state = state
        job.finished_at = now
        self.unfinished -= 1
        if state is JobState.FAILED:
            self.counters["failed"] += 1
            self._failed[job.id] = job
            while len(self._failed) > self.config.max_failed:
                dropped_id, _ = self._failed.popitem(last=False)
                del self.jobs[dropped_id]
                if self.journal is not None:
                    self.journal.job_deleted(dropped_id)
                log.warning(
                    "dropped failed job %s: the failed list holds at most %d",
                    dropped_id,
                    self.config.max_failed,
                )
        else:
            self.counters["succeeded" if state is JobState.SUCCEEDED else "cancelled"] += 1
            self._results.append((now + self.config.result_ttl, job))
        if self.journal is not None:
            self.journal.job_changed(job)
        if len(self._results) > self.config.max_results:
            self._drop_oldest_result()
        if len(self.queues) > MAX_QUEUES_KEPT:
            self._forget_queue_if_idle(job.queue)
        if self.on_finished is not None:
            self.on_finished(job)

    def _drop_oldest_result(self) -> None:
        _, job = self._results.popleft()
        if self.jobs.get(job.id) is job and job.state is not JobState.FAILED:
            del self.jobs[job.id]
            self.counters["expired"] += 1
            if self.journal is not None:
                self.journal.job_deleted(job.id)

    def cancel(self, job_id: str, now: float) -> bool | None:
        """Cancel a queued, delayed or running job. None: unknown id; False: already finished."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        state = job.state
        counts = self._counts(job.queue)
        if state is JobState.QUEUED:
            counts.queued -= 1  # its heap entry is skipped when reached
        elif state is JobState.DELAYED:
            counts.delayed -= 1
        elif state is JobState.RUNNING:
            owner: Consumer = job.owner
            self._release_hold(job)
            owner.sink.revoke(job)
        else:
            return False
        self._finish(job, JobState.CANCELLED, now)
        return True

    # -- time ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every timer that is due: delayed jobs, expired leases, expired results."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, job = heapq.heappop(delayed)
            if job.state is JobState.DELAYED:
                counts = self.queues[job.queue]
                counts.delayed -= 1
                counts.queued += 1
                job.state = JobState.QUEUED
                if self.journal is not None:
                    self.journal.job_changed(job)
                self._make_ready(job, now)
        leases = self._leases
        while leases and leases[0][0] <= now:
            _, _, job, attempt = heapq.heappop(leases)
            if job.state is not JobState.RUNNING or job.attempts != attempt:
                continue
            if job.lease_deadline > now:
                # Renewed by a heartbeat since this entry was pushed.
                heapq.heappush(leases, (job.lease_deadline, next(self._tiebreak), job, attempt))
                continue
            owner: Consumer = job.owner
            owner.sink.revoke(job)
            self._lose_lease(job, now, f"lease of {job.lease:g}s expired")
        results = self._results
        while results and results[0][0] <= now:
            _, job = results.popleft()
            if self.jobs.get(job.id) is job and job.state is not JobState.FAILED:
                del self.jobs[job.id]
                self.counters["expired"] += 1

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do."""
        candidates = []
        if self._delayed:
            candidates.append(self._delayed[0][0])
        if self._leases:
            candidates.append(self._leases[0][0])
        if self._results:
            candidates.append(self._results[0][0])
        return min(candidates) if candidates else None

    # -- the failed list ---------------------------------------------------------

    def failed_jobs(self, limit: int | None = None) -> list[Job]:
        """Failed jobs, newest first."""
        jobs = reversed(self._failed.values())
        return list(itertools.islice(jobs, limit))

    def retry_failed(self, job_ids: Iterable[str] | None, now: float) -> int:
        """Put failed jobs (all when ``job_ids`` is None) back in their queues, attempts reset."""
        ids = list(self._failed) if job_ids is None else list(dict.fromkeys(job_ids))
        ids = [job_id for job_id in ids if job_id in self._failed]
        self.check_capacity(len(ids))
        for job_id in ids:
            job = self._failed.pop(job_id)
            job.attempts = 0
            job.finished_at = None
            self.unfinished += 1
            self._requeue(job, now, front=False)  # like a new job: behind the others
        return len(ids)

    def purge_failed(self) -> int:
        count = len(self._failed)
        for job_id in self._failed:
            del self.jobs[job_id]
            if self.journal is not None:
                self.journal.job_deleted(job_id)
        self._failed.clear()
        return count

    # -- recovery ------------------------------------------------------------------

    def restore(self, jobs: Iterable[Job], now: float) -> None:
        """Take over jobs recovered from a journal, as an empty manager.

        Queued and delayed jobs keep their order and run times; jobs that
        were running go back to their queue with that attempt counted (or
        fail, if it was their last); failed jobs return to the failed list
        in the order they failed; results past their TTL are dropped.
        """
        assert not self.jobs, "restore() needs an empty manager"
        ttl = self.config.result_ttl
        max_seq = 0
        failed: list[Job] = []
        interrupted: list[Job] = []
        ready: list[Job] = []
        for job in jobs:
            max_seq = max(max_seq, sequence_of(job.key))
            state = job.state
            if state.finished:
                if state is JobState.FAILED:
                    failed.append(job)
                elif job.finished_at is not None and job.finished_at + ttl > now:
                    self.jobs[job.id] = job
                    self._results.append((job.finished_at + ttl, job))
                continue
            self.jobs[job.id] = job
            self.unfinished += 1
            counts = self.queues.get(job.queue)
            if counts is None:
                counts = self.queues[job.queue] = QueueCounts()
            if state is JobState.DELAYED:
                counts.delayed += 1
                heapq.heappush(self._delayed, (job.run_at, next(self._tiebreak), job))
            elif state is JobState.RUNNING:
                interrupted.append(job)
            else:
                ready.append(job)
        self._seq = itertools.count(max_seq + 1)
        self._results = deque(sorted(self._results, key=lambda entry: entry[0]))
        while len(self._results) > self.config.max_results:
            _, dropped = self._results.popleft()
            del self.jobs[dropped.id]
        failed.sort(key=lambda job: job.finished_at or 0.0)
        for job in failed:
            self.jobs[job.id] = job
            self._failed[job.id] = job
        ready.sort(key=lambda job: job.key)
        for job in ready:
            self.queues[job.queue].queued += 1
            self._make_ready(job, now)
        for job in interrupted:
            job.owner = None
            job.add_error(
                {
                    "type": "JobLost",
                    "message": "the broker stopped while the job was running",
                    "traceback": "",
                    "attempt": job.attempts,
                    "at": now,
                }
            )
            if job.attempts >= job.max_attempts:
                self._finish(job, JobState.FAILED, now)
            else:
                self.counters["requeued"] += 1
                self._requeue(job, now)

    # -- questions ---------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def queues_idle(self, queues: Iterable[str]) -> bool:
        """No job queued, delayed or running on any of these queues."""
        for queue in queues:
            counts = self.queues.get(queue)
            if counts is not None and (counts.queued or counts.delayed or counts.running):
                return False
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "queues": {name: counts.as_dict() for name, counts in sorted(self.queues.items())},
            "jobs": len(self.jobs),
            "unfinished": self.unfinished,
            "running": self.running,
            "failed_list": len(self._failed),
            "consumers": len(self.consumers),
            **self.counters,
        }
