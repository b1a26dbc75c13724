"""Unit tests for the broker's synchronous state core: JobManager and Job.

Every transition is driven with plain calls and an explicit ``now``; the
consumers' effects are recorded by :class:`RecordingSink` and the finished
jobs by the ``on_finished`` callback.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.jobs import MAX_ERRORS_KEPT, Job, JobState, make_job
from broker.manager import (
    MAX_INTERNED_NAMES,
    Consumer,
    JobManager,
    ManagerConfig,
    QueueFullError,
    Schedule,
    UnknownParentError,
)
from broker.wire import describe_job
from tests.builders import submit_job

QUEUED = JobState.QUEUED
DELAYED = JobState.DELAYED
RUNNING = JobState.RUNNING
SUCCEEDED = JobState.SUCCEEDED
FAILED = JobState.FAILED
CANCELLED = JobState.CANCELLED

ERROR: dict[str, Any] = {"type": "ValueError", "message": "boom", "traceback": "tb"}


# -- helpers ------------------------------------------------------------------------


class RecordingSink:
    """A consumer's sink that records every delivery and revocation."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, int]] = []
        self.queues: list[str] = []  # the queue of each delivery
        self.revoked: list[tuple[str, int]] = []
        # (run_at, started_at) of the job at the moment of each delivery.
        self.delivered_at: list[tuple[float, float | None]] = []

    def deliver(self, job: Job) -> None:
        assert job.state is RUNNING
        self.deliveries.append((job.id, job.attempts))
        self.queues.append(job.queue)
        self.delivered_at.append((job.run_at, job.started_at))

    def revoke(self, job: Job) -> None:
        self.revoked.append((job.id, job.attempts))

    @property
    def ids(self) -> list[str]:
        return [job_id for job_id, _ in self.deliveries]


class Harness:
    """A manager with a fixed rng and id prefix, recording ``on_finished``."""

    def __init__(self, **config: Any) -> None:
        self.finished: list[Job] = []
        self.manager = JobManager(
            ManagerConfig(**config),
            on_finished=self.finished.append,
            rng=random.Random(0),
            id_prefix="t",
        )

    def consumer(
        self, *queues: str, name: str = "", tasks: tuple[str, ...] | None = None
    ) -> tuple[Consumer, RecordingSink]:
        sink = RecordingSink()
        consumer = Consumer(sink, queues or ("default",), name=name, tasks=tasks)
        self.manager.attach(consumer)
        return consumer, sink

    def submit(self, now: float = 0.0, task: str = "task", **options: Any) -> Job:
        job, created = submit_job(self.manager, task, b"payload", now, **options)
        assert created
        return job

    def advance(self, now: float) -> None:
        """Run every timer due by ``now``, leases included, as the server's timer does."""
        self.manager.tick(now)
        self.manager.expire_leases(now)

    def counts(self, queue: str = "default") -> tuple[int, int, int]:
        """(queued, delayed, running) of one queue."""
        counts = self.manager.queues[queue]
        return counts.queued, counts.delayed, counts.running

    def snapshot(self) -> dict[str, Any]:
        """Everything observable that a refused or idempotent call must leave alone."""
        manager = self.manager
        return {
            "jobs": dict(manager.jobs),
            "states": {
                job_id: (job.state, job.attempts, job.run_at, job.owner)
                for job_id, job in manager.jobs.items()
            },
            "unfinished": manager.unfinished,
            "counters": dict(manager.counters),
            "queues": {name: counts.as_dict() for name, counts in manager.queues.items()},
            "failed": [job.id for job in manager.failed_jobs()],
            "finished": list(self.finished),
        }


def running_one(
    harness: Harness, now: float = 0.0, **options: Any
) -> tuple[Job, Consumer, RecordingSink]:
    """Submit a job and deliver it to a fresh consumer."""
    job = harness.submit(now, **options)
    consumer, sink = harness.consumer(job.queue)
    harness.manager.grant(consumer, 1, now)
    assert sink.deliveries == [(job.id, 1)]
    return job, consumer, sink


def failed_one(harness: Harness, now: float = 0.0, **options: Any) -> Job:
    """A job that failed its only attempt."""
    job, consumer, _ = running_one(harness, now, max_attempts=1, **options)
    assert harness.manager.fail(consumer, job.id, 1, ERROR, now)
    assert job.state is FAILED
    return job


# -- Job and JobState ---------------------------------------------------------------


def test_job_state_finished() -> None:
    assert {state for state in JobState if state.finished} == {SUCCEEDED, FAILED, CANCELLED}
    assert not QUEUED.finished
    assert not DELAYED.finished
    assert not RUNNING.finished


def test_new_job_fields_and_describe() -> None:
    job = make_job("j1", "add", b"\x01", "q", 3, 17, 4, 2.5, 30.0, 100.0)
    assert job.state is QUEUED
    assert job.attempts == 0
    assert job.run_at == 100.0
    assert job.started_at is None
    assert job.finished_at is None
    assert job.owner is None
    assert job.result is None
    assert job.errors is None
    assert job.last_error is None
    assert describe_job(job) == {
        "id": "j1",
        "task": "add",
        "queue": "q",
        "state": "queued",
        "priority": 3,
        "attempts": 0,
        "max_attempts": 4,
        "timeout": 2.5,
        "lease": 30.0,
        "created_at": 100.0,
        "run_at": 100.0,
        "started_at": None,
        "finished_at": None,
        "errors": [],
    }
    assert repr(job) == "<Job j1 add queued attempt 0>"


def test_job_errors_keep_only_the_last_few() -> None:
    job = make_job("j1", "add", b"", "q", 0, 1, 100, None, 30.0, 0.0)
    for attempt in range(1, MAX_ERRORS_KEPT + 6):
        job.add_error({"attempt": attempt})
        assert job.last_error == {"attempt": attempt}
    assert job.errors is not None
    assert len(job.errors) == MAX_ERRORS_KEPT
    assert job.errors[0] == {"attempt": 6}
    described = describe_job(job)["errors"]
    assert described == job.errors
    assert described is not job.errors


def test_consumer_dedupes_queues_in_order() -> None:
    consumer = Consumer(RecordingSink(), ["b", "a", "b"], name="w1")
    assert consumer.queues == ("b", "a")
    assert consumer.credit == 0
    assert consumer.jobs == {}
    assert repr(consumer) == "<Consumer w1 credit=0 jobs=0>"


# -- submit -------------------------------------------------------------------------


def test_submit_queues_the_job() -> None:
    h = Harness()
    job, created = submit_job(h.manager, "add", b"args", 12.5)
    assert created
    assert job.id == "t-1"
    assert job.task == "add"
    assert job.payload == b"args"
    assert job.queue == "default"
    assert job.priority == 0
    assert job.state is QUEUED
    assert job.attempts == 0
    assert job.max_attempts == 3
    assert job.lease == 60.0
    assert job.timeout is None
    assert job.created_at == 12.5
    assert job.run_at == 12.5
    assert h.manager.get(job.id) is job
    assert h.manager.jobs == {job.id: job}
    assert h.counts() == (1, 0, 0)
    assert h.manager.unfinished == 1
    assert h.manager.counters["submitted"] == 1
    assert h.finished == []


def test_submit_options_are_kept() -> None:
    h = Harness()
    job = h.submit(
        1.0, queue="emails", priority=-4, max_attempts=7, timeout=9.5, lease=11.0, job_id="mine"
    )
    assert job.id == "mine"
    assert job.queue == "emails"
    assert job.priority == -4
    assert job.max_attempts == 7
    assert job.timeout == 9.5
    assert job.lease == 11.0
    assert h.counts("emails") == (1, 0, 0)
    assert "default" not in h.manager.queues


def test_submitted_ids_are_unique() -> None:
    h = Harness()
    jobs = [h.submit(float(i), queue=f"q{i % 3}") for i in range(200)]
    ids = [job.id for job in jobs]
    assert len(set(ids)) == 200
    assert all(h.manager.jobs[job.id] is job for job in jobs)
    assert h.manager.unfinished == 200
    assert h.manager.counters["submitted"] == 200


def test_generated_ids_never_collide_with_client_chosen_ids() -> None:
    h = Harness()
    mine = h.submit(job_id="t-2")
    first = h.submit()
    second = h.submit()
    assert len({mine.id, first.id, second.id}) == 3
    assert h.manager.get("t-2") is mine
    assert len(h.manager.jobs) == h.manager.unfinished == 3


@pytest.mark.parametrize("state", list(JobState))
def test_submit_with_a_known_id_returns_the_existing_job(state: JobState) -> None:
    h = Harness(max_attempts=1)
    parent = h.submit(0.0, task="parent", queue="parents")  # nobody takes it: it stays queued
    consumer, _ = h.consumer()
    job, created = submit_job(
        h.manager,
        "task",
        b"first",
        0.0,
        job_id="fixed",
        delay=5.0 if state is DELAYED else 0.0,
        depends_on=(parent.id,) if state is JobState.WAITING else None,
    )
    assert created
    if state in (RUNNING, SUCCEEDED, FAILED):
        h.manager.grant(consumer, 1, 0.0)
    if state is SUCCEEDED:
        assert h.manager.ack(consumer, "fixed", 1, b"ok", 1.0)
    elif state is FAILED:
        assert h.manager.fail(consumer, "fixed", 1, ERROR, 1.0)
    elif state is CANCELLED:
        assert h.manager.cancel("fixed", 1.0)
    assert job.state is state
    before = h.snapshot()

    again, created = submit_job(
        h.manager, "other", b"second", 2.0, job_id="fixed", queue="elsewhere", priority=9, delay=3.0
    )

    assert again is job
    assert not created
    assert job.state is state
    assert job.task == "task"
    assert job.payload == b"first"
    assert job.queue == "default"
    assert h.snapshot() == before
    assert "elsewhere" not in h.manager.queues


@pytest.mark.parametrize("finish", ["ack", "cancel"])
def test_a_finished_id_is_new_again_once_its_result_expires(finish: str) -> None:
    h = Harness(result_ttl=10.0)
    job, consumer, _ = running_one(h, job_id="fixed")
    if finish == "ack":
        assert h.manager.ack(consumer, "fixed", 1, b"ok", 1.0)
    else:
        assert h.manager.cancel("fixed", 1.0)

    h.manager.tick(10.9)
    assert submit_job(h.manager, "task", b"", 10.9, job_id="fixed") == (job, False)

    h.manager.tick(11.0)
    assert h.manager.get("fixed") is None
    fresh, created = submit_job(h.manager, "task", b"again", 11.0, job_id="fixed")
    assert created
    assert fresh is not job
    assert fresh.state is QUEUED
    assert h.manager.get("fixed") is fresh
    assert h.manager.counters["submitted"] == 2
    assert h.manager.unfinished == 1
    h.manager.tick(1000.0)
    assert h.manager.get("fixed") is fresh


def test_submit_past_max_jobs_is_refused_and_changes_nothing() -> None:
    h = Harness(max_jobs=2)
    first = h.submit()
    h.submit(delay=5.0)
    before = h.snapshot()

    with pytest.raises(QueueFullError):
        submit_job(h.manager, "task", b"", 1.0, queue="new")
    with pytest.raises(QueueFullError):
        submit_job(h.manager, "task", b"", 1.0, job_id="brand-new")

    assert h.snapshot() == before
    assert "new" not in h.manager.queues
    assert h.manager.get("brand-new") is None
    # A known id is still answered while the broker is full.
    assert submit_job(h.manager, "task", b"", 1.0, job_id=first.id) == (first, False)
    # Running jobs count too.
    consumer, _ = h.consumer()
    h.manager.grant(consumer, 1, 1.0)
    assert first.state is RUNNING
    with pytest.raises(QueueFullError):
        submit_job(h.manager, "task", b"", 1.0)
    # A finished job makes room.
    assert h.manager.ack(consumer, first.id, 1, b"", 2.0)
    _, created = submit_job(h.manager, "task", b"", 2.0)
    assert created
    assert h.manager.unfinished == 2
    with pytest.raises(QueueFullError):
        h.manager.check_capacity(1)
    h.manager.check_capacity(0)


# -- priority and order -------------------------------------------------------------


def test_higher_priority_first_then_fifo_across_many_jobs() -> None:
    h = Harness()
    picker = random.Random(1)
    priorities = [picker.choice([-3, 0, 0, 1, 7]) for _ in range(60)]
    jobs = [h.submit(float(i), priority=p) for i, p in enumerate(priorities)]
    expected = [jobs[i].id for i in sorted(range(60), key=lambda i: (-priorities[i], i))]
    consumer, sink = h.consumer()

    for chunk in (1, 4, 10, 45):
        h.manager.grant(consumer, chunk, 100.0)
        assert len(sink.deliveries) == len(consumer.jobs)

    assert sink.ids == expected
    assert all(attempt == 1 for _, attempt in sink.deliveries)
    assert h.counts() == (0, 0, 60)
    assert consumer.credit == 0


