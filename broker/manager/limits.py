"""Global limits: at most N jobs running at once, and at most N starts per period,
per queue and per task, across every worker.

A :class:`Limit` counts the jobs it covers that are running and remembers
its starts within the rate's window (at most ``count`` of them). Dispatch
(``dispatch.py``) asks :meth:`Limit.allows` before it starts a job: a queue
whose limit is reached is skipped like a paused queue, and a (queue, task)
ready queue whose task limit is reached is skipped, so the jobs behind it
keep their order and other tasks go on. Nothing polls: a limit reopens
either when a job it covers stops running (the report, the lost lease or
the cancel that stopped it feeds the consumers waiting on the queues
concerned) or when its rate window moves on, which is a timer in
``_wakeups`` that :meth:`JobManager.next_deadline` includes.

Limits are settings (``flow.py``): journaled, snapshotted and restored. The
counts are not: after a restart nothing is running and the rate windows
start empty.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

from broker.manager.flow import LIMIT
from broker.manager.state import ManagerState
from protocol.rates import parse_rate

QUEUE = "queue"
TASK = "task"


class Limit:
    __slots__ = ("count", "kind", "max_running", "name", "period", "rate", "running", "starts")

    def __init__(self, kind: str, name: str, max_running: int | None, rate: str | None) -> None:
        self.kind = kind
        self.name = name
        self.max_running = max_running
        self.rate = rate
        self.count, self.period = parse_rate(rate) if rate is not None else (0, 0.0)
        # Jobs covered by this limit that are running now.
        self.running = 0
        # Start times within the rate's window, oldest first (at most ``count``).
        self.starts: deque[float] = deque()

    def allows(self, now: float) -> bool:
        """Whether one more covered job may start now."""
        if self.max_running is not None and self.running >= self.max_running:
            return False
        if self.rate is not None:
            starts = self.starts
            horizon = now - self.period
            while starts and starts[0] <= horizon:
                starts.popleft()
            if len(starts) >= self.count:
                return False
        return True

    def started(self, now: float) -> bool:
        """A covered job started; True if that filled the rate's window."""
        self.running += 1
        if self.rate is None:
            return False
        self.starts.append(now)
        return len(self.starts) >= self.count

    def reopens_at(self) -> float:
        """When the rate's window lets one more start (the window is full)."""
        return self.starts[0] + self.period

    def setting(self) -> dict[str, Any]:
        return {"max_running": self.max_running, "rate": self.rate}

    def describe(self, now: float | None) -> dict[str, Any]:
        if now is not None:
            self.allows(now)  # drop the starts that left the window
        return {
            "max_running": self.max_running,
            "rate": self.rate,
            "running": self.running,
            "started_in_window": len(self.starts),
        }


class Limits(ManagerState):
    __slots__ = ()

    def set_limits(
        self,
        kind: str,
        name: str,
        max_running: int | None,
        rate: str | None,
        now: float,
    ) -> Limit | None:
        """Replace the limits of one queue or task (``kind``); both None removes them.

        Raises :class:`ValueError` for a bad rate or kind. Returns the new limit.
        """
        table = self._limit_table(kind)
        key = f"{LIMIT}{kind}:{name}"
        if max_running is None and rate is None:
            old = table.pop(name, None)
            self._set_setting(key, None)
            self._update_gate()
            if old is not None:
                self._limit_opened(old, now)
            return None
        limit = Limit(kind, self._intern(name), max_running, rate)
        old = table.get(name)
        if old is not None:
            limit.running = old.running
            if limit.rate is not None and old.rate is not None:
                limit.starts = deque(list(old.starts)[-limit.count :])
        else:
            limit.running = self._running_under(kind, name)
        table[limit.name] = limit
        self._update_gate()
        self._set_setting(key, limit.setting())
        if limit.rate is not None and len(limit.starts) >= limit.count:
            heapq.heappush(self._wakeups, (limit.reopens_at(), next(self._tiebreak), limit))
        self._limit_opened(limit, now)  # it may allow more than before
        return limit

    def _limit_table(self, kind: str) -> dict[str, Limit]:
        if kind == QUEUE:
            return self.queue_limits
        if kind == TASK:
            return self.task_limits
        raise ValueError(f"a limit is on a {QUEUE!r} or a {TASK!r}, not {kind!r}")

    def _running_under(self, kind: str, name: str) -> int:
        if kind == QUEUE:
            counts = self.queues.get(name)
            return 0 if counts is None else counts.running
        return sum(
            1 for consumer in self.consumers for job in consumer.jobs.values() if job.task == name
        )

    def restore_limit(self, key: str, value: dict[str, Any]) -> None:
        """A limit setting recovered from the journal (see ``flow.restore_settings``)."""
        kind, _, name = key[len(LIMIT) :].partition(":")
        limit = Limit(kind, self._intern(name), value.get("max_running"), value.get("rate"))
        self._limit_table(kind)[limit.name] = limit
        self._update_gate()
        self.settings[key] = value

    def limits_stats(self, now: float | None) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            "queues": {
                name: self.queue_limits[name].describe(now) for name in sorted(self.queue_limits)
            },
            "tasks": {
                name: self.task_limits[name].describe(now) for name in sorted(self.task_limits)
            },
        }

    # -- dispatch's side --------------------------------------------------------------

    def _may_dispatch(self, queue: str, task: str, now: float) -> bool:
        """Whether a job of this queue and task may start now: not paused, within limits."""
        if not self._queue_may_dispatch(queue, now):
            return False
        limit = self.task_limits.get(task)
        return limit is None or limit.allows(now)

    def _queue_may_dispatch(self, queue: str, now: float) -> bool:
        if queue in self.paused_queues:
            return False
        limit = self.queue_limits.get(queue)
        return limit is None or limit.allows(now)

    def _update_gate(self) -> None:
        """Dispatch checks queues and tasks only while a pause or a limit exists."""
        self._limited = bool(self.queue_limits or self.task_limits)
        self._gated = self._limited or bool(self.paused_queues)

    def _limits_started(self, queue: str, task: str, now: float) -> None:
        for limit in (self.queue_limits.get(queue), self.task_limits.get(task)):
            if limit is not None and limit.started(now):
                heapq.heappush(self._wakeups, (limit.reopens_at(), next(self._tiebreak), limit))

    def _limits_stopped(self, queue: str, task: str) -> None:
        """A covered job stopped running: a limit it filled opens (fed by :meth:`_feed_opened`)."""
        for limit in (self.queue_limits.get(queue), self.task_limits.get(task)):
            if limit is not None:
                limit.running -= 1
                if limit.max_running is not None and limit.running == limit.max_running - 1:
                    self._opened.append(limit)

    def _feed_opened(self, now: float) -> None:
        """Feed the consumers waiting behind the limits that opened since the last call."""
        opened, self._opened = self._opened, []
        for limit in opened:
            self._limit_opened(limit, now)

    def _run_wakeups(self, now: float) -> None:
        """Rate windows that moved on: their waiting consumers may start jobs again."""
        wakeups = self._wakeups
        while wakeups and wakeups[0][0] <= now:
            _, _, limit = heapq.heappop(wakeups)
            if self._limit_table(limit.kind).get(limit.name) is limit:
                self._limit_opened(limit, now)

    def _limit_opened(self, limit: Limit, now: float) -> None:
        if limit.kind == QUEUE:
            self._feed_waiting_on(limit.name, now)
            return
        for queue in [queue for queue, by_task in self._ready.items() if limit.name in by_task]:
            self._feed_waiting_on(queue, now)
