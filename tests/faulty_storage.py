"""Storage that fails on demand, for tests: faults injected through the journal's FileOps.

No patching of :mod:`os`: the journal does its file I/O through
:class:`~broker.journal.FileOps`, and :class:`FaultyOps` is a subclass that
fails the operations a test names, on the files it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.durability import StorageFailure
from broker.journal import FileOps

WAIT = 10.0


@dataclass(slots=True)
class Fault:
    operation: str  # "write" or "fsync"
    pattern: str  # fnmatch'd against the file's name
    code: int


class FaultyOps(FileOps):
    """The real file operations, except those a test injected a fault into.

    A faulty write first writes half of what it was given (as a disk filling
    up mid-write does), then fails.
    """

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.names: dict[int, str] = {}
        self.raised = 0
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._raised_event = asyncio.Event()

    def inject(self, operation: str, pattern: str, code: int) -> None:
        self.faults.append(Fault(operation, pattern, code))

    def clear(self) -> None:
        self.faults.clear()

    async def raised_at_least(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while True:
                self._raised_event.clear()  # before looking: a raise after it sets it again
                if self.raised >= count:
                    return
                await self._raised_event.wait()

    def _check(self, operation: str, fd: int) -> Fault | None:
        name = self.names.get(fd, "")
        for fault in self.faults:
            if fault.operation == operation and fnmatch.fnmatch(name, fault.pattern):
                return fault
        return None

    def _raise(self, fault: Fault) -> None:
        with self._lock:
            self.raised += 1
        self._loop.call_soon_threadsafe(self._raised_event.set)
        raise OSError(fault.code, os.strerror(fault.code))

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.names[fd] = Path(path).name
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        fault = self._check("write", fd)
        if fault is None:
            return super().write(fd, data)
        if len(data) > 1:
            super().write(fd, data[: len(data) // 2])
        self._raise(fault)
        raise AssertionError("unreachable")

    def fsync(self, fd: int) -> None:
        fault = self._check("fsync", fd)
        if fault is not None:
            self._raise(fault)
        super().fsync(fd)


class Listener:
    """Every failure change the journal announces, and an event per change."""

    def __init__(self) -> None:
        self.seen: list[StorageFailure | None] = []
        self.changed = asyncio.Event()

    def __call__(self, failure: StorageFailure | None) -> None:
        self.seen.append(failure)
        self.changed.set()

    async def failed(self) -> None:
        async with asyncio.timeout(WAIT):
            while not self.seen or self.seen[-1] is None:
                self.changed.clear()
                await self.changed.wait()

    async def cleared(self) -> None:
        async with asyncio.timeout(WAIT):
            while not self.seen or self.seen[-1] is not None:
                self.changed.clear()
                await self.changed.wait()


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``directory`` (created), unmounted on the way out.

    Skips the test where it cannot mount (not root, or no permission).
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
