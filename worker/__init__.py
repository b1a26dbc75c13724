"""jobwire's worker: ``@task`` to register, :class:`Worker` to serve."""

from worker.registry import TaskDef, TaskRegistry, default_registry, task
from worker.retry import Retry
from worker.runtime import (
    BadPayload,
    JobInfo,
    JobTimeout,
    UnencodableResult,
    UnknownTask,
    Worker,
    WorkerRefused,
    current_job,
)

__all__ = [
    "BadPayload",
    "JobInfo",
    "JobTimeout",
    "Retry",
    "TaskDef",
    "TaskRegistry",
    "UnencodableResult",
    "UnknownTask",
    "Worker",
    "WorkerRefused",
    "current_job",
    "default_registry",
    "task",
]
