"""The journal's exceptions: what makes a data directory unusable at start.

Failures *while running* (a full disk, a failed fsync) are not exceptions:
they become :class:`broker.durability.StorageFailure`, a state the broker
reads (see ``file_journal.py``).
"""

from __future__ import annotations

from pathlib import Path


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
