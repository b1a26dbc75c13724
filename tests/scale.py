"""A broker state at the status page's stated scale: 1,000 queues and 10,000 failed jobs."""

from __future__ import annotations

from broker.jobs import Job
from broker.manager import Consumer, JobManager
from protocol.job_spec import JobSpec

QUEUES = 1000
FAILED = 10_000
EMPTY_ARGS = b"\x90"


class Collecting:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def deliver(self, job: Job) -> None:
        self.jobs.append(job)

    def revoke(self, job: Job) -> None:
        pass


def fill(manager: JobManager, now: float) -> None:
    """One queued job on each of ``QUEUES`` queues, and ``FAILED`` jobs failed for good."""
    for i in range(QUEUES):
        manager.submit(JobSpec("echo", EMPTY_ARGS, queue=f"q-{i:04d}"), now)
    sink = Collecting()
    consumer = Consumer(sink, ["doomed"], "scale")
    manager.attach(consumer)
    for _ in range(FAILED):
        manager.submit(JobSpec("fail", EMPTY_ARGS, queue="doomed", max_attempts=1), now)
    manager.grant(consumer, FAILED, now)
    for n, job in enumerate(sink.jobs):
        error = {"type": "ValueError", "message": f"failure {n}", "traceback": "Traceback..."}
        manager.fail(consumer, job.id, job.attempts, error, now)
    manager.detach(consumer, now, "done")
