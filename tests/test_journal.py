"""The journal on its own: codec, torn tails, corruption, and replay equal to the live state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.jobs import Job, JobState, make_job
from broker.journal import (
    HEADER,
    KIND_JOURNAL,
    KIND_SNAPSHOT,
    SNAPSHOT_END,
    DirectoryLock,
    JournalCorrupt,
    JournalError,
    changed_record,
    deleted_record,
    encode_record,
    file_header,
    read_records,
    recover,
    replay,
    reserved_record,
    setting_record,
    snapshot_record,
    submitted_record,
)
from broker.manager import Consumer, JobManager, ManagerConfig
from tests.builders import submit_job

PATH = Path("journal-1.jwj")


class RecordingJournal:
    """The manager's journal sink, keeping encoded records in memory."""

    def __init__(self) -> None:
        self.data = bytearray(file_header(KIND_JOURNAL))
        # Where each record starts: a replay may begin at any of them.
        self.starts: list[int] = []

    def _add(self, record: list[Any]) -> None:
        self.starts.append(len(self.data))
        self.data += encode_record(record)

    def job_submitted(self, job: Job) -> None:
        self._add(submitted_record(job))

    def job_changed(self, job: Job) -> None:
        self._add(changed_record(job))

    def job_deleted(self, job_id: str) -> None:
        self._add(deleted_record(job_id))

    def job_reserved(self, job: Job) -> None:
        self._add(reserved_record(job))

    def setting_changed(self, key: str, value: Any) -> None:
        self._add(setting_record(key, value))

    def suffix(self, start: int) -> list[list[Any]]:
        """The records from byte offset ``start`` on (a record boundary)."""
        return read_records(file_header(KIND_JOURNAL) + bytes(self.data[start:]),
                            KIND_JOURNAL, PATH).records  # fmt: skip


class NullSink:
    def deliver(self, job: Job) -> None:
        pass

    def revoke(self, job: Job) -> None:
        pass


FIELDS = (
    "id",
    "task",
    "payload",
    "queue",
    "priority",
    "key",
    "max_attempts",
    "timeout",
    "lease",
    "created_at",
    "state",
    "attempts",
    "run_at",
    "started_at",
    "finished_at",
    "result",
    "errors",
    "error_count",
    "depends_on",
    "unique",
)


def summary(jobs: dict[str, Job]) -> dict[str, tuple[Any, ...]]:
    return {
        job_id: tuple(
            (job.errors or None) if name == "errors" else getattr(job, name) for name in FIELDS
        )
        for job_id, job in jobs.items()
    }


def journal_bytes(records: list[list[Any]]) -> bytes:
    return file_header(KIND_JOURNAL) + b"".join(encode_record(r) for r in records)


def sample_records() -> list[list[Any]]:
    job = make_job("j1", "echo", b"\x92\x90\x80", "default", 3, 7, 3, None, 60.0, 100.0)
    records = [submitted_record(job)]
    job.state = JobState.RUNNING
    job.attempts = 1
    records.append(changed_record(job))
    job.state = JobState.SUCCEEDED
    job.result = b"\x01"
    job.finished_at = 101.0
    records.append(changed_record(job))
    return records


def test_records_round_trip_with_header_and_checksums() -> None:
    records = sample_records()
    data = journal_bytes(records)
    assert data[: HEADER.size] == b"JOBWIRE\x00JRNL\x00\x00\x00\x03"
    result = read_records(data, KIND_JOURNAL, PATH)
    assert result.records == records
    assert result.torn_at is None
    assert result.good_until == len(data)


def test_a_torn_last_record_at_every_byte_offset_is_dropped() -> None:
    records = sample_records()
    whole = journal_bytes(records)
    last_start = len(journal_bytes(records[:-1]))
    for cut in range(last_start, len(whole)):
        result = read_records(whole[:cut], KIND_JOURNAL, PATH)
        assert result.records == records[:-1], cut
        assert result.torn_at == (last_start if cut > last_start else None), cut
        assert result.good_until == last_start


