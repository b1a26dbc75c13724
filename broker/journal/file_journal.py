"""The file journal: the group-commit writer, the fsync thread, and recovery from a failure.

Records of one loop turn leave in one ``write`` before any reply that depends
on them; fsync runs in a thread and, in ``always`` mode, replies wait for it
(group commit). Records are counted from the start: ``appended``, ``written``
(handed to the OS), ``synced`` (fsync'd); a mark is durable when the count
the fsync mode promises has reached it.

A failed write, fsync or snapshot never raises out of a loop callback: it
sets :attr:`Journal.failure` (``failure.py``) and the current file is not
written again (after a failed fsync its dirty pages may be gone, after a
partial write its tail is torn). Records appended meanwhile are not durable.
Recovery is a *rebase*, retried on a backoff: a new generation from a full
snapshot of the live state, as compaction writes it. Once durable it covers
every record appended before it began; those appended during it go to the
new generation's journal.

(A little over 400 lines: writing, syncing and the rebase share the counts
and the current file, and splitting them would pass those back and forth.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from broker.durability import FailureListener, StorageFailure
from broker.jobs import Job
from broker.journal.compaction import compact, create_journal, rebase
from broker.journal.config import FsyncMode, JournalConfig
from broker.journal.failure import FailureState
from broker.journal.fileops import FileOps, sync_files
from broker.journal.lock import DirectoryLock
from broker.journal.recovery import recover
from broker.journal.sink import RecordSink
from broker.manager.metrics import Histogram

log = logging.getLogger("broker.journal")


class Journal(RecordSink):
    """The file :class:`~broker.journal.backend.JournalBackend`: DIR's journals and snapshots."""

    def __init__(self, config: JournalConfig, ops: FileOps | None = None) -> None:
        self.config = config
        self.directory = config.directory
        self._ops = ops if ops is not None else FileOps()
        self._lock = DirectoryLock(self.directory)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self.generation = 0
        self._buffer = bytearray()
        self._flush_scheduled = False
        # Records appended, written to the OS, and fsync'd, counted from the start.
        self.appended = 0
        self.written = 0
        self.synced = 0
        self.journal_bytes = 0
        self.snapshot_bytes = 0
        # How long each fsync took (for /metrics).
        self.fsync_seconds = Histogram()
        # The fsync running in a thread, if any: one at a time.
        self._sync_in_flight: asyncio.Future[None] | None = None
        # Journal files replaced by a newer generation, awaiting their last fsync.
        self._retired: list[int] = []
        # A journal file was created since the directory was last fsync'd.
        self._directory_dirty = False
        self._durable_waiters: list[tuple[int, Callable[[], None]]] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        self._jobs_view: Callable[[], dict[str, Job]] | None = None
        self._settings_view: Callable[[], dict[str, Any]] | None = None
        # The broker settings recovered by open().
        self.settings: dict[str, Any] = {}
        self._compaction: asyncio.Task[None] | None = None
        self._closed = False
        self.compactions = 0
        # The failed state and its recovery.
        self._failed = FailureState(config.retry_base, config.retry_cap)
        self._rebase_task: asyncio.Task[None] | None = None
        self.rebases = 0

    # -- opening and closing --

    def open(self) -> dict[str, Job]:
        """Take the writer role (lock the directory) and recover; the recovered jobs by id."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            recovered = recover(self.directory, self.config.repair, remove_temporary=True)
        except BaseException:
            self._lock.release()
            raise
        self.generation = recovered.generation
        self.snapshot_bytes = recovered.snapshot_bytes
        self.journal_bytes = recovered.journal_bytes
        self.settings = recovered.settings
        return recovered.jobs

    def recovered_settings(self) -> dict[str, Any]:
        return self.settings

    def start(
        self,
        jobs_view: Callable[[], dict[str, Job]],
        settings_view: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Begin a new generation and write from the running loop."""
        self._loop = asyncio.get_running_loop()
        self._jobs_view = jobs_view
        self._settings_view = settings_view
        self._open_generation(self.generation + 1)
        if self.config.fsync is FsyncMode.BATCH:
            self._batch_timer = self._loop.call_later(self.config.fsync_interval, self._batch_sync)

    def compact_soon(self) -> None:
        """Snapshot the state in the background (after recovery: so the next start reads
        the live state, not the history)."""
        if self._loop is not None and self._failed.current is None and not self._compacting():
            self._compaction = self._loop.create_task(self._compact(self.generation))

    def _compacting(self) -> bool:
        return self._compaction is not None and not self._compaction.done()

    def _open_generation(self, generation: int) -> None:
        """Switch to a new journal file. Its fsync, the directory's, and the last one
        of the file it replaces happen in the sync thread (:func:`sync_files`)."""
        fd = create_journal(self._ops, self.directory, generation)
        if self._fd >= 0:
            # Its unsynced records still need their fsync: the sync thread
            # does it, then closes it; a sync in flight may be using it now.
            self._retired.append(self._fd)
        self._fd = fd
        self._directory_dirty = True
        self.generation = generation
        self.journal_bytes = 0
        self._start_sync()

    def _close_files(self) -> None:
        """Close the current and retired journals, writing nothing more to them."""
        for fd in [*self._retired, self._fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    self._ops.close(fd)
        self._retired = []
        self._fd = -1

    def abandon(self) -> None:
        """Release the directory after a failed start, writing nothing more."""
        self._closed = True
        for task in (self._compaction, self._rebase_task):
            if task is not None:
                task.cancel()
        self._failed.cancel_retry()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        self._close_files()
        self._lock.release()

    async def close(self) -> None:
        """Write and fsync everything, stop compaction, release the directory.

        While storage has failed, what is not durable stays so: it is logged,
        and waiters for it are not released.
        """
        if self._closed:
            return
        self._closed = True
        self._failed.cancel_retry()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        for task in (self._compaction, self._rebase_task):
            if task is not None:
                task.cancel()
                # gather() swallows the task's cancellation, not ours.
                await asyncio.gather(task, return_exceptions=True)
        self.flush_writes()
        while self._sync_in_flight is not None:
            await asyncio.gather(self._sync_in_flight, return_exceptions=True)
        if self._failed.current is None and self._fd >= 0:
            assert self._loop is not None
            retired, self._retired = self._retired, []
            directory = self.directory if self._directory_dirty else None
            try:
                await self._loop.run_in_executor(
                    None, sync_files, self._ops, retired, self._fd, directory
                )
            except OSError as error:
                self._fail("fsync", error)
            else:
                self.synced = self.written
                self._release_waiters()
        if self._failed.current is not None:
            log.error(
                "closing the journal while %s: the last %d changes are not on disk",
                self._failed.current.describe(),
                self.appended - self._durable_count(),
            )
        self._close_files()
        self._lock.release()

    # -- the manager's sink (RecordSink) --

    def _append(self, record: bytes) -> None:
        self._buffer += record
        self.appended += 1
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush_writes)

    # -- the durability gate --

    @property
    def failure(self) -> StorageFailure | None:
        return self._failed.current

    def add_failure_listener(self, listener: FailureListener) -> None:
        self._failed.listeners.append(listener)

    def is_durable(self, mark: int) -> bool:
        """Whether the first ``mark`` records are as durable as the fsync mode promises.

        Hands records not yet written to the OS first, so in ``batch`` and
        ``off`` mode a mark is durable once this returns (unless storage failed).
        """
        if self.written < mark and self._buffer:
            self.flush_writes()
        return self._durable_count() >= mark

    def when_durable(self, mark: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once the first ``mark`` records are durable."""
        if self.is_durable(mark):
            if self._loop is not None:
                self._loop.call_soon(callback)
            else:
                callback()
            return
        self._durable_waiters.append((mark, callback))
        self._start_sync()

    def _durable_count(self) -> int:
        return self.synced if self.config.fsync is FsyncMode.ALWAYS else self.written

    def _release_waiters(self) -> None:
        if not self._durable_waiters:
            return
        durable = self._durable_count()
        ready = [cb for mark, cb in self._durable_waiters if mark <= durable]
        self._durable_waiters = [(m, cb) for m, cb in self._durable_waiters if m > durable]
        for callback in ready:
            callback()

    def stats(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "journal_bytes": self.journal_bytes,
            "snapshot_bytes": self.snapshot_bytes,
            "compactions": self.compactions,
            "rebases": self.rebases,
            "fsync": self.config.fsync.value,
            "appended": self.appended,
            "durable": self._durable_count(),
            "failure": self._failed.as_dict(),
        }

    # -- writing and syncing --

    def flush_writes(self) -> None:
        """Hand every appended record to the OS: after this a process crash loses none."""
        self._flush_scheduled = False
        if not self._buffer or self._fd < 0 or self._failed.current is not None:
            return
        data = self._buffer
        self._buffer = bytearray()
        try:
            self._ops.write_all(self._fd, memoryview(data))
        except OSError as error:
            # Whatever part was written is a torn tail recovery drops; the file
            # is not written again, and the rebase covers these records.
            self._fail("write", error)
            return
        self.written = self.appended
        self.journal_bytes += len(data)
        if self.config.fsync is FsyncMode.ALWAYS:
            self._start_sync()
        self._maybe_compact()

    def _start_sync(self) -> None:
        if (
            self._sync_in_flight is not None
            or self._fd < 0
            or self._loop is None
            or self._failed.current is not None
        ):
            return
        if self.synced >= self.written and not self._retired and not self._directory_dirty:
            return
        target = self.written
        retired, self._retired = self._retired, []
        directory = self.directory if self._directory_dirty else None
        self._directory_dirty = False
        future = self._loop.run_in_executor(
            None, sync_files, self._ops, retired, self._fd, directory
        )
        self._sync_in_flight = future
        started = time.monotonic()
        future.add_done_callback(lambda done: self._synced(done, target, started))

    def _synced(self, done: asyncio.Future[None], target: int, started: float) -> None:
        self._sync_in_flight = None
        if done.cancelled():
            return
        self.fsync_seconds.observe(time.monotonic() - started)
        error = done.exception()
        if error is not None:
            # The OS may have dropped the dirty pages: nothing unsynced can be trusted.
            self._fail("fsync", error)
            return
        self.synced = max(self.synced, target)
        self._release_waiters()
        if self._retired or (
            self.synced < self.written
            and (self._durable_waiters or self.config.fsync is FsyncMode.ALWAYS)
        ):
            self._start_sync()

    def _batch_sync(self) -> None:
        assert self._loop is not None
        self._start_sync()
        self._batch_timer = self._loop.call_later(self.config.fsync_interval, self._batch_sync)

    # -- failure and recovery --

    def _fail(self, operation: str, error: BaseException) -> None:
        """Storage failed: enter (or stay in) the failed state and retry by rebasing."""
        self._failed.fail(operation, error)
        if self._closed or self._loop is None or self._rebase_task is not None:
            return  # a running rebase schedules the next attempt itself if it fails
        self._failed.retry_later(self._loop, self._start_rebase)

    def _start_rebase(self) -> None:
        if not self._closed and self._loop is not None:
            self._rebase_task = self._loop.create_task(self._rebase())

    async def _rebase(self) -> None:
        """A new generation from a full snapshot of the live state (see the module's doc)."""
        assert self._jobs_view is not None
        if self._compaction is not None:
            await asyncio.gather(self._compaction, return_exceptions=True)
        while self._sync_in_flight is not None:
            await asyncio.gather(self._sync_in_flight, return_exceptions=True)
        covered = self.appended  # the snapshot will hold the effect of all of these
        self._buffer = bytearray()
        self._close_files()
        self.generation += 1
        try:
            fd, snapshot = await rebase(
                self._ops, self.directory, self.generation, self._jobs_view, self._settings_view
            )
        except OSError as error:
            self._rebase_task = None
            self._fail("snapshot", error)
            return
        self._rebase_task = None
        self._fd = fd
        # The snapshot's directory fsync came after the journal file was created.
        self._directory_dirty = False
        self.journal_bytes = 0
        self.snapshot_bytes = snapshot.size
        self.rebases += 1
        self.written = max(self.written, covered)
        self.synced = max(self.synced, covered)
        self._failed.set(None)
        self.flush_writes()  # the records appended while the snapshot was written
        self._release_waiters()

    # -- compaction --

    async def compact_now(self) -> None:
        """Start a new generation and write its snapshot now (waits for a running one first)."""
        if self._compaction is not None and not self._compaction.done():
            await asyncio.shield(self._compaction)
        if self._begin_compaction():
            assert self._compaction is not None
            await asyncio.shield(self._compaction)

    def _maybe_compact(self) -> None:
        if self._compacting() or self._closed:
            return
        threshold = max(
            self.config.compact_min_bytes, self.config.compact_ratio * self.snapshot_bytes
        )
        if self.journal_bytes > threshold:
            self._begin_compaction()

    def _begin_compaction(self) -> bool:
        if self._loop is None or self._failed.current is not None:
            return False
        try:
            self._open_generation(self.generation + 1)
        except OSError as error:
            self._fail("write", error)
            return False
        self._compaction = self._loop.create_task(self._compact(self.generation))
        return True

    async def _compact(self, generation: int) -> None:
        """Snapshot into generation ``generation``; records of changes made meanwhile go
        to journal-<generation>, which recovery replays over the snapshot."""
        assert self._jobs_view is not None
        try:
            snapshot = await compact(
                self._ops, self.directory, generation, self._jobs_view, self._settings_view
            )
        except OSError as error:
            self._fail("snapshot", error)
            return
        self.snapshot_bytes = snapshot.size
        self.compactions += 1
