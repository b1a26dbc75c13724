"""Leases: how long a consumer may hold a job, and what happens when it stops answering.

A delivered job is held under a lease (``job.lease_deadline``, pushed on
``_leases`` by :meth:`Dispatch._reserve`); a heartbeat renews it. A lease
that runs out, or a consumer that goes away, loses the job: it goes back to
its queue with that attempt counted, or fails if that was its last.

Lease expiry is apart from the other timers (``JobManager.tick``) because
the server must not run it right after its own process stalled: the
heartbeats and results that would have kept those leases alive may be
waiting, unread, in its sockets. The server expires leases only after one
I/O poll (:meth:`Leases.expire_leases`) and credits its own stall to every
lease (:meth:`Leases.extend_leases`).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable

from broker.jobs import Job, JobState
from broker.manager.config import Consumer
from broker.manager.state import ManagerState
from protocol.logs import job_extra

log = logging.getLogger("broker.manager")


class Leases(ManagerState):
    __slots__ = ()

    def heartbeat(self, consumer: Consumer, job_ids: Iterable[str], now: float) -> int:
        """Renew the leases of the listed jobs this consumer holds; return how many."""
        renewed = 0
        for job_id in job_ids:
            job = consumer.jobs.get(job_id)
            if job is not None:
                # Never earlier than it was: a stall's extension (extend_leases)
                # is kept, and the lease heap's entry is never later than due.
                renewed_until = now + job.lease
                job.lease_deadline = max(job.lease_deadline, renewed_until)
                renewed += 1
        return renewed

    def expire_leases(self, now: float) -> int:
        """Take back every job whose lease ran out by ``now``; return how many.

        The holder gets a revoke; the job goes back to its queue, or fails if
        that was its last attempt.
        """
        expired = 0
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
            self.metrics.of(job.queue).lease_expired += 1
            self._lose_lease(job, now, f"lease of {job.lease:g}s expired", expired=True)
            expired += 1
        if self._opened:
            self._feed_opened(now)
        return expired

    def next_lease_deadline(self) -> float | None:
        """When the first lease of a running job runs out; None if no job is running.

        Entries of leases that ended or were renewed are dropped or moved on
        the way, so the answer is exact (``next_deadline`` may be earlier).
        """
        leases = self._leases
        while leases:
            deadline, _, job, attempt = leases[0]
            if job.state is not JobState.RUNNING or job.attempts != attempt:
                heapq.heappop(leases)
            elif job.lease_deadline > deadline:
                heapq.heapreplace(leases, (job.lease_deadline, next(self._tiebreak), job, attempt))
            else:
                return deadline
        return None

    def extend_leases(self, seconds: float) -> int:
        """Push every running job's lease deadline ``seconds`` later; return how many.

        For time the broker itself did not run (stopped, frozen): its stall
        must not count against the workers holding jobs.
        """
        if not 0 <= seconds < math.inf:
            raise ValueError(f"cannot extend leases by {seconds!r} seconds")
        if not seconds or not self.running:
            return 0
        extended = 0
        for consumer in self.consumers:
            for job in consumer.jobs.values():
                job.lease_deadline += seconds
                extended += 1
        self._rebuild_leases()
        return extended

    def _rebuild_leases(self) -> None:
        """Drop the entries of leases that ended (jobs done), which would pile up until due."""
        self._leases = [
            (job.lease_deadline, next(self._tiebreak), job, job.attempts)
            for consumer in self.consumers
            for job in consumer.jobs.values()
        ]
        heapq.heapify(self._leases)

    def _release_hold(self, job: Job) -> None:
        """The job's holder no longer holds it (reported, lost, or cancelled)."""
        extras = job.extras  # its own: set when it was reserved
        owner: Consumer = extras.owner
        del owner.jobs[job.id]
        extras.owner = None
        kind = job.kind
        self.queues[kind.queue].running -= 1
        self.running -= 1
        if self._limited:
            self._limits_stopped(kind.queue, kind.task)

    def _lose_lease(self, job: Job, now: float, reason: str, expired: bool = False) -> None:
        """The holder lost the job: back to its queue, or failed on its last attempt.

        ``expired``: its lease ran out (else its worker went away), for the metrics.
        """
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
                extra=job_extra(job.id, job.queue, job.task),
            )
            self._finish(job, JobState.FAILED, now)
        else:
            self.counters["requeued"] += 1
            metrics = self.metrics.of(job.queue)
            if expired:
                metrics.requeued_expired += 1
            else:
                metrics.requeued_lost += 1
            log.warning(
                "requeued job %s after attempt %d: %s (worker %s)",
                job.id,
                job.attempts,
                reason,
                owner.name or "?",
                extra=job_extra(job.id, job.queue, job.task),
            )
            self._requeue(job, now)