def test_a_damaged_last_record_or_zero_filled_tail_is_a_torn_tail() -> None:
    records = sample_records()
    whole = bytearray(journal_bytes(records))
    last_start = len(journal_bytes(records[:-1]))
    whole[-1] ^= 0xFF  # the last record's body is garbage: its checksum fails
    assert read_records(bytes(whole), KIND_JOURNAL, PATH).torn_at == last_start
    zero_tail = journal_bytes(records) + bytes(300)
    result = read_records(zero_tail, KIND_JOURNAL, PATH)
    assert result.records == records
    assert result.torn_at == len(journal_bytes(records))


def test_damage_before_the_end_is_corruption_naming_file_and_offset() -> None:
    records = sample_records()
    data = bytearray(journal_bytes(records))
    second = len(journal_bytes(records[:1]))
    data[second + 9] ^= 0xFF  # inside the second record's body
    with pytest.raises(JournalCorrupt) as info:
        read_records(bytes(data), KIND_JOURNAL, PATH)
    assert info.value.offset == second
    assert "journal-1.jwj is corrupt at byte offset" in str(info.value)
    assert "--repair-journal" in str(info.value)


def test_wrong_kind_and_version_are_refused() -> None:
    data = journal_bytes(sample_records())
    with pytest.raises(JournalCorrupt):
        read_records(data, KIND_SNAPSHOT, PATH)
    newer = HEADER.pack(b"JOBWIRE\x00", KIND_JOURNAL, 99) + data[HEADER.size :]
    with pytest.raises(JournalError, match="format version 99"):
        read_records(newer, KIND_JOURNAL, PATH)


def test_recover_truncates_a_torn_tail_and_repair_truncates_corruption(tmp_path: Path) -> None:
    records = sample_records()
    good = journal_bytes(records[:2])
    path = tmp_path / "journal-1.jwj"
    path.write_bytes(journal_bytes(records)[:-3])
    recovered = recover(tmp_path)
    assert recovered.jobs["j1"].state is JobState.RUNNING
    assert path.read_bytes() == good

    damaged = bytearray(journal_bytes(records))
    damaged[len(journal_bytes(records[:1])) + 9] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(JournalCorrupt):
        recover(tmp_path)
    recovered = recover(tmp_path, repair=True)
    assert recovered.jobs["j1"].state is JobState.QUEUED
    assert path.read_bytes() == journal_bytes(records[:1])


def test_recover_uses_the_newest_complete_snapshot_and_later_journals(tmp_path: Path) -> None:
    job = make_job("j1", "echo", b"", "q", 0, 1, 3, None, 60.0, 1.0)
    snap = file_header(KIND_SNAPSHOT) + encode_record(snapshot_record(job))
    (tmp_path / "snapshot-2.jws").write_bytes(snap + encode_record([SNAPSHOT_END, 1]))
    (tmp_path / "snapshot-3.jws").write_bytes(snap)  # incomplete: no end record
    job.state = JobState.RUNNING
    job.attempts = 1
    (tmp_path / "journal-1.jwj").write_bytes(b"not even a journal")  # older: ignored
    (tmp_path / "journal-3.jwj").write_bytes(journal_bytes([changed_record(job)]))
    recovered = recover(tmp_path)
    assert recovered.generation == 3
    assert recovered.jobs["j1"].attempts == 1


def test_two_locks_on_one_directory(tmp_path: Path) -> None:
    first = DirectoryLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(JournalError, match="in use by another broker"):
            DirectoryLock(tmp_path).acquire()
    finally:
        first.release()
    second = DirectoryLock(tmp_path)
    second.acquire()
    second.release()