def test_a_later_higher_priority_job_overtakes_queued_ones() -> None:
    h = Harness()
    low = [h.submit(float(i)) for i in range(3)]
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 1, 5.0)
    urgent = h.submit(6.0, priority=1)
    h.manager.grant(consumer, 3, 7.0)
    assert sink.ids == [low[0].id, urgent.id, low[1].id, low[2].id]


def test_consumer_of_two_queues_takes_best_priority_then_submission_order() -> None:
    h = Harness()
    picker = random.Random(2)
    specs = [(picker.choice(["a", "b"]), picker.choice([0, 1, 2])) for _ in range(40)]
    jobs = [h.submit(float(i), queue=q, priority=p) for i, (q, p) in enumerate(specs)]
    expected = [jobs[i].id for i in sorted(range(40), key=lambda i: (-specs[i][1], i))]
    # The order the queues are listed in does not matter.
    consumer, sink = h.consumer("b", "a")
    for _ in range(40):
        h.manager.grant(consumer, 1, 50.0)
    assert sink.ids == expected
    assert h.counts("a")[2] + h.counts("b")[2] == 40


def test_consumer_of_two_queues_fifo_across_queues_at_equal_priority() -> None:
    h = Harness()
    order = [h.submit(float(i), queue="ab"[i % 2]) for i in range(6)]
    consumer, sink = h.consumer("a", "b")
    h.manager.grant(consumer, 6, 10.0)
    assert sink.ids == [job.id for job in order]


def test_consumer_only_takes_jobs_of_its_queues() -> None:
    h = Harness()
    other = h.submit(queue="other")
    consumer, sink = h.consumer("mine")
    h.manager.grant(consumer, 2, 1.0)
    assert sink.deliveries == []
    assert other.state is QUEUED
    mine = h.submit(2.0, queue="mine")
    assert sink.ids == [mine.id]
    h.submit(3.0, queue="other")
    assert sink.ids == [mine.id]
    assert consumer.credit == 1
    assert h.counts("other") == (2, 0, 0)


# -- delay ----------------------------------------------------------------------------


def test_delayed_job_waits_for_its_time_then_goes_to_a_waiting_consumer() -> None:
    h = Harness()
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 1, 100.0)
    job = h.submit(100.0, delay=5.0)
    assert job.state is DELAYED
    assert job.run_at == 105.0
    assert h.counts() == (0, 1, 0)
    assert h.manager.unfinished == 1
    assert sink.deliveries == []
    assert h.manager.next_deadline() == 105.0
    h.manager.grant(consumer, 1, 101.0)
    assert sink.deliveries == []

    h.manager.tick(104.999)
    assert job.state is DELAYED
    assert sink.deliveries == []

    h.manager.tick(105.0)
    assert sink.deliveries == [(job.id, 1)]
    assert job.state is RUNNING
    assert job.owner is consumer
    assert job.started_at == 105.0
    assert job.lease_deadline == 105.0 + 60.0
    assert h.counts() == (0, 0, 1)
    assert consumer.credit == 1
    assert h.manager.next_deadline() == 165.0


def test_delayed_job_without_a_consumer_becomes_queued() -> None:
    h = Harness()
    late = h.submit(0.0, delay=10.0)
    early = h.submit(0.0, delay=2.0)
    assert h.manager.next_deadline() == 2.0
    h.manager.tick(2.0)
    assert early.state is QUEUED
    assert late.state is DELAYED
    assert h.counts() == (1, 1, 0)
    assert h.manager.next_deadline() == 10.0
    h.manager.tick(50.0)
    assert late.state is QUEUED
    assert h.counts() == (2, 0, 0)
    assert h.manager.next_deadline() is None
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 2, 51.0)
    # Both are ready now: the order they became ready in decides.
    assert sink.ids == [early.id, late.id]


def test_next_deadline_is_none_when_nothing_is_due() -> None:
    assert Harness().manager.next_deadline() is None


# -- credit ---------------------------------------------------------------------------


def test_consumer_never_gets_more_jobs_than_its_credit() -> None:
    h = Harness()
    jobs = [h.submit(float(i)) for i in range(5)]
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 3, 10.0)
    assert sink.ids == [job.id for job in jobs[:3]]
    assert consumer.credit == 0
    assert h.counts() == (2, 0, 3)
    h.submit(11.0)
    assert len(sink.deliveries) == 3
    h.manager.grant(consumer, 1, 12.0)
    assert sink.ids == [job.id for job in jobs[:4]]
    assert set(consumer.jobs) == {job.id for job in jobs[:4]}
    assert h.counts() == (2, 0, 4)


def test_job_submitted_while_a_consumer_waits_is_delivered_at_once() -> None:
    h = Harness()
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 2, 0.0)
    assert consumer.credit == 2
    first = h.submit(1.0)
    assert sink.deliveries == [(first.id, 1)]
    assert first.state is RUNNING
    assert first.started_at == 1.0
    assert consumer.credit == 1
    second = h.submit(2.0)
    third = h.submit(3.0)
    assert sink.ids == [first.id, second.id]
    assert third.state is QUEUED
    assert consumer.credit == 0
    assert h.counts() == (1, 0, 2)


def test_credit_granted_in_several_calls_adds_up() -> None:
    h = Harness()
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 1, 0.0)
    h.manager.grant(consumer, 2, 0.0)
    assert consumer.credit == 3
    for i in range(4):
        h.submit(float(i))
    assert len(sink.deliveries) == 3
    assert h.counts() == (1, 0, 3)


def test_round_robin_between_waiting_consumers() -> None:
    h = Harness()
    first, first_sink = h.consumer(name="first")
    second, second_sink = h.consumer(name="second")
    h.manager.grant(first, 2, 0.0)
    h.manager.grant(second, 2, 0.0)
    jobs = [h.submit(float(i)) for i in range(5)]
    assert first_sink.ids == [jobs[0].id, jobs[2].id]
    assert second_sink.ids == [jobs[1].id, jobs[3].id]
    assert jobs[4].state is QUEUED
    assert first.credit == second.credit == 0
    assert h.counts() == (1, 0, 4)


def test_quiet_stops_deliveries_until_credit_is_granted_again() -> None:
    h = Harness()
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 5, 0.0)
    h.manager.quiet(consumer)
    assert consumer.credit == 0
    job = h.submit(1.0)
    assert sink.deliveries == []
    assert job.state is QUEUED
    h.manager.grant(consumer, 1, 2.0)
    assert sink.deliveries == [(job.id, 1)]
    assert consumer.credit == 0


def test_quiet_keeps_held_jobs() -> None:
    h = Harness()
    job, consumer, _ = running_one(h)
    h.manager.quiet(consumer)
    assert consumer.jobs == {job.id: job}
    assert job.state is RUNNING
    assert h.manager.ack(consumer, job.id, 1, b"", 1.0)


# -- pausing dispatch ------------------------------------------------------------------


def test_paused_dispatch_hands_out_nothing_until_resumed() -> None:
    h = Harness()
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 2, 0.0)
    assert not h.manager.dispatch_paused
    h.manager.pause_dispatch()
    assert h.manager.dispatch_paused

    low = h.submit(1.0)
    high = h.submit(2.0, priority=5)
    delayed = h.submit(2.0, delay=1.0)
    h.manager.grant(consumer, 1, 2.5)
    h.manager.tick(3.0)
    assert sink.deliveries == []
    assert (low.state, high.state, delayed.state) == (QUEUED, QUEUED, QUEUED)
    assert consumer.credit == 3
    assert h.counts() == (3, 0, 0)

    h.manager.resume_dispatch(4.0)
    assert not h.manager.dispatch_paused
    assert sink.ids == [high.id, low.id, delayed.id]
    assert all(job.started_at == 4.0 for job in (low, high, delayed))
    assert consumer.credit == 0
    assert h.counts() == (0, 0, 3)


def test_resume_feeds_every_waiting_consumer_within_its_credit() -> None:
    h = Harness()
    only_a, sink_a = h.consumer("a", name="a")
    both, sink_both = h.consumer("a", "b", name="both")
    only_c, sink_c = h.consumer("c", name="c")
    h.manager.grant(only_a, 1, 0.0)
    h.manager.grant(both, 5, 0.0)
    h.manager.grant(only_c, 2, 0.0)
    h.manager.pause_dispatch()
    jobs_a = [h.submit(1.0, queue="a") for _ in range(3)]
    job_b = h.submit(1.0, queue="b")

    h.manager.resume_dispatch(2.0)

    assert sink_a.ids == [jobs_a[0].id]
    assert sink_both.ids == [jobs_a[1].id, jobs_a[2].id, job_b.id]
    assert sink_c.ids == []
    assert (only_a.credit, both.credit, only_c.credit) == (0, 2, 2)
    # A consumer whose credit ran out waits no more; the others still do.
    later = h.submit(3.0, queue="a")
    assert later.owner is both
    assert only_a.credit == 0
    assert h.submit(3.0, queue="c").owner is only_c


def test_everything_but_dispatch_goes_on_while_paused() -> None:
    h = Harness(lease=10.0)
    acked, worker, worker_sink = running_one(h, 0.0)
    failed = h.submit(0.0)
    released = h.submit(0.0)
    lost = h.submit(0.0)
    cancelled = h.submit(0.0)
    h.manager.grant(worker, 4, 0.0)
    waiting, waiting_sink = h.consumer()
    h.manager.grant(waiting, 3, 0.0)
    h.manager.pause_dispatch()

    assert h.manager.ack(worker, acked.id, 1, b"ok", 1.0)
    assert acked.state is SUCCEEDED
    assert h.manager.fail(worker, failed.id, 1, ERROR, 1.0, retry_in=0.0)
    assert h.manager.release(worker, released.id, 1, 1.0)
    assert h.manager.heartbeat(worker, [lost.id, cancelled.id], 5.0) == 2
    assert h.manager.cancel(cancelled.id, 6.0)
    assert worker_sink.revoked == [(cancelled.id, 1)]
    assert h.manager.expire_leases(15.0) == 1
    assert worker_sink.revoked == [(cancelled.id, 1), (lost.id, 1)]
    assert (failed.state, released.state, lost.state) == (QUEUED, QUEUED, QUEUED)
    assert waiting_sink.deliveries == []
    assert waiting.credit == 3

    h.manager.resume_dispatch(16.0)
    # Each went back to the front of the queue: the last one back comes first.
    assert waiting_sink.ids == [lost.id, released.id, failed.id]
    assert waiting.credit == 0


def test_quiet_or_detached_consumers_get_nothing_on_resume() -> None:
    h = Harness()
    quiet, quiet_sink = h.consumer()
    gone, gone_sink = h.consumer()
    h.manager.grant(quiet, 2, 0.0)
    h.manager.grant(gone, 2, 0.0)
    h.manager.pause_dispatch()
    job = h.submit(1.0)
    h.manager.quiet(quiet)
    h.manager.detach(gone, 1.0, "gone")
    h.manager.resume_dispatch(2.0)
    assert quiet_sink.deliveries == gone_sink.deliveries == []
    assert job.state is QUEUED
    fresh, fresh_sink = h.consumer()
    h.manager.grant(fresh, 1, 3.0)
    assert fresh_sink.ids == [job.id]


def test_pause_and_resume_are_idempotent() -> None:
    h = Harness()
    consumer, sink = h.consumer()
    h.manager.resume_dispatch(0.0)  # not paused: nothing to do
    h.manager.pause_dispatch()
    h.manager.pause_dispatch()
    job = h.submit(1.0)
    h.manager.grant(consumer, 1, 1.0)
    assert sink.deliveries == []
    h.manager.resume_dispatch(2.0)
    h.manager.resume_dispatch(3.0)
    assert sink.deliveries == [(job.id, 1)]
    assert job.started_at == 2.0
    assert consumer.credit == 0


def test_a_job_that_pauses_dispatch_while_delivered_stops_the_feed() -> None:
    """Storage can fail while a delivery is recorded; the server then pauses at once."""
    h = Harness()
    jobs = [h.submit(float(i)) for i in range(3)]
    consumer, sink = h.consumer()

    class PausingJournal:
        def job_submitted(self, job: Job) -> None:
            pass

        def job_changed(self, job: Job) -> None:
            pass

        def job_reserved(self, job: Job) -> None:
            h.manager.pause_dispatch()

        def job_deleted(self, job_id: str) -> None:
            pass

        def setting_changed(self, key: str, value: Any) -> None:
            pass

    h.manager.journal = PausingJournal()
    h.manager.grant(consumer, 3, 5.0)
    assert sink.ids == [jobs[0].id]
    assert consumer.credit == 2
    h.manager.journal = None
    h.manager.resume_dispatch(6.0)
    assert sink.ids == [job.id for job in jobs]


