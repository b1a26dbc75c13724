"""The file operations the running journal performs, behind one small object.

The writer, the sync thread and compaction do their file I/O through
:class:`FileOps`, so a test can make any of them fail (``ENOSPC`` on a
write, ``EIO`` on an fsync, a failed snapshot) by passing a subclass,
without patching :mod:`os`. Recovery at start reads files directly: an
error there stops the start, which is what it should do.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class FileOps:
    """The default: :mod:`os` itself."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[self.write(fd, view) :]

    def fsync_directory(self, directory: Path) -> None:
        fd = self.open(directory, os.O_RDONLY)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)


def sync_files(ops: FileOps, retired: list[int], current: int, directory: Path | None) -> None:
    """In the sync thread: the last fsync of replaced journals (then close them), the
    current journal's, and the directory's when a journal file was created in it."""
    try:
        for fd in retired:
            ops.fsync(fd)
        ops.fsync(current)
        if directory is not None:
            ops.fsync_directory(directory)
    finally:
        for fd in retired:
            with contextlib.suppress(OSError):
                ops.close(fd)
