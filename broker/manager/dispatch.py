"""Ready queues and dispatch: which job goes to which consumer, and when.

A job is dispatched the moment both sides are there: a job becoming ready
goes to the first consumer waiting on its queue (:meth:`Dispatch._make_ready`),
and a consumer granted credit takes the best ready job of its queues
(:meth:`Dispatch._feed`). Otherwise the job waits in its queue's
:class:`ReadyQueue`, or the consumer in ``_waiting``, so at any moment a
consumer with credit has no ready job on any of its queues.

Routing by task: a consumer that announced its tasks (``Consumer.tasks``)
takes only jobs of those tasks. Ready jobs are kept per queue *and task*
(``_ready[queue][task]``, one :class:`ReadyQueue` each), so a job never
sits in front of a consumer that cannot run it and no queue is ever scanned
for a runnable job: a consumer compares the head of each (queue, task) it
can take, as it compares the heads of its queues, and only (queue, task)
pairs that hold ready jobs are kept. Waiting consumers are indexed the same
way: those taking every task by queue (``_waiting``), the others by queue
and task (``_waiting_tasks``), so a job becoming ready finds its consumer
with two lookups. A job whose task no consumer takes simply stays in its
(queue, task) ready queue until one attaches.

Also here: delayed jobs (they become ready when due), a job going back to
its queue (:meth:`Dispatch._requeue`), and the pause that storage failures
need (:meth:`Dispatch.pause_dispatch`): while paused, jobs stay ready and
consumers stay waiting with their credit.

This is the hot path: keep per-job work inline (no helper call per job
that a plain statement can do); ``bench/manager_micro.py`` measures it.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable

from broker.jobs import NO_EXTRAS, PRIORITY_SHIFT, Job, JobExtras, JobState
from broker.manager.config import Consumer, QueueCounts
from broker.manager.state import ManagerState


class ReadyQueue:
    """One queue's ready jobs: a FIFO per priority, and a heap of the priorities in use.

    Push and pop are O(1) for a priority already in use (O(log p) in the
    number of distinct priorities otherwise), and a queued job costs one
    deque slot. A job cancelled while queued stays in its deque until it
    reaches the front, where it is skipped.
    """

    __slots__ = ("count", "levels", "priorities", "task")

    def __init__(self, task: str = "") -> None:
        self.task = task
        # By negated priority, so the heap's smallest is the highest priority.
        self.levels: dict[int, deque[Job]] = {}
        self.priorities: list[int] = []
        # Queued jobs held (cancelled ones are taken off at cancel time).
        self.count = 0

    def push(self, job: Job, front: bool = False) -> None:
        self.count += 1
        negated = job.key >> PRIORITY_SHIFT  # -job.priority, without a property call
        level = self.levels.get(negated)
        if level is None:
            level = self.levels[negated] = deque()
            heapq.heappush(self.priorities, negated)
        if front:
            level.appendleft(job)
        else:
            level.append(job)

    def peek(self) -> Job | None:
        """The job that runs next, or None."""
        priorities = self.priorities
        levels = self.levels
        while priorities:
            level = levels[priorities[0]]
            while level:
                job = level[0]
                if job.state is JobState.QUEUED:
                    return job
                level.popleft()  # cancelled while it waited
            del levels[heapq.heappop(priorities)]
        return None

    def pop(self) -> Job:
        """The job :meth:`peek` returned (call it right after)."""
        self.count -= 1
        return self.levels[self.priorities[0]].popleft()


class Dispatch(ManagerState):
    __slots__ = ()

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
        if self._opened:
            self._feed_opened(now)

    def grant(self, consumer: Consumer, n: int, now: float) -> None:
        """The consumer can take ``n`` more jobs."""
        consumer.credit += n
        self._feed(consumer, now)

    def quiet(self, consumer: Consumer) -> None:
        """The consumer takes no more jobs (until it grants credit again)."""
        consumer.credit = 0
        self._stop_waiting(consumer)

    # -- pausing ----------------------------------------------------------------

    @property
    def dispatch_paused(self) -> bool:
        return self._dispatch_paused

    def pause_dispatch(self) -> None:
        """Hand out no job until :meth:`resume_dispatch` (storage cannot record them).

        Jobs that become ready stay in their queues and consumers keep their
        credit and wait; everything else (reports, cancels, timers) goes on.
        """
        self._dispatch_paused = True

    def resume_dispatch(self, now: float) -> None:
        """Hand out jobs again: every waiting consumer takes what its credit allows.

        Consumers are fed one after the other, each until its credit or its
        queues' ready jobs run out, in the order they started waiting.
        """
        if not self._dispatch_paused:
            return
        self._dispatch_paused = False
        waiting = dict.fromkeys(
            consumer for consumers in self._waiting.values() for consumer in consumers
        )
        for by_task in self._waiting_tasks.values():
            for consumers in by_task.values():
                waiting.update(dict.fromkeys(consumers))
        for consumer in waiting:
            self._feed(consumer, now)

    # -- handing out jobs ---------------------------------------------------------

    def _make_ready(self, job: Job, now: float, front: bool = False) -> None:
        """Hand a queued job to a waiting consumer, or put it in its ready queue.

        A consumer waiting for every task of the job's queue comes first,
        then one waiting for the job's task. The caller has set
        ``job.state`` to QUEUED (or left it there) and counted it in its
        queue's ``queued``.
        """
        job.state = JobState.QUEUED
        kind = job.kind  # job.queue and job.task are properties: read them once
        queue = kind.queue
        task = kind.task
        if not self._dispatch_paused and (not self._gated or self._may_dispatch(queue, task, now)):
            waiting = self._waiting.get(queue)
            if not waiting:
                by_task = self._waiting_tasks.get(queue)
                waiting = by_task.get(task) if by_task else None
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
        by_queue = self._ready.get(queue)
        if by_queue is None:
            by_queue = self._ready[queue] = {}
        ready = by_queue.get(task)
        if ready is None:
            ready = by_queue[task] = ReadyQueue(task)
        ready.push(job, front)

    def _feed(self, consumer: Consumer, now: float) -> None:
        """Give the consumer ready jobs while it has credit; then it waits.

        Each round compares the heads of the (queue, task) ready queues the
        consumer can take: of its queues, those tasks that have ready jobs
        (all of them, or the ones it announced, whichever set is smaller).
        """
        ready = self._ready
        queues = consumer.queues
        tasks = consumer.tasks
        gated = self._gated  # a paused queue or a limit somewhere (flow.py, limits.py)
        task_limits = self.task_limits if gated else None
        if len(queues) == 1 and not gated:
            # The common shape (one queue, one task ready, no pause or limit):
            # take from its one ready queue without comparing heads.
            by_task = ready.get(queues[0])
            if by_task and len(by_task) == 1:
                only = next(iter(by_task.values()))
                if tasks is None or only.task in tasks:
                    while consumer.credit > 0 and not self._dispatch_paused:
                        head = only.peek()
                        if head is None:
                            break
                        only.pop()
                        self._reserve(head, consumer, now)
        while consumer.credit > 0:
            best: Job | None = None
            best_queue: ReadyQueue | None = None
            # Checked per job: a delivery can fail storage, which pauses dispatch.
            if not self._dispatch_paused:
                for queue in queues:
                    by_task = ready.get(queue)
                    if not by_task or (gated and not self._queue_may_dispatch(queue, now)):
                        continue
                    if tasks is None:
                        candidates: Iterable[ReadyQueue] = by_task.values()
                    elif len(by_task) <= len(tasks):
                        candidates = [q for t, q in by_task.items() if t in tasks]
                    else:
                        candidates = [by_task[t] for t in tasks if t in by_task]
                    drained = False
                    for candidate in candidates:
                        if task_limits:
                            limit = task_limits.get(candidate.task)
                            if limit is not None and not limit.allows(now):
                                continue
                        head = candidate.peek()
                        if head is None:
                            drained = True
                            continue
                        # Highest priority first; equal priorities in submission
                        # order: both in the key (see order_key).
                        if best is None or head.key < best.key:
                            best = head
                            best_queue = candidate
                    if drained:  # only (queue, task) pairs with ready jobs are kept
                        for task in [t for t, q in by_task.items() if not q.count]:
                            del by_task[task]
            if best is None or best_queue is None:
                if tasks is None:
                    waiting_on = self._waiting
                    for queue in queues:
                        waiting = waiting_on.get(queue)
                        if waiting is None:
                            waiting = waiting_on[queue] = {}
                        waiting[consumer] = None
                    consumer.waiting = True
                else:
                    self._start_waiting(consumer)
                return
            best_queue.pop()
            self._reserve(best, consumer, now)
        # Its credit is used up: it may have been waiting from before (jobs a
        # limit held back), and a waiting consumer is one a new job goes to.
        if consumer.waiting:
            self._stop_waiting(consumer)

    def _start_waiting(self, consumer: Consumer) -> None:
        """A consumer that announced its tasks waits for each of them on each of its queues."""
        tasks = consumer.tasks
        assert tasks is not None
        consumer.waiting = True
        for queue in consumer.queues:
            by_task = self._waiting_tasks.get(queue)
            if by_task is None:
                by_task = self._waiting_tasks[queue] = {}
            for task in tasks:
                waiting = by_task.get(task)
                if waiting is None:
                    waiting = by_task[task] = {}
                waiting[consumer] = None

    def _stop_waiting(self, consumer: Consumer) -> None:
        if not consumer.waiting:
            return
        consumer.waiting = False
        tasks = consumer.tasks
        for queue in consumer.queues:
            if tasks is None:
                waiting = self._waiting.get(queue)
                if waiting is not None:
                    waiting.pop(consumer, None)
                continue
            by_task = self._waiting_tasks.get(queue)
            if by_task is None:
                continue
            for task in tasks:
                waiting = by_task.get(task)
                if waiting is not None:
                    waiting.pop(consumer, None)
                    if not waiting:
                        del by_task[task]

    def _unready(self, job: Job) -> None:
        """A queued job leaves its ready queue other than by dispatch (cancelled).

        Its entry stays in the deque and is skipped when reached; only the count changes.
        """
        by_queue = self._ready.get(job.queue)
        ready = by_queue.get(job.task) if by_queue else None
        if ready is not None:
            ready.count -= 1

    def queued_without_worker(self) -> dict[str, dict[str, int]]:
        """Queued jobs that no attached consumer can take, by queue and task (for STATS).

        A job is counted when no consumer serves its queue taking every task or its task.
        """
        every: set[str] = set()
        announced: dict[str, set[str]] = {}
        for consumer in self.consumers:
            if consumer.tasks is None:
                every.update(consumer.queues)
            else:
                for queue in consumer.queues:
                    announced.setdefault(queue, set()).update(consumer.tasks)
        waiting: dict[str, dict[str, int]] = {}
        for queue, by_task in sorted(self._ready.items()):
            if queue in every:
                continue
            served = announced.get(queue, set())
            for task, ready in sorted(by_task.items()):
                if ready.count > 0 and task not in served:
                    waiting.setdefault(queue, {})[task] = ready.count
        return waiting

    def _reserve(self, job: Job, consumer: Consumer, now: float) -> None:
        """Deliver the job to the consumer: it runs, under a lease (see leases.py)."""
        job.state = JobState.RUNNING
        # The job's extras, written directly (the properties cost a call each).
        extras = job.extras
        if extras is NO_EXTRAS:
            extras = job.extras = JobExtras()
        attempt = extras.attempts = extras.attempts + 1
        extras.owner = consumer
        extras.started_at = now
        kind = job.kind
        queue = kind.queue
        deadline = now + kind.lease
        extras.lease_deadline = deadline
        counts = self.queues[queue]
        counts.queued -= 1
        counts.running += 1
        # Histogram.observe, inline (the hot path): ready to started.
        metrics = self.metrics
        wait = (metrics.get(queue) or metrics.of(queue)).wait
        run_at = extras.run_at  # None: created_at (see Job.run_at)
        waited = now - (job.created_at if run_at is None else run_at)
        wait.counts[bisect_left(wait.bounds, waited)] += 1
        wait.sum += waited
        consumer.credit -= 1
        consumer.jobs[job.id] = job
        self.running += 1
        if self._limited:
            self._limits_started(queue, kind.task, now)
        leases = self._leases
        heapq.heappush(leases, (deadline, next(self._tiebreak), job, attempt))
        if len(leases) > 2 * self.running + 1024:
            self._rebuild_leases()
        if self.journal is not None:
            self.journal.job_reserved(job)
        consumer.sink.deliver(job)

    # -- back to the queue, now or later ----------------------------------------------

    def _delay(self, job: Job, run_at: float, counts: QueueCounts) -> None:
        job.state = JobState.DELAYED
        job.run_at = run_at
        counts.delayed += 1
        heapq.heappush(self._delayed, (run_at, next(self._tiebreak), job))

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

    def _run_delayed(self, now: float) -> None:
        """Delayed jobs that are due become ready."""
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