# -- ack --------------------------------------------------------------------------------


def test_ack_succeeds_the_job() -> None:
    h = Harness()
    job, consumer, _ = running_one(h, 0.0)
    assert h.manager.ack(consumer, job.id, 1, b"result", 3.0)
    assert job.state is SUCCEEDED
    assert job.result == b"result"
    assert job.finished_at == 3.0
    assert job.owner is None
    assert job.attempts == 1
    assert consumer.jobs == {}
    assert h.counts() == (0, 0, 0)
    assert h.manager.unfinished == 0
    assert h.manager.counters["succeeded"] == 1
    assert h.manager.counters["late_reports"] == 0
    assert h.finished == [job]
    assert h.manager.failed_jobs() == []


def test_ack_with_a_wrong_attempt_is_ignored() -> None:
    h = Harness()
    job, consumer, _ = running_one(h)
    for attempt in (0, 2):
        assert not h.manager.ack(consumer, job.id, attempt, b"bad", 1.0)
    assert h.manager.counters["late_reports"] == 2
    assert job.state is RUNNING
    assert job.result is None
    assert consumer.jobs == {job.id: job}
    assert h.finished == []

    assert h.manager.ack(consumer, job.id, 1, b"good", 2.0)
    # A repeated ack, a later fail or release change nothing.
    assert not h.manager.ack(consumer, job.id, 1, b"again", 3.0)
    assert not h.manager.fail(consumer, job.id, 1, ERROR, 3.0)
    assert not h.manager.release(consumer, job.id, 1, 3.0)
    assert h.manager.counters["late_reports"] == 5
    assert job.state is SUCCEEDED
    assert job.result == b"good"
    assert job.finished_at == 2.0
    assert job.errors is None
    assert h.finished == [job]
    assert h.manager.counters["succeeded"] == 1


def test_ack_from_another_consumer_is_ignored() -> None:
    h = Harness()
    job, owner, _ = running_one(h)
    stranger, _ = h.consumer()
    assert not h.manager.ack(stranger, job.id, 1, b"theirs", 1.0)
    assert not h.manager.fail(stranger, job.id, 1, ERROR, 1.0)
    assert not h.manager.release(stranger, job.id, 1, 1.0)
    assert h.manager.counters["late_reports"] == 3
    assert job.state is RUNNING
    assert job.owner is owner
    assert h.counts() == (0, 0, 1)
    assert h.manager.ack(owner, job.id, 1, b"mine", 2.0)
    assert job.result == b"mine"


def test_report_for_an_unknown_job_is_ignored() -> None:
    h = Harness()
    consumer, _ = h.consumer()
    assert not h.manager.ack(consumer, "nope", 1, b"", 0.0)
    assert h.manager.counters["late_reports"] == 1
    assert h.manager.jobs == {}


def test_late_ack_after_the_lease_was_lost_never_overwrites_the_outcome() -> None:
    h = Harness(lease=10.0)
    job, first, _ = running_one(h, 0.0)
    h.advance(10.0)
    second, _ = h.consumer()
    h.manager.grant(second, 1, 11.0)
    assert job.attempts == 2
    # The first worker finally answers, for attempt 1: ignored.
    assert not h.manager.ack(first, job.id, 1, b"stale", 12.0)
    assert job.state is RUNNING
    assert job.owner is second
    assert h.manager.fail(second, job.id, 2, ERROR, 13.0, retry_in=0.0)
    assert not h.manager.ack(first, job.id, 1, b"stale", 14.0)
    assert job.result is None
    assert h.manager.counters["late_reports"] == 2


# -- fail --------------------------------------------------------------------------------


def test_fail_with_attempts_left_delays_with_exponential_jittered_backoff() -> None:
    base, cap, max_attempts = 2.0, 5.0, 6
    h = Harness(backoff_base=base, backoff_cap=cap, max_attempts=max_attempts)
    job = h.submit(0.0)
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 1, 0.0)
    now = 0.0
    for attempt in range(1, max_attempts):
        assert sink.deliveries[-1] == (job.id, attempt)
        now += 1.0
        assert h.manager.fail(consumer, job.id, attempt, ERROR, now)
        assert job.state is DELAYED
        assert job.attempts == attempt
        assert job.owner is None
        assert consumer.jobs == {}
        assert h.counts() == (0, 1, 0)
        assert h.manager.unfinished == 1
        assert h.manager.counters["retried"] == attempt
        ceiling = min(cap, base * 2 ** (attempt - 1))
        assert 0.5 * ceiling <= job.run_at - now <= ceiling
        assert h.manager.next_deadline() == job.run_at
        h.manager.grant(consumer, 1, now)
        assert len(sink.deliveries) == attempt
        now = job.run_at
        h.manager.tick(now)
        assert job.state is RUNNING
    assert h.finished == []
    assert h.manager.fail(consumer, job.id, max_attempts, ERROR, now + 1.0)
    assert job.state is FAILED
    assert job.errors is not None
    assert [error["attempt"] for error in job.errors] == list(range(1, max_attempts + 1))
    assert h.finished == [job]


def test_backoff_bounds_and_cap() -> None:
    h = Harness(backoff_base=0.5, backoff_cap=40.0)
    for attempts in range(1, 80):
        ceiling = min(40.0, 0.5 * 2 ** (attempts - 1))
        for _ in range(20):
            assert 0.5 * ceiling <= h.manager.backoff(attempts) <= ceiling
    # A huge attempt number neither overflows nor passes the cap.
    assert 20.0 <= h.manager.backoff(10**6) <= 40.0


def test_fail_keeps_the_error_and_does_not_mutate_it() -> None:
    h = Harness()
    job, consumer, _ = running_one(h)
    error = dict(ERROR)
    assert h.manager.fail(consumer, job.id, 1, error, 7.0)
    assert error == ERROR
    assert job.errors == [dict(ERROR, attempt=1, at=7.0)]
    assert job.last_error == dict(ERROR, attempt=1, at=7.0)


def test_retry_in_overrides_the_backoff() -> None:
    h = Harness(backoff_base=100.0)
    job, consumer, _ = running_one(h)
    assert h.manager.fail(consumer, job.id, 1, ERROR, 10.0, retry_in=7.5)
    assert job.state is DELAYED
    assert job.run_at == 17.5
    assert h.manager.counters["retried"] == 1


def test_retry_in_zero_queues_the_job_at_once() -> None:
    h = Harness()
    job, consumer, sink = running_one(h)
    assert h.manager.fail(consumer, job.id, 1, ERROR, 10.0, retry_in=0.0)
    assert job.state is QUEUED
    assert h.counts() == (1, 0, 0)
    assert h.manager.counters["retried"] == 1
    other, other_sink = h.consumer()
    h.manager.grant(other, 1, 11.0)
    assert other_sink.deliveries == [(job.id, 2)]
    assert h.counts() == (0, 0, 1)
    # Straight to a consumer that is waiting.
    h.manager.grant(consumer, 1, 12.0)
    assert h.manager.fail(other, job.id, 2, ERROR, 13.0, retry_in=0.0)
    assert sink.deliveries == [(job.id, 1), (job.id, 3)]
    assert job.owner is consumer


def test_fail_on_the_last_attempt_fails_the_job() -> None:
    h = Harness(max_attempts=3)
    job = h.submit(0.0)
    consumer, _ = h.consumer()
    for attempt in (1, 2, 3):
        h.manager.grant(consumer, 1, float(attempt))
        assert job.attempts == attempt
        # retry_in is no way around max_attempts.
        assert h.manager.fail(consumer, job.id, attempt, ERROR, float(attempt), retry_in=0.0)
    assert job.state is FAILED
    assert job.finished_at == 3.0
    assert job.errors is not None
    assert len(job.errors) == 3
    assert [(e["attempt"], e["at"]) for e in job.errors] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert h.manager.failed_jobs() == [job]
    assert h.manager.counters["failed"] == 1
    assert h.manager.counters["retried"] == 2
    assert h.manager.unfinished == 0
    assert h.counts() == (0, 0, 0)
    assert h.finished == [job]
    assert consumer.jobs == {}


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
def test_per_job_max_attempts(max_attempts: int) -> None:
    h = Harness(max_attempts=3)
    job = h.submit(max_attempts=max_attempts)
    assert job.max_attempts == max_attempts
    consumer, _ = h.consumer()
    for attempt in range(1, max_attempts + 1):
        assert job.state is QUEUED
        h.manager.grant(consumer, 1, 0.0)
        assert h.manager.fail(consumer, job.id, attempt, ERROR, 0.0, retry_in=0.0)
    assert job.state is FAILED
    assert job.errors is not None
    assert len(job.errors) == max_attempts
    assert h.manager.counters["retried"] == max_attempts - 1


# -- release ------------------------------------------------------------------------------


def test_release_puts_the_job_back_without_counting_the_attempt() -> None:
    h = Harness()
    job, consumer, _ = running_one(h, 0.0)
    later = h.submit(1.0)
    assert not h.manager.release(consumer, job.id, 2, 2.0)
    assert h.manager.counters["late_reports"] == 1
    assert h.manager.release(consumer, job.id, 1, 2.0)
    assert job.state is QUEUED
    assert job.attempts == 0
    assert job.owner is None
    assert consumer.jobs == {}
    assert h.counts() == (2, 0, 0)
    assert h.manager.unfinished == 2
    assert h.finished == []
    assert h.manager.counters["retried"] == 0
    assert h.manager.counters["requeued"] == 0
    # It keeps its place ahead of the job submitted after it.
    other, other_sink = h.consumer()
    h.manager.grant(other, 2, 3.0)
    assert other_sink.deliveries == [(job.id, 1), (later.id, 1)]


def test_released_job_goes_straight_to_a_waiting_consumer() -> None:
    h = Harness()
    job, consumer, _ = running_one(h)
    waiting, waiting_sink = h.consumer()
    h.manager.grant(waiting, 1, 0.0)
    assert h.manager.release(consumer, job.id, 1, 1.0)
    assert waiting_sink.deliveries == [(job.id, 1)]
    assert job.owner is waiting
    assert h.counts() == (0, 0, 1)


# -- leases -------------------------------------------------------------------------------


def test_expired_lease_requeues_the_job_and_revokes_it() -> None:
    h = Harness(lease=10.0)
    job, first, first_sink = running_one(h, 0.0)
    assert job.lease_deadline == 10.0
    assert h.manager.next_deadline() == 10.0

    h.advance(9.99)
    assert job.state is RUNNING
    assert first_sink.revoked == []

    h.advance(10.0)
    assert first_sink.revoked == [(job.id, 1)]
    assert job.state is QUEUED
    assert job.attempts == 1
    assert job.owner is None
    assert first.jobs == {}
    assert h.counts() == (1, 0, 0)
    assert h.manager.unfinished == 1
    assert h.manager.counters["requeued"] == 1
    assert h.finished == []

    second, second_sink = h.consumer()
    h.manager.grant(second, 1, 11.0)
    assert second_sink.deliveries == [(job.id, 2)]
    assert job.lease_deadline == 21.0
    h.advance(20.0)
    assert first_sink.revoked == [(job.id, 1)]
    assert second_sink.revoked == []


def test_expired_lease_hands_the_job_to_a_waiting_consumer() -> None:
    h = Harness(lease=10.0)
    job, _, first_sink = running_one(h, 0.0)
    waiting, waiting_sink = h.consumer()
    h.manager.grant(waiting, 1, 0.0)
    h.advance(10.0)
    assert first_sink.revoked == [(job.id, 1)]
    assert waiting_sink.deliveries == [(job.id, 2)]
    assert job.owner is waiting
    assert h.counts() == (0, 0, 1)


def test_per_job_lease() -> None:
    h = Harness(lease=100.0)
    job, _, sink = running_one(h, 0.0, lease=3.0)
    assert job.lease_deadline == 3.0
    h.advance(3.0)
    assert sink.revoked == [(job.id, 1)]


def test_heartbeat_renews_the_lease() -> None:
    h = Harness(lease=10.0)
    job, consumer, sink = running_one(h, 0.0)
    stranger, _ = h.consumer()
    assert h.manager.heartbeat(stranger, [job.id], 5.0) == 0
    assert job.lease_deadline == 10.0
    assert h.manager.heartbeat(consumer, [job.id, "unknown"], 6.0) == 1
    assert job.lease_deadline == 16.0

    h.advance(10.0)
    assert job.state is RUNNING
    assert sink.revoked == []
    assert h.manager.next_deadline() == 16.0
    h.advance(15.9)
    assert job.state is RUNNING

    h.advance(16.0)
    assert sink.revoked == [(job.id, 1)]
    assert job.state is QUEUED


