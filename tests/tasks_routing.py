"""A second task set for the routing tests: a worker serving only these, beside one serving
``tests.tasks_e2e`` on the same queue."""

from __future__ import annotations

import os

from worker import task


@task
async def routed_pid(value: int) -> dict[str, int]:
    return {"pid": os.getpid(), "value": value}
