"""Built-in tasks, served when the worker is given no module of its own."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.registry import TaskRegistry

builtin_registry = TaskRegistry()


async def echo(*args: Any, **kwargs: Any) -> Any:
    """Return the arguments: the single positional one, or ``{"args", "kwargs"}``."""
    if len(args) == 1 and not kwargs:
        return args[0]
    if not args and kwargs:
        return kwargs
    return {"args": list(args), "kwargs": kwargs}


async def sleep(seconds: float, result: Any = None) -> Any:
    """Sleep without blocking the loop, then return ``result``."""
    await asyncio.sleep(seconds)
    return result


def fail(message: str = "failed on purpose", error: str = "RuntimeError") -> None:
    """Raise an exception (of a built-in type named by ``error``) with ``message``."""
    exception_type = {"ValueError": ValueError, "KeyError": KeyError, "TypeError": TypeError}
    raise exception_type.get(error, RuntimeError)(message)


def add(a: float, b: float) -> float:
    return a + b


def noop(*args: Any, **kwargs: Any) -> None:
    return None


for _func in (echo, sleep, fail, add, noop):
    builtin_registry.register(_func)
