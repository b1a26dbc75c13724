"""A task with a schedule, for the periodic-jobs test: every worker importing this
module announces it, and the broker fires it once a second."""

from __future__ import annotations

from worker import current_job, task


@task(every=1, args=["tick"])
async def heartbeat_job(value: str) -> str:
    return f"{value} {current_job().id}"
