"""End to end: a broker whose disk fills up says so, keeps answering reads, and recovers.

The data directory is a real tmpfs of a few MB (this needs root to mount;
the test is skipped elsewhere). The broker must answer new submits with
``STORAGE_FAILED`` naming the cause, keep answering ``STATS`` and
``STATUS``, recover by itself once there is room again, and after a
restart hold every job it acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import Client
from harness.processes import BrokerProc
from protocol.errors import ErrorCode, RemoteError
from tests.faulty_storage import tmpfs
from tests.waiting import eventually

WAIT = 60.0
PAYLOAD = "x" * 2048


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "3m") as mountpoint:
        yield mountpoint


def grow(mountpoint: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mountpoint)], check=True)


async def wait_for_storage(client: Client, ok: bool) -> dict[str, object]:
    """The broker's storage state, once ``ok`` is as wanted (only STATS tells it)."""
    storage: dict[str, object] = {}

    async def as_wanted() -> bool:
        nonlocal storage
        storage = (await client.stats())["storage"]
        return storage["ok"] is ok

    await eventually(as_wanted, f"storage ok is {ok}", WAIT)
    return storage


async def test_a_full_disk_refuses_new_work_answers_reads_and_recovers(
    small_disk: Path, start_broker: Callable[..., BrokerProc]
) -> None:
    data_dir = str(small_disk / "data")
    broker = start_broker("--data-dir", data_dir, "--fsync", "always")
    acked: list[str] = []
    # Set once the producer has had this many submits acknowledged.
    wanted = [0]
    enough = asyncio.Event()

    async def produce(client: Client) -> None:
        # One at a time: the submit whose record does not fit waits, unacknowledged.
        for i in range(100_000):
            job = await client.submit("echo", [PAYLOAD, i])
            acked.append(job.id)
            if wanted[0] and len(acked) >= wanted[0]:
                enough.set()

    async with Client(broker.address) as producer, Client(broker.address) as observer:
        producing = asyncio.create_task(produce(producer))
        try:
            storage = await wait_for_storage(observer, ok=False)
            assert "no space left on device" in str(storage["failure"]).lower()
            with pytest.raises(RemoteError) as refused:
                await observer.submit("echo", ["refused"])
            assert refused.value.code == ErrorCode.STORAGE_FAILED
            assert "no space left on device" in refused.value.message.lower()
            # Reads still answer, about jobs acknowledged before the disk filled.
            assert acked, "the disk filled before any job was acknowledged"
            assert (await observer.status(acked[0]))["state"] == "queued"
            await observer.ping()
            wanted[0] = len(acked) + 20
            grow(small_disk, "64m")
            await wait_for_storage(observer, ok=True)
            # The producer goes on by itself: its waiting submit was acknowledged.
            await asyncio.wait_for(enough.wait(), WAIT)
        finally:
            producing.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await producing
    broker.stop()
    restarted = start_broker("--data-dir", data_dir, "--fsync", "always")
    async with Client(restarted.address) as client:
        states = await asyncio.gather(*(client.status(job_id) for job_id in acked))
        assert all(state["state"] == "queued" for state in states)
        assert (await client.stats())["unfinished"] >= len(acked)
