"""Typed references to tasks, for producers: submit with the task's own signature.

A :class:`TaskRef` names a task and carries its parameters ``P`` and return
type ``R`` for the type checker: ``await ref.submit(client, 1, 2)`` checks the
arguments against ``P`` and returns a ``Job[R]``. ``@worker.task`` returns
one (a :class:`worker.registry.Task`, still callable as the function); a
producer that must not import the task's module declares one by name,
``TaskRef[[int, int], int]("add")``, or from a stub with :func:`task_ref`.

It lives with the client, not the worker, so that a producer's import stays
light (``broker.client`` and ``protocol`` only). ``P`` is a ParamSpec, so
submit options cannot sit beside ``**P.kwargs`` (PEP 612): they are bound
first with :meth:`TaskRef.options`, which returns a new reference.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

if TYPE_CHECKING:
    from broker.client import Client, Job

P = ParamSpec("P")
R = TypeVar("R")

# The options a reference can bind: JobSpec's, but the task and its arguments.
OPTION_NAMES = frozenset(
    {"queue", "priority", "delay", "job_id", "max_attempts", "timeout", "lease", "result_ttl"}
)


class TaskRef(Generic[P, R]):
    """A task by name, typed ``(*P) -> R``; submits with bound options."""

    __slots__ = ("_options", "name")

    def __init__(self, name: str, /, **options: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a task reference needs a non-empty name")
        unknown = options.keys() - OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown submit options: {', '.join(sorted(unknown))}")
        self.name = name
        self._options: dict[str, Any] = options

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        job_id: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        lease: float | None = None,
        result_ttl: float | None = None,
    ) -> TaskRef[P, R]:
        """The same task with these submit options (over the ones bound already)."""
        given = {
            "queue": queue,
            "priority": priority,
            "delay": delay,
            "job_id": job_id,
            "max_attempts": max_attempts,
            "timeout": timeout,
            "lease": lease,
            "result_ttl": result_ttl,
        }
        merged = dict(self._options)
        merged.update({key: value for key, value in given.items() if value is not None})
        return TaskRef(self.name, **merged)

    @property
    def bound_options(self) -> dict[str, Any]:
        """The submit options this reference adds (a copy)."""
        return dict(self._options)

    async def submit(self, client: Client, /, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Submit one job of this task; the arguments are checked against its signature."""
        job: Job[R] = await client.submit(self.name, args, kwargs, **self._options)
        return job

    def spec(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """An entry for ``Client.submit_many``: this task, these arguments, the bound options."""
        entry: dict[str, Any] = {"task": self.name, "args": list(args), "kwargs": dict(kwargs)}
        entry.update(self._options)
        return entry


@overload
def task_ref(stub: Callable[P, Coroutine[Any, Any, R]], /) -> TaskRef[P, R]: ...


@overload
def task_ref(stub: Callable[P, R], /) -> TaskRef[P, R]: ...


def task_ref(stub: Callable[P, Any], /) -> TaskRef[P, Any]:
    """A reference from a stub with the task's signature; the stub's name is the task's.

    ``@task_ref`` over ``def add(a: int, b: int) -> int`` (or ``async def``) in
    the producer's code; the body never runs (``raise NotImplementedError``
    keeps mypy's empty-body check quiet). For another name, or options:
    ``task_ref(stub).options(...)`` or ``TaskRef[[int, int], int]("name")``.
    """
    return TaskRef(stub.__name__)


__all__ = ["OPTION_NAMES", "TaskRef", "task_ref"]
