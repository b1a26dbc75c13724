"""The job record and its states."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protocol.states import JobState

__all__ = ["Job", "JobState", "order_key", "sequence_of"]


# Heap order key = -priority * PRIORITY_STRIDE + sequence: one int compares
# faster than a tuple, and sequences never reach the stride.
PRIORITY_STRIDE = 2**64


def order_key(priority: int, sequence: int) -> int:
    return -priority * PRIORITY_STRIDE + sequence


def sequence_of(key: int) -> int:
    return key % PRIORITY_STRIDE


# Only the last few errors of a job are kept, so a job with a huge
# max_attempts cannot grow without bound.
MAX_ERRORS_KEPT = 25
MAX_ERROR_TYPE = 200
MAX_ERROR_MESSAGE = 2048
# The end of a traceback is where the error is.
MAX_TRACEBACK = 16 * 1024


class ErrorLog(list[dict[str, Any]]):
    """A job's last errors (at most ``MAX_ERRORS_KEPT``) and how many it ever had.

    The count lives here rather than on :class:`Job`: most jobs never fail,
    and a slot on every job would cost every queued job its 8 bytes.
    """

    __slots__ = ("total",)

    def __init__(self, errors: Iterable[dict[str, Any]] = (), total: int | None = None) -> None:
        super().__init__(errors)
        self.total = len(self) if total is None else total


class Job:
    """One job as the broker holds it.

    ``payload`` and ``result`` are the msgpack bytes the peers sent: the
    broker never decodes them. ``attempts`` counts deliveries to a worker;
    the current attempt number is the fencing token a worker's report must
    carry, so a report from an attempt whose lease was lost is ignored.
    """

    __slots__ = (
        "attempts",
        "created_at",
        "depends_on",
        "errors",
        "finished_at",
        "id",
        "key",
        "lease",
        "lease_deadline",
        "max_attempts",
        "owner",
        "payload",
        "priority",
        "progress",
        "queue",
        "result",
        "result_ttl",
        "run_at",
        "started_at",
        "state",
        "task",
        "timeout",
        "unique",
        "watchers",
    )

    def __init__(
        self,
        job_id: str,
        task: str,
        payload: bytes,
        queue: str,
        priority: int,
        key: int,
        max_attempts: int,
        timeout: float | None,
        lease: float,
        created_at: float,
    ) -> None:
        self.id = job_id
        self.task = task
        self.payload = payload
        self.queue = queue
        self.priority = priority
        # Heap order within a queue: higher priority first, then submission order.
        self.key = key
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.lease = lease
        self.created_at = created_at
        self.state = JobState.QUEUED
        self.attempts = 0
        self.run_at = created_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.lease_deadline = 0.0
        self.owner: Any = None
        self.result: bytes | None = None
        # The submit's own result TTL (None: the broker's); 0 drops the
        # outcome once the watchers are told.
        self.result_ttl: float | None = None
        # The latest progress report: [fraction, info (msgpack bytes or None),
        # at, attempt]. Not journaled: it is news, not state.
        self.progress: list[Any] | None = None
        self.errors: ErrorLog | None = None
        # The parents' ids (``depends_on``), or None.
        self.depends_on: tuple[str, ...] | None = None
        # (unique key, held until at least): see broker/manager/unique.py.
        self.unique: tuple[str, float] | None = None
        # Who wants a DONE push when the job finishes: None, one watcher, or a
        # list. Kept on the job, so watching costs no table entry and a
        # watcher that went away is skipped when the job finishes.
        self.watchers: Any = None

    def add_watcher(self, watcher: Any) -> None:
        current = self.watchers
        if current is None:
            self.watchers = watcher
        elif type(current) is list:
            if watcher not in current:
                current.append(watcher)
        elif current is not watcher:
            self.watchers = [current, watcher]

    def take_watchers(self) -> list[Any]:
        current = self.watchers
        self.watchers = None
        if current is None:
            return []
        return current if type(current) is list else [current]

    def add_error(self, error: dict[str, Any]) -> None:
        # Bounded, so STATUS of a job with many attempts still fits in a frame.
        kind = error.get("type")
        if isinstance(kind, str) and len(kind) > MAX_ERROR_TYPE:
            error["type"] = kind[:MAX_ERROR_TYPE]
        message = error.get("message")
        if isinstance(message, str) and len(message) > MAX_ERROR_MESSAGE:
            error["message"] = message[:MAX_ERROR_MESSAGE]
        traceback = error.get("traceback")
        if isinstance(traceback, str) and len(traceback) > MAX_TRACEBACK:
            error["traceback"] = traceback[-MAX_TRACEBACK:]
        errors = self.errors
        if errors is None:
            errors = self.errors = ErrorLog()
        errors.append(error)
        errors.total += 1
        if len(errors) > MAX_ERRORS_KEPT:
            del errors[0]

    @property
    def error_count(self) -> int:
        """Every error the job ever had, kept or not: monotonic, so a journal
        record carrying it can be replayed over any snapshot exactly once."""
        errors = self.errors
        return 0 if errors is None else errors.total

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self.errors[-1] if self.errors else None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.state.value} attempt {self.attempts}>"
