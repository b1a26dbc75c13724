"""Storage failures: a failed write, fsync or snapshot becomes a state, and a rebase recovers.

Faults are injected through the journal's :class:`FileOps` (no patching of
``os``); one test fills a real tmpfs when running as root.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.durability import StorageFailure
from broker.jobs import Job
from broker.journal import FileOps, FsyncMode, Journal, JournalBackend, JournalConfig
from broker.journal.failure import FailureState
from broker.manager import Consumer, JobManager, ManagerConfig
from tests.builders import submit_job
from tests.faulty_storage import FaultyOps, Listener, tmpfs
from tests.test_journal import NullSink, summary

WAIT = 10.0


@dataclass
class Rig:
    journal: Journal
    manager: JobManager
    listener: Listener
    consumer: Consumer

    def submit(self, n: int, size: int = 10) -> list[str]:
        return [submit_job(self.manager, "t", bytes(size), 1000.0 + i)[0].id for i in range(n)]

    def durable_now(self) -> bool:
        return self.journal.is_durable(self.journal.appended)

    async def wait_durable(self, mark: int) -> None:
        released = asyncio.Event()
        self.journal.when_durable(mark, released.set)
        async with asyncio.timeout(WAIT):
            await released.wait()


@asynccontextmanager
async def rig(
    directory: Path, ops: FileOps, fsync: FsyncMode = FsyncMode.BATCH
) -> AsyncIterator[Rig]:
    config = JournalConfig(directory, fsync=fsync, retry_base=0.005, retry_cap=0.05)
    journal = Journal(config, ops)
    manager = JobManager(ManagerConfig(), id_prefix="f")
    journal.open()
    journal.start(lambda: manager.jobs)
    manager.journal = journal
    listener = Listener()
    journal.add_failure_listener(listener)
    consumer = Consumer(NullSink(), ["default"], "c")
    manager.attach(consumer)
    try:
        yield Rig(journal, manager, listener, consumer)
    finally:
        await journal.close()


def reopened(directory: Path) -> dict[str, Job]:
    journal = Journal(JournalConfig(directory))
    try:
        return journal.open()
    finally:
        journal.abandon()


def run_and_fail_some(r: Rig, now: float) -> None:
    """A running job's reports: the only records a broker adds while storage failed."""
    r.manager.grant(r.consumer, 2, now)
    held = list(r.consumer.jobs.values())
    if held:
        r.manager.ack(r.consumer, held[0].id, held[0].attempts, b"\x01", now)
    if len(held) > 1:
        error = {"type": "E", "message": "boom", "traceback": ""}
        r.manager.fail(r.consumer, held[1].id, held[1].attempts, error, now, 0.0)


async def fail_and_recover(
    tmp_path: Path,
    fsync: FsyncMode,
    inject: Callable[[FaultyOps], None],
    trigger: Callable[[Rig], object],
    operation: str,
    cause: str,
) -> None:
    """The shared scenario: records made durable, a fault, records held, recovery, reopen."""
    ops = FaultyOps()
    async with rig(tmp_path, ops, fsync) as r:
        before = r.submit(5)
        await r.wait_durable(r.journal.appended)

        inject(ops)
        held_mark = r.journal.appended + 1
        awaited = trigger(r)
        if asyncio.iscoroutine(awaited):
            await awaited
        r.submit(1)
        run_and_fail_some(r, 2000.0)
        await r.listener.failed()
        failure = r.journal.failure
        assert failure is not None
        assert (failure.operation, failure.cause) == (operation, cause)
        assert r.journal.stats()["failure"]["cause"] == cause
        assert not r.journal.is_durable(held_mark)
        assert not r.journal.is_durable(r.journal.appended)
        released = asyncio.Event()
        r.journal.when_durable(r.journal.appended, released.set)
        # Rebases are retried and fail the same way: nothing new is announced.
        await ops.raised_at_least(ops.raised + 3)
        run_and_fail_some(r, 2001.0)
        assert not released.is_set()
        assert r.listener.seen == [failure]

        ops.clear()
        await r.listener.cleared()
        async with asyncio.timeout(WAIT):
            await released.wait()
        assert r.journal.failure is None
        assert r.listener.seen == [failure, None]
        assert r.durable_now() or fsync is FsyncMode.ALWAYS
        assert r.journal.stats()["rebases"] == 1

        after = r.submit(3)
        run_and_fail_some(r, 2002.0)
        await r.wait_durable(r.journal.appended)
        live = summary(r.manager.jobs)
    back = reopened(tmp_path)
    assert set(before + after) <= set(back)
    assert summary(back) == live


async def test_a_full_disk_on_write_is_a_failure_until_a_rebase_succeeds(tmp_path: Path) -> None:
    await fail_and_recover(
        tmp_path,
        FsyncMode.BATCH,
        lambda ops: ops.inject("write", "*", errno.ENOSPC),
        lambda r: r.submit(1),
        "write",
        "no space left on device",
    )


