"""Durability: an append-only journal of job changes, snapshots, and recovery.

Layout of a data directory (see ``docs/JOURNAL.md``)::

    LOCK                  held (flock) by the broker using the directory
    snapshot-<gen>.jws    the live state when generation <gen> began
    journal-<gen>.jwj     every change since generation <gen> began

Each file starts with a 16-byte header (magic, kind, format version) and
holds records framed as ``u32 length | u32 crc32(body) | body`` with a
msgpack array for a body. State = the newest complete snapshot, then every
journal of that generation and later, replayed in order. Records carry the
resulting state of a job rather than a delta, so replaying one whose effect
a snapshot already holds changes nothing.

The codec (:func:`encode_record`, :func:`read_records`) is pure. The
:class:`Journal` writes from the event loop: records of one loop turn leave
in one ``write`` before any reply that depends on them; fsync runs in a
thread and, in ``always`` mode, the replies wait for it (group commit).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgpack

from broker.jobs import Job, JobState, order_key, sequence_of
from protocol.framing import packb

log = logging.getLogger("broker.journal")

FORMAT_VERSION = 1
MAGIC = b"JOBWIRE\x00"
KIND_JOURNAL = b"JRNL"
KIND_SNAPSHOT = b"SNAP"
HEADER = struct.Struct(">8s4sI")
RECORD_HEAD = struct.Struct(">II")
# A record larger than this is corruption, not data: frames are far smaller.
MAX_RECORD = 64 * 1024 * 1024

# Record types (the first element of each body).
SUBMITTED = "S"  # a new job, with everything fixed at submit time
CHANGED = "U"  # a job's state after a transition
DELETED = "D"  # a job forgotten (purged, or dropped from the failed list)
RESERVED = "R"  # a job handed to a worker: a short CHANGED for the commonest change
SNAPSHOT_JOB = "J"  # one whole job, in a snapshot
SNAPSHOT_END = "E"  # the last record of a complete snapshot: the job count

# How many jobs a compaction step writes before it lets the loop run again.
COMPACTION_SLICE = 500

_JOURNAL_NAME = re.compile(r"^journal-(\d+)\.jwj$")
_SNAPSHOT_NAME = re.compile(r"^snapshot-(\d+)\.jws$")


class FsyncMode(StrEnum):
    ALWAYS = "always"
    BATCH = "batch"
    OFF = "off"


class JournalError(Exception):
    """The data directory cannot be used as it is; the message says why and what to do."""


class JournalCorrupt(JournalError):
    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(
            f"{path} is corrupt at byte offset {offset}: {reason}. The records after it "
            f"cannot be trusted. To start anyway, keeping everything before that offset, "
            f"run the broker once with --repair-journal (it truncates {path.name} at "
            f"{offset}); or move the data directory aside to start empty."
        )
        self.path = path
        self.offset = offset


# -- the codec -------------------------------------------------------------------


def file_header(kind: bytes) -> bytes:
    return HEADER.pack(MAGIC, kind, FORMAT_VERSION)


def encode_record(body: list[Any]) -> bytes:
    data: bytes = packb(body)
    return RECORD_HEAD.pack(len(data), zlib.crc32(data)) + data


@dataclass(slots=True)
class ReadResult:
    records: list[list[Any]]
    # Offset just past the last good record.
    good_until: int
    # Set when the file ends in an incomplete or damaged last record.
    torn_at: int | None = None


def read_records(data: bytes, kind: bytes, path: Path) -> ReadResult:
    """Every record of a journal or snapshot file's bytes.

    A damaged *last* record (a write the crash cut short) is reported in
    ``torn_at``; damage followed by more data raises :class:`JournalCorrupt`.
    """
    if len(data) < HEADER.size:
        if MAGIC.startswith(data[: len(MAGIC)]):
            return ReadResult([], 0, torn_at=0)  # the crash hit the header itself
        raise JournalCorrupt(path, 0, "not a jobwire file")
    magic, file_kind, version = HEADER.unpack_from(data)
    if magic != MAGIC or file_kind != kind:
        raise JournalCorrupt(path, 0, "not a jobwire file of the expected kind")
    if version != FORMAT_VERSION:
        raise JournalError(
            f"{path} has format version {version}; this broker reads version {FORMAT_VERSION}"
        )
    records: list[list[Any]] = []
    pos = HEADER.size
    end = len(data)
    while pos < end:
        # A crash can leave the last record cut short, or (on some file systems
        # after power loss) followed by zeros: that is a torn tail. Damage with
        # real data after it is corruption.
        if end - pos < RECORD_HEAD.size:
            return ReadResult(records, pos, torn_at=pos)
        length, checksum = RECORD_HEAD.unpack_from(data, pos)
        body_start = pos + RECORD_HEAD.size
        body_end = body_start + length
        if length == 0 or length > MAX_RECORD:
            if _only_zeros(data, pos):
                return ReadResult(records, pos, torn_at=pos)
            raise JournalCorrupt(path, pos, f"impossible record length {length}")
        if body_end > end:
            return ReadResult(records, pos, torn_at=pos)
        body = data[body_start:body_end]
        if zlib.crc32(body) != checksum:
            if body_end == end or _only_zeros(data, body_end):
                return ReadResult(records, pos, torn_at=pos)
            raise JournalCorrupt(path, pos, "checksum mismatch")
        try:
            record = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:
            raise JournalCorrupt(path, pos, f"undecodable record ({exc})") from None
        if not isinstance(record, list) or not record or not isinstance(record[0], str):
            raise JournalCorrupt(path, pos, "record is not a typed array")
        records.append(record)
        pos = body_end
    return ReadResult(records, pos)


def _only_zeros(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


# -- jobs to records and back --------------------------------------------------------


def submitted_record(job: Job) -> list[Any]:
    return [
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
    ]


def snapshot_record(job: Job) -> list[Any]:
    return [
        SNAPSHOT_JOB,
        *submitted_record(job)[1:],
        *changed_record(job)[2:-1],
        list(job.errors or ()),
    ]


def _job_from_submitted(fields: list[Any]) -> Job:
    (job_id, task, payload, queue, priority, seq, attempts_max, timeout, lease, created, run_at) = (
        fields[1:12]
    )
    key = order_key(priority, seq)
    job = Job(job_id, task, payload, queue, priority, key, attempts_max, timeout, lease, created)
    job.run_at = run_at
    job.state = JobState.DELAYED if run_at > created else JobState.QUEUED
    return job


def _apply_change(job: Job, fields: list[Any]) -> None:
    state, attempts, run_at, started_at, finished_at, result, error = fields
    job.state = JobState(state)
    job.attempts = attempts
    job.run_at = run_at
    job.started_at = started_at
    job.finished_at = finished_at
    job.result = result
    if error is not None:
        last = job.last_error
        # A record replayed over a snapshot that already has its error adds nothing.
        if last is None or last.get("at") != error.get("at"):
            job.add_error(error)


def replay(records: list[list[Any]], jobs: dict[str, Job]) -> None:
    """Apply journal or snapshot records to ``jobs`` (by id), in order."""
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
            job.errors = list(record[18]) or None
            jobs[job.id] = job
        elif kind == SNAPSHOT_END:
            pass
        else:
            raise JournalError(f"unknown journal record type {kind!r}")


# -- the directory -----------------------------------------------------------------


@dataclass(slots=True)
class Recovered:
    jobs: dict[str, Job]
    generation: int
    journal_bytes: int
    snapshot_bytes: int


def _generations(directory: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    found = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def recover(directory: Path, repair: bool = False) -> Recovered:
    """Rebuild the jobs from the newest complete snapshot and the journals after it."""
    snapshots = _generations(directory, _SNAPSHOT_NAME)
    journals = _generations(directory, _JOURNAL_NAME)
    jobs: dict[str, Job] = {}
    base = 0
    snapshot_bytes = 0
    for generation in sorted(snapshots, reverse=True):
        path = snapshots[generation]
        data = path.read_bytes()
        result = read_records(data, KIND_SNAPSHOT, path)
        if result.torn_at is None and result.records and result.records[-1][0] == SNAPSHOT_END:
            replay(result.records, jobs)
            base = generation
            snapshot_bytes = len(data)
            break
        log.warning("ignoring incomplete snapshot %s", path)
    journal_bytes = 0
    later = sorted(g for g in journals if g >= base)
    for generation in later:
        path = journals[generation]
        data = path.read_bytes()
        try:
            result = read_records(data, KIND_JOURNAL, path)
        except JournalCorrupt as exc:
            if not repair:
                raise
            log.warning("--repair-journal: truncating %s at %d", path, exc.offset)
            with path.open("r+b") as file:
                file.truncate(exc.offset)
            result = read_records(data[: exc.offset], KIND_JOURNAL, path)
        if result.torn_at is not None:
            log.warning(
                "%s ends in an incomplete record at offset %d (a write the crash cut "
                "short): dropping it and truncating the file there",
                path,
                result.torn_at,
            )
            with path.open("r+b") as file:
                file.truncate(result.torn_at)
        replay(result.records, jobs)
        journal_bytes += result.good_until
    generation = max([base, *later]) if later or base else 0
    return Recovered(jobs, generation, journal_bytes, snapshot_bytes)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryLock:
    """An exclusive ``flock`` on DIR/LOCK, held while the broker runs."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "LOCK"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalError(
                f"{self.path.parent} is in use by another broker (pid {holder}); "
                "two brokers must not share a data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# -- the writer ----------------------------------------------------------------------