def test_lease_lost_on_the_last_attempt_fails_the_job() -> None:
    h = Harness(lease=10.0, max_attempts=2)
    job, consumer, sink = running_one(h, 0.0)
    h.advance(10.0)
    h.manager.grant(consumer, 1, 10.0)
    assert sink.deliveries == [(job.id, 1), (job.id, 2)]
    h.advance(20.0)
    assert sink.revoked == [(job.id, 1), (job.id, 2)]
    assert job.state is FAILED
    assert job.finished_at == 20.0
    assert job.last_error is not None
    assert job.last_error["type"] == "JobLost"
    assert job.last_error["attempt"] == 2
    assert job.last_error["at"] == 20.0
    assert "lease" in job.last_error["message"]
    assert h.manager.failed_jobs() == [job]
    assert h.manager.counters["failed"] == 1
    assert h.manager.unfinished == 0
    assert h.counts() == (0, 0, 0)
    assert consumer.jobs == {}
    assert h.finished == [job]


def test_tick_leaves_leases_to_expire_leases() -> None:
    h = Harness(lease=10.0)
    job, consumer, sink = running_one(h, 0.0)
    assert h.manager.next_deadline() == 10.0
    assert h.manager.next_lease_deadline() == 10.0

    h.manager.tick(50.0)
    assert job.state is RUNNING
    assert job.owner is consumer
    assert sink.revoked == []
    assert h.manager.next_deadline() == 10.0

    assert h.manager.expire_leases(9.99) == 0
    assert job.state is RUNNING
    assert h.manager.expire_leases(50.0) == 1
    assert sink.revoked == [(job.id, 1)]
    assert job.state is QUEUED
    assert h.manager.counters["requeued"] == 1
    assert h.manager.expire_leases(50.0) == 0
    assert h.manager.next_lease_deadline() is None


def test_expire_leases_runs_no_other_timer() -> None:
    h = Harness(lease=10.0, result_ttl=5.0)
    done, consumer, _ = running_one(h, 0.0)
    assert h.manager.ack(consumer, done.id, 1, b"", 1.0)
    delayed = h.submit(0.0, delay=3.0)
    held, _, sink = running_one(h, 0.0)
    assert h.manager.expire_leases(100.0) == 1
    assert sink.revoked == [(held.id, 1)]
    assert delayed.state is DELAYED
    assert h.manager.get(done.id) is done
    h.manager.tick(100.0)
    assert delayed.state is QUEUED
    assert h.manager.get(done.id) is None


def test_expire_leases_counts_requeued_and_failed_jobs() -> None:
    h = Harness(lease=10.0)
    last = h.submit(0.0, max_attempts=1)
    more = h.submit(0.0, max_attempts=2)
    renewed = h.submit(0.0)
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 3, 0.0)
    assert h.manager.heartbeat(consumer, [renewed.id], 5.0) == 1
    assert h.manager.expire_leases(10.0) == 2
    assert sorted(sink.revoked) == sorted([(last.id, 1), (more.id, 1)])
    assert last.state is FAILED
    assert more.state is QUEUED
    assert renewed.state is RUNNING
    assert h.manager.next_lease_deadline() == 15.0


def test_next_lease_deadline_skips_leases_that_ended_or_were_renewed() -> None:
    h = Harness(lease=10.0)
    assert h.manager.next_lease_deadline() is None
    first = h.submit(0.0)
    second = h.submit(0.0)
    consumer, _ = h.consumer()
    h.manager.grant(consumer, 1, 0.0)
    h.manager.grant(consumer, 1, 4.0)
    assert (first.lease_deadline, second.lease_deadline) == (10.0, 14.0)
    assert h.manager.next_lease_deadline() == 10.0
    # Renewed: the next deadline is the other job's.
    assert h.manager.heartbeat(consumer, [first.id], 6.0) == 1
    assert h.manager.next_lease_deadline() == 14.0
    # Ended: none is left, though stale timer entries still wake next_deadline.
    assert h.manager.ack(consumer, second.id, 1, b"", 7.0)
    assert h.manager.next_lease_deadline() == 16.0
    assert h.manager.ack(consumer, first.id, 1, b"", 8.0)
    assert h.manager.next_lease_deadline() is None
    assert h.manager.expire_leases(1000.0) == 0


def test_extend_leases_moves_every_running_deadline() -> None:
    h = Harness(lease=10.0)
    first, consumer, sink = running_one(h, 0.0)
    second = h.submit(5.0)
    h.manager.grant(consumer, 1, 5.0)
    other, other_sink = h.consumer()
    third = h.submit(7.0)
    h.manager.grant(other, 1, 7.0)
    assert third.owner is other
    queued = h.submit(7.0)
    delayed = h.submit(6.0, delay=20.0)

    assert h.manager.extend_leases(30.0) == 3
    assert (first.lease_deadline, second.lease_deadline, third.lease_deadline) == (
        40.0,
        45.0,
        47.0,
    )
    assert queued.state is QUEUED
    assert delayed.run_at == 26.0
    assert h.manager.next_lease_deadline() == 40.0
    assert h.manager.expire_leases(39.9) == 0
    assert h.manager.expire_leases(45.0) == 2
    assert sink.revoked == [(first.id, 1), (second.id, 1)]
    assert other_sink.revoked == []
    assert third.state is RUNNING
    assert h.manager.next_lease_deadline() == 47.0


def test_a_heartbeat_right_after_an_extension_keeps_the_extended_deadline() -> None:
    # Found by test_random_operations_keep_the_invariants: the heartbeat set the
    # deadline back to now + lease, under the lease heap's entry, so the job
    # was neither held past its deadline nor expired at it.
    h = Harness(lease=10.0)
    job, consumer, sink = running_one(h, 0.0)
    assert h.manager.extend_leases(2.5) == 1
    assert h.manager.heartbeat(consumer, [job.id], 0.0) == 1
    assert job.lease_deadline == 12.5
    assert h.manager.expire_leases(10.0) == 0
    assert h.manager.heartbeat(consumer, [job.id], 5.0) == 1
    assert job.lease_deadline == 15.0
    assert h.manager.expire_leases(15.0) == 1
    assert sink.revoked == [(job.id, 1)]


def test_extend_leases_by_nothing_or_with_nothing_running() -> None:
    h = Harness(lease=10.0)
    assert h.manager.extend_leases(5.0) == 0
    job, _, _ = running_one(h, 0.0)
    assert h.manager.extend_leases(0.0) == 0
    assert job.lease_deadline == 10.0
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            h.manager.extend_leases(bad)
    assert job.lease_deadline == 10.0


def test_a_stalled_broker_blames_no_worker() -> None:
    """What the server does after its own stall: extend, read the sockets, then expire."""
    h = Harness(lease=10.0)
    job, consumer, sink = running_one(h, 0.0)
    # The worker heartbeat at 8; the broker was frozen from 5 to 30 and did not read it.
    stalled = 25.0
    h.manager.tick(30.0)
    next_lease = h.manager.next_lease_deadline()
    assert next_lease is not None and next_lease <= 30.0
    assert h.manager.extend_leases(stalled) == 1
    assert h.manager.heartbeat(consumer, [job.id], 30.0) == 1  # read in the I/O poll
    assert h.manager.expire_leases(30.0) == 0
    assert sink.revoked == []
    assert job.state is RUNNING
    assert h.manager.next_lease_deadline() == 40.0


# -- detach -------------------------------------------------------------------------------


def test_detach_puts_every_held_job_back_at_once() -> None:
    h = Harness()
    jobs = [h.submit(float(i)) for i in range(3)]
    gone, gone_sink = h.consumer()
    h.manager.grant(gone, 5, 10.0)
    assert gone.credit == 2
    assert h.counts() == (0, 0, 3)

    h.manager.detach(gone, 11.0, "connection closed")

    assert gone not in h.manager.consumers
    assert gone.jobs == {}
    assert gone.credit == 0
    assert all(job.state is QUEUED and job.attempts == 1 for job in jobs)
    assert all(job.owner is None for job in jobs)
    assert h.counts() == (3, 0, 0)
    assert h.manager.counters["requeued"] == 3
    assert h.manager.unfinished == 3
    assert gone_sink.revoked == []
    # It no longer waits for jobs.
    late = h.submit(12.0)
    assert late.state is QUEUED
    assert len(gone_sink.deliveries) == 3

    other, other_sink = h.consumer()
    h.manager.grant(other, 4, 13.0)
    assert other_sink.deliveries == [(job.id, 2) for job in jobs] + [(late.id, 1)]


def test_detach_hands_jobs_to_waiting_consumers() -> None:
    h = Harness()
    job, gone, _ = running_one(h)
    waiting, waiting_sink = h.consumer()
    h.manager.grant(waiting, 1, 0.0)
    h.manager.detach(gone, 1.0, "gone")
    assert waiting_sink.deliveries == [(job.id, 2)]
    assert h.counts() == (0, 0, 1)


def test_detach_fails_jobs_on_their_last_attempt() -> None:
    h = Harness()
    last = h.submit(0.0, max_attempts=1)
    more = h.submit(0.0, max_attempts=2)
    gone, _ = h.consumer()
    h.manager.grant(gone, 2, 0.0)
    h.manager.detach(gone, 5.0, "worker connection closed")
    assert last.state is FAILED
    assert last.finished_at == 5.0
    assert last.last_error is not None
    assert last.last_error["type"] == "JobLost"
    assert last.last_error["attempt"] == 1
    assert "worker connection closed" in last.last_error["message"]
    assert more.state is QUEUED
    assert h.manager.failed_jobs() == [last]
    assert h.finished == [last]
    assert h.counts() == (1, 0, 0)
    assert h.manager.unfinished == 1


def test_stale_lease_after_detach_does_not_revoke_the_new_attempt() -> None:
    h = Harness(lease=10.0)
    job, gone, gone_sink = running_one(h, 0.0)
    h.manager.detach(gone, 5.0, "gone")
    other, other_sink = h.consumer()
    h.manager.grant(other, 1, 5.0)
    h.advance(10.0)
    assert gone_sink.revoked == other_sink.revoked == []
    assert job.owner is other
    h.advance(15.0)
    assert other_sink.revoked == [(job.id, 2)]


# -- cancel -------------------------------------------------------------------------------


def test_cancel_a_queued_job_and_skip_its_heap_entry() -> None:
    h = Harness()
    first = h.submit(0.0, priority=5)
    second = h.submit(0.0)
    assert h.manager.cancel(first.id, 1.0) is True
    assert first.state is CANCELLED
    assert first.finished_at == 1.0
    assert h.counts() == (1, 0, 0)
    assert h.manager.unfinished == 1
    assert h.manager.counters["cancelled"] == 1
    assert h.finished == [first]

    consumer, sink = h.consumer()
    h.manager.grant(consumer, 2, 2.0)
    assert sink.ids == [second.id]
    assert consumer.credit == 1
    assert first.state is CANCELLED
    assert h.counts() == (0, 0, 1)
    # And the consumer still waits: the next job goes straight to it.
    third = h.submit(3.0)
    assert sink.ids == [second.id, third.id]


def test_cancel_a_delayed_job() -> None:
    h = Harness()
    job = h.submit(0.0, delay=5.0)
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 1, 0.0)
    assert h.manager.cancel(job.id, 1.0) is True
    assert job.state is CANCELLED
    assert h.counts() == (0, 0, 0)
    assert h.manager.unfinished == 0
    assert h.finished == [job]
    h.manager.tick(10.0)
    assert sink.deliveries == []
    assert job.state is CANCELLED
    assert consumer.credit == 1


def test_cancel_a_running_job_revokes_it() -> None:
    h = Harness(lease=10.0)
    job, consumer, sink = running_one(h, 0.0)
    assert h.manager.cancel(job.id, 2.0) is True
    assert sink.revoked == [(job.id, 1)]
    assert job.state is CANCELLED
    assert job.owner is None
    assert consumer.jobs == {}
    assert h.counts() == (0, 0, 0)
    assert h.manager.unfinished == 0
    assert h.manager.counters["cancelled"] == 1
    assert h.finished == [job]
    # The worker's late answer and the old lease change nothing.
    assert not h.manager.ack(consumer, job.id, 1, b"", 3.0)
    h.manager.tick(10.0)
    assert sink.revoked == [(job.id, 1)]
    assert job.state is CANCELLED
    assert job.result is None


def test_cancel_finished_or_unknown_jobs() -> None:
    h = Harness()
    done, consumer, _ = running_one(h)
    assert h.manager.ack(consumer, done.id, 1, b"", 1.0)
    failed = failed_one(h, 1.0)
    cancelled = h.submit(1.0)
    assert h.manager.cancel(cancelled.id, 1.0)
    before = h.snapshot()
    for job in (done, failed, cancelled):
        assert h.manager.cancel(job.id, 2.0) is False
    assert h.manager.cancel("unknown", 2.0) is None
    assert h.snapshot() == before
    assert done.state is SUCCEEDED
    assert failed.state is FAILED


