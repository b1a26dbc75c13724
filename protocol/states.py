"""The job-state vocabulary, shared by the broker, the client and the CLI.

The string values are part of the protocol (``STATUS``, ``DONE``, ``STATS``):
never rename one.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    # Submitted with ``depends_on``: waits until every parent has succeeded.
    WAITING = "waiting"
    QUEUED = "queued"
    DELAYED = "delayed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        # Identity, not a set: hashing an enum member runs Python code.
        return self is JobState.SUCCEEDED or self is JobState.FAILED or self is JobState.CANCELLED


# The states a job can still leave: counted per queue in STATS.
UNFINISHED_STATES = (JobState.WAITING, JobState.QUEUED, JobState.DELAYED, JobState.RUNNING)
