"""Durability: an append-only journal of job changes, snapshots, and recovery.

One concern per module (see ``docs/JOURNAL.md``):

- ``codec``: file header, record framing, reading records (pure);
- ``records``: jobs to records and back, and ``replay`` (pure);
- ``recovery``: reading a directory back at start, repair, generations;
- ``lock``: the exclusive writer role (DIR/LOCK);
- ``compaction``: writing a snapshot without holding the loop (compaction, rebase);
- ``fileops``: the file operations, replaceable to inject faults, and the fsync thread's work;
- ``failure``: the failed state (logged once per change, listeners, retry backoff);
- ``config``: ``JournalConfig`` and ``FsyncMode``;
- ``file_journal``: the group-commit writer, the fsync thread, recovery from a failure;
- ``backend``: the interface the broker depends on (:class:`JournalBackend`);
- ``sink``: the manager's changes as encoded records, shared by the backends.
"""

from __future__ import annotations

from broker.journal.backend import JournalBackend
from broker.journal.codec import (
    FORMAT_VERSION,
    HEADER,
    KIND_JOURNAL,
    KIND_SNAPSHOT,
    MAGIC,
    MAX_RECORD,
    RECORD_HEAD,
    ReadResult,
    encode_record,
    file_header,
    read_records,
)
from broker.journal.compaction import COMPACTION_SLICE
from broker.journal.config import FsyncMode, JournalConfig
from broker.journal.errors import JournalCorrupt, JournalError
from broker.journal.failure import describe_error
from broker.journal.file_journal import Journal
from broker.journal.fileops import FileOps
from broker.journal.lock import DirectoryLock
from broker.journal.records import (
    CHANGED,
    DELETED,
    RESERVED,
    SETTING,
    SNAPSHOT_END,
    SNAPSHOT_JOB,
    SUBMITTED,
    changed_record,
    deleted_record,
    replay,
    reserved_record,
    setting_record,
    snapshot_record,
    submitted_record,
)
from broker.journal.recovery import Recovered, recover

__all__ = [
    "CHANGED",
    "COMPACTION_SLICE",
    "DELETED",
    "FORMAT_VERSION",
    "HEADER",
    "KIND_JOURNAL",
    "KIND_SNAPSHOT",
    "MAGIC",
    "MAX_RECORD",
    "RECORD_HEAD",
    "RESERVED",
    "SETTING",
    "SNAPSHOT_END",
    "SNAPSHOT_JOB",
    "SUBMITTED",
    "DirectoryLock",
    "FileOps",
    "FsyncMode",
    "Journal",
    "JournalBackend",
    "JournalConfig",
    "JournalCorrupt",
    "JournalError",
    "ReadResult",
    "Recovered",
    "changed_record",
    "deleted_record",
    "describe_error",
    "encode_record",
    "file_header",
    "read_records",
    "recover",
    "replay",
    "reserved_record",
    "setting_record",
    "snapshot_record",
    "submitted_record",
]