# -- results TTL and the failed list -------------------------------------------------


def test_result_ttl_drops_succeeded_and_cancelled_jobs_but_keeps_failed_ones() -> None:
    h = Harness(result_ttl=100.0)
    done, consumer, _ = running_one(h, 0.0)
    assert h.manager.ack(consumer, done.id, 1, b"", 10.0)
    cancelled = h.submit(15.0)
    assert h.manager.cancel(cancelled.id, 20.0)
    failed = failed_one(h, 30.0)
    # The stale lease entries of the finished jobs come first, then the results.
    assert h.manager.next_deadline() == 60.0
    h.advance(90.0)
    assert set(h.manager.jobs) == {done.id, cancelled.id, failed.id}
    assert h.manager.next_deadline() == 110.0

    h.advance(109.9)
    assert set(h.manager.jobs) == {done.id, cancelled.id, failed.id}
    h.advance(110.0)
    assert h.manager.get(done.id) is None
    assert h.manager.get(cancelled.id) is cancelled
    assert h.manager.counters["expired"] == 1
    h.advance(120.0)
    assert h.manager.get(cancelled.id) is None
    assert h.manager.counters["expired"] == 2
    h.advance(10_000.0)
    assert h.manager.jobs == {failed.id: failed}
    assert h.manager.failed_jobs() == [failed]
    assert h.manager.counters["expired"] == 2
    assert h.manager.next_deadline() is None


def test_max_failed_drops_the_oldest_failed_job() -> None:
    h = Harness(max_failed=2)
    jobs = [failed_one(h, float(i)) for i in range(3)]
    assert h.manager.failed_jobs() == [jobs[2], jobs[1]]
    assert h.manager.failed_jobs(limit=1) == [jobs[2]]
    assert h.manager.get(jobs[0].id) is None
    assert h.manager.get(jobs[1].id) is jobs[1]
    assert h.manager.counters["failed"] == 3
    assert h.manager.stats()["failed_list"] == 2
    assert h.finished == jobs


def test_failed_jobs_newest_first_with_limit() -> None:
    h = Harness()
    jobs = [failed_one(h, float(i)) for i in range(4)]
    assert h.manager.failed_jobs() == jobs[::-1]
    assert h.manager.failed_jobs(2) == [jobs[3], jobs[2]]
    assert h.manager.failed_jobs(0) == []


def test_retry_failed_by_ids() -> None:
    h = Harness()
    first = failed_one(h, 0.0)
    second = failed_one(h, 1.0)
    done, consumer, _ = running_one(h, 2.0)
    assert h.manager.ack(consumer, done.id, 1, b"", 2.0)

    assert h.manager.retry_failed([first.id, "unknown", done.id], 5.0) == 1
    assert first.state is QUEUED
    assert first.attempts == 0
    assert first.finished_at is None
    assert done.state is SUCCEEDED
    assert h.manager.failed_jobs() == [second]
    assert h.manager.unfinished == 1
    assert h.counts() == (1, 0, 0)

    worker, sink = h.consumer()
    h.manager.grant(worker, 1, 6.0)
    assert sink.deliveries == [(first.id, 1)]
    assert h.manager.ack(worker, first.id, 1, b"finally", 7.0)
    assert first.state is SUCCEEDED
    assert h.finished.count(first) == 2


def test_retry_all_failed_goes_to_waiting_consumers() -> None:
    h = Harness()
    jobs = [failed_one(h, float(i)) for i in range(3)]
    worker, sink = h.consumer()
    h.manager.grant(worker, 2, 5.0)
    assert h.manager.retry_failed(None, 5.0) == 3
    assert h.manager.failed_jobs() == []
    assert sink.deliveries == [(jobs[0].id, 1), (jobs[1].id, 1)]
    assert jobs[2].state is QUEUED
    assert h.counts() == (1, 0, 2)
    assert h.manager.unfinished == 3
    assert h.manager.retry_failed(None, 6.0) == 0


def test_retry_failed_past_max_jobs_is_refused() -> None:
    h = Harness(max_jobs=2)
    first = failed_one(h, 0.0)
    second = failed_one(h, 0.0)
    h.submit(1.0)
    before = h.snapshot()
    with pytest.raises(QueueFullError):
        h.manager.retry_failed(None, 2.0)
    assert h.snapshot() == before
    assert h.manager.retry_failed([second.id], 2.0) == 1
    assert first.state is FAILED


def test_retry_failed_with_a_repeated_id_retries_it_once() -> None:
    h = Harness()
    job = failed_one(h)
    assert h.manager.retry_failed([job.id, job.id], 1.0) == 1
    assert job.state is QUEUED
    assert h.manager.unfinished == 1
    assert h.counts() == (1, 0, 0)


def test_purge_failed_forgets_the_failed_jobs() -> None:
    h = Harness()
    jobs = [failed_one(h, float(i), job_id=f"f{i}") for i in range(2)]
    keep = h.submit(3.0)
    assert h.manager.purge_failed() == 2
    assert h.manager.failed_jobs() == []
    assert h.manager.jobs == {keep.id: keep}
    assert h.manager.retry_failed(None, 4.0) == 0
    assert h.manager.purge_failed() == 0
    # The ids are free again.
    fresh, created = submit_job(h.manager, "task", b"", 5.0, job_id=jobs[0].id)
    assert created
    assert fresh is not jobs[0]


# -- questions: idle queues, stats ----------------------------------------------------


def test_queues_idle_for_a_consumer_of_some_tasks() -> None:
    h = Harness()
    h.submit(0.0, task="theirs")
    assert not h.manager.queues_idle(["default"])
    assert h.manager.queues_idle(["default"], frozenset({"mine"}))
    mine = h.submit(0.0, task="mine")
    assert not h.manager.queues_idle(["default"], frozenset({"mine"}))
    h.manager.cancel(mine.id, 1.0)
    assert h.manager.queues_idle(["default"], frozenset({"mine"}))
    h.submit(1.0, task="theirs", depends_on=(mine.id,))  # cancelled at once: not waiting
    h.submit(1.0, task="theirs", delay=5.0)
    assert not h.manager.queues_idle(["default"], frozenset({"mine"}))


def test_queues_idle() -> None:
    h = Harness()
    assert h.manager.queues_idle([])
    assert h.manager.queues_idle(["never-seen"])
    delayed = h.submit(0.0, queue="a", delay=5.0)
    assert not h.manager.queues_idle(["a"])
    assert h.manager.queues_idle(["b"])
    assert not h.manager.queues_idle(["b", "a"])
    h.manager.tick(5.0)
    assert delayed.state is QUEUED
    assert not h.manager.queues_idle(["a"])
    consumer, _ = h.consumer("a")
    h.manager.grant(consumer, 1, 6.0)
    assert delayed.state is RUNNING
    assert not h.manager.queues_idle(["a"])
    assert h.manager.ack(consumer, delayed.id, 1, b"", 7.0)
    assert h.manager.queues_idle(["a", "b"])


def test_stats_shape_and_counters() -> None:
    h = Harness(max_attempts=1)
    assert h.manager.stats() == {
        "queues": {},
        "jobs": 0,
        "unfinished": 0,
        "running": 0,
        "failed_list": 0,
        "consumers": 0,
        "no_worker": {},
        "paused": [],
        "limits": {"queues": {}, "tasks": {}},
        "unique_keys": 0,
        "schedules": 0,
        "submitted": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "retried": 0,
        "requeued": 0,
        "expired": 0,
        "late_reports": 0,
    }
    done, consumer, _ = running_one(h, 0.0)  # attaches one consumer
    assert h.manager.ack(consumer, done.id, 1, b"", 1.0)
    failed_one(h, 1.0, queue="b")  # attaches another
    h.submit(2.0, queue="b", delay=3.0)
    h.submit(2.0, queue="c")
    running, _, _ = running_one(h, 2.0, queue="a")
    cancelled = h.submit(2.0)
    h.manager.cancel(cancelled.id, 2.0)
    assert not h.manager.ack(consumer, "nope", 1, b"", 2.0)

    stats = h.manager.stats()
    assert stats == {
        "queues": {
            "a": {"waiting": 0, "queued": 0, "delayed": 0, "running": 1},
            "b": {"waiting": 0, "queued": 0, "delayed": 1, "running": 0},
            "c": {"waiting": 0, "queued": 1, "delayed": 0, "running": 0},
            "default": {"waiting": 0, "queued": 0, "delayed": 0, "running": 0},
        },
        "jobs": 6,
        "unfinished": 3,
        "running": 1,
        "failed_list": 1,
        "consumers": 3,
        "no_worker": {"c": {"task": 1}},  # nobody serves queue c
        "paused": [],
        "limits": {"queues": {}, "tasks": {}},
        "unique_keys": 0,
        "schedules": 0,
        "submitted": 6,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "retried": 0,
        "requeued": 0,
        "expired": 0,
        "late_reports": 1,
    }
    assert list(stats["queues"]) == ["a", "b", "c", "default"]
    assert running.state is RUNNING


# -- announced task defaults ------------------------------------------------------------


def test_announced_task_defaults_apply_to_later_submits() -> None:
    h = Harness(max_attempts=3, lease=60.0)
    before = submit_job(h.manager, "resize", b"", 0.0)[0]
    h.manager.announce_tasks({"resize": {"max_attempts": 7, "lease": 5}})
    assert h.manager.task_defaults == {"resize": {"max_attempts": 7, "lease": 5.0}}
    assert isinstance(h.manager.task_defaults["resize"]["lease"], float)

    default, _ = submit_job(h.manager, "resize", b"", 1.0)
    assert (default.max_attempts, default.lease) == (7, 5.0)
    explicit, _ = submit_job(h.manager, "resize", b"", 1.0, max_attempts=2, lease=9.0)
    assert (explicit.max_attempts, explicit.lease) == (2, 9.0)
    half, _ = submit_job(h.manager, "resize", b"", 1.0, lease=9.0)
    assert (half.max_attempts, half.lease) == (7, 9.0)
    other, _ = submit_job(h.manager, "other", b"", 1.0)
    assert (other.max_attempts, other.lease) == (3, 60.0)
    assert (before.max_attempts, before.lease) == (3, 60.0)

    # A later announcement of one field replaces that field and keeps the other.
    h.manager.announce_tasks({"resize": {"lease": 2.5}, "email": {}})
    assert h.manager.task_defaults == {"resize": {"max_attempts": 7, "lease": 2.5}, "email": {}}
    job, _ = submit_job(h.manager, "resize", b"", 2.0)
    assert (job.max_attempts, job.lease) == (7, 2.5)

    # The announced lease is what the lease timer uses.
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 10, 10.0)
    assert job.lease_deadline == 12.5
    h.advance(12.5)
    assert (job.id, 1) in sink.revoked


def test_announce_tasks_records_the_schema_checked_map() -> None:
    """HELLO.tasks is checked by protocol.messages (test_messages.py); the manager records it."""
    h = Harness()
    limits = {"t": {"max_attempts": 1_000_000, "lease": 10 * 365 * 86400}}
    h.manager.announce_tasks(limits)
    # nil fields and fields the manager does not know change nothing.
    tasks: dict[str, dict[str, Any]] = {
        "u": {"max_attempts": 1, "lease": 0.001},
        "t": {"lease": None, "later": 1},
    }
    h.manager.announce_tasks(tasks)
    assert h.manager.task_defaults == {
        "t": {"max_attempts": 1_000_000, "lease": 315_360_000.0},
        "u": {"max_attempts": 1, "lease": 0.001},
    }
    assert isinstance(h.manager.task_defaults["t"]["lease"], float)


def test_announced_tasks_past_the_name_limit_are_not_recorded() -> None:
    h = Harness()
    many = {f"task{i}": {"max_attempts": 2} for i in range(MAX_INTERNED_NAMES)}
    h.manager.announce_tasks(many)
    h.manager.announce_tasks({"one-more": {"max_attempts": 5}, "task0": {"lease": 3}})
    assert "one-more" not in h.manager.task_defaults
    assert h.manager.task_defaults["task0"] == {"max_attempts": 2, "lease": 3.0}
    assert len(h.manager.task_defaults) == MAX_INTERNED_NAMES


# -- routing by task ----------------------------------------------------------------------


