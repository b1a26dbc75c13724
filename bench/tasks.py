"""The tasks the benchmark's workers serve: ``python -m worker bench.tasks``."""

from __future__ import annotations

from typing import Any

from worker import task

NOOP = "noop"


@task
async def noop(payload: Any) -> Any:
    """Return the payload: the cheapest task there is, so the broker path is measured."""
    return payload
