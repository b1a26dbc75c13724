"""The seed's job, as a jobwire task: announce it, work for about a second, return."""

from __future__ import annotations

import asyncio
import os

from worker import task


@task
async def seed_job(n: int) -> int:
    # One write() per line: the workers and the producer share one terminal,
    # and a single small write to it is never interleaved with another's.
    os.write(1, f"Run job: {n}\n".encode())
    await asyncio.sleep(1.0)
    return n * n
