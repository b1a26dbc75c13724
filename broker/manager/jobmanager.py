"""The facade: :class:`JobManager`, the job lifecycle as the server calls it.

Submitting, the workers' reports (ack, fail, release), cancelling, the
timers and the questions live here; the rest comes from one mixin per
concern (``dispatch``, ``leases``, ``retention``, ``recovery``) over the
shared tables of ``state``.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from broker.jobs import Job, JobKind, JobState, job_kind, order_key
from broker.manager.config import (
    MAX_INTERNED_NAMES,
    MAX_QUEUES_KEPT,
    Consumer,
    QueueCounts,
    QueueFullError,
)
from broker.manager.dependencies import Dependencies
from broker.manager.dispatch import Dispatch
from broker.manager.flow import Flow
from broker.manager.leases import Leases
from broker.manager.limits import Limits
from broker.manager.recovery import Recovery
from broker.manager.retention import Retention
from broker.manager.schedules import Schedules
from broker.manager.unique import Unique
from protocol.backoff import backoff_delay
from protocol.job_spec import JobSpec

log = logging.getLogger("broker.manager")


class JobManager(
    Dispatch, Flow, Limits, Dependencies, Unique, Schedules, Leases, Retention, Recovery
):
    """Every job of the broker, from submit to its result's expiry.

    A plain synchronous object: time is passed in as ``now`` (seconds since
    the epoch), and its effects go through the :class:`Consumer` sinks, the
    ``journal`` sink and the ``on_finished`` callback the server gives it.
    """

    # -- submitting ---------------------------------------------------------

    def announce_tasks(self, tasks: dict[str, dict[str, Any]]) -> None:
        """Record workers' per-task defaults (``HELLO.tasks``, checked by the schema).

        They apply to jobs submitted from now on that leave those fields
        unset, and merge field by field with earlier announcements.
        """
        for name, defaults in tasks.items():
            entry: dict[str, Any] = {}
            attempts = defaults.get("max_attempts")
            if attempts is not None:
                entry["max_attempts"] = attempts
            lease = defaults.get("lease")
            if lease is not None:
                entry["lease"] = float(lease)
            if name in self.task_defaults or len(self.task_defaults) < MAX_INTERNED_NAMES:
                self.task_defaults.setdefault(name, {}).update(entry)
        self._plain_kinds.clear()  # they hold the defaults

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
        unchanged (idempotent submit), and so does a ``spec.unique_key`` that
        a job holds (``unique.py``). A job with ``depends_on`` waits for its
        parents (``dependencies.py``). Raises :class:`QueueFullError`, and
        :class:`UnknownParentError` for a parent it does not know.
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
        unique_key = spec.unique_key
        if unique_key is not None:
            holder = self.unique_holder(unique_key, now)
            if holder is not None:
                return holder, False
        if job_id is None:
            job_id = f"{self._id_prefix}-{next(self._ids):x}"
            while job_id in self.jobs:  # a client chose this id for its own job
                job_id = f"{self._id_prefix}-{next(self._ids):x}"
        self.check_capacity(1)
        depends_on = spec.depends_on
        if depends_on:
            self.check_parents(depends_on)
        # Every job's task and queue name arrives as a new string; share one.
        names = self._names
        task = names.get(spec.task) or self._intern(spec.task)
        queue = names.get(spec.queue) or self._intern(spec.queue)
        timeout = spec.timeout or None
        if max_attempts is None and lease is None and timeout is None:
            # Most submits: the defaults' kind for this queue and task, cached.
            by_task = self._plain_kinds.get(queue)
            kind = by_task.get(task) if by_task is not None else None
            if kind is None:
                kind = self._plain_kind(task, queue)
        else:
            kind = self._kind(task, queue, max_attempts, timeout, lease)
        sequence = next(self._seq)
        job = Job(
            job_id, kind, spec.payload, order_key(priority, sequence) if priority else sequence, now
        )
        self.jobs[job_id] = job
        self.unfinished += 1
        self.counters["submitted"] += 1
        metrics = self.metrics
        (metrics.get(queue) or metrics.of(queue)).submitted += 1
        if unique_key is not None:
            self._hold_unique(job, unique_key, spec.unique_for, now)
        counts = self.queues.get(queue)
        if counts is None:
            counts = self.queues[queue] = QueueCounts()
        if delay > 0:
            job.run_at = now + delay
        if spec.result_ttl is not None:
            job.result_ttl = spec.result_ttl
        if depends_on:
            job.depends_on = tuple(dict.fromkeys(depends_on))
            job.state = JobState.WAITING  # as its S record says
        if self.journal is not None:
            self.journal.job_submitted(job)
        if depends_on:
            if self._wait_for_parents(job, now):
                return job, True
            job.state = JobState.QUEUED  # every parent had succeeded: a U record says so
            if self.journal is not None and delay <= 0:
                self.journal.job_changed(job)
        if delay > 0:
            self._delay(job, now + delay, counts)
            if depends_on and self.journal is not None:
                self.journal.job_changed(job)
        else:
            counts.queued += 1
            self._make_ready(job, now)
        return job, True

    def _kind(
        self,
        task: str,
        queue: str,
        max_attempts: int | None,
        timeout: float | None,
        lease: float | None,
    ) -> JobKind:
        """The shared kind of a job of these options, the unset ones from the
        task's announced defaults, else the broker's."""
        if max_attempts is None or lease is None:
            defaults = self.task_defaults.get(task)
            if defaults is not None:
                max_attempts = max_attempts or defaults.get("max_attempts")
                lease = lease or defaults.get("lease")
        return job_kind(
            task,
            queue,
            max(1, max_attempts or self.config.max_attempts),
            timeout,
            lease or self.config.lease,
        )

    def _plain_kind(self, task: str, queue: str) -> JobKind:
        """:meth:`_kind` with no option set, kept for the next submit of the pair."""
        kind = self._kind(task, queue, None, None, None)
        by_task = self._plain_kinds.get(queue)
        if by_task is None and len(self._plain_kinds) < MAX_QUEUES_KEPT:
            by_task = self._plain_kinds[queue] = {}
        if by_task is not None and len(by_task) < MAX_INTERNED_NAMES:
            by_task[task] = kind
        return kind

    # -- reports from workers -------------------------------------------------

    def _held(self, consumer: Consumer, job_id: str, attempt: int, what: str) -> Job | None:
        """The job if this consumer holds this attempt of it; else log and None."""
        job = consumer.jobs.get(job_id)
        if job is not None and job.extras.attempts == attempt and job.state is JobState.RUNNING:
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

    def ack(self, consumer: Consumer, job_id: str, attempt: int, result: bytes, now: float) -> bool:
        job = self._held(consumer, job_id, attempt, "success")
        if job is None:
            return False
        self._release_hold(job)
        consumer.done += 1
        # Counted here rather than in _finish, and observed inline: the hot path.
        metrics = self.metrics
        queue = job.kind.queue
        measured = metrics.get(queue) or metrics.of(queue)
        measured.succeeded += 1
        run = measured.run
        extras = job.extras  # its own: set when it was reserved
        ran = now - (extras.started_at or now)
        run.counts[bisect_left(run.bounds, ran)] += 1
        run.sum += ran
        extras.result = result
        self._finish(job, JobState.SUCCEEDED, now)
        if self._opened:
            self._feed_opened(now)
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
        consumer.done += 1
        if job.started_at is not None:
            self.metrics.of(job.queue).run.observe(now - job.started_at)
        self._failed_attempt(job, dict(error, attempt=attempt, at=now), now, retry_in)
        if self._opened:
            self._feed_opened(now)
        return True

    def release(self, consumer: Consumer, job_id: str, attempt: int, now: float) -> bool:
        """The worker hands a job back unrun: it goes back to its queue, attempt not counted."""
        job = self._held(consumer, job_id, attempt, "release")
        if job is None:
            return False
        self._release_hold(job)
        self.metrics.of(job.queue).released += 1
        job.attempts -= 1
        self._requeue(job, now)  # it keeps its place at the front
        if self._opened:
            self._feed_opened(now)
        return True

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
        self.metrics.of(job.queue).retried += 1
        self._requeue(job, now, retry_in)

    def backoff(self, attempts: int) -> float:
        """Delay before the next attempt (``protocol.backoff``, with the manager's rng)."""
        return backoff_delay(attempts, self.config.backoff_base, self.config.backoff_cap, self._rng)

    # -- cancelling ---------------------------------------------------------------

    def cancel(self, job_id: str, now: float) -> bool | None:
        """Cancel a waiting, queued, delayed or running job (and the jobs waiting for it).

        None: unknown id; False: already finished.
        """
        job = self.jobs.get(job_id)
        if job is None:
            return None
        state = job.state
        counts = self._counts(job.queue)
        if state is JobState.QUEUED:
            counts.queued -= 1  # its ready-queue entry is skipped when reached
            self._unready(job)
        elif state is JobState.WAITING:
            self._unwait(job)
        elif state is JobState.DELAYED:
            counts.delayed -= 1
        elif state is JobState.RUNNING:
            owner: Consumer = job.owner
            self._release_hold(job)
            owner.sink.revoke(job)
        else:
            return False
        self._finish(job, JobState.CANCELLED, now)
        if self._opened:
            self._feed_opened(now)
        return True

    # -- time ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run the timers that are due, except leases: delayed jobs, rate windows
        that moved on (limits.py), expired results.

        Leases expire in :meth:`expire_leases`, which the server calls apart
        (see ``leases.py`` for why).
        """
        self._run_delayed(now)
        if self._wakeups:
            self._run_wakeups(now)
        if self._schedule_timers:
            self._run_schedules(now)
        self._expire_results(now)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` or :meth:`expire_leases` next may have something to do."""
        candidates = []
        if self._delayed:
            candidates.append(self._delayed[0][0])
        if self._leases:
            candidates.append(self._leases[0][0])
        if self._results:
            candidates.append(self._results[0][0])
        if self._results_own_ttl:
            candidates.append(self._results_own_ttl[0][0])
        if self._wakeups:
            candidates.append(self._wakeups[0][0])
        if self._schedule_timers:
            candidates.append(self._schedule_timers[0][0])
        return min(candidates) if candidates else None

    # -- questions ---------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def list_jobs(self, queue: str, state: JobState | None, limit: int) -> list[Job]:
        """Up to ``limit`` jobs of ``queue`` (in ``state``), in the order the manager took them.

        A scan of every job it holds: for an operator's ``jobs`` command, not a hot path.
        """
        found: list[Job] = []
        if limit <= 0:
            return found
        for job in self.jobs.values():
            if job.queue == queue and (state is None or job.state is state):
                found.append(job)
                if len(found) >= limit:
                    break
        return found

    def queues_idle(self, queues: Iterable[str], tasks: frozenset[str] | None = None) -> bool:
        """Nothing left for a consumer of these queues (and these tasks, if given):
        no job waiting, delayed or running on them, and none queued that it can take.

        A queued job of a task outside ``tasks`` does not count: routing never
        hands it to this consumer (a burst worker would otherwise wait for it forever).
        """
        for queue in queues:
            counts = self.queues.get(queue)
            if counts is None:
                continue
            if counts.waiting or counts.delayed or counts.running:
                return False
            if not counts.queued:
                continue
            if tasks is None:
                return False
            by_task = self._ready.get(queue) or {}
            if any(ready.count for task, ready in by_task.items() if task in tasks):
                return False
        return True

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Counts and settings; ``now`` (default: the newest rate window's start) for
        the starts still within each rate's window."""
        return {
            "queues": {name: counts.as_dict() for name, counts in sorted(self.queues.items())},
            "jobs": len(self.jobs),
            "unfinished": self.unfinished,
            "running": self.running,
            "failed_list": len(self._failed),
            "consumers": len(self.consumers),
            "no_worker": self.queued_without_worker(),
            "paused": sorted(self.paused_queues),
            "limits": self.limits_stats(now),
            "unique_keys": self.unique_stats(),
            "schedules": len(self.schedules),
            **self.counters,
        }
