"""The shapes of what the broker sends about jobs: deliveries, outcomes, descriptions.

Every map the broker builds from a :class:`~broker.jobs.Job` for the wire is
built here, so ``docs/PROTOCOL.md`` has one place to agree with: ``JOBS``
entries (:func:`delivery`), ``DONE`` pushes (:func:`done_message`), and the
job maps of ``STATUS`` and ``FAILED`` replies (:func:`describe_job`,
:func:`status_reply`, :func:`failed_reply`), cut to fit one frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.jobs import Job, JobState
from protocol.framing import encode_frame
from protocol.messages import Op

Message = dict[str, Any]

# The most room a JOBS entry takes around its payload, names counted at their
# UTF-8 worst case of 4 bytes a character.
DELIVERY_OVERHEAD = 64


def delivery(job: Job) -> Message:
    """One entry of a ``JOBS`` push: what a worker needs to run this attempt."""
    kind = job.kind  # what job.task and the others read, once
    return {
        "id": job.id,
        "task": kind.task,
        "payload": job.payload,
        "queue": kind.queue,
        "attempt": job.extras.attempts,
        "max_attempts": kind.max_attempts,
        "lease": kind.lease,
        "timeout": kind.timeout,
    }


def delivery_cost(job: Job) -> int:
    """An upper bound on the bytes :func:`delivery` adds to a frame."""
    kind = job.kind
    return (
        len(job.payload) + DELIVERY_OVERHEAD + 4 * (len(job.id) + len(kind.task) + len(kind.queue))
    )


def done_message(job: Job) -> Message:
    """The ``DONE`` push announcing a finished job's outcome."""
    message: Message = {"op": Op.DONE, "id": job.id, "state": job.state.value}
    if job.state is JobState.SUCCEEDED:
        message["result"] = job.result
    elif job.state is JobState.CANCELLED:
        reason = job.last_error  # set when a parent failed or was cancelled
        if reason is not None and reason.get("type") == "ParentFailed":
            message["error"] = {"type": "ParentFailed", "message": reason["message"]}
        else:
            message["error"] = {"type": "Cancelled", "message": "the job was cancelled"}
    else:
        error = job.last_error
        if error is not None:
            message["error"] = {
                "type": error["type"],
                "message": error["message"],
                "traceback": error.get("traceback") or "",
            }
    return message


def describe_job(job: Job, last_error_only: bool = False) -> Message:
    """The job as ``STATUS`` and ``FAILED`` report it (no payload, no result)."""
    errors: list[dict[str, Any]] = job.errors or []
    described: Message = {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "state": job.state.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "timeout": job.timeout,
        "lease": job.lease,
        "created_at": job.created_at,
        "run_at": job.run_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "errors": errors[-1:] if last_error_only else list(errors),
    }
    if job.depends_on:
        described["depends_on"] = list(job.depends_on)
    return described


def status_reply(job: Job, budget: int) -> Message:
    """``STATUS``'s job map, within ``budget`` encoded bytes.

    Many long errors in non-ASCII text could pass the frame limit: the
    oldest errors go first, and ``errors_left_out`` says how many went.
    """
    described = describe_job(job)
    if job.progress is not None:
        fraction, info, at, attempt = job.progress
        described["progress"] = {"fraction": fraction, "info": info, "at": at, "attempt": attempt}
    errors = described["errors"]
    kept = len(errors)
    while errors and len(encode_frame(described)) > budget:
        del errors[: max(1, len(errors) // 2)]
        described["errors_left_out"] = kept - len(errors)
    return described


def failed_reply(jobs: Iterable[Job], budget: int) -> list[Message]:
    """``FAILED``'s job maps, newest first, as many as fit in ``budget`` encoded bytes."""
    described: list[Message] = []
    for job in jobs:
        entry = describe_job(job, last_error_only=True)
        budget -= len(encode_frame(entry))
        if budget < 0:
            break  # the reply must fit in one frame: the oldest are left out
        described.append(entry)
    return described
