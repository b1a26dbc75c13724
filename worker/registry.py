"""Tasks: the ``@task`` decorator and the registry a worker serves from."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import msgpack

from protocol.schedules import check_schedule

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskDef:
    """A registered task and its defaults (a submit's own values win over these)."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    queue: str | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    lease: float | None = None
    # A periodic job of this task (HELLO.schedules entry), or None.
    schedule: dict[str, Any] | None = None

    def defaults(self) -> dict[str, Any]:
        """What the worker announces to the broker for jobs of this task."""
        return {
            key: value
            for key, value in (("max_attempts", self.max_attempts), ("lease", self.lease))
            if value is not None
        }


class TaskRegistry:
    """Task definitions by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}

    def register(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        lease: float | None = None,
        cron: str | None = None,
        every: float | None = None,
        timezone: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> TaskDef:
        task_name = name or func.__name__
        if not task_name:
            raise ValueError("a task needs a name")
        schedule = None
        if cron is not None or every is not None:
            check_schedule(task_name, cron, every, timezone)  # a bad one fails at import
            schedule = {
                "name": task_name,
                "task": task_name,
                "cron": cron,
                "every": every,
                "timezone": timezone,
                "payload": msgpack.packb([list(args), dict(kwargs or {})], use_bin_type=True),
                "queue": queue or "default",
            }
        definition = TaskDef(
            task_name,
            func,
            inspect.iscoroutinefunction(func),
            queue,
            timeout,
            max_attempts,
            lease,
            schedule,
        )
        existing = self._tasks.get(task_name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"task {task_name!r} is registered twice")
        self._tasks[task_name] = definition
        return definition

    def get(self, name: str) -> TaskDef | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskDef]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def schedules(self) -> list[dict[str, Any]]:
        """The periodic jobs its tasks declare, as ``HELLO.schedules`` announces them."""
        return [t.schedule for t in self._tasks.values() if t.schedule is not None]

    def queues(self) -> list[str]:
        """The queues its tasks are meant for (``default`` for a task that names none)."""
        return sorted({t.queue or "default" for t in self._tasks.values()})


# What `@task` registers into, and what a worker serves unless given another.
default_registry = TaskRegistry()


@overload
def task(func: F, /) -> F: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    lease: float | None = None,
    cron: str | None = None,
    every: float | None = None,
    timezone: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> Callable[[F], F]: ...


def task(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    lease: float | None = None,
    cron: str | None = None,
    every: float | None = None,
    timezone: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> F | Callable[[F], F]:
    """Register a function as a task: ``@task`` or ``@task(name=..., timeout=...)``.

    ``async def`` tasks run on the worker's event loop; plain ``def`` tasks
    run in a thread pool sized to the worker's concurrency. With ``cron``
    (in ``timezone``) or ``every`` (seconds), the worker announces a
    periodic job of the task, named after it, with ``args``/``kwargs``, on
    ``queue``: the broker fires each tick once, however many workers declare it.
    """

    def decorate(f: F) -> F:
        (registry or default_registry).register(
            f,
            name=name,
            queue=queue,
            timeout=timeout,
            max_attempts=max_attempts,
            lease=lease,
            cron=cron,
            every=every,
            timezone=timezone,
            args=args,
            kwargs=kwargs,
        )
        return f

    if func is not None:
        return decorate(func)
    return decorate
