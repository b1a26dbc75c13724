"""A broker whose journal cannot be written: STORAGE_FAILED, reads answer, and it recovers.

The fault (``ENOSPC`` on every journal write) is injected through the
storage seam (``Broker(storage=Journal(config, ops=FaultyOps()))``), so
these run anywhere; ``test_e2e_storage.py`` does the same with a real full
tmpfs.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from broker import Broker, BrokerConfig, Client, JobState, StorageFailed
from broker.journal import FsyncMode, Journal, JournalConfig
from tests.faulty_storage import FaultyOps, Listener
from tests.inprocess import serving
from tests.test_inprocess import Gates, wait_started
from tests.waiting import eventually
from worker import Worker

WAIT = 30.0


@pytest.mark.parametrize("fsync", [FsyncMode.BATCH, FsyncMode.ALWAYS])
async def test_a_failing_journal_refuses_new_work_keeps_running_jobs_and_recovers(
    tmp_path: Path, fsync: FsyncMode
) -> None:
    config = JournalConfig(tmp_path, fsync=fsync, retry_base=0.01, retry_cap=0.05)
    ops = FaultyOps()
    broker = Broker(BrokerConfig(port=0, journal=config), storage=Journal(config, ops=ops))
    await broker.start()
    listener = Listener()
    assert broker.journal is not None
    broker.journal.add_failure_listener(listener)
    gates = Gates()
    acked: list[str] = []
    try:
        async with (
            Client(broker.address) as producer,
            Client(broker.address) as observer,
            serving(Worker(broker.address, registry=gates.registry(), concurrency=1)),
        ):
            running = await producer.submit("gated", ["running"])
            await wait_started(gates, "running")
            queued = [{"task": "gated", "args": [f"queued-{i}"]} for i in range(5)]
            acked += [job.id for job in await producer.submit_many(queued)]
            ops.inject("write", "journal-*", errno.ENOSPC)
            # Its record cannot be written: the reply waits, nothing is acknowledged.
            pending = asyncio.create_task(producer.submit("gated", ["pending"]))
            await listener.failed()
            failure = broker.storage_failure
            assert failure is not None
            assert failure.cause == "no space left on device"

            with pytest.raises(StorageFailed) as refused:
                await observer.submit("gated", ["refused"])
            assert "no space left on device" in refused.value.message
            with pytest.raises(StorageFailed):
                await observer.cancel(acked[0])
            # Reads answer.
            await observer.ping()
            assert (await observer.status(acked[0]))["state"] == JobState.QUEUED
            stats = await observer.stats()
            assert stats["storage"]["ok"] is False
            assert "no space left on device" in stats["storage"]["failure"]
            # The running job goes on and its result is taken, in memory (STATUS
            # shows it; its DONE push waits until it is durable), and no new job
            # is handed out while storage fails.
            gates.gate("running").set()

            async def running_succeeded() -> bool:
                state: str = (await observer.status(running.id))["state"]
                return state == JobState.SUCCEEDED

            await eventually(running_succeeded, "the running job's success is taken")

            async def slot_offered_again() -> bool:
                return [consumer.credit for consumer in broker.manager.consumers] == [1]

            await eventually(slot_offered_again, "the worker offers its freed slot")
            assert (await observer.stats())["running"] == 0
            assert not gates.started_event("queued-0").is_set()
            assert not pending.done()

            ops.clear()
            await listener.cleared()
            assert broker.storage_failure is None
            acked.append((await asyncio.wait_for(pending, WAIT)).id)
            assert await running.result(timeout=WAIT) == "running"
            more = [{"task": "gated", "args": [f"more-{i}"]} for i in range(3)]
            acked += [job.id for job in await observer.submit_many(more)]
            await wait_started(gates, "queued-0")  # dispatch resumed: the next job runs
    finally:
        await broker.stop()

    again = Broker(BrokerConfig(port=0, journal=JournalConfig(tmp_path)))
    await again.start()
    try:
        for job_id in acked:
            assert again.manager.get(job_id) is not None, f"acknowledged job {job_id} was lost"
        finished = again.manager.get(running.id)
        assert finished is not None
        assert finished.state is JobState.SUCCEEDED
    finally:
        await again.stop()