def test_a_consumer_that_announced_tasks_gets_only_jobs_of_those_tasks() -> None:
    h = Harness()
    resize = h.submit(0.0, task="resize")
    mail = h.submit(0.0, task="mail")
    resize2 = h.submit(0.0, task="resize")
    mailer, mail_sink = h.consumer(tasks=("mail",))
    h.manager.grant(mailer, 5, 0.0)
    assert mail_sink.ids == [mail.id]
    assert mailer.credit == 4
    resizer, resize_sink = h.consumer(tasks=("resize", "thumb"))
    h.manager.grant(resizer, 5, 0.0)
    assert resize_sink.ids == [resize.id, resize2.id]
    # A waiting consumer is handed a new job of its task at once, and only of its task.
    thumb = h.submit(1.0, task="thumb")
    later_mail = h.submit(1.0, task="mail")
    assert resize_sink.ids[-1] == thumb.id
    assert mail_sink.ids == [mail.id, later_mail.id]


def test_priority_then_fifo_among_the_tasks_a_consumer_takes() -> None:
    h = Harness()
    ids = [
        h.submit(0.0, task=task, priority=priority).id
        for task, priority in [("a", 0), ("b", 0), ("c", 5), ("a", 1), ("b", 1), ("a", 0)]
    ]
    consumer, sink = h.consumer(tasks=("a", "b"))
    h.manager.grant(consumer, 10, 0.0)
    assert sink.ids == [ids[3], ids[4], ids[0], ids[1], ids[5]]  # never task c
    assert h.counts() == (1, 0, 5)


def test_a_job_no_consumer_takes_waits_counted_until_one_attaches() -> None:
    h = Harness()
    only_echo, echo_sink = h.consumer(tasks=("echo",))
    h.manager.grant(only_echo, 3, 0.0)
    new_task = h.submit(0.0, task="brand_new")
    assert new_task.state is QUEUED and echo_sink.ids == []
    assert h.manager.stats()["no_worker"] == {"default": {"brand_new": 1}}
    other = h.submit(0.0, task="brand_new", queue="other")  # nobody serves "other" at all
    assert h.manager.stats()["no_worker"] == {
        "default": {"brand_new": 1},
        "other": {"brand_new": 1},
    }
    h.manager.cancel(other.id, 0.0)
    assert h.manager.stats()["no_worker"] == {"default": {"brand_new": 1}}
    deployed, deployed_sink = h.consumer(tasks=("brand_new",))
    h.manager.grant(deployed, 1, 1.0)
    assert deployed_sink.ids == [new_task.id]
    assert h.manager.stats()["no_worker"] == {}


def test_a_consumer_without_a_task_list_takes_every_task() -> None:
    h = Harness()
    jobs = [h.submit(0.0, task=task) for task in ("a", "b", "c")]
    router, router_sink = h.consumer(tasks=("b",))
    anything, anything_sink = h.consumer()
    assert h.manager.stats()["no_worker"] == {}
    h.manager.grant(anything, 2, 0.0)
    h.manager.grant(router, 2, 0.0)
    assert anything_sink.ids == [jobs[0].id, jobs[1].id]
    assert router_sink.ids == []
    # Waiting for jobs: one taking every task first, then one waiting for the job's task.
    h.manager.grant(anything, 1, 0.0)
    assert anything_sink.ids[-1] == jobs[2].id
    b = h.submit(1.0, task="b")
    assert router_sink.ids == [b.id]


def test_a_job_handed_back_goes_to_a_consumer_of_its_task() -> None:
    h = Harness()
    job = h.submit(0.0, task="x")
    first, _ = h.consumer(tasks=("x",))
    h.manager.grant(first, 1, 0.0)
    other, other_sink = h.consumer(tasks=("y",))
    h.manager.grant(other, 1, 0.0)
    second, second_sink = h.consumer(tasks=("x", "y"))
    h.manager.grant(second, 1, 0.0)
    h.manager.detach(first, 1.0, "gone")
    assert other_sink.ids == [] and second_sink.ids == [job.id]


# -- paused queues ------------------------------------------------------------------------


def test_a_paused_queue_accepts_jobs_lets_running_ones_finish_and_starts_nothing() -> None:
    h = Harness()
    running, consumer, sink = running_one(h, 0.0)
    assert h.manager.pause_queue("default")
    assert not h.manager.pause_queue("default")  # already paused
    waiting = h.submit(1.0)
    other = h.submit(1.0, queue="other")
    h.manager.grant(consumer, 3, 1.0)
    assert sink.ids == [running.id]
    assert waiting.state is QUEUED
    assert h.manager.ack(consumer, running.id, 1, b"", 2.0)
    retried = h.submit(2.0, delay=1.0)
    h.advance(3.0)
    assert retried.state is QUEUED and sink.ids == [running.id]
    assert h.manager.stats()["paused"] == ["default"]
    # Another queue is not held back.
    both, both_sink = h.consumer("default", "other")
    h.manager.grant(both, 5, 3.0)
    assert both_sink.ids == [other.id]
    assert h.manager.resume_queue("default", 4.0)
    assert not h.manager.resume_queue("default", 4.0)
    # Resuming feeds the consumers waiting on it at once, in the order they started waiting.
    assert sink.ids == [running.id, waiting.id, retried.id]
    assert h.manager.stats()["paused"] == []


def test_a_job_handed_back_to_a_paused_queue_waits() -> None:
    h = Harness()
    job, consumer, _ = running_one(h, 0.0)
    h.manager.pause_queue("default")
    other, other_sink = h.consumer()
    h.manager.grant(other, 1, 0.0)
    h.manager.detach(consumer, 1.0, "gone")
    assert job.state is QUEUED and other_sink.ids == []
    h.manager.resume_queue("default", 2.0)
    assert other_sink.ids == [job.id]


def test_pausing_is_a_setting_journaled_and_restored() -> None:
    h = Harness()
    recorded: list[tuple[str, Any]] = []

    class SettingsJournal:
        def job_submitted(self, job: Job) -> None:
            pass

        def job_changed(self, job: Job) -> None:
            pass

        def job_reserved(self, job: Job) -> None:
            pass

        def job_deleted(self, job_id: str) -> None:
            pass

        def setting_changed(self, key: str, value: Any) -> None:
            recorded.append((key, value))

    h.manager.journal = SettingsJournal()
    h.manager.pause_queue("mail")
    h.manager.pause_queue("mail")
    h.manager.pause_queue("sms")
    h.manager.resume_queue("sms", 1.0)
    assert recorded == [("paused:mail", True), ("paused:sms", True), ("paused:sms", None)]
    assert h.manager.settings_view() == {"paused:mail": True}
    restored = Harness()
    restored.manager.restore_settings(h.manager.settings_view())
    job = restored.submit(0.0, queue="mail")
    consumer, sink = restored.consumer("mail")
    restored.manager.grant(consumer, 1, 0.0)
    assert sink.ids == [] and restored.manager.stats()["paused"] == ["mail"]
    restored.manager.resume_queue("mail", 1.0)
    assert sink.ids == [job.id]


# -- global limits ------------------------------------------------------------------------


def test_max_running_per_queue_holds_across_consumers_and_reopens_on_a_report() -> None:
    h = Harness()
    h.manager.set_limits("queue", "default", 2, None, 0.0)
    jobs = [h.submit(0.0, priority=p) for p in (0, 0, 5, 0)]
    consumers = [h.consumer(name=f"c{i}") for i in range(2)]
    for consumer, _ in consumers:
        h.manager.grant(consumer, 4, 0.0)
    delivered = [job_id for _, sink in consumers for job_id in sink.ids]
    assert delivered == [jobs[2].id, jobs[0].id]  # best first, only two
    assert h.counts() == (2, 0, 2)
    first, _ = consumers[0]
    assert h.manager.ack(first, jobs[2].id, 1, b"", 1.0)
    # The slot that opened goes to a waiting consumer, in order.
    assert h.counts() == (1, 0, 2)
    assert jobs[1].state is RUNNING
    assert h.manager.stats(1.0)["limits"]["queues"]["default"] == {
        "max_running": 2,
        "rate": None,
        "running": 2,
        "started_in_window": 0,
    }
    # Other queues are not held back.
    other = h.submit(1.0, queue="other")
    both, both_sink = h.consumer("default", "other")
    h.manager.grant(both, 3, 1.0)
    assert both_sink.ids == [other.id]


def test_max_running_per_task_skips_only_that_task() -> None:
    h = Harness()
    h.manager.set_limits("task", "slow", 1, None, 0.0)
    slow = [h.submit(0.0, task="slow") for _ in range(2)]
    fast = [h.submit(0.0, task="fast") for _ in range(2)]
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 10, 0.0)
    assert sink.ids == [slow[0].id, fast[0].id, fast[1].id]
    h.manager.cancel(slow[0].id, 1.0)  # a cancel stops it too
    assert sink.ids[-1] == slow[1].id


def test_a_rate_limited_job_starts_the_moment_the_window_allows() -> None:
    h = Harness()
    h.manager.set_limits("task", "api", None, "2/10s", 0.0)
    jobs = [h.submit(0.0, task="api") for _ in range(5)]
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 10, 1.0)
    assert sink.ids == [jobs[0].id, jobs[1].id]
    assert h.manager.next_deadline() == 11.0  # the window moves on: no polling
    h.advance(10.9)
    assert len(sink.ids) == 2
    h.advance(11.0)
    assert sink.ids == [job.id for job in jobs[:4]]  # two starts at 1.0 left the window
    assert h.manager.next_deadline() == 21.0
    h.advance(21.0)
    assert sink.ids == [job.id for job in jobs]
    with pytest.raises(ValueError, match="expected COUNT/PERIOD"):
        h.manager.set_limits("task", "api", None, "fast", 21.0)


def test_a_consumer_whose_credit_a_grant_used_up_stops_waiting() -> None:
    """Waiting behind a limit, then fed by a READY before the limit's timer: it must
    leave the waiting lists, or the next job goes to it past its credit."""
    h = Harness()
    h.manager.set_limits("queue", "default", None, "3/10s", 0.0)
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 3, 0.0)
    for job in [h.submit(0.0) for _ in range(3)]:
        h.manager.ack(consumer, job.id, 1, b"", 0.1)
    held_back = [h.submit(0.5) for _ in range(2)]
    h.manager.grant(consumer, 1, 1.0)  # nothing it may take: it waits with credit 1
    h.manager.grant(consumer, 1, 11.0)  # the window moved on: both held-back jobs go
    assert sink.ids[-2:] == [job.id for job in held_back]
    assert consumer.credit == 0
    h.submit(11.0)
    assert consumer.credit == 0
    assert len(sink.ids) == 5  # the new job waits for credit


def test_loosening_or_removing_a_limit_feeds_waiting_consumers() -> None:
    h = Harness()
    h.manager.set_limits("queue", "default", 1, None, 0.0)
    jobs = [h.submit(0.0) for _ in range(3)]
    consumer, sink = h.consumer()
    h.manager.grant(consumer, 5, 0.0)
    assert sink.ids == [jobs[0].id]
    h.manager.set_limits("queue", "default", 2, None, 1.0)
    assert sink.ids == [jobs[0].id, jobs[1].id]
    assert h.manager.set_limits("queue", "default", None, None, 2.0) is None
    assert sink.ids == [job.id for job in jobs]
    assert h.manager.settings == {}


def test_limits_are_settings_restored_with_empty_counts() -> None:
    h = Harness()
    h.manager.set_limits("queue", "mail", 3, "10/min", 0.0)
    h.manager.set_limits("task", "api", None, "5/s", 0.0)
    assert h.manager.settings_view() == {
        "limit:queue:mail": {"max_running": 3, "rate": "10/min"},
        "limit:task:api": {"max_running": None, "rate": "5/s"},
    }
    restored = Harness()
    restored.manager.restore_settings(h.manager.settings_view())
    empty = {"running": 0, "started_in_window": 0}
    assert restored.manager.stats(0.0)["limits"] == {
        "queues": {"mail": {"max_running": 3, "rate": "10/min", **empty}},
        "tasks": {"api": {"max_running": None, "rate": "5/s", **empty}},
    }


# -- dependencies -------------------------------------------------------------------------

WAITING = JobState.WAITING


def test_a_child_waits_for_every_parent_then_runs() -> None:
    h = Harness()
    consumer, sink = h.consumer()
    first, second = h.submit(0.0), h.submit(0.0)
    child = h.submit(0.0, depends_on=(first.id, second.id))
    grandchild = h.submit(0.0, depends_on=(child.id,))
    assert child.state is WAITING and grandchild.state is WAITING
    assert h.manager.stats()["queues"]["default"]["waiting"] == 2
    assert describe_job(child)["depends_on"] == [first.id, second.id]
    h.manager.grant(consumer, 10, 1.0)
    assert sink.ids == [first.id, second.id]  # never a job whose parent is unfinished
    assert h.manager.ack(consumer, first.id, 1, b"", 2.0)
    assert child.state is WAITING
    assert h.manager.ack(consumer, second.id, 1, b"", 3.0)
    assert sink.ids[-1] == child.id  # straight to the waiting consumer
    assert h.manager.ack(consumer, child.id, 1, b"", 4.0)
    assert sink.ids[-1] == grandchild.id
    assert h.manager.stats()["queues"]["default"]["waiting"] == 0


