"""How the file journal is configured (``--data-dir``, ``--fsync`` and friends)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class FsyncMode(StrEnum):
    ALWAYS = "always"
    BATCH = "batch"
    OFF = "off"


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
    # After a storage failure, rebase attempts follow backoff_delay(n, base, cap).
    retry_base: float = 0.1
    retry_cap: float = 5.0
