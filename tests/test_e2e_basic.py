"""End to end: a real broker process, real worker processes, the async client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import Client, JobFailed, NotFound
from harness.processes import BrokerProc, WorkerProc
from tests.waiting import open_gate

WAIT = 30.0


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = best = 0
    for _, step in events:
        open_now += step
        best = max(best, open_now)
    return best


async def run_intervals(client: Client, job_ids: list[str]) -> list[tuple[float, float]]:
    statuses = [await client.status(job_id) for job_id in job_ids]
    return [(s["started_at"], s["finished_at"]) for s in statuses]


async def test_thousand_jobs_two_workers_each_finish_once(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    first = start_worker(broker.address, concurrency=8)
    second = start_worker(broker.address, concurrency=8)
    async with Client(broker.address) as client:
        jobs = await client.submit_many([{"task": "whoami", "args": [i]} for i in range(1000)])
        assert len({job.id for job in jobs}) == 1000
        results = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        assert [r["value"] for r in results] == list(range(1000))
        # Both worker processes took part.
        assert {r["pid"] for r in results} == {first.pid, second.pid}
        statuses = await asyncio.gather(*(client.status(job.id) for job in jobs))
        assert all(s["state"] == "succeeded" and s["attempts"] == 1 for s in statuses)
        stats = await client.stats()
        assert stats["succeeded"] == 1000
        assert stats["failed"] == 0
        assert stats["retried"] == 0
        assert stats["workers"] == 2


async def test_concurrency_four_runs_four_at_once_never_five(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = start_worker(broker.address, concurrency=4)
    async with Client(broker.address) as client:
        jobs = await client.submit_many(
            [{"task": "gated", "args": [str(gate), i]} for i in range(4)]
            + [{"task": "blocking_nap", "args": [0.05, i]} for i in range(4, 9)]
        )
        # The four gated jobs run side by side, and hold every slot ...
        start = 0
        for _ in range(4):
            start = 1 + await asyncio.to_thread(
                worker.wait_for_line_number, r"gated started", WAIT, start
            )
        assert (await client.stats())["queues"]["default"]["running"] == 4
        open_gate(gate)
        done = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        assert done == list(range(9))
        intervals = await run_intervals(client, [job.id for job in jobs])
        assert max_overlap(intervals[:4]) == 4
        # ... and nothing ever ran as a fifth.
        assert max_overlap(intervals) == 4


async def test_priority_and_fifo_order(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    async with Client(broker.address) as client:
        specs: list[dict[str, Any]] = [
            {"task": "echo", "args": [f"p{priority}-{n}"], "priority": priority}
            for n in range(3)
            for priority in (0, 5, -1, 10)
        ]
        jobs = await client.submit_many(specs)
        start_worker(broker.address, concurrency=1)
        await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        statuses = [await client.status(job.id) for job in jobs]
        by_start = sorted(zip(statuses, specs, strict=True), key=lambda pair: pair[0]["started_at"])
        order = [spec["args"][0] for _, spec in by_start]
        assert order == [f"p{p}-{n}" for p in (10, 5, 0, -1) for n in range(3)]


async def test_delay_is_honoured(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker.address, concurrency=2)
    async with Client(broker.address) as client:
        delayed = await client.submit("echo", ["late"], delay=2.0)
        prompt = await client.submit("echo", ["now"])
        assert await asyncio.wait_for(prompt.result(), WAIT) == "now"
        assert await asyncio.wait_for(delayed.result(), WAIT) == "late"
        status = await client.status(delayed.id)
        assert status["started_at"] >= status["created_at"] + 2.0


async def test_unknown_task_waits_and_failing_task_raises_job_failed(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker.address)
    async with Client(broker.address) as client:
        unknown = await client.submit("no_such_task", [1], max_attempts=1)
        failing = await client.submit("always_fails", ["kaboom"], max_attempts=1)
        with pytest.raises(JobFailed) as failing_error:
            await asyncio.wait_for(failing.result(), WAIT)
        assert failing_error.value.error_type == "ValueError"
        assert "kaboom" in str(failing_error.value)
        assert "raise ValueError(message)" in failing_error.value.traceback
        assert (await client.status(failing.id))["state"] == "failed"
        # The worker announced its tasks: a job for another one waits for its worker.
        assert (await client.status(unknown.id))["state"] == "queued"
        assert (await client.stats())["no_worker"] == {"default": {"no_such_task": 1}}


async def test_unencodable_result_and_timeout_fail_the_job_not_the_worker(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker.address)
    async with Client(broker.address) as client:
        bad = await client.submit("unencodable", max_attempts=1)
        slow = await client.submit("custom.name", [5.0], max_attempts=1)
        with pytest.raises(JobFailed, match="cannot be encoded"):
            await asyncio.wait_for(bad.result(), WAIT)
        with pytest.raises(JobFailed, match=r"timeout of 0\.3s"):
            await asyncio.wait_for(slow.result(), WAIT)
        # The worker is still there and serving.
        assert await asyncio.wait_for((await client.submit("echo", [7])).result(), WAIT) == 7


async def test_status_of_unknown_job_and_handles_by_id(broker: BrokerProc) -> None:
    async with Client(broker.address) as client:
        with pytest.raises(NotFound):
            await client.status("nope")
        with pytest.raises(NotFound):
            await client.job("nope").result(timeout=5)
        job = await client.submit("echo", [1])
        status = await client.status(job.id)
        assert status["state"] == "queued"
        assert status["attempts"] == 0


async def test_result_awaited_from_another_client(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    async with Client(broker.address) as producer, Client(broker.address) as observer:
        job = await producer.submit("nap", [0.2, "shared"])
        waiting = asyncio.ensure_future(observer.job(job.id).result())
        start_worker(broker.address)
        assert await asyncio.wait_for(waiting, WAIT) == "shared"
        # A finished job's result can be fetched again until it expires.
        assert await observer.job(job.id).result(timeout=5) == "shared"


async def test_as_completed_yields_in_finishing_order(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    start_worker(broker.address, concurrency=4)
    gates = {name: tmp_path / name for name in ("a", "b", "c")}
    order = ["b", "c", "a"]
    async with Client(broker.address) as client:
        jobs = await client.submit_many(
            [{"task": "gated", "args": [str(gate), name]} for name, gate in gates.items()]
        )
        open_gate(gates[order[0]])
        finished = []
        async with asyncio.timeout(WAIT):
            async for job in client.as_completed(jobs):
                finished.append(await job.result())
                if len(finished) < len(order):  # the next one finishes only now
                    open_gate(gates[order[len(finished)]])
        assert finished == order


async def test_lost_connection_fails_pending_calls(start_broker: Callable[..., BrokerProc]) -> None:
    broker = start_broker()
    # A result awaited is watched again on the next connection, for as long
    # as connecting may take: with no broker to come back, that is the wait.
    async with Client(broker.address, connect_timeout=1.0) as client:
        job = await client.submit("echo", [1])
        waiting = asyncio.ensure_future(job.result())
        await asyncio.sleep(0)
        broker.stop()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, WAIT)