def test_a_parent_already_succeeded_counts_as_done_and_an_unknown_one_is_refused() -> None:
    h = Harness()
    done, consumer, sink = running_one(h, 0.0)
    assert h.manager.ack(consumer, done.id, 1, b"", 1.0)
    child = h.submit(2.0, depends_on=(done.id,), delay=1.0)
    assert child.state is DELAYED and child.run_at == 3.0
    now_child = h.submit(2.0, depends_on=(done.id,))
    h.manager.grant(consumer, 1, 2.0)
    assert sink.ids[-1] == now_child.id
    before = h.snapshot()
    with pytest.raises(UnknownParentError):
        h.submit(2.0, depends_on=(done.id, "nobody"))
    assert h.snapshot() == before


def test_a_parent_failing_cancels_its_descendants_naming_it() -> None:
    h = Harness(max_attempts=1)
    parent, consumer, _ = running_one(h, 0.0)
    other = h.submit(0.0)
    child = h.submit(0.0, depends_on=(parent.id, other.id))
    grandchild = h.submit(0.0, depends_on=(child.id,))
    assert h.manager.fail(consumer, parent.id, 1, ERROR, 1.0)
    assert child.state is CANCELLED and grandchild.state is CANCELLED
    assert child.last_error is not None and grandchild.last_error is not None
    assert child.last_error["type"] == "ParentFailed"
    assert child.last_error["message"] == f"parent job {parent.id} failed"
    assert grandchild.last_error["message"] == (
        f"parent job {child.id} cancelled (parent job {parent.id} failed)"
    )
    assert other.state is QUEUED  # the other parent goes on
    late = h.submit(2.0, depends_on=(parent.id,))  # a parent already failed
    assert late.state is CANCELLED
    assert h.manager.stats()["queues"]["default"]["waiting"] == 0


def test_cancelling_a_parent_or_a_waiting_child() -> None:
    h = Harness()
    parent = h.submit(0.0)
    child = h.submit(0.0, depends_on=(parent.id,))
    sibling = h.submit(0.0, depends_on=(parent.id,))
    assert h.manager.cancel(sibling.id, 1.0)
    assert sibling.state is CANCELLED and sibling.last_error is None
    assert h.manager.cancel(parent.id, 1.0)
    assert child.state is CANCELLED
    assert child.last_error is not None
    assert child.last_error["message"] == f"parent job {parent.id} cancelled"


def test_a_long_chain_settles_without_recursion() -> None:
    h = Harness()
    root = h.submit(0.0)
    previous = root
    chain = []
    for _ in range(5000):
        previous = h.submit(0.0, depends_on=(previous.id,))
        chain.append(previous)
    h.manager.cancel(root.id, 1.0)
    assert all(job.state is CANCELLED for job in chain)


def test_waiting_jobs_are_restored_waiting_for_their_unfinished_parents() -> None:
    h = Harness(max_attempts=1)
    done, consumer, _ = running_one(h, 0.0)
    assert h.manager.ack(consumer, done.id, 1, b"", 1.0)
    failing, failing_consumer, _ = running_one(h, 1.0)
    pending = h.submit(1.0)
    waits = h.submit(1.0, depends_on=(done.id, pending.id))
    doomed = h.submit(1.0, depends_on=(failing.id,))
    # As a replay would give them: the failing parent failed, its child still waiting.
    jobs = list(h.manager.jobs.values())
    failing.state = FAILED
    failing.owner = None
    restored = Harness(max_attempts=1)
    restored.manager.restore(jobs, 2.0)
    assert waits.state is WAITING and doomed.state is CANCELLED
    assert restored.manager.stats()["queues"]["default"]["waiting"] == 1
    consumer, sink = restored.consumer()
    restored.manager.grant(consumer, 5, 3.0)
    assert sink.ids == [pending.id]
    assert restored.manager.ack(consumer, pending.id, 1, b"", 4.0)
    assert sink.ids[-1] == waits.id
    del failing_consumer


# -- unique jobs --------------------------------------------------------------------------


def test_a_unique_key_returns_the_job_holding_it_while_unfinished() -> None:
    h = Harness()
    first = h.submit(0.0, unique_key="report:42")
    again, created = submit_job(h.manager, "other", b"", 1.0, unique_key="report:42")
    assert again is first and not created
    assert h.manager.stats()["unique_keys"] == 1
    consumer, _ = h.consumer()
    h.manager.grant(consumer, 1, 1.0)
    assert submit_job(h.manager, "task", b"", 2.0, unique_key="report:42")[0] is first
    assert h.manager.ack(consumer, first.id, 1, b"", 3.0)
    # Finished, and no unique_for: the key is free again.
    fresh = h.submit(3.0, unique_key="report:42")
    assert fresh is not first and fresh.state is QUEUED


def test_unique_for_holds_the_key_after_the_job_finished() -> None:
    h = Harness(result_ttl=100.0)
    first = h.submit(0.0, unique_key="k", unique_for=10.0)
    h.manager.cancel(first.id, 1.0)
    assert submit_job(h.manager, "task", b"", 9.9, unique_key="k")[0] is first
    second = h.submit(10.0, unique_key="k")
    assert second is not first
    # A job forgotten (its result expired) lets its key go with it.
    h.manager.cancel(second.id, 11.0)
    h.advance(111.0)
    assert h.manager.stats()["unique_keys"] == 0


def test_unique_keys_are_restored_with_their_jobs() -> None:
    h = Harness()
    held = h.submit(0.0, unique_key="k", unique_for=60.0)
    done = h.submit(0.0, unique_key="done", unique_for=5.0)
    h.manager.cancel(done.id, 1.0)
    restored = Harness()
    restored.manager.restore(list(h.manager.jobs.values()), 2.0)
    assert submit_job(restored.manager, "task", b"", 3.0, unique_key="k")[0] is held
    assert submit_job(restored.manager, "task", b"", 3.0, unique_key="done")[0] is done
    assert submit_job(restored.manager, "task", b"", 6.0, unique_key="done")[0] is not done


# -- random operations keep the invariants -------------------------------------------


class Slot:
    """One consumer in the random run, with what the test knows it did."""

    def __init__(
        self, harness: Harness, queues: tuple[str, ...], tasks: tuple[str, ...] | None = None
    ) -> None:
        self.queues = queues
        self.tasks = tasks
        self.consumer, self.sink = harness.consumer(*queues, tasks=tasks)
        self.granted_total = 0
        # Credit granted since the last quiet (plus what was delivered before it).
        self.granted_since_quiet = 0
        # Jobs that left its hands through its own reports.
        self.reported = 0


OPERATIONS = [
    "submit",
    "submit",
    "submit",
    "grant",
    "grant",
    "ack",
    "fail",
    "fail",
    "release",
    "cancel",
    "tick",
    "tick",
    "expire",
    "extend",
    "pause",
    "resume",
    "pause_queue",
    "resume_queue",
    "heartbeat",
    "quiet",
    "detach",
    "stale",
]


