"""A worker with --prefetch: takes more jobs than it runs, never runs more than --concurrency."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from broker import Client
from harness.processes import BrokerProc, WorkerProc
from tests.test_e2e_basic import max_overlap
from tests.waiting import eventually, open_gate

WAIT = 30.0


async def wait_for_lines(worker: WorkerProc, pattern: str, count: int) -> None:
    """Until the worker has logged ``count`` lines matching ``pattern``."""
    start = 0
    for _ in range(count):
        start = 1 + await asyncio.to_thread(worker.wait_for_line_number, pattern, WAIT, start)


async def test_prefetched_jobs_wait_for_a_slot(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    marks = [tmp_path / f"started-{i}" for i in range(8)]
    worker = start_worker(broker.address, concurrency=2, extra=["--prefetch", "4"])
    async with Client(broker.address) as client:
        jobs = await client.submit_many(
            [{"task": "gated_span", "args": [str(gate), str(mark)]} for mark in marks]
        )
        await wait_for_lines(worker, r"waits for a slot", 4)
        stats = await client.stats()
        assert stats["queues"]["default"] == {"waiting": 0, "queued": 2, "delayed": 0, "running": 6}

        async def first_two_started() -> bool:
            return all(mark.exists() for mark in marks[:2])

        # Both slots are busy, and only they: what runs next waits for the gate.
        await eventually(first_two_started, "the first two jobs started")
        assert not any(mark.exists() for mark in marks[2:])
        open_gate(gate)
        spans = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        assert max_overlap([(start, end) for start, end in spans]) == 2


async def test_sigterm_hands_prefetched_jobs_back_at_once(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = start_worker(broker.address, concurrency=1, extra=["--prefetch", "3"])
    async with Client(broker.address) as client:
        first = await client.submit("gated", [str(gate), "first"])
        await asyncio.to_thread(worker.wait_for_line, rf"job {first.id} gated started", WAIT)
        waiting = await client.submit_many([{"task": "echo", "args": [i]} for i in range(3)])
        await wait_for_lines(worker, r"waits for a slot", 3)
        assert (await client.stats())["queues"]["default"]["running"] == 4
        worker.signal(signal.SIGTERM)

        async def handed_back() -> bool:
            statuses = [await client.status(job.id) for job in waiting]
            return all(s["state"] == "queued" for s in statuses)

        # At once: while the first job still runs, in its grace period.
        await eventually(handed_back, "the prefetched jobs are queued again")
        assert (await client.status(first.id))["state"] == "running"
        open_gate(gate)
        assert await first.result(timeout=WAIT) == "first"
        assert await asyncio.to_thread(worker.wait) == 0
        for job in waiting:  # handed back, not run, attempt not counted
            status = await client.status(job.id)
            assert (status["state"], status["attempts"]) == ("queued", 0)
        start_worker(broker.address)
        assert [await job.result(timeout=WAIT) for job in waiting] == [0, 1, 2]


async def test_cancelling_a_prefetched_job_frees_its_slot(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = start_worker(broker.address, concurrency=1, extra=["--prefetch", "1"])
    async with Client(broker.address) as client:
        busy = await client.submit("gated", [str(gate), "busy"])
        held = await client.submit("echo", ["held"])
        await wait_for_lines(worker, rf"job {held.id} echo waits for a slot", 1)
        assert await client.cancel(held.id) is True
        after = await client.submit("echo", ["after"])
        open_gate(gate)
        assert await busy.result(timeout=WAIT) == "busy"
        assert await after.result(timeout=WAIT) == "after"
        assert (await client.status(held.id))["state"] == "cancelled"
