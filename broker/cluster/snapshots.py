"""Snapshots of a shard in the JetStream object store, and loading the newest.

A snapshot is the bytes of a snapshot file (``broker/journal``'s format),
named ``snapshot-<marker>`` where the marker is the stream sequence it
covers: replaying the stream's messages after the marker over it gives the
live state. The leader writes one only once every change it holds is
durable in the stream, so a snapshot never holds a change the stream lost;
then it purges the stream below the marker and deletes older snapshots.
Loading takes the highest marker: a snapshot a fenced-out leader finished
late is older, never wrong.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from broker.jobs import Job
from broker.journal.codec import KIND_SNAPSHOT, read_records
from broker.journal.compaction import SettingsView, SnapshotEncoder
from broker.journal.errors import JournalCorrupt
from broker.journal.records import SNAPSHOT_END, replay

log = logging.getLogger("broker.cluster")

SNAPSHOT_NAME = re.compile(r"^snapshot-(\d+)$")


def snapshot_name(marker: int) -> str:
    return f"snapshot-{marker:020d}"


@dataclass(slots=True)
class Loaded:
    """The state a snapshot holds, and the stream sequence it covers (0: no snapshot)."""

    marker: int = 0
    size: int = 0
    jobs: dict[str, Job] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


async def encode(
    jobs_view: Callable[[], dict[str, Job]], settings_view: SettingsView | None
) -> tuple[bytes, int]:
    """The live state as snapshot bytes, a slice per loop turn; and the job count."""
    encoder = SnapshotEncoder(jobs_view, settings_view)
    parts = []
    for piece in encoder.pieces():
        parts.append(piece)
        await asyncio.sleep(0)
    return b"".join(parts), encoder.jobs


async def markers(store: ObjectStore) -> list[int]:
    """The markers of the snapshots in the store, oldest first."""
    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:
        return []
    found = []
    for info in infos:
        match = SNAPSHOT_NAME.match(info.name)
        if match and not info.deleted:
            found.append(int(match.group(1)))
    return sorted(found)


async def load_newest(store: ObjectStore, shard: str) -> Loaded:
    """Read the newest snapshot back (an empty state when there is none)."""
    found = await markers(store)
    if not found:
        return Loaded()
    marker = found[-1]
    result = await store.get(snapshot_name(marker))
    data = result.data or b""
    where = Path(f"<shard {shard} {snapshot_name(marker)}>")
    records = read_records(data, KIND_SNAPSHOT, where)
    if records.torn_at is not None or not records.records:
        raise JournalCorrupt(where, records.torn_at or 0, "incomplete snapshot")
    if records.records[-1][0] != SNAPSHOT_END:
        raise JournalCorrupt(where, records.good_until, "snapshot without its end record")
    loaded = Loaded(marker, len(data))
    replay(records.records, loaded.jobs, loaded.settings)
    return loaded


async def store(store: ObjectStore, marker: int, data: bytes) -> None:
    """Put snapshot ``marker``, then delete the older ones."""
    await store.put(snapshot_name(marker), data)
    for older in await markers(store):
        if older < marker:
            await store.delete(snapshot_name(older))