def check_invariants(
    h: Harness, slots: list[Slot], submitted: list[Job], now: float, paused: bool = False
) -> None:
    manager = h.manager
    jobs = manager.jobs
    for name, counts in manager.queues.items():
        states = Counter(job.state for job in jobs.values() if job.queue == name)
        assert counts.as_dict() == {
            "waiting": states[JobState.WAITING],
            "queued": states[QUEUED],
            "delayed": states[DELAYED],
            "running": states[RUNNING],
        }
    assert all(job.queue in manager.queues for job in jobs.values())
    assert manager.unfinished == sum(not job.state.finished for job in jobs.values())
    for job in submitted:
        if not job.state.finished:
            assert jobs.get(job.id) is job
        assert 0 <= job.attempts <= job.max_attempts
        if job.state is DELAYED:
            assert job.run_at > now
        if job.state is FAILED:
            assert job in manager.failed_jobs()
        assert (job.owner is not None) == (job.state is RUNNING)
    # on_finished once per finished job (nothing is retried here).
    assert len(h.finished) == len({id(job) for job in h.finished})
    assert {id(job) for job in h.finished} == {id(job) for job in submitted if job.state.finished}

    queued = {(job.queue, job.task) for job in jobs.values() if job.state is QUEUED}
    stats_no_worker = manager.stats()["no_worker"]
    for queue, task in queued:
        takers = [
            s.consumer
            for s in slots
            if s.consumer in manager.consumers
            and queue in s.queues
            and (s.tasks is None or task in s.tasks)
        ]
        assert (task in stats_no_worker.get(queue, {})) == (not takers)
    queued_by_pair = Counter((job.queue, job.task) for job in jobs.values() if job.state is QUEUED)
    for queue, tasks in stats_no_worker.items():
        for task, n in tasks.items():
            assert n == queued_by_pair[(queue, task)]
    for slot in slots:
        consumer = slot.consumer
        delivered = len(slot.sink.deliveries)
        left = slot.reported + len(slot.sink.revoked)
        assert delivered <= slot.granted_total
        assert len(consumer.jobs) == delivered - left
        assert len(consumer.jobs) <= slot.granted_total - left
        assert consumer.credit == slot.granted_since_quiet - delivered
        for job_id, job in consumer.jobs.items():
            assert job.id == job_id
            assert job.state is RUNNING
            assert job.owner is consumer
            assert jobs[job_id] is job
        # A consumer with credit is never left idle while a job it takes is queued
        # (unless dispatch is paused; resuming feeds it).
        if consumer.credit > 0 and not paused:
            assert not any(
                queue in consumer.queues
                and (slot.tasks is None or task in slot.tasks)
                and manager._may_dispatch(queue, task, now)
                for queue, task in queued
            )
        # Routing by task: a consumer only ever got jobs of the tasks it announced.
        if slot.tasks is not None:
            assert all(
                jobs[job_id].task in slot.tasks for job_id in slot.sink.ids if job_id in jobs
            )
            assert all(job.task in slot.tasks for job in consumer.jobs.values())
        for run_at, started_at in slot.sink.delivered_at:
            assert started_at is not None
            assert run_at <= started_at
    for job in jobs.values():
        if job.state is RUNNING:
            assert job.owner.jobs.get(job.id) is job
            assert any(slot.consumer is job.owner for slot in slots)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_random_operations_keep_the_invariants(data: st.DataObject) -> None:
    h = Harness(lease=10.0, result_ttl=30.0, max_attempts=3, backoff_base=1.0, backoff_cap=8.0)
    manager = h.manager
    slots = [
        Slot(h, queues, tasks)
        for queues, tasks in (
            (("a",), None),
            (("b",), ("x",)),
            (("a", "b"), ("y", "z")),
            (("b",), None),
        )
    ]
    submitted: list[Job] = []
    now = 0.0
    paused = False
    # Limits, set before any job: (kind, name) -> (max_running, rate as (count, period)).
    limits: dict[tuple[str, str], tuple[int | None, tuple[int, float] | None]] = {}
    for kind, name in (("queue", "a"), ("task", "x"), ("task", "y")):
        max_running = data.draw(st.sampled_from([None, None, 1, 2]), label=f"max_running {name}")
        rate = data.draw(st.sampled_from([None, None, (1, 5.0), (2, 10.0)]), label=f"rate {name}")
        if max_running is not None or rate is not None:
            text = None if rate is None else f"{rate[0]}/{rate[1]:g}s"
            manager.set_limits(kind, name, max_running, text, now)
            limits[(kind, name)] = (max_running, rate)
    starts: dict[tuple[str, str], list[float]] = {key: [] for key in limits}
    steps = data.draw(st.integers(min_value=1, max_value=60), label="steps")
    for _ in range(steps):
        operation = data.draw(st.sampled_from(OPERATIONS), label="operation")
        slot = slots[data.draw(st.integers(0, len(slots) - 1), label="slot")]
        consumer = slot.consumer
        held = sorted(consumer.jobs.values(), key=lambda job: job.id)
        delivered_before = {id(s.sink): len(s.sink.deliveries) for s in slots}
        if operation == "submit":
            delay = data.draw(st.sampled_from([0.0, 0.0, 0.5, 4.0, 12.0]), label="delay")
            known = [job.id for job in submitted if job.id in manager.jobs]
            parents = (
                data.draw(st.lists(st.sampled_from(known), max_size=2), label="parents")
                if known
                else []
            )
            job, created = submit_job(
                manager,
                data.draw(st.sampled_from(["x", "y", "w"]), label="task"),
                b"",
                now,
                queue=data.draw(st.sampled_from(["a", "b"]), label="queue"),
                priority=data.draw(st.integers(-2, 2), label="priority"),
                delay=delay,
                depends_on=tuple(parents) or None,
                unique_key=data.draw(st.sampled_from([None, None, "u1", "u2"]), label="unique"),
            )
            if not created:  # a unique key held by an unfinished job
                assert job.unique is not None and not job.state.finished
                continue
            submitted.append(job)
            if parents:
                assert job.state in (WAITING, CANCELLED, DELAYED, QUEUED, RUNNING)
            elif delay:
                assert job.state is DELAYED
            else:
                assert job.state in (QUEUED, RUNNING)
        elif operation == "grant":
            n = data.draw(st.integers(1, 3), label="n")
            slot.granted_total += n
            slot.granted_since_quiet += n
            manager.grant(consumer, n, now)
        elif operation in ("ack", "fail", "release") and held:
            job = held[data.draw(st.integers(0, len(held) - 1), label="job")]
            attempt = job.attempts
            if operation == "ack":
                assert manager.ack(consumer, job.id, attempt, b"ok", now)
                assert job.state is SUCCEEDED
            elif operation == "fail":
                retry_in = data.draw(st.sampled_from([None, 0.0, 3.0]), label="retry_in")
                assert manager.fail(consumer, job.id, attempt, ERROR, now, retry_in)
                if attempt >= job.max_attempts:
                    assert job.state is FAILED
                else:
                    assert job.state in (DELAYED, QUEUED, RUNNING)
            else:
                assert manager.release(consumer, job.id, attempt, now)
                # Back in its queue (or straight to a waiting consumer), attempt not counted.
                assert job.state in (QUEUED, RUNNING)
                assert job.attempts == (attempt if job.state is RUNNING else attempt - 1)
            slot.reported += 1
        elif operation == "cancel" and submitted:
            job = submitted[data.draw(st.integers(0, len(submitted) - 1), label="job")]
            expected = None if manager.get(job.id) is None else not job.state.finished
            assert manager.cancel(job.id, now) is expected
            if expected is not None:
                assert job.state.finished
        elif operation == "tick":
            now += data.draw(st.floats(min_value=0.0, max_value=15.0), label="dt")
            manager.tick(now)
        elif operation == "expire":
            revoked = sum(len(s.sink.revoked) for s in slots)
            expired = manager.expire_leases(now)
            assert sum(len(s.sink.revoked) for s in slots) == revoked + expired
            held_now = [job for s in slots for job in s.consumer.jobs.values()]
            assert all(job.lease_deadline > now for job in held_now)
        elif operation == "extend":
            seconds = data.draw(st.sampled_from([0.0, 2.5, 20.0]), label="seconds")
            running = manager.running
            deadlines = {
                job.id: job.lease_deadline for s in slots for job in s.consumer.jobs.values()
            }
            assert manager.extend_leases(seconds) == (running if seconds else 0)
            for s in slots:
                for job in s.consumer.jobs.values():
                    assert job.lease_deadline == deadlines[job.id] + seconds
        elif operation == "heartbeat":
            assert manager.heartbeat(consumer, [job.id for job in held], now) == len(held)
        elif operation == "pause":
            manager.pause_dispatch()
            paused = True
            assert manager.dispatch_paused
        elif operation == "resume":
            manager.resume_dispatch(now)
            paused = False
            assert not manager.dispatch_paused
        elif operation == "pause_queue":
            manager.pause_queue(data.draw(st.sampled_from(["a", "b"]), label="queue"))
        elif operation == "resume_queue":
            manager.resume_queue(data.draw(st.sampled_from(["a", "b"]), label="queue"), now)
        elif operation == "quiet":
            manager.quiet(consumer)
            slot.granted_since_quiet = len(slot.sink.deliveries)
        elif operation == "detach":
            manager.detach(consumer, now, "gone")
            assert consumer.jobs == {}
            assert consumer not in manager.consumers
            # Check the gone consumer one last time, then a fresh one takes its place.
            slot.granted_since_quiet = len(slot.sink.deliveries)
            slot.reported += len(held)
            check_invariants(h, slots, submitted, now, paused)
            slots[slots.index(slot)] = Slot(h, slot.queues, slot.tasks)
        elif operation == "stale" and submitted:
            job = submitted[data.draw(st.integers(0, len(submitted) - 1), label="job")]
            state, attempts = job.state, job.attempts
            late = manager.counters["late_reports"]
            wrong = attempts + 1 if job.owner is consumer else attempts
            assert not manager.ack(consumer, job.id, wrong, b"late", now)
            assert manager.counters["late_reports"] == late + 1
            assert (job.state, job.attempts) == (state, attempts)
        if paused:
            # Nothing was handed out while paused (a fresh slot has had nothing).
            for s in slots:
                assert len(s.sink.deliveries) == delivered_before.get(id(s.sink), 0)
        # Dependencies: nothing starts before every parent has succeeded; a job waits
        # exactly while a parent is unfinished and none failed or was cancelled.
        by_id = {job.id: job for job in submitted}
        for s in slots:
            for job_id, _ in s.sink.deliveries[delivered_before.get(id(s.sink), 0) :]:
                started = by_id[job_id]
                assert all(by_id[p].state is SUCCEEDED for p in started.depends_on or ())
        for job in submitted:
            if job.state is WAITING:
                parent_states = [by_id[p].state for p in job.depends_on or ()]
                assert not any(st_ in (FAILED, CANCELLED) for st_ in parent_states)
                assert not all(st_ is SUCCEEDED for st_ in parent_states)
            if job.depends_on and job.state in (QUEUED, DELAYED, RUNNING):
                assert all(by_id[p].state is SUCCEEDED for p in job.depends_on)
        # A unique key is held by at most one unfinished job.
        holders = Counter(
            job.unique[0] for job in submitted if job.unique is not None and not job.state.finished
        )
        assert all(count == 1 for count in holders.values())
        # Nothing starts from a paused queue.
        for s in slots:
            for queue in s.sink.queues[delivered_before.get(id(s.sink), 0) :]:
                assert queue not in manager.paused_queues
        # Limits: never more running than max_running, never more starts in a window
        # than the rate allows.
        for s in slots:
            fresh = s.sink.deliveries[delivered_before.get(id(s.sink), 0) :]
            for job_id, _ in fresh:
                job = manager.jobs[job_id]
                for key in (("queue", job.queue), ("task", job.task)):
                    if key in starts:
                        starts[key].append(now)
        for (kind, name), (max_running, rate) in limits.items():
            running_now = [
                job
                for job in manager.jobs.values()
                if job.state is RUNNING and (job.queue if kind == "queue" else job.task) == name
            ]
            if max_running is not None:
                assert len(running_now) <= max_running
            if rate is not None:
                count, period = rate
                times = starts[(kind, name)]
                for i, start in enumerate(times):
                    assert sum(1 for t in times[: i + 1] if t > start - period) <= count
        check_invariants(h, slots, submitted, now, paused)


def test_max_results_forgets_the_oldest_finished_jobs() -> None:
    h = Harness(max_results=3)
    consumer, _ = h.consumer()
    jobs = [h.submit(float(i)) for i in range(5)]
    h.manager.grant(consumer, 5, 10.0)
    for i, job in enumerate(jobs):
        assert h.manager.ack(consumer, job.id, 1, b"r", 20.0 + i)
    assert [job.id for job in jobs if job.id in h.manager.jobs] == [j.id for j in jobs[2:]]
    assert h.manager.counters["expired"] == 2
    assert h.manager.counters["succeeded"] == 5


def test_lease_timers_of_finished_jobs_do_not_pile_up() -> None:
    h = Harness()
    consumer, _ = h.consumer()
    for i in range(20_000):
        job = h.submit(float(i))
        h.manager.grant(consumer, 1, float(i))
        assert h.manager.ack(consumer, job.id, 1, b"", float(i))
    # Leases of 60 s, none due yet: without pruning there would be 20,000 timers.
    assert len(h.manager._leases) <= 1024 + 2
    assert h.manager.running == 0
    still_running = h.submit(20_000.0)
    h.manager.grant(consumer, 1, 20_000.0)
    h.advance(20_000.0 + 61)
    assert still_running.attempts == 1
    assert still_running.state is QUEUED  # its lease timer survived the pruning


# -- periodic jobs ------------------------------------------------------------------------


def test_every_fires_each_tick_once_with_an_idempotent_id() -> None:
    h = Harness()
    assert h.manager.set_schedule(Schedule("beat", "task", every=10.0), 101.0)
    assert not h.manager.set_schedule(Schedule("beat", "task", every=10.0), 102.0)  # same
    assert h.manager.next_deadline() == 110.0
    h.advance(109.0)
    assert "cron:beat:110" not in h.manager.jobs
    h.advance(125.0)  # 110 fires; 120 was due too: the next one is computed from now
    assert "cron:beat:110" in h.manager.jobs
    assert h.manager.schedules_list()[0]["next_run"] == 130.0
    h.advance(130.0)
    assert sorted(job_id for job_id in h.manager.jobs if job_id.startswith("cron:")) == [
        "cron:beat:110",
        "cron:beat:130",
    ]


def test_cron_in_a_time_zone_and_bad_definitions() -> None:
    h = Harness()
    # 2026-01-01 00:00 UTC is 01:00 in Paris: the next "0 2 * * *" there is 01:00 UTC.
    start = 1767225600.0
    h.manager.set_schedule(
        Schedule("night", "task", cron="0 2 * * *", timezone="Europe/Paris"), start
    )
    assert h.manager.next_deadline() == start + 3600
    with pytest.raises(ValueError, match="bad cron expression"):
        Schedule("x", "task", cron="every day")
    with pytest.raises(ValueError, match="unknown time zone"):
        Schedule("x", "task", every=5.0, timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="exactly one of cron and every"):
        Schedule("x", "task")
    with pytest.raises(ValueError, match="at least 1 second"):
        Schedule("x", "task", every=0.5)


def test_missed_ticks_fire_once_at_start_and_never_twice() -> None:
    h = Harness()
    h.manager.set_schedule(Schedule("beat", "task", every=10.0, queue="q"), 0.0)
    h.advance(10.0)
    settings = h.manager.settings_view()
    assert settings["schedule:beat"]["last"] == 10.0
    # Down from 10 to 95: ticks 20..90 were missed; only 90 fires, once.
    restored = Harness()
    restored.manager.restore_settings(settings, 95.0)
    restored.manager.restore(list(h.manager.jobs.values()), 95.0)
    assert restored.manager.next_deadline() == 90.0
    restored.advance(95.0)
    fired = sorted(job_id for job_id in restored.manager.jobs if job_id.startswith("cron:"))
    assert fired == ["cron:beat:10", "cron:beat:90"]
    assert restored.manager.jobs["cron:beat:90"].queue == "q"
    assert restored.manager.next_deadline() == 100.0
    assert restored.manager.remove_schedule("beat")
    restored.advance(200.0)
    assert "cron:beat:100" not in restored.manager.jobs
    assert restored.manager.settings_view() == {}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["advance", "advance", "restart", "redeclare"]), st.floats(0, 25)
        ),
        max_size=30,
    )
)
def test_each_schedule_tick_fires_at_most_once_over_any_history_of_restarts(
    history: list[tuple[str, float]],
) -> None:
    submitted: list[str] = []

    class Recorder:
        def job_submitted(self, job: Job) -> None:
            submitted.append(job.id)

        def job_changed(self, job: Job) -> None:
            pass

        def job_reserved(self, job: Job) -> None:
            pass

        def job_deleted(self, job_id: str) -> None:
            pass

        def setting_changed(self, key: str, value: Any) -> None:
            pass

    def fresh() -> JobManager:
        manager = JobManager(ManagerConfig(result_ttl=1000.0), id_prefix="p")
        manager.journal = Recorder()
        return manager

    now = 0.0
    manager = fresh()
    manager.set_schedule(Schedule("five", "task", every=5.0), now)
    manager.set_schedule(Schedule("minute", "task", cron="* * * * *"), now)
    for operation, dt in history:
        now += dt
        if operation == "advance":
            manager.tick(now)
        elif operation == "redeclare":  # another worker announcing the same schedule
            manager.set_schedule(Schedule("five", "task", every=5.0), now)
        else:
            settings_now = manager.settings_view()
            jobs = list(manager.jobs.values())
            manager = fresh()
            manager.restore_settings(settings_now, now)
            manager.restore(jobs, now)
        # Nothing due is left unfired after a tick; no tick is in the future.
        fired = [job_id for job_id in submitted if job_id.startswith("cron:")]
        assert all(float(job_id.rsplit(":", 1)[1]) <= now for job_id in fired)
    assert len(submitted) == len(set(submitted))  # each tick at most once
    manager.tick(now)
    for schedule in manager.schedules.values():
        assert schedule.next > now
