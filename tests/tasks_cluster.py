"""Tasks the cluster's end-to-end tests run: each run of a job leaves a line in a file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from worker import current_job, task


@task
async def logged_square(value: int, log_dir: str) -> int:
    """``value * value``; notes ``job_id attempt`` in LOG_DIR/<pid>.log when it starts."""
    job = current_job()
    note(Path(log_dir) / f"{os.getpid()}.log", f"{job.id} {job.attempt}\n")
    await asyncio.sleep(0.01)  # work that takes a while, so some runs span a failover
    return value * value


def note(path: Path, line: str) -> None:
    """One line appended (small, and in this test's temporary directory)."""
    with open(path, "a", encoding="ascii") as log:
        log.write(line)
