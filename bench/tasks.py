"""The tasks the benchmark's workers serve: ``python -m worker bench.tasks``."""

from __future__ import annotations

from typing import Any

from worker import task

NOOP = "noop"


@task
async def noop(payload: Any) -> Any:
    """Return the payload: the cheapest task there is, so the broker path is measured."""
    return payload


CPU = "cpu"
# About 20 ms of pure-Python arithmetic on the reference machine.
CPU_LOOPS = 400_000


@task(name=CPU)
def cpu(loops: int = CPU_LOOPS) -> int:
    """CPU-bound and GIL-bound: threads serialise it, processes run it side by side."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total
