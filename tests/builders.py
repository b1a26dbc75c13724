"""Small builders the unit tests share."""

from __future__ import annotations

from typing import Any

from broker.jobs import Job
from broker.manager import JobManager
from protocol.job_spec import JobSpec


def submit_job(
    manager: JobManager, task: str, payload: bytes, now: float, **options: Any
) -> tuple[Job, bool]:
    """``manager.submit`` with the spec's fields as keywords."""
    return manager.submit(JobSpec(task, payload, **options), now)
