"""Tasks the end-to-end tests run in real worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from worker import Retry, current_job, task


@task
async def echo(value: Any) -> Any:
    return value


@task
async def nap(seconds: float, value: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return value


@task
def blocking_nap(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


@task
def always_fails(message: str) -> None:
    raise ValueError(message)


@task
async def retry_once(delay: float) -> int:
    """Asks for a retry after ``delay`` on its first attempt; returns its attempt number."""
    attempt = current_job().attempt
    if attempt == 1:
        raise Retry(delay=delay)
    return attempt


@task
async def whoami(value: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), "value": value}


@task
async def unencodable() -> object:
    return object()


@task(name="custom.name", timeout=0.3)
async def sleeps_past_timeout(seconds: float) -> None:
    await asyncio.sleep(seconds)


@task
async def timed_nap(seconds: float) -> list[float]:
    """Sleeps; returns when it really ran, as seen by the worker: [start, end]."""
    start = time.time()
    await asyncio.sleep(seconds)
    return [start, time.time()]


# Gates: a task that waits until the test creates a file, so that a test
# controls when a job ends instead of betting on how long a sleep takes.
GATE_POLL = 0.01


@task
async def gated(gate: str, value: Any = None) -> Any:
    """Returns ``value`` once the file ``gate`` exists."""
    # Another process's file: nothing to await but a look (a stat is not worth a thread).
    while not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(GATE_POLL)
    return value


@task
async def gated_span(gate: str, started: str | None = None) -> list[float]:
    """Waits for the file ``gate``; returns when it really ran, as seen by the worker.

    With ``started``, creates that file once its start is recorded.
    """
    start = time.time()
    if started is not None:
        Path(started).touch()  # noqa: ASYNC240 - a tiny file, once
    await gated(gate)
    return [start, time.time()]


@task
def fails_until(path: str) -> str:  # plain def: runs in a thread
    """Fails while ``path`` does not exist (a failure a person fixes, then retries)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is not there yet")
    return "fixed"
