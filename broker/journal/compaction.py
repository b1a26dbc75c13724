"""Writing a snapshot of the live state without holding the event loop.

Used by compaction (the journal grew: start generation N+1 and snapshot) and
by the recovery from a storage failure (rebase: the same, because the live
state in memory is the truth). The snapshot is written to a ``.tmp`` file a
slice of jobs per loop turn, the writes and the fsync in a thread, then
renamed into place and the directory fsync'd: only a complete snapshot ever
carries the final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.jobs import Job
from broker.journal.codec import KIND_JOURNAL, KIND_SNAPSHOT, encode_record, file_header
from broker.journal.fileops import FileOps
from broker.journal.records import SNAPSHOT_END, setting_record, snapshot_record
from broker.journal.recovery import journal_path, older_generations, snapshot_path

log = logging.getLogger("broker.journal")

# How many jobs a compaction step writes before it lets the loop run again.
COMPACTION_SLICE = 500


@dataclass(slots=True)
class Snapshot:
    generation: int
    size: int
    jobs: int


SettingsView = Callable[[], dict[str, Any]]


async def write_snapshot(
    ops: FileOps,
    directory: Path,
    generation: int,
    jobs_view: Callable[[], dict[str, Job]],
    settings_view: SettingsView | None = None,
) -> Snapshot:
    """Write snapshot-<generation> from the live state, a slice per loop turn.

    The job ids are taken now: the state as of the new journal's first
    record (see :class:`SnapshotEncoder`). Raises :class:`OSError` (the
    temporary file removed) if any write, the fsync, the rename or the
    directory's fsync fails.
    """
    loop = asyncio.get_running_loop()
    encoder = SnapshotEncoder(jobs_view, settings_view)
    final = snapshot_path(directory, generation)
    temporary = final.with_suffix(".tmp")
    size = 0
    try:
        fd = ops.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            pieces = encoder.pieces()
            first = next(pieces)  # the header and the settings: small
            ops.write_all(fd, first)
            size += len(first)
            for piece in pieces:
                await _in_thread(loop, ops.write_all, fd, piece)
                size += len(piece)
            await _in_thread(loop, ops.fsync, fd)
        finally:
            ops.close(fd)
        ops.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            ops.unlink(temporary)
        raise
    await loop.run_in_executor(None, ops.fsync_directory, directory)
    return Snapshot(generation, size, encoder.jobs)


class SnapshotEncoder:
    """The live state as a snapshot's bytes, a slice of jobs per piece (pure: whoever
    writes the pieces lets the loop run between them).

    The job ids and the settings are taken when it is made: the state as of
    that moment. A job changed before its slice is encoded is captured in its
    newer state, which replaying the records after that moment makes right.
    """

    def __init__(
        self, jobs_view: Callable[[], dict[str, Job]], settings_view: SettingsView | None = None
    ) -> None:
        self._jobs = jobs_view()
        self._ids = list(self._jobs)
        # The settings are few: taken (and encoded) whole, now.
        self._settings = b"".join(
            encode_record(setting_record(key, value))
            for key, value in (settings_view() if settings_view is not None else {}).items()
        )
        # Jobs encoded so far.
        self.jobs = 0

    def pieces(self) -> Iterator[bytes]:
        """The file header with the settings, then a slice of jobs per piece, then the end."""
        yield file_header(KIND_SNAPSHOT) + self._settings
        jobs = self._jobs
        ids = self._ids
        for first in range(0, len(ids), COMPACTION_SLICE):
            chunk = bytearray()
            for job_id in ids[first : first + COMPACTION_SLICE]:
                job = jobs.get(job_id)
                if job is not None:
                    chunk += encode_record(snapshot_record(job))
                    self.jobs += 1
            yield bytes(chunk)
        yield encode_record([SNAPSHOT_END, self.jobs])


async def _in_thread(
    loop: asyncio.AbstractEventLoop, call: Callable[..., None], *args: Any
) -> None:
    """``call`` in a thread; if cancelled meanwhile, the thread is still let finish, so
    the file it uses is not closed (and its number reused) under it."""
    future = loop.run_in_executor(None, call, *args)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def delete_older_generations(ops: FileOps, directory: Path, generation: int) -> None:
    """After snapshot-<generation> is complete and durable: everything older is dead weight."""
    for path in older_generations(directory, generation):
        # A file left behind costs only space: the next compaction deletes it.
        with contextlib.suppress(OSError):
            ops.unlink(path)


async def compact(
    ops: FileOps,
    directory: Path,
    generation: int,
    jobs_view: Callable[[], dict[str, Job]],
    settings_view: SettingsView | None = None,
) -> Snapshot:
    """Compaction proper, journal-<generation> being already in use: its snapshot, then
    the older generations deleted. Raises :class:`OSError` as :func:`write_snapshot`."""
    started = time.perf_counter()
    snapshot = await write_snapshot(ops, directory, generation, jobs_view, settings_view)
    # Old journals are large (compaction begins past --compact-min-bytes):
    # unlinking them is file-system work, kept off the loop.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, delete_older_generations, ops, directory, generation)
    log.info(
        "compacted: snapshot-%d holds %d jobs (%d bytes), written in %.0f ms",
        generation,
        snapshot.jobs,
        snapshot.size,
        (time.perf_counter() - started) * 1000,
    )
    return snapshot


def create_journal(ops: FileOps, directory: Path, generation: int) -> int:
    """Open journal-<generation> for appending (its header written if it is new)."""
    fd = ops.open(journal_path(directory, generation), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        if ops.size(fd) == 0:
            ops.write_all(fd, file_header(KIND_JOURNAL))
    except BaseException:
        ops.close(fd)
        raise
    return fd


async def rebase(
    ops: FileOps,
    directory: Path,
    generation: int,
    jobs_view: Callable[[], dict[str, Job]],
    settings_view: SettingsView | None = None,
) -> tuple[int, Snapshot]:
    """Generation ``generation`` from nothing but the live state: its (empty) journal,
    open for appending, and a durable snapshot. On :class:`OSError` (raised) nothing
    of the new generation is left behind; the older ones stay as they were."""
    path = journal_path(directory, generation)
    fd = -1
    try:
        fd = create_journal(ops, directory, generation)
        snapshot = await write_snapshot(ops, directory, generation, jobs_view, settings_view)
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                ops.close(fd)
        with contextlib.suppress(OSError):
            ops.unlink(path)
        raise
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, delete_older_generations, ops, directory, generation)
    return fd, snapshot