async def test_a_failed_fsync_in_always_mode_holds_acknowledgements_until_a_rebase(
    tmp_path: Path,
) -> None:
    await fail_and_recover(
        tmp_path,
        FsyncMode.ALWAYS,
        lambda ops: ops.inject("fsync", "*", errno.EIO),
        lambda r: r.submit(1),
        "fsync",
        "input/output error",
    )


async def test_a_failed_snapshot_during_compaction_is_a_failure_until_a_rebase(
    tmp_path: Path,
) -> None:
    await fail_and_recover(
        tmp_path,
        FsyncMode.BATCH,
        lambda ops: ops.inject("write", "*.tmp", errno.ENOSPC),
        lambda r: r.journal.compact_now(),
        "snapshot",
        "no space left on device",
    )


@pytest.mark.parametrize("rebases_tried", [False, True])
async def test_a_crash_while_storage_failed_recovers_every_acknowledged_change(
    tmp_path: Path, rebases_tried: bool
) -> None:
    """The half-written record is a torn tail; failed rebases leave nothing misleading."""
    ops = FaultyOps()
    retry = 0.005 if rebases_tried else 60.0
    config = JournalConfig(tmp_path, retry_base=retry, retry_cap=retry)
    journal = Journal(config, ops)
    manager = JobManager(ManagerConfig(), id_prefix="t")
    journal.open()
    journal.start(lambda: manager.jobs)
    manager.journal = journal
    acknowledged = [submit_job(manager, "t", b"x", 1.0)[0].id for _ in range(3)]
    assert journal.is_durable(journal.appended)
    ops.inject("write", "*", errno.ENOSPC)
    submit_job(manager, "t", bytes(500), 2.0)
    assert not journal.is_durable(journal.appended)
    if rebases_tried:
        await ops.raised_at_least(4)
    journal.abandon()  # as if the process died here
    back = reopened(tmp_path)
    assert sorted(back) == sorted(acknowledged)


async def test_the_file_journal_is_a_journal_backend(tmp_path: Path) -> None:
    backend: JournalBackend = Journal(JournalConfig(tmp_path, fsync=FsyncMode.ALWAYS))
    manager = JobManager(ManagerConfig(), id_prefix="b")
    assert backend.open() == {}
    backend.start(lambda: manager.jobs)
    manager.journal = backend
    submit_job(manager, "t", b"", 1.0)
    mark = backend.appended
    assert mark == 1
    released = asyncio.Event()
    backend.when_durable(mark, released.set)
    async with asyncio.timeout(WAIT):
        await released.wait()
    assert backend.is_durable(mark)
    assert backend.failure is None
    stats = backend.stats()
    assert stats["fsync"] == "always"
    assert stats["failure"] is None
    assert {"generation", "journal_bytes", "snapshot_bytes", "compactions"} <= set(stats)
    await backend.close()
    assert list(reopened(tmp_path)) == list(manager.jobs)


async def test_a_real_full_file_system(tmp_path: Path) -> None:
    """A 3 MiB tmpfs: fill it, see the failure, free space, see the recovery, reopen."""
    directory = tmp_path / "small"
    with tmpfs(directory, "3m"):
        ballast = directory / "ballast"
        ballast.write_bytes(bytes(2 * 1024 * 1024))
        async with rig(directory, FileOps()) as r:
            acknowledged: list[str] = []
            for i in range(200):
                job, _ = submit_job(r.manager, "t", bytes(32 * 1024), 1000.0 + i)
                if not r.durable_now():
                    break
                acknowledged.append(job.id)
            failure = r.journal.failure
            assert failure is not None
            assert failure.cause == "no space left on device"
            assert acknowledged
            released = asyncio.Event()
            r.journal.when_durable(r.journal.appended, released.set)
            ballast.unlink()
            await r.listener.cleared()
            async with asyncio.timeout(WAIT):
                await released.wait()
            live = summary(r.manager.jobs)
        back = reopened(directory)
        assert set(acknowledged) <= set(back)
        assert summary(back) == live


def test_listeners_hear_each_change_of_the_failure_once() -> None:
    state = FailureState(0.1, 5.0)
    heard: list[StorageFailure | None] = []
    state.listeners.append(heard.append)
    state.fail("write", OSError(errno.ENOSPC, "No space left on device"))
    state.fail("snapshot", OSError(errno.ENOSPC, "No space left on device"))  # same cause
    state.fail("fsync", OSError(errno.EIO, "Input/output error"))
    state.set(None)
    state.set(None)
    assert [(f.operation, f.cause) if f else None for f in heard] == [
        ("write", "no space left on device"),
        ("fsync", "input/output error"),
        None,
    ]
    assert state.as_dict() is None
