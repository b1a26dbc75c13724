"""Jobs to journal records and back: what each record type holds, and replay.

Records carry the state a change leads to, not a difference, so replaying a
record whose effect a snapshot already holds changes nothing. Errors are the
one list a job accumulates: a ``U`` record carries the job's last error with
the job's total error count (``Job.error_count``, monotonic), and replay adds
the error only if that count is ahead of the job's. So replaying any suffix
of the journal over any snapshot taken after the suffix began gives exactly
the live state. Version 1 records (no count) are still read, deduplicated by
the error's time as before.
"""

from __future__ import annotations

from typing import Any

from broker.jobs import ErrorLog, Job, JobState, make_job, sequence_of
from broker.journal.errors import JournalError

# Record types (the first element of each body).
SUBMITTED = "S"  # a new job, with everything fixed at submit time
CHANGED = "U"  # a job's state after a transition
DELETED = "D"  # a job forgotten (purged, or dropped from the failed or result lists)
RESERVED = "R"  # a job handed to a worker: a short CHANGED for the commonest change
SNAPSHOT_JOB = "J"  # one whole job, in a snapshot
SNAPSHOT_END = "E"  # the last record of a complete snapshot: the job count
SETTING = "K"  # a broker setting (a paused queue, a limit): key and value, nil for removed

# The length of a version 1 snapshot job record, which lacks the error count.
_SNAPSHOT_JOB_V1_LENGTH = 19


def submitted_record(job: Job) -> list[Any]:
    record = [
        SUBMITTED,
        job.id,
        job.task,
        job.payload,
        job.queue,
        job.priority,
        sequence_of(job.key),  # the key itself can pass msgpack's 64 bits
        job.max_attempts,
        job.timeout,
        job.lease,
        job.created_at,
        job.run_at,
    ]
    return record + _trailing_fields(job)


def _trailing_fields(job: Job) -> list[Any]:
    """The optional fields after a job's fixed ones in ``S`` and ``J`` records:
    ``depends_on``, ``[unique_key, held_until]``, ``result_ttl``, each nil when
    unset, and the nils at the end left out (most jobs have none of them)."""
    fields: list[Any] = [
        list(job.depends_on) if job.depends_on else None,
        list(job.unique) if job.unique is not None else None,
        job.result_ttl,
    ]
    while fields and fields[-1] is None:
        fields.pop()
    return fields


def _apply_trailing(job: Job, fields: list[Any]) -> None:
    """Read what :func:`_trailing_fields` wrote (any prefix of it)."""
    if fields[0]:
        job.depends_on = tuple(fields[0])
        job.state = JobState.WAITING
    if len(fields) > 1 and fields[1] is not None:
        key, until = fields[1]
        job.unique = (key, until)
    if len(fields) > 2:
        job.result_ttl = fields[2]


def setting_record(key: str, value: Any) -> list[Any]:
    return [SETTING, key, value]


def reserved_record(job: Job) -> list[Any]:
    return [RESERVED, job.id, job.attempts, job.started_at]


def deleted_record(job_id: str) -> list[Any]:
    return [DELETED, job_id]


def changed_record(job: Job) -> list[Any]:
    return [
        CHANGED,
        job.id,
        job.state.value,
        job.attempts,
        job.run_at,
        job.started_at,
        job.finished_at,
        job.result,
        job.last_error,
        job.error_count,
    ]


def snapshot_record(job: Job) -> list[Any]:
    record = [
        SNAPSHOT_JOB,
        *submitted_record(job)[1:12],
        *changed_record(job)[2:-2],
        list(job.errors or ()),
        job.error_count,
    ]
    return record + _trailing_fields(job)


def _job_from_submitted(fields: list[Any]) -> Job:
    (job_id, task, payload, queue, priority, seq, attempts_max, timeout, lease, created, run_at) = (
        fields[1:12]
    )
    job = make_job(
        job_id, task, payload, queue, priority, seq, attempts_max, timeout, lease, created
    )
    job.run_at = run_at
    job.state = JobState.DELAYED if run_at > created else JobState.QUEUED
    if len(fields) > 12:
        _apply_trailing(job, fields[12:])
    return job


def _apply_change(job: Job, fields: list[Any]) -> None:
    state, attempts, run_at, started_at, finished_at, result, error = fields[:7]
    job.state = JobState(state)
    job.attempts = attempts
    job.run_at = run_at
    job.started_at = started_at
    job.finished_at = finished_at
    job.result = result
    if error is None:
        return
    if len(fields) > 7:
        # The record's error is the job's error number ``count``: new to this
        # job only if the job has fewer (a snapshot may already hold it).
        count = fields[7]
        if count > job.error_count:
            job.add_error(error)
            assert job.errors is not None
            job.errors.total = count
        return
    last = job.last_error  # version 1: the best guess is the error's time
    if last is None or last.get("at") != error.get("at"):
        job.add_error(error)


def replay(
    records: list[list[Any]], jobs: dict[str, Job], settings: dict[str, Any] | None = None
) -> None:
    """Apply journal or snapshot records to ``jobs`` (by id) and ``settings``, in order."""
    for record in records:
        kind = record[0]
        if kind == CHANGED:
            job = jobs.get(record[1])
            if job is not None:  # else: forgotten later, or expired before a snapshot
                _apply_change(job, record[2:])
        elif kind == RESERVED:
            job = jobs.get(record[1])
            if job is not None:
                job.state = JobState.RUNNING
                job.attempts = record[2]
                job.started_at = record[3]
        elif kind == SUBMITTED:
            job = _job_from_submitted(record)
            jobs[job.id] = job
        elif kind == DELETED:
            jobs.pop(record[1], None)
        elif kind == SNAPSHOT_JOB:
            job = _job_from_submitted(record[:12])
            _apply_change(job, [*record[12:18], None])
            errors = record[18]
            total = len(errors) if len(record) == _SNAPSHOT_JOB_V1_LENGTH else record[19]
            job.errors = ErrorLog(errors, total) if errors else None
            if len(record) > 20:
                # After the trailing fields: the state the snapshot holds wins.
                state = job.state
                _apply_trailing(job, record[20:])
                job.state = state
            jobs[job.id] = job
        elif kind == SETTING:
            if settings is not None:
                if record[2] is None:
                    settings.pop(record[1], None)
                else:
                    settings[record[1]] = record[2]
        elif kind == SNAPSHOT_END:
            pass
        else:
            raise JournalError(f"unknown journal record type {kind!r}")
