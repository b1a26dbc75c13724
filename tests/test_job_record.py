"""The job record's shape: a queued job is small, and every field still reads and writes.

``broker/jobs.py`` keeps the options jobs share in one interned ``JobKind``
and the fields unset while a job is queued in a ``JobExtras`` made on first
use; these tests hold that shape and check that nothing is lost through it,
in the manager and through journal replay.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.jobs import NO_EXTRAS, ErrorLog, Job, JobExtras, JobState, make_job
from broker.journal import changed_record, replay, snapshot_record, submitted_record
from broker.manager import Consumer, JobManager, ManagerConfig
from tests.builders import submit_job

# A value for each field of JobExtras other than its default.
EXTRA_VALUES: dict[str, Any] = {
    "run_at": 250.0,
    "started_at": 101.0,
    "finished_at": 102.0,
    "lease_deadline": 131.0,
    "owner": object(),
    "result": b"\x01",
    "result_ttl": 0.0,
    "progress": [0.5, None, 101.5, 1],
    "errors": ErrorLog([{"type": "E", "message": "m", "traceback": "", "attempt": 1}]),
    "depends_on": ("a", "b"),
    "unique": ("k", 160.0),
    "attempts": 2,
}


class NullSink:
    def deliver(self, job: Job) -> None:
        pass

    def revoke(self, job: Job) -> None:
        pass


def fresh_job() -> Job:
    return make_job("j1", "add", b"\x01", "q", 0, 1, 3, None, 30.0, 100.0)


def test_every_field_of_the_extras_is_covered() -> None:
    assert set(EXTRA_VALUES) == set(JobExtras.__slots__)


def test_a_queued_job_has_eight_slots_no_extras_and_a_shared_kind() -> None:
    manager = JobManager(ManagerConfig(), id_prefix="t")
    first, _ = submit_job(manager, "add", b"\x01", 1.0)
    second, _ = submit_job(manager, "add", b"\x02", 2.0)
    assert len(Job.__slots__) == 8
    assert first.extras is NO_EXTRAS and second.extras is NO_EXTRAS
    assert first.attempts == 0
    assert first.kind is second.kind
    assert (first.task, first.queue, first.max_attempts, first.timeout, first.lease) == (
        "add",
        "default",
        manager.config.max_attempts,
        None,
        manager.config.lease,
    )
    # Other options, another kind, shared again.
    third, _ = submit_job(manager, "add", b"", 3.0, max_attempts=7, timeout=5)
    fourth, _ = submit_job(manager, "add", b"", 4.0, max_attempts=7, timeout=5.0)
    assert third.kind is fourth.kind is not first.kind
    assert third.max_attempts == 7
    assert third.timeout == 5.0 and type(third.timeout) is float
    assert third.extras is NO_EXTRAS


def test_announced_defaults_apply_to_jobs_submitted_after_them() -> None:
    manager = JobManager(ManagerConfig(), id_prefix="t")
    before, _ = submit_job(manager, "add", b"", 1.0)
    manager.announce_tasks({"add": {"max_attempts": 9, "lease": 12}})
    after, _ = submit_job(manager, "add", b"", 2.0)
    assert before.max_attempts == manager.config.max_attempts
    assert (after.max_attempts, after.lease) == (9, 12.0)


@pytest.mark.parametrize("name", sorted(EXTRA_VALUES))
def test_each_extra_field_sets_and_clears_on_its_own_job(name: str) -> None:
    job = fresh_job()
    other = fresh_job()
    default = getattr(job, name)
    assert default == (100.0 if name == "run_at" else getattr(JobExtras(), name))
    setattr(job, name, EXTRA_VALUES[name])
    assert getattr(job, name) is EXTRA_VALUES[name]
    assert job.extras is not NO_EXTRAS
    assert other.extras is NO_EXTRAS and getattr(other, name) == default
    setattr(job, name, default)
    assert getattr(job, name) == default


@pytest.mark.parametrize("name", sorted(EXTRA_VALUES))
def test_setting_a_default_on_a_job_without_extras_allocates_nothing(name: str) -> None:
    job = fresh_job()
    setattr(job, name, getattr(job, name))
    assert job.extras is NO_EXTRAS


def test_run_at_is_created_at_until_it_differs() -> None:
    job = fresh_job()
    job.run_at = 100.0
    assert job.extras is NO_EXTRAS
    job.run_at = 105.0
    assert job.run_at == 105.0 and job.extras.run_at == 105.0


def test_the_shared_extras_refuse_a_write() -> None:
    with pytest.raises(AttributeError):
        NO_EXTRAS.result = b"x"
    assert NO_EXTRAS.result is None


def test_a_watched_job_has_no_extras_and_errors_go_to_its_own() -> None:
    job = fresh_job()
    assert job.take_watchers() == []
    watcher, other = object(), object()
    job.add_watcher(watcher)
    job.add_watcher(watcher)
    assert job.extras is NO_EXTRAS
    assert job.take_watchers() == [watcher]
    job.add_watcher(watcher)
    job.add_watcher(other)
    assert job.take_watchers() == [watcher, other]
    assert job.take_watchers() == []
    assert fresh_job().error_count == 0 and fresh_job().last_error is None
    job.add_error({"type": "E", "message": "m", "traceback": ""})
    assert job.error_count == 1 and job.last_error is not None


@pytest.mark.parametrize("priority", [-3, 0, 1, 2**40])
def test_the_priority_is_read_back_from_the_order_key(priority: int) -> None:
    job = make_job("j1", "add", b"", "q", priority, 12345, 3, None, 30.0, 1.0)
    assert job.priority == priority


def test_ready_jobs_go_out_by_priority_then_submission_across_tasks() -> None:
    manager = JobManager(ManagerConfig(), id_prefix="t")
    low, _ = submit_job(manager, "a", b"", 1.0, priority=-1)
    first, _ = submit_job(manager, "b", b"", 1.0)
    high, _ = submit_job(manager, "a", b"", 1.0, priority=5)
    second, _ = submit_job(manager, "a", b"", 1.0)
    consumer = Consumer(NullSink(), ["default"], "c")
    manager.attach(consumer)
    manager.grant(consumer, 4, 2.0)
    assert list(consumer.jobs) == [high.id, first.id, second.id, low.id]
    assert all(job.owner is consumer and job.started_at == 2.0 for job in consumer.jobs.values())


def test_generated_ids_are_short_enough_for_the_smallest_string() -> None:
    """Eight hex digits, a hyphen and the counter: 15 characters up to 16**6 jobs,
    the most a str can hold in 64 bytes."""
    manager = JobManager(ManagerConfig())
    job, _ = submit_job(manager, "add", b"", 1.0)
    prefix, counter = job.id.split("-")
    assert len(prefix) == 8 and int(prefix, 16) >= 0
    assert counter == "1"
    assert len(f"{prefix}-{16**6 - 1:x}") == 15


def test_replay_restores_jobs_with_and_without_extras() -> None:
    manager = JobManager(ManagerConfig(), id_prefix="r")
    plain, _ = submit_job(manager, "add", b"\x01", 1.0, priority=2)
    rich, _ = submit_job(
        manager, "add", b"\x02", 1.0, delay=5.0, result_ttl=0.0, unique_key="k", timeout=3
    )
    child, _ = submit_job(manager, "add", b"\x03", 1.0, depends_on=(plain.id,))
    records = [submitted_record(job) for job in (plain, rich, child)]
    replayed: dict[str, Job] = {}
    replay(records, replayed)
    back = replayed[plain.id]
    assert back.extras is NO_EXTRAS
    assert (back.priority, back.key, back.kind) == (2, plain.key, plain.kind)
    again = replayed[rich.id]
    assert (again.run_at, again.result_ttl, again.unique, again.timeout) == (
        6.0,
        0.0,
        rich.unique,
        3.0,
    )
    assert again.state is JobState.DELAYED
    assert replayed[child.id].depends_on == (plain.id,)
    assert replayed[child.id].state is JobState.WAITING

    # Through a snapshot, and a change that finishes the job.
    rich.state = JobState.SUCCEEDED
    rich.result = b"\x05"
    rich.finished_at = 9.0
    from_snapshot: dict[str, Job] = {}
    replay([snapshot_record(plain), snapshot_record(rich)], from_snapshot)
    assert from_snapshot[plain.id].extras is NO_EXTRAS
    done = from_snapshot[rich.id]
    assert (done.state, done.result, done.finished_at, done.unique) == (
        JobState.SUCCEEDED,
        b"\x05",
        9.0,
        rich.unique,
    )
    replay([changed_record(rich)], replayed)
    assert replayed[rich.id].result == b"\x05"
