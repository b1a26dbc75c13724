"""Retention: what the manager keeps of finished jobs, and for how long.

A succeeded or cancelled job stays (for ``STATUS`` and idempotent submits)
until ``result_ttl`` has passed or ``max_results`` newer ones push it out.
A job submitted with its own ``result_ttl`` expires by that instead (a heap
beside the FIFO of the broker's one TTL); with 0 it is forgotten as soon as
``on_finished`` has told its watchers.
A failed job stays on the failed list, at most ``max_failed`` of them, until
it is retried or purged. Past ``MAX_QUEUES_KEPT`` queues, a queue that goes
idle is forgotten.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable

from broker.jobs import Job, JobState
from broker.manager.config import MAX_QUEUES_KEPT
from broker.manager.state import ManagerState

log = logging.getLogger("broker.manager")


class Retention(ManagerState):
    __slots__ = ()

    def _finish(self, job: Job, state: JobState, now: float) -> None:
        """The job is done for good (its holder, if any, already released it)."""
        job.state = state
        extras = job.own_extras()  # one lookup for finished_at and result_ttl
        extras.finished_at = now
        self.unfinished -= 1
        if state is JobState.FAILED:
            self.metrics.of(job.queue).failed += 1
            self.counters["failed"] += 1
            self._failed[job.id] = job
            while len(self._failed) > self.config.max_failed:
                dropped_id, dropped = self._failed.popitem(last=False)
                del self.jobs[dropped_id]
                if self._unique:
                    self._release_unique(dropped)
                if self.journal is not None:
                    self.journal.job_deleted(dropped_id)
                log.warning(
                    "dropped failed job %s: the failed list holds at most %d",
                    dropped_id,
                    self.config.max_failed,
                )
        else:
            if state is JobState.SUCCEEDED:
                self.counters["succeeded"] += 1  # its metrics are counted by ack
            else:
                self.counters["cancelled"] += 1
                self.metrics.of(job.queue).cancelled += 1
            ttl = extras.result_ttl
            if ttl is None:
                self._results.append((now + self.config.result_ttl, job))
            elif ttl > 0:
                entry = (now + ttl, next(self._tiebreak), job)
                heapq.heappush(self._results_own_ttl, entry)
        if self.journal is not None:
            self.journal.job_changed(job)
        if len(self._results) + len(self._results_own_ttl) > self.config.max_results:
            self._drop_oldest_result()
        if len(self.queues) > MAX_QUEUES_KEPT:
            self._forget_queue_if_idle(job.queue)
        if self.on_finished is not None:
            self.on_finished(job)
        if self._children and job.id in self._children:
            self._settle_children(job, now)
        if extras.result_ttl == 0 and state is not JobState.FAILED:
            self._forget_finished(job)  # the watchers have their DONE

    def _drop_oldest_result(self) -> None:
        if self._results:
            _, job = self._results.popleft()
        else:
            _, _, job = heapq.heappop(self._results_own_ttl)
        self._forget_finished(job)

    def _forget_finished(self, job: Job, record: bool = True) -> None:
        """Forget a finished job's outcome; ``record=False`` for a TTL run out (recovery
        drops those by their time, so the journal needs no record of it)."""
        if self.jobs.get(job.id) is job and job.state is not JobState.FAILED:
            del self.jobs[job.id]
            self.counters["expired"] += 1
            if self._unique:
                self._release_unique(job)
            if record and self.journal is not None:
                self.journal.job_deleted(job.id)

    def _expire_results(self, now: float) -> None:
        """Forget the succeeded and cancelled jobs whose ``result_ttl`` has passed."""
        results = self._results
        while results and results[0][0] <= now:
            self._forget_finished(results.popleft()[1], record=False)
        own = self._results_own_ttl
        while own and own[0][0] <= now:
            self._forget_finished(heapq.heappop(own)[2], record=False)

    def _forget_queue_if_idle(self, queue: str) -> None:
        """Past MAX_QUEUES_KEPT queues, an idle one is forgotten (it comes back on use)."""
        counts = self.queues.get(queue)
        if (
            counts is not None
            and not (counts.waiting or counts.queued or counts.delayed or counts.running)
            and not self._waiting.get(queue)
            and not self._waiting_tasks.get(queue)
        ):
            del self.queues[queue]
            self._ready.pop(queue, None)
            self._waiting.pop(queue, None)
            self._waiting_tasks.pop(queue, None)

    # -- the failed list ---------------------------------------------------------

    def failed_jobs(self, limit: int | None = None, offset: int = 0) -> list[Job]:
        """Failed jobs, newest first (from the ``offset``-th, at most ``limit``)."""
        jobs = reversed(self._failed.values())
        return list(itertools.islice(jobs, offset, None if limit is None else offset + limit))

    @property
    def failed_count(self) -> int:
        return len(self._failed)

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
        for job_id, job in self._failed.items():
            del self.jobs[job_id]
            if self._unique:
                self._release_unique(job)
            if self.journal is not None:
                self.journal.job_deleted(job_id)
        self._failed.clear()
        return count
