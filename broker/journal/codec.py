"""The file format, pure: the 16-byte file header, record framing, and reading records back.

Every journal and snapshot file is ``MAGIC | kind | u32 version`` and then
records framed as ``u32 length | u32 crc32(body) | body``, a body being one
msgpack array whose first element is the record type (``records.py``).
Reading tells a torn tail (the last write a crash cut short: dropped) from
corruption before the end (refused, naming file and offset).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from broker.journal.errors import JournalCorrupt, JournalError
from protocol.framing import packb

# Version 2 added the error count to U and J records; version 3 the K (setting)
# record. Versions 1 and 2 are still read.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MAGIC = b"JOBWIRE\x00"
KIND_JOURNAL = b"JRNL"
KIND_SNAPSHOT = b"SNAP"
HEADER = struct.Struct(">8s4sI")
RECORD_HEAD = struct.Struct(">II")
# A record larger than this is corruption, not data: frames are far smaller.
MAX_RECORD = 64 * 1024 * 1024


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
    if version not in READABLE_VERSIONS:
        raise JournalError(
            f"{path} has format version {version}; this broker reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    return _read_from(data, HEADER.size, path)


def read_batch(data: bytes, where: Path) -> list[list[Any]]:
    """The records of one batch: records as a journal holds them, with no file header
    (a cluster's stream message). A batch is written whole, so any damage is
    corruption (:class:`JournalCorrupt`, ``where`` naming the message)."""
    result = _read_from(data, 0, where)
    if result.torn_at is not None:
        raise JournalCorrupt(where, result.torn_at, "incomplete record in a batch")
    return result.records


def _read_from(data: bytes, pos: int, path: Path) -> ReadResult:
    records: list[list[Any]] = []
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
