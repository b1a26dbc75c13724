"""Periodic jobs: schedules the broker owns and fires, each tick exactly once.

A :class:`Schedule` submits a job of its task at each tick of a cron
expression (parsed by cronsim, in the schedule's time zone) or of a period
(``every`` seconds, ticks aligned on the epoch, so every broker and every
worker declaring it agrees on them). The fired job's id is
``cron:{name}:{unix seconds of the tick}``, so firing a tick twice (two
workers declaring the schedule, a restart that lost the record of the
last fire) is an idempotent submit: a no-op while the broker keeps the job.

Schedules are settings (``flow.py``): journaled with the last tick fired,
restored at start. A schedule whose ticks were missed while the broker was
down fires once, for the latest missed tick, as soon as it starts (not once
per missed tick); a new schedule fires from its next tick on. The next tick
of every schedule is a timer in ``_schedule_timers``, which
:meth:`JobManager.next_deadline` includes.
"""

from __future__ import annotations

import heapq
import logging
import math
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim

from broker.manager.config import QueueFullError
from broker.manager.flow import SCHEDULE
from broker.manager.state import ManagerState
from protocol.job_spec import DEFAULT_QUEUE, JobSpec
from protocol.schedules import check_schedule

log = logging.getLogger("broker.manager")

# An empty [args, kwargs], msgpack-encoded.
NO_ARGUMENTS = b"\x92\x90\x80"


class Schedule:
    __slots__ = ("cron", "every", "last", "name", "next", "payload", "queue", "task", "timezone")

    def __init__(
        self,
        name: str,
        task: str,
        *,
        cron: str | None = None,
        every: float | None = None,
        timezone: str | None = None,
        payload: bytes = NO_ARGUMENTS,
        queue: str = DEFAULT_QUEUE,
        last: float | None = None,
    ) -> None:
        """Raises :class:`ValueError` with a clear message for a bad definition."""
        check_schedule(name, cron, every, timezone)
        self.name = name
        self.task = task
        self.cron = cron
        self.every = every
        self.timezone = timezone
        self.payload = payload
        self.queue = queue
        self.last = last
        self.next = 0.0

    def _zone(self) -> Any:
        return ZoneInfo(self.timezone) if self.timezone else UTC

    def tick_after(self, moment: float) -> float:
        """The first tick strictly after ``moment``."""
        if self.every is not None:
            return (math.floor(moment / self.every) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(moment, self._zone())
        return next(CronSim(self.cron, start)).timestamp()

    def tick_at_or_before(self, moment: float) -> float:
        """The last tick at or before ``moment``."""
        if self.every is not None:
            return math.floor(moment / self.every) * self.every
        assert self.cron is not None
        # Ticks fall on whole seconds; cronsim's reverse is strictly before.
        start = datetime.fromtimestamp(math.floor(moment) + 0.5, self._zone())
        return next(CronSim(self.cron, start, reverse=True)).timestamp()

    def definition(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "payload": self.payload,
            "queue": self.queue,
        }

    def setting(self) -> dict[str, Any]:
        return {**self.definition(), "last": self.last}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.definition(),
            "last_run": self.last,
            "next_run": self.next,
        }


class Schedules(ManagerState):
    __slots__ = ()

    def set_schedule(self, schedule: Schedule, now: float) -> bool:
        """Add or replace a schedule; False if an identical one was there (nothing changes).

        A replaced schedule keeps its last tick, so no tick fires twice.
        """
        old = self.schedules.get(schedule.name)
        if old is not None:
            if old.definition() == schedule.definition():
                return False
            schedule.last = old.last
        self.schedules[schedule.name] = schedule
        schedule.next = schedule.tick_after(
            now if schedule.last is None else max(now, schedule.last)
        )
        self._set_setting(SCHEDULE + schedule.name, schedule.setting())
        heapq.heappush(self._schedule_timers, (schedule.next, next(self._tiebreak), schedule))
        return True

    def remove_schedule(self, name: str) -> bool:
        if self.schedules.pop(name, None) is None:
            return False
        self._set_setting(SCHEDULE + name, None)
        return True

    def schedules_list(self) -> list[dict[str, Any]]:
        return [self.schedules[name].describe() for name in sorted(self.schedules)]

    def restore_schedule(self, key: str, value: dict[str, Any], now: float) -> None:
        """A schedule recovered from the journal: a tick missed meanwhile fires once, first."""
        try:
            schedule = Schedule(
                key[len(SCHEDULE) :],
                value["task"],
                cron=value.get("cron"),
                every=value.get("every"),
                timezone=value.get("timezone"),
                payload=value.get("payload") or NO_ARGUMENTS,
                queue=value.get("queue") or DEFAULT_QUEUE,
                last=value.get("last"),
            )
        except ValueError as exc:  # e.g. a time zone this machine lacks
            log.error("dropping a recovered schedule: %s", exc)
            return
        self.schedules[schedule.name] = schedule
        self.settings[key] = value
        missed = None
        if schedule.last is not None:
            latest = schedule.tick_at_or_before(now)
            if latest > schedule.last:
                missed = latest
        schedule.next = missed if missed is not None else schedule.tick_after(now)
        heapq.heappush(self._schedule_timers, (schedule.next, next(self._tiebreak), schedule))

    def _run_schedules(self, now: float) -> None:
        timers = self._schedule_timers
        while timers and timers[0][0] <= now:
            tick, _, schedule = heapq.heappop(timers)
            if self.schedules.get(schedule.name) is not schedule or schedule.next != tick:
                continue  # removed or replaced since
            self._fire(schedule, tick, now)
            schedule.next = schedule.tick_after(max(tick, now))
            heapq.heappush(timers, (schedule.next, next(self._tiebreak), schedule))

    def _fire(self, schedule: Schedule, tick: float, now: float) -> None:
        spec = JobSpec(
            schedule.task,
            schedule.payload,
            schedule.queue,
            job_id=f"cron:{schedule.name}:{int(tick)}",
        )
        try:
            self.submit(spec, now)
        except QueueFullError as exc:
            log.warning("schedule %s: tick %d not fired: %s", schedule.name, int(tick), exc)
        schedule.last = tick
        self._set_setting(SCHEDULE + schedule.name, schedule.setting())
