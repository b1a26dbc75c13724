"""Reading a data directory back at start: generations, recovery, repair.

The state is the newest complete snapshot (its last record is the end
record), then every journal of that generation and later, in order. A torn
tail is truncated; corruption before the end is refused unless repair was
asked for, which truncates at the damage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.jobs import Job
from broker.journal.codec import KIND_JOURNAL, KIND_SNAPSHOT, read_records
from broker.journal.errors import JournalCorrupt
from broker.journal.records import SNAPSHOT_END, replay

log = logging.getLogger("broker.journal")

JOURNAL_NAME = re.compile(r"^journal-(\d+)\.jwj$")
SNAPSHOT_NAME = re.compile(r"^snapshot-(\d+)\.jws$")


def journal_path(directory: Path, generation: int) -> Path:
    return directory / f"journal-{generation}.jwj"


def snapshot_path(directory: Path, generation: int) -> Path:
    return directory / f"snapshot-{generation}.jws"


@dataclass(slots=True)
class Recovered:
    jobs: dict[str, Job]
    generation: int
    journal_bytes: int
    snapshot_bytes: int
    # Broker settings (paused queues, limits) by key: the K records' last values.
    settings: dict[str, Any] = field(default_factory=dict)


def generations(directory: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    found = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def older_generations(directory: Path, generation: int) -> list[Path]:
    """The journal and snapshot files a complete snapshot of ``generation`` makes useless."""
    return [
        path
        for pattern in (JOURNAL_NAME, SNAPSHOT_NAME)
        for number, path in generations(directory, pattern).items()
        if number < generation
    ]


def recover(directory: Path, repair: bool = False, remove_temporary: bool = False) -> Recovered:
    """Rebuild the jobs from the newest complete snapshot and the journals after it.

    ``remove_temporary``: delete the ``*.tmp`` files snapshots being written
    left behind (only the directory's writer may).
    """
    if remove_temporary:
        for stale in directory.glob("*.tmp"):
            stale.unlink()
    snapshots = generations(directory, SNAPSHOT_NAME)
    journals = generations(directory, JOURNAL_NAME)
    jobs: dict[str, Job] = {}
    settings: dict[str, Any] = {}
    base = 0
    snapshot_bytes = 0
    for generation in sorted(snapshots, reverse=True):
        path = snapshots[generation]
        data = path.read_bytes()
        result = read_records(data, KIND_SNAPSHOT, path)
        if result.torn_at is None and result.records and result.records[-1][0] == SNAPSHOT_END:
            replay(result.records, jobs, settings)
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
        replay(result.records, jobs, settings)
        journal_bytes += result.good_until
    generation = max([base, *later]) if later or base else 0
    log.info(
        "recovered %d jobs from %s (generation %d, %d journal bytes)",
        len(jobs),
        directory,
        generation,
        journal_bytes,
    )
    return Recovered(jobs, generation, journal_bytes, snapshot_bytes, settings)