@dataclass(slots=True)
class JournalConfig:
    directory: Path
    fsync: FsyncMode = FsyncMode.BATCH
    fsync_interval: float = 0.1
    # Compact when the journal passes this many bytes and this many times
    # the size of the last snapshot.
    compact_min_bytes: int = 64 * 1024 * 1024
    compact_ratio: float = 4.0
    repair: bool = False


class Journal:
    """Appends records for a :class:`~broker.manager.JobManager` (its ``journal`` sink)."""

    def __init__(self, config: JournalConfig) -> None:
        self.config = config
        self.directory = config.directory
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
        # The fsync running in a thread, if any: one at a time.
        self._sync_in_flight: asyncio.Future[None] | None = None
        # Journal files replaced by a newer generation, awaiting their last fsync.
        self._retired: list[int] = []
        # A journal file was created since the directory was last fsync'd.
        self._directory_dirty = False
        self._durable_waiters: list[tuple[int, Callable[[], None]]] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        self._jobs_view: Callable[[], dict[str, Job]] | None = None
        self._compaction: asyncio.Task[None] | None = None
        self._closed = False
        self.compactions = 0

    # -- opening and closing --

    def open(self) -> dict[str, Job]:
        """Lock the directory and recover; returns the recovered jobs by id."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            for stale in self.directory.glob("*.tmp"):
                stale.unlink()
            recovered = recover(self.directory, self.config.repair)
        except BaseException:
            self._lock.release()
            raise
        self.generation = recovered.generation
        self.snapshot_bytes = recovered.snapshot_bytes
        self.journal_bytes = recovered.journal_bytes
        log.info(
            "recovered %d jobs from %s (generation %d, %d journal bytes)",
            len(recovered.jobs),
            self.directory,
            recovered.generation,
            recovered.journal_bytes,
        )
        return recovered.jobs

    def start(self, jobs_view: Callable[[], dict[str, Job]]) -> None:
        """Begin a new generation and write from the running loop."""
        self._loop = asyncio.get_running_loop()
        self._jobs_view = jobs_view
        self._open_generation(self.generation + 1)
        if self.config.fsync is FsyncMode.BATCH:
            self._batch_timer = self._loop.call_later(self.config.fsync_interval, self._batch_sync)

    def compact_soon(self) -> None:
        """Snapshot the state in the background (after recovery: so the next start reads
        the live state, not the history)."""
        if self._loop is not None and (self._compaction is None or self._compaction.done()):
            self._compaction = self._loop.create_task(self._compact(self.generation))

    def _open_generation(self, generation: int) -> None:
        """Switch to a new journal file. Its fsync, the directory's, and the last one
        of the file it replaces happen in the sync thread (:func:`_sync_files`)."""
        path = self.directory / f"journal-{generation}.jwj"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(fd).st_size == 0:
            os.write(fd, file_header(KIND_JOURNAL))
        if self._fd >= 0:
            # Its unsynced records still need their fsync: the sync thread
            # does it, then closes it; a sync in flight may be using it now.
            self._retired.append(self._fd)
        self._fd = fd
        self._directory_dirty = True
        self.generation = generation
        self.journal_bytes = 0
        self._start_sync()

    def abandon(self) -> None:
        """Release the directory after a failed start, writing nothing more."""
        self._closed = True
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        for fd in [*self._retired, self._fd]:
            if fd >= 0:
                os.close(fd)
        self._retired = []
        self._fd = -1
        self._lock.release()

    async def close(self) -> None:
        """Write and fsync everything, stop compaction, release the directory."""
        if self._closed:
            return
        self._closed = True
        if self._compaction is not None:
            self._compaction.cancel()
            # gather() swallows the compaction's cancellation, not ours.
            await asyncio.gather(self._compaction, return_exceptions=True)
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        self.flush_writes()
        if self._sync_in_flight is not None:
            await asyncio.gather(self._sync_in_flight, return_exceptions=True)
        if self._fd >= 0:
            assert self._loop is not None
            retired, self._retired = self._retired, []
            await self._loop.run_in_executor(
                None,
                _sync_files,
                retired,
                self._fd,
                self.directory if self._directory_dirty else None,
            )
            os.close(self._fd)
            self._fd = -1
        self.synced = self.appended
        self._release_waiters()
        self._lock.release()

    # -- the manager's sink --

    def job_submitted(self, job: Job) -> None:
        self._append(encode_record(submitted_record(job)))

    def job_changed(self, job: Job) -> None:
        self._append(encode_record(changed_record(job)))

    def job_deleted(self, job_id: str) -> None:
        self._append(encode_record(deleted_record(job_id)))

    def job_reserved(self, job: Job) -> None:
        self._append(encode_record(reserved_record(job)))

    def _append(self, record: bytes) -> None:
        self._buffer += record
        self.appended += 1
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush_writes)

    # -- writing and syncing --

    def flush_writes(self) -> None:
        """Hand every appended record to the OS: after this a process crash loses none."""
        self._flush_scheduled = False
        if not self._buffer or self._fd < 0:
            return
        data = self._buffer
        self._buffer = bytearray()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.written = self.appended
        self.journal_bytes += len(data)
        if self.config.fsync is FsyncMode.ALWAYS:
            self._start_sync()
        self._maybe_compact()

    def is_durable(self, upto: int) -> bool:
        """Whether record number ``upto`` is as durable as the fsync mode promises."""
        if self.config.fsync is FsyncMode.ALWAYS:
            return self.synced >= upto
        return self.written >= upto

    def when_durable(self, upto: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once record number ``upto`` is durable (fsync'd)."""
        self._durable_waiters.append((upto, callback))
        self._start_sync()

    def _start_sync(self) -> None:
        if self._sync_in_flight is not None or self._fd < 0 or self._loop is None:
            return
        if self.synced >= self.written and not self._retired and not self._directory_dirty:
            return
        target = self.written
        retired, self._retired = self._retired, []
        directory = self.directory if self._directory_dirty else None
        self._directory_dirty = False
        future = self._loop.run_in_executor(None, _sync_files, retired, self._fd, directory)
        self._sync_in_flight = future
        future.add_done_callback(lambda done: self._synced(done, target))

    def _synced(self, done: asyncio.Future[None], target: int) -> None:
        self._sync_in_flight = None
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            # The OS may have dropped the dirty pages: nothing written can be trusted.
            log.critical("fsync of the journal failed: %s; stopping", error)
            raise SystemExit(3)
        self.synced = max(self.synced, target)
        self._release_waiters()
        if self._retired or (
            self.synced < self.written
            and (self._durable_waiters or self.config.fsync is FsyncMode.ALWAYS)
        ):
            self._start_sync()

    def _release_waiters(self) -> None:
        if not self._durable_waiters:
            return
        ready = [cb for upto, cb in self._durable_waiters if upto <= self.synced]
        self._durable_waiters = [(u, cb) for u, cb in self._durable_waiters if u > self.synced]
        for callback in ready:
            callback()

    def _batch_sync(self) -> None:
        assert self._loop is not None
        self._start_sync()
        self._batch_timer = self._loop.call_later(self.config.fsync_interval, self._batch_sync)

    # -- compaction --

    async def compact_now(self) -> None:
        """Start a new generation and write its snapshot now (waits for a running one first)."""
        if self._compaction is not None and not self._compaction.done():
            await asyncio.shield(self._compaction)
        self._open_generation(self.generation + 1)
        self._compaction = asyncio.get_running_loop().create_task(self._compact(self.generation))
        await asyncio.shield(self._compaction)

    def _maybe_compact(self) -> None:
        if self._compaction is not None and not self._compaction.done():
            return
        threshold = max(
            self.config.compact_min_bytes, self.config.compact_ratio * self.snapshot_bytes
        )
        if self.journal_bytes > threshold and self._loop is not None and not self._closed:
            self._open_generation(self.generation + 1)
            self._compaction = self._loop.create_task(self._compact(self.generation))

    async def _compact(self, generation: int) -> None:
        """Write snapshot-<generation> from the live state, a slice per loop turn.

        Records of changes made meanwhile go to journal-<generation>, which
        recovery replays over this snapshot; a job's state in the snapshot
        may be newer than some of them, which replaying in order makes right.
        """
        assert self._jobs_view is not None and self._loop is not None
        started = time.perf_counter()
        jobs = self._jobs_view()
        ids = list(jobs)  # the state as of the new journal's first record
        final = self.directory / f"snapshot-{generation}.jws"
        temporary = final.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        written = 0
        try:
            os.write(fd, file_header(KIND_SNAPSHOT))
            size = HEADER.size
            for first in range(0, len(ids), COMPACTION_SLICE):
                chunk = bytearray()
                for job_id in ids[first : first + COMPACTION_SLICE]:
                    job = jobs.get(job_id)
                    if job is not None:
                        chunk += encode_record(snapshot_record(job))
                        written += 1
                await self._loop.run_in_executor(None, _write_all, fd, bytes(chunk))
                size += len(chunk)
            end = encode_record([SNAPSHOT_END, written])
            await self._loop.run_in_executor(None, _write_all, fd, end)
            size += len(end)
            await self._loop.run_in_executor(None, os.fsync, fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        await self._loop.run_in_executor(None, fsync_directory, self.directory)
        self.snapshot_bytes = size
        self.compactions += 1
        for older in self.directory.iterdir():
            for pattern in (_JOURNAL_NAME, _SNAPSHOT_NAME):
                match = pattern.match(older.name)
                if match and int(match.group(1)) < generation:
                    older.unlink()
        log.info(
            "compacted: snapshot-%d holds %d jobs (%d bytes), written in %.0f ms",
            generation,
            written,
            size,
            (time.perf_counter() - started) * 1000,
        )


def _sync_files(retired: list[int], current: int, directory: Path | None) -> None:
    """In the sync thread: the last fsync of replaced journals (then close them), the
    current journal's, and the directory's when a journal file was created in it."""
    for fd in retired:
        os.fsync(fd)
        os.close(fd)
    os.fsync(current)
    if directory is not None:
        fsync_directory(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
