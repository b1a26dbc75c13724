"""The exclusive writer role of the file journal: an ``flock`` on DIR/LOCK.

One writer at a time: a second broker on the same directory is refused at
start, naming the holder's pid. (A replicated backend would fence by the
expected stream sequence instead; see ``backend.py``.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from broker.journal.errors import JournalError


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
