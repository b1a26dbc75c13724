"""A submit's own ``result_ttl``: the manager's retention, the journal, and end to end."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broker import Broker, Client, NotFound
from broker.jobs import Job, JobState
from broker.journal import replay, snapshot_record, submitted_record
from broker.manager import Consumer, JobManager, ManagerConfig
from tests.builders import submit_job
from tests.inprocess import running_broker
from worker import TaskRegistry, Worker

WAIT = 30.0


class Sink:
    def deliver(self, job: Job) -> None:
        pass

    def revoke(self, job: Job) -> None:
        pass


class Journal:
    def __init__(self) -> None:
        self.records: list[list[Any]] = []

    def job_submitted(self, job: Job) -> None:
        self.records.append(submitted_record(job))

    def job_changed(self, job: Job) -> None:
        self.records.append(["U", job.id])

    def job_deleted(self, job_id: str) -> None:
        self.records.append(["D", job_id])

    def job_reserved(self, job: Job) -> None:
        pass

    def setting_changed(self, key: str, value: Any) -> None:
        self.records.append(["K", key, value])


def manager_with(**config: Any) -> tuple[JobManager, Consumer, list[tuple[str, bool]], Journal]:
    """A manager whose ``on_finished`` records (job id, whether the manager still knows it)."""
    told: list[tuple[str, bool]] = []
    manager = JobManager(ManagerConfig(**config), rng=random.Random(0), id_prefix="t")
    manager.on_finished = lambda job: told.append((job.id, job.id in manager.jobs))
    journal = Journal()
    manager.journal = journal
    consumer = Consumer(Sink(), ["default"], "c")
    manager.attach(consumer)
    return manager, consumer, told, journal


def finish(manager: JobManager, consumer: Consumer, now: float, **options: Any) -> Job:
    job, _ = submit_job(manager, "t", b"p", now, **options)
    manager.grant(consumer, 1, now)
    assert manager.ack(consumer, job.id, 1, b"r", now)
    return job


def test_a_zero_ttl_result_is_forgotten_once_the_watchers_are_told() -> None:
    manager, consumer, told, journal = manager_with(result_ttl=100.0)
    job = finish(manager, consumer, 10.0, result_ttl=0)
    assert told == [(job.id, True)]  # on_finished saw it, then it went
    assert manager.get(job.id) is None
    assert journal.records[-1] == ["D", job.id]
    assert manager.counters["expired"] == 1
    kept = finish(manager, consumer, 10.0)  # the broker's TTL: kept
    assert manager.get(kept.id) is kept
    # A cancelled zero-TTL job goes the same way; a failed one stays on the failed list.
    cancelled, _ = submit_job(manager, "t", b"p", 11.0, result_ttl=0)
    assert manager.cancel(cancelled.id, 11.0) is True
    assert manager.get(cancelled.id) is None
    failing, _ = submit_job(manager, "t", b"p", 12.0, result_ttl=0, max_attempts=1)
    manager.grant(consumer, 1, 12.0)
    error = {"type": "E", "message": "m", "traceback": ""}
    assert manager.fail(consumer, failing.id, 1, error, 12.0)
    assert manager.get(failing.id) is failing and failing.state is JobState.FAILED


def test_an_own_ttl_expires_by_itself_and_counts_against_max_results() -> None:
    manager, consumer, _, _ = manager_with(result_ttl=100.0, max_results=3)
    short = finish(manager, consumer, 0.0, result_ttl=5.0)
    default = finish(manager, consumer, 0.0)
    long = finish(manager, consumer, 0.0, result_ttl=500.0)
    assert manager.next_deadline() == 5.0
    manager.tick(5.0)
    assert manager.get(short.id) is None
    assert manager.get(default.id) is default and manager.get(long.id) is long
    manager.tick(100.0)
    assert manager.get(default.id) is None and manager.get(long.id) is long
    # max_results: the broker's FIFO goes first, then the nearest own expiry.
    fifo = finish(manager, consumer, 101.0)
    more = [finish(manager, consumer, 101.0, result_ttl=50.0 + i) for i in range(3)]
    assert manager.get(fifo.id) is None and manager.get(more[0].id) is None
    assert [manager.get(job.id) for job in (long, *more[1:])] == [long, *more[1:]]


def test_the_ttl_survives_the_journal_and_a_snapshot_and_recovery_honours_it() -> None:
    manager, consumer, _, journal = manager_with(result_ttl=100.0)
    job = finish(manager, consumer, 0.0, result_ttl=7.0)
    plain = finish(manager, consumer, 0.0)
    # The third of the optional trailing fields (after depends_on and unique).
    assert submitted_record(job)[12:] == [None, None, 7.0]
    assert len(submitted_record(plain)) == 12
    replayed: dict[str, Job] = {}
    replay([r for r in journal.records if r[0] == "S"], replayed)
    assert replayed[job.id].result_ttl == 7.0 and replayed[plain.id].result_ttl is None
    from_snapshot: dict[str, Job] = {}
    replay([snapshot_record(job), snapshot_record(plain)], from_snapshot)
    assert from_snapshot[job.id].result_ttl == 7.0
    assert from_snapshot[job.id].state is JobState.SUCCEEDED
    # A restart at 5 keeps it; at 8 it is past its own TTL (not the broker's).
    for now, kept in ((5.0, True), (8.0, False)):
        restored = JobManager(ManagerConfig(result_ttl=100.0), id_prefix="r")
        restored.restore([from_snapshot[job.id]], now)
        assert (job.id in restored.jobs) is kept
        from_snapshot = {}
        replay([snapshot_record(job)], from_snapshot)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with running_broker() as broker:
        yield broker


async def test_a_zero_ttl_result_reaches_its_waiter_and_then_is_gone(broker: Broker) -> None:
    registry = TaskRegistry()

    async def double(x: int) -> int:
        return 2 * x

    registry.register(double)
    worker = Worker(broker.address, registry=registry)
    run = asyncio.create_task(worker.run())
    try:
        async with Client(broker.address) as client:
            job = await client.submit("double", [21], result_ttl=0)
            assert await job.result(timeout=WAIT) == 42
            with pytest.raises(NotFound):
                await client.status(job.id)
            kept = await client.submit("double", [1], result_ttl=60)
            assert await kept.result(timeout=WAIT) == 2
            assert (await client.status(kept.id))["state"] == JobState.SUCCEEDED
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, WAIT)
