"""End to end: a broker that is itself stalled past a lease does not blame its healthy workers.

A SIGSTOP of the broker (as a long GC pause or a VM freeze would) longer
than the lease leaves the workers' heartbeats and results waiting in its
sockets. On resuming it must read them before it expires anything.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from broker import Client
from harness.processes import BrokerProc, WorkerProc
from tests.waiting import eventually

WAIT = 60.0
LEASE = 2.0
# Longer than the lease: every running job's lease deadline passes while stopped.
STALL = LEASE * 1.45


async def test_a_stalled_broker_requeues_nothing_and_keeps_every_result(
    start_broker: Callable[..., BrokerProc], start_worker: Callable[..., WorkerProc]
) -> None:
    broker = start_broker("--lease", str(LEASE))
    start_worker(broker.address, concurrency=4)
    async with Client(broker.address) as client:
        # Jobs that run across the stall, and jobs that finish during it.
        spans = [STALL + 1.0, STALL + 1.0, 0.5, 1.0]
        jobs = await client.submit_many(
            [{"task": "nap", "args": [seconds, i]} for i, seconds in enumerate(spans)]
        )

        async def all_running() -> bool:
            running: int = (await client.stats())["running"]
            return running == len(spans)

        await eventually(all_running, "every job running", WAIT)
        # Let the broker go idle in its poll, where a pause usually catches it
        # (this shapes the scenario; the test's outcome does not depend on it).
        await asyncio.sleep(0.3)
        broker.signal(signal.SIGSTOP)
        try:
            # The stall itself is the scenario: a stopped broker has nothing to wait on.
            await asyncio.sleep(STALL)
        finally:
            broker.signal(signal.SIGCONT)
        results = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        assert results == list(range(len(spans)))
        statuses = await asyncio.gather(*(client.status(job.id) for job in jobs))
        assert [status["attempts"] for status in statuses] == [1] * len(spans)
        assert all(not status["errors"] for status in statuses)
        stats = await client.stats()
        assert stats["requeued"] == 0
        assert stats["late_reports"] == 0
