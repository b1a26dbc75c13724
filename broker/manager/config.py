"""What the manager is configured with and what it talks to.

:class:`ManagerConfig` (limits and defaults), :class:`Consumer` (a worker
connection as the manager sees it) and the two interfaces its effects go
through: a consumer's :class:`Sink` and the :class:`JournalSink`. Also the
small types every concern shares: :class:`QueueCounts` and
:class:`QueueFullError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from broker.jobs import Job

# Idle queues are kept (for stats) while there are at most this many queues.
MAX_QUEUES_KEPT = 1000
# Task and queue names shared between jobs, and tasks with announced
# defaults: at most this many of each.
MAX_INTERNED_NAMES = 10_000


@dataclass(slots=True)
class ManagerConfig:
    result_ttl: float = 3600.0
    # Finished (succeeded or cancelled) jobs kept at most; the oldest go first.
    max_results: int = 1_000_000
    max_attempts: int = 3
    lease: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    max_failed: int = 10_000
    # Most unfinished (queued, delayed, running) jobs held at once; None: no limit.
    max_jobs: int | None = None


class Sink(Protocol):
    """Where a consumer's effects go (the worker's session in the server)."""

    def deliver(self, job: Job) -> None: ...

    def revoke(self, job: Job) -> None: ...


class JournalSink(Protocol):
    """Where the manager records every change that recovery needs (``broker.journal``).

    Called synchronously, after the change, in the order the changes happen.
    """

    def job_submitted(self, job: Job) -> None: ...

    def job_changed(self, job: Job) -> None: ...

    def job_reserved(self, job: Job) -> None:
        """The most frequent change, worth a record of its own: queued to running."""

    def job_deleted(self, job_id: str) -> None: ...

    def setting_changed(self, key: str, value: Any) -> None:
        """A broker setting (a paused queue, a limit) changed; ``None``: removed."""


class Consumer:
    """A worker connection as the manager sees it.

    The queues it serves, the tasks it runs (``tasks``: None for every task,
    else the names it announced), how many more jobs it can take
    (``credit``), and the jobs it holds (``jobs``, by id).
    """

    __slots__ = ("credit", "done", "jobs", "name", "queues", "sink", "tasks", "waiting")

    def __init__(
        self,
        sink: Sink,
        queues: Iterable[str],
        name: str = "",
        tasks: Iterable[str] | None = None,
    ) -> None:
        self.sink = sink
        self.queues = tuple(dict.fromkeys(queues))
        self.name = name
        # Routing by task: None takes every task (a peer that announced no list).
        self.tasks: frozenset[str] | None = frozenset(tasks) if tasks else None
        self.credit = 0
        self.jobs: dict[str, Job] = {}
        # Jobs it reported done (succeeded or failed), for the status page.
        self.done = 0
        # On the dispatcher's waiting lists (it has credit and nothing it may take).
        self.waiting = False

    def __repr__(self) -> str:
        return f"<Consumer {self.name or id(self)} credit={self.credit} jobs={len(self.jobs)}>"


class QueueFullError(Exception):
    """Accepting the jobs would pass ``max_jobs``."""


class QueueCounts:
    """How many jobs of one queue are waiting (for parents), queued, delayed and running."""

    __slots__ = ("delayed", "queued", "running", "waiting")

    def __init__(self) -> None:
        self.waiting = 0
        self.queued = 0
        self.delayed = 0
        self.running = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "waiting": self.waiting,
            "queued": self.queued,
            "delayed": self.delayed,
            "running": self.running,
        }
