"""Tasks the process-pool tests run in task processes (module level: a child imports them)."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from worker import Retry, TaskRegistry, task

REGISTRY = TaskRegistry()


@task(registry=REGISTRY, process=True)
def where() -> list[int]:
    return [os.getpid(), os.getppid()]


@task(registry=REGISTRY, process=True)
def pair(a: int, b: str) -> tuple[int, str]:
    return (a, b)


@task(registry=REGISTRY, process=True)
def spin(pid_file: str) -> None:
    """Write this process's pid, then burn CPU for ever (only a kill stops it)."""
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.perf_counter()


@task(registry=REGISTRY, process=True)
def exit_now(code: int) -> None:
    os._exit(code)


@task(registry=REGISTRY, process=True)
def segfault() -> None:
    ctypes.string_at(0)


@task(registry=REGISTRY, process=True)
def raises(message: str) -> None:
    raise ValueError(message)


@task(registry=REGISTRY, process=True)
def again() -> None:
    raise Retry(delay=0, message="once more")


@task(registry=REGISTRY)
def threaded_pid() -> int:
    """A plain def task: in a thread, unless the worker runs with ``processes``."""
    return os.getpid()


@task(registry=REGISTRY)
async def async_pid() -> int:
    return os.getpid()
