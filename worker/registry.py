"""Tasks: the ``@task`` decorator, the handles it returns, and the registry a worker serves from.

``@task`` registers the function and returns a typed handle on it: still
callable as the function (tests, direct calls), and a
:class:`broker.handles.TaskRef` that submits jobs of the task with its own
signature checked (``await add.submit(client, 1, 2)`` is a ``Job[int]``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast, overload

from broker.handles import TaskRef
from protocol.job_spec import encode_payload
from protocol.schedules import check_schedule

P = ParamSpec("P")
R = TypeVar("R")


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
    # Runs in the worker's process pool (worker.processes), not a thread.
    process: bool = False
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
        process: bool = False,
        cron: str | None = None,
        every: float | None = None,
        timezone: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> TaskDef:
        if isinstance(func, TaskHandle):  # a handle registered again: its function
            func = func.definition.func
        task_name = name or func.__name__
        if not task_name:
            raise ValueError("a task needs a name")
        is_async = inspect.iscoroutinefunction(func)
        if process and is_async:
            raise ValueError(f"task {task_name!r}: an async def task cannot run in a process")
        schedule = None
        if cron is not None or every is not None:
            check_schedule(task_name, cron, every, timezone)  # a bad one fails at import
            schedule = {
                "name": task_name,
                "task": task_name,
                "cron": cron,
                "every": every,
                "timezone": timezone,
                "payload": encode_payload(args, kwargs),
                "queue": queue or "default",
            }
        definition = TaskDef(
            task_name, func, is_async, queue, timeout, max_attempts, lease, process, schedule
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


class TaskHandle(TaskRef[P, R]):
    """What ``@task`` returns: a reference to the registered task, bound to its queue.

    :class:`Task` and :class:`AsyncTask` only type ``__call__`` for plain and
    ``async def`` functions; ``inspect`` sees the function through ``__wrapped__``.
    """

    def __init__(self, definition: TaskDef) -> None:
        options = {"queue": definition.queue} if definition.queue else {}
        super().__init__(definition.name, **options)
        self.definition = definition
        functools.update_wrapper(cast(Any, self), definition.func)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} of {self.definition.func!r}>"


class Task(TaskHandle[P, R]):
    """The handle of a plain ``def`` task: calling it calls the function."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self.definition.func(*args, **kwargs))


class AsyncTask(TaskHandle[P, R]):
    """The handle of an ``async def`` task: calling it returns the coroutine."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return cast(Coroutine[Any, Any, R], self.definition.func(*args, **kwargs))


def _handle(definition: TaskDef) -> TaskHandle[Any, Any]:
    return AsyncTask(definition) if definition.is_async else Task(definition)


class TaskDecorator:
    """What ``@task(...)`` with options returns: applied to the function, registers it."""

    def __init__(self, registry: TaskRegistry | None, options: dict[str, Any]) -> None:
        self._registry = registry
        self._options = options

    # An async function matches both; the first wins, as intended.
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Task[P, R]: ...

    def __call__(self, func: Callable[..., Any], /) -> TaskHandle[Any, Any]:
        registry = self._registry if self._registry is not None else default_registry
        return _handle(registry.register(func, **self._options))


@overload
def task(  # type: ignore[overload-overlap]
    func: Callable[P, Coroutine[Any, Any, R]], /
) -> AsyncTask[P, R]: ...


@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    lease: float | None = None,
    process: bool = False,
    cron: str | None = None,
    every: float | None = None,
    timezone: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> TaskDecorator: ...


def task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    lease: float | None = None,
    process: bool = False,
    cron: str | None = None,
    every: float | None = None,
    timezone: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> TaskHandle[Any, Any] | TaskDecorator:
    """Register a function as a task: ``@task`` or ``@task(name=..., timeout=...)``.

    ``async def`` tasks run on the worker's event loop; plain ``def`` tasks
    run in a thread pool sized to the worker's concurrency, or with
    ``process=True`` (a module-level ``def`` only) in the worker's process
    pool. Returns the task's handle (:class:`Task` or :class:`AsyncTask`).

    With ``cron`` (in ``timezone``) or ``every`` (seconds), the worker
    announces a periodic job of the task, named after it, with
    ``args``/``kwargs``, on ``queue``: the broker fires each tick once, however
    many workers declare it.
    """
    decorator = TaskDecorator(
        registry,
        {
            "name": name,
            "queue": queue,
            "timeout": timeout,
            "max_attempts": max_attempts,
            "lease": lease,
            "process": process,
            "cron": cron,
            "every": every,
            "timezone": timezone,
            "args": args,
            "kwargs": kwargs,
        },
    )
    if func is not None:
        handle: TaskHandle[Any, Any] = decorator(func)
        return handle
    return decorator
