"""End to end: flow control (paused queues) with real processes, through a SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

from broker import Client
from harness.processes import BrokerProc, WorkerProc
from tests.test_cli import admin
from tests.test_e2e_basic import max_overlap
from tests.waiting import eventually, open_gate

WAIT = 30.0


async def test_a_paused_queue_starts_nothing_until_resumed_across_a_kill(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = str(tmp_path / "data")
    gate = tmp_path / "gate"
    broker = start_broker("--data-dir", data)
    worker = start_worker(broker.address, concurrency=4)
    async with Client(broker.address) as client:
        running = await client.submit("gated", [str(gate), "done"])

        async def is_running() -> bool:
            return bool((await client.status(running.id))["state"] == "running")

        await eventually(is_running, "the gated job runs")
        paused = await asyncio.to_thread(admin, broker.address, "pause", "default")
        assert paused.stdout.strip() == "paused default", paused.stderr
        held = await client.submit_many([{"task": "echo", "args": [i]} for i in range(5)])
        other = await client.submit("echo", ["other"], queue="other")
        open_gate(gate)  # the running job finishes
        assert await running.result(timeout=WAIT) == "done"
        assert await client.pause("default") is False  # already paused
        stats = await client.stats()
        assert stats["paused"] == ["default"]
        assert stats["queues"]["default"] == {"waiting": 0, "queued": 5, "delayed": 0, "running": 0}
    # A worker of another queue is not held back by the pause.
    start_worker(broker.address, extra=["--queues", "other"], concurrency=1)
    async with Client(broker.address) as client:
        assert await client.job(other.id).result(timeout=WAIT) == "other"

    broker.signal(signal.SIGKILL)
    broker.wait()
    restarted = start_broker("--data-dir", data, port=broker.port)
    await asyncio.to_thread(worker.wait_for_line, r"reconnected to the broker", WAIT)
    async with Client(restarted.address) as client:

        async def both_workers_back() -> bool:
            return bool((await client.stats())["workers"] == 2)

        await eventually(both_workers_back, "both workers reconnected")
        stats = await client.stats()
        assert stats["paused"] == ["default"]  # the pause survived the kill
        assert stats["queues"]["default"]["queued"] == 5
        resumed_at = time.time()
        resumed = await asyncio.to_thread(admin, restarted.address, "resume", "default")
        assert resumed.stdout.strip() == "resumed default", resumed.stderr
        assert [await client.job(job.id).result(timeout=WAIT) for job in held] == list(range(5))
        for job in held:
            status = await client.status(job.id)
            assert status["attempts"] == 1 and status["started_at"] >= resumed_at
        assert (await client.stats())["paused"] == []


async def test_global_limits_hold_across_workers_and_a_kill(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = str(tmp_path / "data")
    broker = start_broker("--data-dir", data)
    capped = await asyncio.to_thread(
        admin, broker.address, "limits", "--task", "timed_nap", "--max-running", "2"
    )
    assert capped.stdout.strip() == 'timed_nap: {"max_running": 2, "rate": null}', capped.stderr
    async with Client(broker.address) as client:
        assert await client.set_limits(queue="default", rate="4/s") == {
            "max_running": None,
            "rate": "4/s",
        }
    broker.signal(signal.SIGKILL)
    broker.wait()
    restarted = start_broker("--data-dir", data, port=broker.port)
    shown = await asyncio.to_thread(admin, restarted.address, "limits")
    assert "timed_nap" in shown.stdout and "rate=4/s" in shown.stdout, shown.stderr
    for _ in range(4):
        start_worker(restarted.address, concurrency=8, extra=["--queues", "default,naps"])
    async with Client(restarted.address) as client:
        naps = await client.submit_many(
            [{"task": "timed_nap", "args": [0.05], "queue": "naps"} for _ in range(16)]
        )
        echoes = await client.submit_many([{"task": "echo", "args": [i]} for i in range(10)])
        spans = [await job.result(timeout=WAIT) for job in naps]
        # From the tasks' own clocks: never more than two running at once.
        assert max_overlap([(start, end) for start, end in spans]) <= 2
        assert [await job.result(timeout=WAIT) for job in echoes] == list(range(10))
        # Starts of the default queue, as the broker handed them out: at most 4 in any second.
        starts = sorted([(await client.status(job.id))["started_at"] for job in echoes])
        for i, start in enumerate(starts):
            assert sum(1 for t in starts[: i + 1] if t > start - 1.0) <= 4
        stats = await client.stats()
        assert stats["limits"]["tasks"]["timed_nap"]["running"] == 0
        assert stats["limits"]["queues"]["default"]["rate"] == "4/s"
        # Removing a limit: nothing holds the queue back any more.
        assert await client.set_limits(queue="default") is None
        assert "default" not in (await client.stats())["limits"]["queues"]
