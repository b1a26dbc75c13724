"""Waiting in tests: on a condition only seen by asking (a broker over the wire, a file)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

WAIT = 30.0
POLL = 0.01


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    """Until ``check()`` holds; raises AssertionError after ``timeout`` seconds.

    Only for what no event announces; the poll interval bounds nothing.
    """
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - nothing to await but the answer
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g}s: {what}") from None


def open_gate(gate: Path) -> None:
    """Let the jobs of ``tests.tasks_e2e.gated`` waiting on ``gate`` finish."""
    gate.touch()
