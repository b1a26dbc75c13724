"""End to end: a schedule declared by two workers fires once a second, through a SIGKILL."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from broker import Client
from harness.processes import BrokerProc, WorkerProc
from tests.test_cli import admin
from tests.waiting import eventually

WAIT = 30.0
RAN = re.compile(r"job cron:heartbeat_job:(\d+) heartbeat_job succeeded")


def ticks_run(workers: list[WorkerProc]) -> Counter[int]:
    """How many times each tick's job ran, from the workers' own logs."""
    return Counter(int(m.group(1)) for w in workers for line in w.lines if (m := RAN.search(line)))


async def test_every_second_once_with_two_workers_and_a_restart(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = str(tmp_path / "data")
    broker = start_broker("--data-dir", data)
    workers = [start_worker(broker.address, "tests.tasks_periodic") for _ in range(2)]

    async def ran_at_least(count: int, after: float = 0.0) -> None:
        async def enough() -> bool:
            return sum(1 for tick in ticks_run(workers) if tick > after) >= count

        await eventually(enough, f"{count} ticks after {after}")

    await ran_at_least(3)
    listed = await asyncio.to_thread(admin, broker.address, "schedules")
    assert "heartbeat_job" in listed.stdout and "every 1s" in listed.stdout, listed.stderr
    killed_at = time.time()
    broker.signal(signal.SIGKILL)
    broker.wait()
    restarted = start_broker("--data-dir", data, port=broker.port)
    started_at = time.time()
    await ran_at_least(3, after=started_at + 1)
    async with Client(restarted.address) as client:
        (schedule,) = await client.schedules()
        assert schedule["every"] == 1 and schedule["args"] == ["tick"]
        assert schedule["next_run"] > schedule["last_run"]
        counts = ticks_run(workers)
        ticks = sorted(counts)
        # Each tick ran once (the one running when the broker died may have run again).
        assert sum(1 for tick in ticks if counts[tick] > 1) <= 1
        # Every second before the kill and after the restart has its tick; of the ones
        # missed while the broker was down, only the latest ran.
        before = [t for t in range(ticks[0], int(killed_at)) if t not in counts]
        after = [t for t in range(int(started_at) + 1, ticks[-1]) if t not in counts]
        assert before == [] and after == []
        missed = [t for t in range(int(killed_at) + 1, int(started_at)) if t in counts]
        assert len(missed) <= 1
        for tick in ticks[-3:]:
            status = await client.status(f"cron:heartbeat_job:{tick}")
            assert status["state"] == "succeeded" and status["task"] == "heartbeat_job"
