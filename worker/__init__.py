"""jobwire's worker: ``@task`` to register, :class:`Worker` to serve."""

from broker.handles import TaskRef, task_ref
from worker.registry import AsyncTask, Task, TaskDef, TaskRegistry, default_registry, task
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
    report_progress,
    task_context,
)

__all__ = [
    "AsyncTask",
    "BadPayload",
    "JobInfo",
    "JobTimeout",
    "Retry",
    "Task",
    "TaskDef",
    "TaskRef",
    "TaskRegistry",
    "UnencodableResult",
    "UnknownTask",
    "Worker",
    "WorkerRefused",
    "current_job",
    "default_registry",
    "report_progress",
    "task",
    "task_context",
    "task_ref",
]
