"""Recovery: an empty manager takes over the jobs a journal replay returned.

Nothing here runs after start-up. The replay gives jobs in their last
recorded state; :meth:`Recovery.restore` rebuilds the queues, timers and
lists from them as if the jobs had been submitted and moved there, and
settles the jobs that were running when the broker stopped.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable

from broker.jobs import Job, JobState, sequence_of
from broker.manager.config import QueueCounts
from broker.manager.state import ManagerState


class Recovery(ManagerState):
    __slots__ = ()

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
        waiting: list[Job] = []
        for job in jobs:
            max_seq = max(max_seq, sequence_of(job.key))
            state = job.state
            if state.finished:
                if state is JobState.FAILED:
                    failed.append(job)
                elif job.result_ttl is not None:  # its own TTL
                    expiry = (job.finished_at or 0.0) + job.result_ttl
                    if job.result_ttl > 0 and expiry > now:
                        self.jobs[job.id] = job
                        entry = (expiry, next(self._tiebreak), job)
                        heapq.heappush(self._results_own_ttl, entry)
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
            elif state is JobState.WAITING:
                waiting.append(job)
            else:
                ready.append(job)
        self._seq = itertools.count(max_seq + 1)
        self._results = deque(sorted(self._results, key=lambda entry: entry[0]))
        while len(self._results) + len(self._results_own_ttl) > self.config.max_results:
            if self._results:
                _, dropped = self._results.popleft()
            else:
                _, _, dropped = heapq.heappop(self._results_own_ttl)
            del self.jobs[dropped.id]
        failed.sort(key=lambda job: job.finished_at or 0.0)
        for job in failed:
            self.jobs[job.id] = job
            self._failed[job.id] = job
        self._restore_unique()
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
        waiting.sort(key=lambda job: job.key)
        self._restore_waiting(waiting, now)