def expired_dropped(jobs: dict[str, Job], live: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """The summary of ``jobs`` without the finished jobs the live state dropped by time."""
    for job_id in set(jobs) - set(live):
        assert jobs[job_id].state in (JobState.SUCCEEDED, JobState.CANCELLED)
        del jobs[job_id]
    return summary(jobs)


operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["submit", "delay", "grant", "ack", "fail", "retry_in", "release", "cancel", "tick",
             "detach", "retry_failed", "purge", "snapshot_point", "full_snapshot",
             "pause", "resume", "limit", "child", "child", "unique"]
        ),
        st.integers(0, 50),
        # Time passed before the operation: often none, so errors can share a time.
        st.sampled_from([0.0, 0.0, 0.5, 3.0]),
    ),
    # Long enough for a job to fail more than once, with a snapshot in between.
    min_size=20,
    max_size=80,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(0, 2**32))
def test_replaying_the_journal_gives_the_live_state(
    history: list[tuple[str, int, float]], rng_seed: int
) -> None:
    """Any history; snapshots taken at any point, whole or job by job while the history
    goes on; the journal, replayed from any record before a snapshot began over that
    snapshot, gives the live state (errors and their count included)."""
    rng = random.Random(rng_seed)
    sink = RecordingJournal()
    manager = JobManager(
        ManagerConfig(max_failed=5, result_ttl=50.0, backoff_base=1.0),
        rng=random.Random(1),
        id_prefix="h",
    )
    manager.journal = sink
    consumers = [Consumer(NullSink(), ["default", "other"], f"c{i}") for i in range(2)]
    for consumer in consumers:
        manager.attach(consumer)
    now = 1000.0
    snapshot_ids: list[str] | None = None
    snapshot_parts: list[bytes] = []
    journal_mark = 0
    # Whole snapshots: their records and the journal offset when each was taken.
    full_snapshots: list[tuple[list[list[Any]], int]] = []
    for op, n, step in history:
        now += step
        consumer = consumers[n % 2]
        held = list(consumer.jobs.values())
        if op == "submit":
            queue = ("default", "other")[n % 2]
            submit_job(
                manager, "t", bytes([n]), now, priority=n % 3, queue=queue, max_attempts=1 + n % 4
            )
        elif op == "delay":
            submit_job(manager, "t", b"", now, delay=1 + n % 5, job_id=f"d{n % 7}")
        elif op == "grant":
            manager.grant(consumer, 1 + n % 3, now)
        elif op in ("ack", "fail", "retry_in", "release") and held:
            job = held[n % len(held)]
            if op == "ack":
                manager.ack(consumer, job.id, job.attempts, bytes([n]), now)
            elif op == "release":
                manager.release(consumer, job.id, job.attempts, now)
            else:
                error = {"type": "E", "message": str(n), "traceback": ""}
                manager.fail(consumer, job.id, job.attempts, error, now,
                             0.0 if op == "retry_in" else None)  # fmt: skip
        elif op == "cancel" and manager.jobs:
            manager.cancel(sorted(manager.jobs)[n % len(manager.jobs)], now)
        elif op == "tick":
            manager.tick(now)
            manager.expire_leases(now)
        elif op == "detach":
            manager.detach(consumer, now, "test")
            manager.attach(consumer)
        elif op == "retry_failed":
            manager.retry_failed(None, now)
        elif op == "purge":
            manager.purge_failed()
        elif op == "pause":
            manager.pause_queue(("default", "other")[n % 2])
        elif op == "resume":
            manager.resume_queue(("default", "other")[n % 2], now)
        elif op == "unique":
            parent = (sorted(manager.jobs)[0],) if manager.jobs and n % 2 else None
            submit_job(manager, "t", b"", now, unique_key=f"u{n % 3}", unique_for=float(n % 4),
                       depends_on=parent)  # fmt: skip
        elif op == "child" and manager.jobs:
            parents = sorted(manager.jobs)
            submit_job(manager, "t", b"", now, depends_on=(parents[n % len(parents)],),
                       delay=float(n % 2))  # fmt: skip
        elif op == "limit":
            kind = ("queue", "task")[n % 2]
            name = ("default", "t")[n % 2]
            manager.set_limits(kind, name, (None, 1, 2)[n % 3], (None, "2/s")[n // 3 % 2], now)
        elif op == "snapshot_point" and snapshot_ids is None:
            snapshot_ids = list(manager.jobs)
            journal_mark = len(sink.data)
        elif op == "full_snapshot":
            records = [setting_record(k, v) for k, v in manager.settings_view().items()]
            records += [snapshot_record(job) for job in manager.jobs.values()]
            full_snapshots.append((records, len(sink.data)))
        # A compaction writes one slice of the snapshot between other work.
        if snapshot_ids:
            for job_id in snapshot_ids[: 1 + n % 3]:
                current = manager.jobs.get(job_id)
                if current is not None:
                    snapshot_parts.append(encode_record(snapshot_record(current)))
            del snapshot_ids[: 1 + n % 3]

    live = summary(manager.jobs)
    replayed: dict[str, Job] = {}
    replayed_settings: dict[str, Any] = {}
    replay(read_records(bytes(sink.data), KIND_JOURNAL, PATH).records, replayed, replayed_settings)
    assert replayed_settings == manager.settings
    # Expired results are dropped by time, not by a record: compare what both still hold.
    for job_id in set(replayed) - set(live):
        assert replayed[job_id].state in (JobState.SUCCEEDED, JobState.CANCELLED)
        finished_at = replayed[job_id].finished_at
        assert finished_at is not None
        assert finished_at + 50.0 <= now
        del replayed[job_id]
    assert summary(replayed) == live

    if snapshot_ids is not None:
        for job_id in snapshot_ids:  # finish the snapshot
            current = manager.jobs.get(job_id)
            if current is not None:
                snapshot_parts.append(encode_record(snapshot_record(current)))
        from_snapshot: dict[str, Job] = {}
        replay(read_records(file_header(KIND_SNAPSHOT) + b"".join(snapshot_parts),
                            KIND_SNAPSHOT, PATH).records, from_snapshot)  # fmt: skip
        replay(sink.suffix(journal_mark), from_snapshot)
        assert expired_dropped(from_snapshot, live) == live

    for records, mark in full_snapshots:
        # Encoded and decoded, as a snapshot file would be.
        encoded = file_header(KIND_SNAPSHOT) + b"".join(encode_record(r) for r in records)
        decoded = read_records(encoded, KIND_SNAPSHOT, PATH).records
        earlier = [start for start in sink.starts if start <= mark] + [mark]
        for start in {mark, rng.choice(earlier)}:
            from_full: dict[str, Job] = {}
            full_settings: dict[str, Any] = {}
            replay(decoded, from_full, full_settings)
            replay(sink.suffix(start), from_full, full_settings)
            assert expired_dropped(from_full, live) == live
            assert full_settings == manager.settings

    # A manager restored from the replay loses nothing: jobs that were running
    # are queued again (or failed, on their last attempt), the rest as they were.
    restored = JobManager(ManagerConfig(max_failed=5, result_ttl=50.0), id_prefix="r")
    restored.restore_settings(replayed_settings)
    assert restored.paused_queues == manager.paused_queues
    assert restored.settings_view() == manager.settings_view()
    assert set(restored.queue_limits) == set(manager.queue_limits)
    assert set(restored.task_limits) == set(manager.task_limits)
    restored.restore(list(replayed.values()), now)
    assert all(job.state is not JobState.RUNNING for job in restored.jobs.values())
    for job_id, job in manager.jobs.items():
        back = restored.jobs.get(job_id)
        if job.state is JobState.RUNNING:
            assert back is not None
            assert back.state is JobState.QUEUED or (
                back.state is JobState.FAILED and back.attempts >= back.max_attempts
            )
            assert back.attempts == job.attempts
        elif job.state in (JobState.QUEUED, JobState.DELAYED, JobState.FAILED):
            assert back is not None
            assert back.state is job.state


def failed_twice(at: tuple[float, float]) -> tuple[JobManager, RecordingJournal, Job]:
    """A job that failed two attempts, at the given times, with every change recorded."""
    sink = RecordingJournal()
    manager = JobManager(ManagerConfig(), id_prefix="e")
    manager.journal = sink
    consumer = Consumer(NullSink(), ["default"], "c")
    manager.attach(consumer)
    job, _ = submit_job(manager, "t", b"", 1.0, max_attempts=5)
    for now in at:
        manager.grant(consumer, 1, now)
        error = {"type": "E", "message": "boom", "traceback": ""}
        assert manager.fail(consumer, job.id, job.attempts, error, now, 0.0)
    assert job.errors is not None
    assert [(e["attempt"], e["at"]) for e in job.errors] == [(1, at[0]), (2, at[1])]
    return manager, sink, job


def test_a_snapshot_taken_between_failures_then_the_journal_keeps_each_error_once() -> None:
    manager, sink, job = failed_twice((2.0, 3.0))
    snapshot = snapshot_record(job)  # taken after both failures
    replayed: dict[str, Job] = {}
    replay([snapshot], replayed)
    replay(sink.suffix(sink.starts[1]), replayed)  # the journal since it was submitted
    assert replayed[job.id].errors == job.errors
    assert replayed[job.id].error_count == 2
    assert summary(replayed) == summary(manager.jobs)


def test_two_errors_at_the_same_time_are_both_replayed() -> None:
    manager, sink, job = failed_twice((2.0, 2.0))
    replayed: dict[str, Job] = {}
    replay(sink.suffix(sink.starts[0]), replayed)
    assert replayed[job.id].errors == job.errors
    assert summary(replayed) == summary(manager.jobs)


def test_more_errors_than_kept_still_replay_exactly() -> None:
    """Only the last 25 errors are kept; the count goes on, and replay agrees."""
    sink = RecordingJournal()
    manager = JobManager(ManagerConfig(), id_prefix="m")
    manager.journal = sink
    consumer = Consumer(NullSink(), ["default"], "c")
    manager.attach(consumer)
    job, _ = submit_job(manager, "t", b"", 1.0, max_attempts=40)
    snapshots: list[tuple[list[Any], int]] = []
    for attempt in range(30):
        manager.grant(consumer, 1, 2.0)
        error = {"type": "E", "message": str(attempt), "traceback": ""}
        manager.fail(consumer, job.id, job.attempts, error, 2.0, 0.0)
        snapshots.append((snapshot_record(job), len(sink.data)))
    assert job.errors is not None
    assert len(job.errors) == 25
    assert job.error_count == 30
    for snapshot, _ in snapshots:
        replayed: dict[str, Job] = {}
        replay([snapshot], replayed)
        replay(sink.suffix(sink.starts[1]), replayed)
        assert summary(replayed) == summary(manager.jobs)


def test_version_1_records_without_an_error_count_are_still_read(tmp_path: Path) -> None:
    """A directory written by the previous format: errors deduplicated by time, as then."""
    job = make_job("j1", "echo", b"", "q", 0, 1, 3, None, 60.0, 1.0)
    error = {"type": "E", "message": "x", "traceback": "", "attempt": 1, "at": 5.0}
    v1_snapshot = snapshot_record(job)[:-1]  # no count
    job.state = JobState.QUEUED
    job.attempts = 1
    v1_changed = changed_record(job)[:-1]
    v1_changed[-1] = error
    header = HEADER.pack(b"JOBWIRE\x00", KIND_SNAPSHOT, 1)
    records = [v1_snapshot, [SNAPSHOT_END, 1]]
    snapshot_file = header + b"".join(encode_record(r) for r in records)
    (tmp_path / "snapshot-1.jws").write_bytes(snapshot_file)
    journal = HEADER.pack(b"JOBWIRE\x00", KIND_JOURNAL, 1) + encode_record(v1_changed) * 2
    (tmp_path / "journal-1.jwj").write_bytes(journal)
    back = recover(tmp_path).jobs["j1"]
    assert back.attempts == 1
    assert back.errors == [error]
    assert back.error_count == 1
