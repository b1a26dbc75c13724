"""What the JSON endpoints and the live-update stream say, read from the broker's state.

Pure functions of a :class:`~broker.state.BrokerState`: no I/O, so the
routes, the event stream and the tests share them. Every list is paged or
bounded (``MAX_PAGE``), so a broker with a thousand queues or ten thousand
failed jobs answers in one small reply.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import msgpack

from broker.jobs import Job
from broker.state import BrokerState
from broker.wire import describe_job

MAX_PAGE = 1000
DEFAULT_PAGE = 50
# A result larger than this is described by its size, not shown.
MAX_RESULT_SHOWN = 64 * 1024
RUNNING_SHOWN = 50
WORKERS_SHOWN = 200


def readiness(state: BrokerState) -> str | None:
    """Why submits would be refused now, or None when they are accepted."""
    if state.shutting_down:
        return "shutting down"
    failure = state.gate.failure
    if failure is not None:
        return failure.describe()
    manager = state.manager
    limit = manager.config.max_jobs
    if limit is not None and manager.unfinished >= limit:
        return f"full: {manager.unfinished} unfinished jobs, the --max-jobs limit is {limit}"
    return None


def page_bounds(query: dict[str, str]) -> tuple[int, int]:
    """``offset`` and ``limit`` from a query string, clamped; ValueError if not integers."""
    offset = max(0, int(query.get("offset", "0")))
    limit = min(MAX_PAGE, max(1, int(query.get("limit", str(DEFAULT_PAGE)))))
    return offset, limit


def summary(state: BrokerState) -> dict[str, Any]:
    """The broker's headline figures (cheap: no per-queue work)."""
    manager = state.manager
    counters = manager.counters
    workers = clients = 0
    for session in state.sessions:
        if session.is_worker:
            workers += 1
        elif session.is_client:
            clients += 1
    failure = state.gate.failure
    return {
        **counters,
        "unfinished": manager.unfinished,
        "running": manager.running,
        "failed_list": manager.failed_count,
        "queues": len(manager.queues),
        "workers": workers,
        "clients": clients,
        "uptime": time.time() - state.started_at,
        "storage_ok": failure is None,
        "storage_failure": None if failure is None else failure.describe(),
        "not_ready": readiness(state),
    }


def queue_rows(state: BrokerState, name_filter: str = "") -> list[dict[str, Any]]:
    """Every live queue, by name, with its counts and its finished total."""
    manager = state.manager
    metrics = manager.metrics
    rows: list[dict[str, Any]] = []
    for name in sorted(manager.queues):
        if name_filter and name_filter not in name:
            continue
        counts = manager.queues[name]
        measured = metrics.get(name)
        rows.append(
            {
                "name": name,
                "waiting": counts.waiting,
                "queued": counts.queued,
                "delayed": counts.delayed,
                "running": counts.running,
                "submitted": 0 if measured is None else measured.submitted,
                "succeeded": 0 if measured is None else measured.succeeded,
                "failed": 0 if measured is None else measured.failed,
                "finished": 0 if measured is None else measured.finished,
            }
        )
    return rows


def queues_page(state: BrokerState, query: dict[str, str]) -> dict[str, Any]:
    offset, limit = page_bounds(query)
    rows = queue_rows(state, query.get("q", ""))
    return {"total": len(rows), "offset": offset, "queues": rows[offset : offset + limit]}


def workers(state: BrokerState, limit: int = WORKERS_SHOWN) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    total = 0
    for session in state.sessions:
        worker = session.worker
        if worker is None:
            continue
        total += 1
        if len(rows) >= limit:
            continue
        consumer = worker.consumer
        rows.append(
            {
                "name": session.name,
                "address": session.peer,
                "queues": list(consumer.queues),
                "credit": consumer.credit,
                "busy": len(consumer.jobs),
                "connected_at": session.connected_at,
                "done": consumer.done,
            }
        )
    rows.sort(key=lambda row: row["connected_at"])
    return {"total": total, "workers": rows}


def running(state: BrokerState, limit: int = RUNNING_SHOWN) -> dict[str, Any]:
    """The longest-running jobs first, with their age in seconds."""
    now = time.time()
    manager = state.manager
    jobs = (job for consumer in manager.consumers for job in consumer.jobs.values())
    oldest = heapq.nsmallest(limit, jobs, key=lambda job: job.started_at or now)
    return {
        "total": manager.running,
        "jobs": [
            {
                "id": job.id,
                "task": job.task,
                "queue": job.queue,
                "attempt": job.attempts,
                "worker": getattr(job.owner, "name", "") or "",
                "age": now - (job.started_at or now),
            }
            for job in oldest
        ],
    }


def failed_page(state: BrokerState, query: dict[str, str]) -> dict[str, Any]:
    """A page of the failed list, newest first, each with its last error and traceback."""
    offset, limit = page_bounds(query)
    manager = state.manager
    jobs = manager.failed_jobs(limit, offset)
    return {
        "total": manager.failed_count,
        "offset": offset,
        "jobs": [describe_job(job, last_error_only=True) for job in jobs],
    }


def job_detail(job: Job) -> dict[str, Any]:
    """A job as the lookup box shows it: its description and its result, if it has one."""
    described = describe_job(job)
    result = job.result
    if result is not None:
        described["result_bytes"] = len(result)
        if len(result) <= MAX_RESULT_SHOWN:
            try:
                # msgpack only, no extension types: decoding cannot run code.
                described["result"] = msgpack.unpackb(result, raw=False, strict_map_key=False)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                described["result_undecodable"] = True
    return described


def snapshot(state: BrokerState) -> dict[str, Any]:
    """What each live-update event carries: enough to redraw the page without asking."""
    return {
        "t": time.time(),
        "summary": summary(state),
        "queues": queue_rows(state)[:MAX_PAGE],
        "workers": workers(state),
        "running": running(state),
    }
