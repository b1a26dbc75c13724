"""The job record and its states.

Shaped for memory: a broker may hold millions of queued jobs, and a queued
job is only its id, its payload, its place in line, its watcher and a few
shared objects. :class:`Job` has eight slots: the options that jobs of one
task usually share (task, queue, ``max_attempts``, ``timeout``, ``lease``)
are one shared, interned :class:`JobKind`; the priority is read back from
the order key; and every field that is unset while a job waits in its queue
for its first attempt (``attempts``, the attempt's owner and times, the
result, errors, progress, ``depends_on``, ``unique``, ``result_ttl``, a
``run_at`` other than ``created_at``) lives in a :class:`JobExtras` that the
job gets the first time one of them is set to another value than its default.
Until then ``job.extras`` is the shared, never written :data:`NO_EXTRAS`, so
reading any of them needs no check (a property whose getter is an
``attrgetter``). ``job.task`` and the others are properties too, which cost
a call: the manager's hot paths (``_make_ready``, ``_reserve``, ``ack``,
``_finish``) and ``wire.delivery`` use ``job.kind`` and ``job.extras`` directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from protocol.states import JobState

__all__ = [
    "NO_EXTRAS",
    "Job",
    "JobExtras",
    "JobKind",
    "JobState",
    "job_kind",
    "make_job",
    "order_key",
    "sequence_of",
]


# Heap order key = -priority * PRIORITY_STRIDE + sequence: one int compares
# faster than a tuple, and sequences never reach the stride. ``key >>
# PRIORITY_SHIFT`` is ``-priority``.
PRIORITY_SHIFT = 64
PRIORITY_STRIDE = 1 << PRIORITY_SHIFT


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
# Distinct kinds kept for sharing; past that, each new kind is the job's own.
MAX_KINDS = 10_000


class ErrorLog(list[dict[str, Any]]):
    """A job's last errors (at most ``MAX_ERRORS_KEPT``) and how many it ever had.

    The count lives here rather than on :class:`Job`: most jobs never fail,
    and a field on every job would cost every queued job its 8 bytes.
    """

    __slots__ = ("total",)

    def __init__(self, errors: Iterable[dict[str, Any]] = (), total: int | None = None) -> None:
        super().__init__(errors)
        self.total = len(self) if total is None else total


class JobKind:
    """The options a job shares with every job of the same task and settings.

    Immutable and interned (:func:`job_kind`): a million jobs of one task
    hold one of these. ``timeout`` and ``lease`` are floats, whatever
    number type they came as.
    """

    __slots__ = ("lease", "max_attempts", "queue", "task", "timeout")

    def __init__(
        self, task: str, queue: str, max_attempts: int, timeout: float | None, lease: float
    ) -> None:
        self.task = task
        self.queue = queue
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.lease = lease

    def __repr__(self) -> str:
        return (
            f"<JobKind {self.task} {self.queue} max_attempts={self.max_attempts}"
            f" timeout={self.timeout} lease={self.lease}>"
        )


_kinds: dict[tuple[str, str, int, float | None, float], JobKind] = {}


def job_kind(
    task: str, queue: str, max_attempts: int, timeout: float | None, lease: float
) -> JobKind:
    """The shared :class:`JobKind` of these options (at most ``MAX_KINDS`` are kept)."""
    key = (task, queue, max_attempts, timeout, lease)
    kind = _kinds.get(key)
    if kind is None:
        kind = JobKind(
            task, queue, max_attempts, None if timeout is None else float(timeout), float(lease)
        )
        if len(_kinds) < MAX_KINDS:
            _kinds[key] = kind
    return kind


class JobExtras:
    """The fields of a job that are unset while it waits in its queue.

    ``run_at`` None means the job's ``created_at``. Read and written through
    :class:`Job`'s properties of the same names, or directly on the hot paths.
    """

    __slots__ = (
        "attempts",
        "depends_on",
        "errors",
        "finished_at",
        "lease_deadline",
        "owner",
        "progress",
        "result",
        "result_ttl",
        "run_at",
        "started_at",
        "unique",
    )

    def __init__(self) -> None:
        # Deliveries to a worker so far: the attempt running is the fencing token.
        self.attempts = 0
        self.run_at: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.lease_deadline = 0.0
        # The consumer holding the running attempt.
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


class _NoExtras(JobExtras):
    """:data:`NO_EXTRAS`: all defaults, and a write is a bug (it would reach every job)."""

    __slots__ = ()

    def __init__(self) -> None:
        defaults = JobExtras()
        for name in JobExtras.__slots__:
            object.__setattr__(self, name, getattr(defaults, name))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"NO_EXTRAS is shared: {name} must be set on a job's own extras")


# The extras of every job that has none of its own.
NO_EXTRAS: JobExtras = _NoExtras()


if TYPE_CHECKING:
    T = TypeVar("T")

    class _Read(Generic[T]):
        """How mypy sees a field of :class:`Job` read from its kind."""

        @overload
        def __get__(self, job: None, owner: type[Any]) -> _Read[T]: ...
        @overload
        def __get__(self, job: Job, owner: type[Any]) -> T: ...
        def __get__(self, job: Job | None, owner: type[Any]) -> T | _Read[T]: ...

    class _Field(_Read[T]):
        """How mypy sees a field of :class:`Job` kept in its extras."""

        def __set__(self, job: Job, value: T) -> None: ...


def _of_kind(name: str) -> Any:
    return property(attrgetter(f"kind.{name}"), doc=f"The job's {name} (shared: see JobKind).")


def _extra(name: str) -> Any:
    set_slot = getattr(JobExtras, name).__set__
    default = getattr(JobExtras(), name)

    def set_extra(job: Job, value: Any) -> None:
        extras = job.extras
        if extras is NO_EXTRAS:
            if value is default or (default is not None and value == default):
                return  # what it reads already: no extras needed
            extras = job.extras = JobExtras()
        set_slot(extras, value)

    return property(attrgetter(f"extras.{name}"), set_extra, doc=f"See JobExtras.{name}.")


class Job:
    """One job as the broker holds it.

    ``payload`` and ``result`` are the msgpack bytes the peers sent: the
    broker never decodes them. ``attempts`` counts deliveries to a worker;
    the current attempt number is the fencing token a worker's report must
    carry, so a report from an attempt whose lease was lost is ignored.
    """

    __slots__ = ("created_at", "extras", "id", "key", "kind", "payload", "state", "watchers")

    task: _Read[str] = _of_kind("task")
    queue: _Read[str] = _of_kind("queue")
    max_attempts: _Read[int] = _of_kind("max_attempts")
    timeout: _Read[float | None] = _of_kind("timeout")
    lease: _Read[float] = _of_kind("lease")

    started_at: _Field[float | None] = _extra("started_at")
    finished_at: _Field[float | None] = _extra("finished_at")
    lease_deadline: _Field[float] = _extra("lease_deadline")
    owner: _Field[Any] = _extra("owner")
    result: _Field[bytes | None] = _extra("result")
    result_ttl: _Field[float | None] = _extra("result_ttl")
    progress: _Field[list[Any] | None] = _extra("progress")
    errors: _Field[ErrorLog | None] = _extra("errors")
    depends_on: _Field[tuple[str, ...] | None] = _extra("depends_on")
    unique: _Field[tuple[str, float] | None] = _extra("unique")
    attempts: _Field[int] = _extra("attempts")

    def __init__(
        self, job_id: str, kind: JobKind, payload: bytes, key: int, created_at: float
    ) -> None:
        self.id = job_id
        self.kind = kind
        self.payload = payload
        # Heap order within a queue: higher priority first, then submission
        # order (see order_key); the priority is read back from it.
        self.key = key
        self.created_at = created_at
        self.state = JobState.QUEUED
        self.extras = NO_EXTRAS
        # Who wants a DONE push when the job finishes: None, one watcher, or a
        # list. Kept on the job, so watching costs no table entry and a
        # watcher that went away is skipped when the job finishes. A slot of
        # the job's own, not an extra: producers watch their jobs by default.
        self.watchers: Any = None

    @property
    def priority(self) -> int:
        return -(self.key >> PRIORITY_SHIFT)

    @property
    def run_at(self) -> float:
        """When the job became (or becomes) ready: ``created_at`` unless delayed or requeued."""
        run_at = self.extras.run_at
        return self.created_at if run_at is None else run_at

    @run_at.setter
    def run_at(self, value: float) -> None:
        extras = self.extras
        if extras is NO_EXTRAS:
            if value == self.created_at:
                return
            extras = self.extras = JobExtras()
        extras.run_at = value

    def own_extras(self) -> JobExtras:
        """The job's own :class:`JobExtras`, made now if it had none (to write its slots)."""
        extras = self.extras
        if extras is NO_EXTRAS:
            extras = self.extras = JobExtras()
        return extras

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
        extras = self.own_extras()
        errors = extras.errors
        if errors is None:
            errors = extras.errors = ErrorLog()
        errors.append(error)
        errors.total += 1
        if len(errors) > MAX_ERRORS_KEPT:
            del errors[0]

    @property
    def error_count(self) -> int:
        """Every error the job ever had, kept or not: monotonic, so a journal
        record carrying it can be replayed over any snapshot exactly once."""
        errors = self.extras.errors
        return 0 if errors is None else errors.total

    @property
    def last_error(self) -> dict[str, Any] | None:
        errors = self.extras.errors
        return errors[-1] if errors else None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.state.value} attempt {self.attempts}>"


def make_job(
    job_id: str,
    task: str,
    payload: bytes,
    queue: str,
    priority: int,
    sequence: int,
    max_attempts: int,
    timeout: float | None,
    lease: float,
    created_at: float,
) -> Job:
    """A queued job from its fields one by one (the manager's submit resolves the kind itself)."""
    key = order_key(priority, sequence) if priority else sequence
    return Job(
        job_id, job_kind(task, queue, max_attempts, timeout, lease), payload, key, created_at
    )
