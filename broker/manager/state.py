"""The state every concern of the manager shares, and the calls they make on one another.

:class:`ManagerState` is the base of each concern's class (``dispatch``,
``leases``, ``retention``, ``recovery``) and of the :class:`JobManager`
facade that combines them. It holds every table in one place, so a
newcomer reads here what the manager knows, and in each concern's file what
it does with it. The concerns are mixins over one object rather than
separate objects: the hot path (submit, reserve, ack) then costs no extra
indirection, which a microbenchmark holds it to (``bench/manager_micro.py``).

The ``TYPE_CHECKING`` block lists the methods one concern calls on another,
so each file type-checks on its own; at run time they resolve to the
concern that defines them.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.jobs import Job, JobKind, JobState
from broker.manager.config import (
    MAX_INTERNED_NAMES,
    Consumer,
    JournalSink,
    ManagerConfig,
    QueueCounts,
)
from broker.manager.metrics import MetricsTable

if TYPE_CHECKING:
    from broker.manager.dispatch import ReadyQueue
    from broker.manager.limits import Limit
    from broker.manager.schedules import Schedule
    from protocol.job_spec import JobSpec


class ManagerState:
    # Every table, as a slot: attribute reads on the hot path stay as fast as
    # they can (an instance dict of more than 30 keys is no longer shared, and
    # CPython reads it more slowly). The concerns' classes add none.
    __slots__ = (
        "_children",
        "_delayed",
        "_dispatch_paused",
        "_failed",
        "_gated",
        "_id_prefix",
        "_ids",
        "_leases",
        "_limited",
        "_names",
        "_opened",
        "_parents_left",
        "_plain_kinds",
        "_ready",
        "_results",
        "_results_own_ttl",
        "_rng",
        "_schedule_timers",
        "_seq",
        "_settling",
        "_tiebreak",
        "_unique",
        "_waiting",
        "_waiting_tasks",
        "_wakeups",
        "config",
        "consumers",
        "counters",
        "jobs",
        "journal",
        "metrics",
        "on_finished",
        "paused_queues",
        "queue_limits",
        "queues",
        "running",
        "schedules",
        "settings",
        "task_defaults",
        "task_limits",
        "unfinished",
    )

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
        self._id_prefix = id_prefix if id_prefix is not None else os.urandom(4).hex()
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._tiebreak = itertools.count()
        # Every job the manager knows, unfinished or finished and still kept.
        self.jobs: dict[str, Job] = {}
        self.journal: JournalSink | None = None
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
        self.unfinished = 0
        self.queues: dict[str, QueueCounts] = {}
        # Per-queue counters and histograms for /metrics (metrics.py), never forgotten.
        self.metrics = MetricsTable()
        # Task and queue names, one string each (see MAX_INTERNED_NAMES).
        self._names: dict[str, str] = {}
        # Per-task defaults announced by workers ({task: {"max_attempts", "lease"}}).
        self.task_defaults: dict[str, dict[str, Any]] = {}
        # The shared JobKind of a job that sets none of max_attempts, timeout
        # and lease, by queue then task (jobmanager.py; cleared when defaults change).
        self._plain_kinds: dict[str, dict[str, JobKind]] = {}

        # dispatch.py: ready jobs by queue then task, the consumers waiting for
        # them (taking every task: by queue; announcing tasks: by queue then
        # task), delayed jobs.
        self.consumers: set[Consumer] = set()
        self._ready: dict[str, dict[str, ReadyQueue]] = {}
        self._waiting: dict[str, dict[Consumer, None]] = {}
        self._waiting_tasks: dict[str, dict[str, dict[Consumer, None]]] = {}
        self._delayed: list[tuple[float, int, Job]] = []
        self._dispatch_paused = False

        # flow.py: queues that hand out nothing, and the journaled settings.
        self.paused_queues: set[str] = set()
        self.settings: dict[str, Any] = {}

        # limits.py: per queue and per task; whether any is set (the hot path's
        # one check); rate windows' reopening times; limits a stop just opened.
        self.queue_limits: dict[str, Limit] = {}
        self.task_limits: dict[str, Limit] = {}
        self._limited = False
        # A paused queue or a limit exists: dispatch checks each queue and task.
        self._gated = False
        self._wakeups: list[tuple[float, int, Limit]] = []
        self._opened: list[Limit] = []

        # dependencies.py: unfinished parent id -> jobs waiting for it; a waiting
        # job's id -> its unfinished parents; parents being settled.
        self._children: dict[str, list[Job]] = {}
        self._parents_left: dict[str, int] = {}
        self._settling: list[Job] = []

        # unique.py: unique key -> the job holding it.
        self._unique: dict[str, Job] = {}

        # schedules.py: by name, and the next tick of each (stale entries skipped).
        self.schedules: dict[str, Schedule] = {}
        self._schedule_timers: list[tuple[float, int, Schedule]] = []

        # leases.py: (deadline, tiebreak, job, attempt); an entry of a job that is
        # no longer running that attempt is skipped when it comes due.
        self._leases: list[tuple[float, int, Job, int]] = []
        # Jobs held by consumers (the same as the sum of the queues' running counts).
        self.running = 0

        # retention.py: finished jobs kept for a while.
        self._results: deque[tuple[float, Job]] = deque()
        # Those of jobs submitted with their own result_ttl, by expiry:
        # (expiry, tiebreak, job). Together with _results, at most max_results.
        self._results_own_ttl: list[tuple[float, int, Job]] = []
        self._failed: OrderedDict[str, Job] = OrderedDict()

    def _counts(self, queue: str) -> QueueCounts:
        counts = self.queues.get(queue)
        if counts is None:
            counts = self.queues[queue] = QueueCounts()
        return counts

    def _intern(self, name: str) -> str:
        if len(self._names) < MAX_INTERNED_NAMES:
            self._names[name] = name
        return name

    if TYPE_CHECKING:
        # dispatch.py
        def _make_ready(self, job: Job, now: float, front: bool = False) -> None: ...

        def _delay(self, job: Job, run_at: float, counts: QueueCounts) -> None: ...

        def _requeue(
            self, job: Job, now: float, delay: float = 0.0, front: bool = True
        ) -> None: ...

        def _stop_waiting(self, consumer: Consumer) -> None: ...

        def _feed(self, consumer: Consumer, now: float) -> None: ...

        # flow.py
        def _set_setting(self, key: str, value: Any) -> None: ...

        def _feed_waiting_on(self, queue: str, now: float) -> None: ...

        # limits.py
        def _may_dispatch(self, queue: str, task: str, now: float) -> bool: ...

        def _queue_may_dispatch(self, queue: str, now: float) -> bool: ...

        def _update_gate(self) -> None: ...

        def _limits_started(self, queue: str, task: str, now: float) -> None: ...

        def _limits_stopped(self, queue: str, task: str) -> None: ...

        def _feed_opened(self, now: float) -> None: ...

        def restore_limit(self, key: str, value: dict[str, Any]) -> None: ...

        def _unready(self, job: Job) -> None: ...

        # leases.py
        def _release_hold(self, job: Job) -> None: ...

        def _lose_lease(self, job: Job, now: float, reason: str, expired: bool = False) -> None: ...

        def _rebuild_leases(self) -> None: ...

        # retention.py
        def _finish(self, job: Job, state: JobState, now: float) -> None: ...

        # unique.py
        def _release_unique(self, job: Job) -> None: ...

        def _restore_unique(self) -> None: ...

        # dependencies.py
        def _settle_children(self, parent: Job, now: float) -> None: ...

        def _wait_for_parents(self, job: Job, now: float) -> bool: ...

        def _unwait(self, job: Job) -> None: ...

        def _restore_waiting(self, waiting: list[Job], now: float) -> None: ...

        # jobmanager.py
        def check_capacity(self, count: int) -> None: ...

        def submit(self, spec: JobSpec, now: float) -> tuple[Job, bool]: ...

        # schedules.py
        def restore_schedule(self, key: str, value: dict[str, Any], now: float) -> None: ...
