"""End to end: no job is lost. Killed, stalled and stopped workers; retries; cancel; restarts."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import Client, ConnectionLost, JobCancelled, JobFailed
from harness.processes import BrokerProc, WorkerProc
from tests.waiting import eventually, open_gate

WAIT = 30.0


async def wait_line(proc: WorkerProc | BrokerProc, pattern: str, start: int = 0) -> str:
    return await asyncio.to_thread(proc.wait_for_line, pattern, WAIT, start)


async def test_sigkilled_worker_loses_no_job(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    doomed = start_worker(broker.address, concurrency=8)
    async with Client(broker.address) as client:
        quick = await client.submit_many([{"task": "echo", "args": [i]} for i in range(40)])
        held = await client.submit_many(
            [{"task": "gated", "args": [str(gate), i]} for i in range(40, 200)]
        )
        async with asyncio.timeout(WAIT):
            async for _ in client.as_completed(quick):
                pass

        async def all_slots_busy() -> bool:
            return bool((await client.stats())["queues"]["default"]["running"] == 8)

        # Killed while it certainly holds eight unfinished jobs.
        await eventually(all_slots_busy, "the doomed worker holds eight jobs")
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        open_gate(gate)
        start_worker(broker.address, concurrency=8)
        jobs = quick + held
        results = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        assert results == list(range(200))
        statuses = await asyncio.gather(*(client.status(job.id) for job in jobs))
        interrupted = {s["id"] for s in statuses if s["attempts"] == 2}
        assert all(s["attempts"] in (1, 2) and s["state"] == "succeeded" for s in statuses)
        # Exactly the jobs the broker says it requeued ran twice: the eight it held.
        assert len(interrupted) == 8
        for job_id in interrupted:
            await wait_line(broker, rf"requeued job {job_id} after attempt 1")
        assert broker.count_lines(r"requeued job \S+ after attempt 1") == 8
        assert (await client.stats())["succeeded"] == 200


async def test_stalled_worker_loses_its_lease_and_the_job_runs_elsewhere(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    stalled = start_worker(broker.address, concurrency=1)
    async with Client(broker.address) as client:
        job = await client.submit("gated", [str(gate), "done"], lease=1.0)
        await wait_line(stalled, rf"job {job.id} gated started")
        stalled.signal(signal.SIGSTOP)  # alive and connected, but silent
        open_gate(gate)  # it cannot notice: it is stopped
        rescuer = start_worker(broker.address, concurrency=1)
        assert await job.result(timeout=WAIT) == "done"
        await wait_line(rescuer, rf"job {job.id} gated succeeded")
        await wait_line(broker, rf"requeued job {job.id} after attempt 1: lease of 1s expired")
        stalled.signal(signal.SIGCONT)
        status = await client.status(job.id)
        assert status["state"] == "succeeded"
        assert status["attempts"] == 2
        # The stalled worker's attempt, if it reports at all, changes nothing.
        await client.ping()
        assert await client.job(job.id).result(timeout=WAIT) == "done"


async def test_always_failing_job_fails_after_max_attempts_with_backoff(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker.address)
    async with Client(broker.address) as client:
        job = await client.submit("always_fails", ["nope"], max_attempts=3)
        with pytest.raises(JobFailed, match="ValueError: nope"):
            await job.result(timeout=WAIT)
        status = await client.status(job.id)
        assert status["state"] == "failed"
        assert status["attempts"] == 3
        errors = status["errors"]
        assert [e["attempt"] for e in errors] == [1, 2, 3]
        # --retry-backoff 0.05: the wait after attempt n is at least 0.5 * 0.05 * 2**(n-1).
        for n in (1, 2):
            assert errors[n]["at"] - errors[n - 1]["at"] >= 0.5 * 0.05 * 2 ** (n - 1)
        failed = await client.failed()
        assert [f["id"] for f in failed] == [job.id]
        # Retried from the failed list with fresh attempts: it fails three more times.
        assert await client.retry([job.id]) == 1
        with pytest.raises(JobFailed):
            await client.job(job.id).result(timeout=WAIT)
        status = await client.status(job.id)
        assert status["attempts"] == 3
        assert len(status["errors"]) == 6
        assert await client.purge_failed() == 1
        assert await client.failed() == []


async def test_retry_with_delay_is_honoured(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker.address)
    async with Client(broker.address) as client:
        job = await client.submit("retry_once", [0.5])
        assert await job.result(timeout=WAIT) == 2
        status = await client.status(job.id)
        assert status["errors"][0]["type"] == "Retry"
        assert status["started_at"] - status["errors"][0]["at"] >= 0.5


async def test_cancel_queued_delayed_and_running(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    worker = start_worker(broker.address, concurrency=1)
    async with Client(broker.address) as client:
        queued = await client.submit("echo", [1], queue="nobody-serves-this")
        delayed = await client.submit("echo", [2], delay=60)
        running = await client.submit("nap", [60, 3])
        await wait_line(worker, rf"job {running.id} nap started")
        for job in (queued, delayed, running):
            assert await client.cancel(job.id) is True
            assert (await client.status(job.id))["state"] == "cancelled"
            with pytest.raises(JobCancelled):
                await job.result(timeout=WAIT)
            assert await client.cancel(job.id) is False
        await wait_line(worker, rf"job {running.id} revoked")
        # Its only slot is free again.
        assert await (await client.submit("echo", ["next"])).result(timeout=WAIT) == "next"
        stats = await client.stats()
        assert stats["cancelled"] == 3
        assert stats["queues"]["nobody-serves-this"]["queued"] == 0


async def test_same_job_id_submitted_twice_runs_once(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    worker = start_worker(broker.address)
    async with Client(broker.address) as client:
        first = await client.submit("nap", [0.2, "first"], job_id="order-42")
        second = await client.submit("nap", [0.2, "second"], job_id="order-42")
        assert first.id == second.id == "order-42"
        assert await second.result(timeout=WAIT) == "first"
        again = await client.submit("nap", [0.2, "third"], job_id="order-42")
        assert await again.result(timeout=WAIT) == "first"
        assert worker.count_lines(r"job order-42 nap started") == 1
        assert (await client.stats())["submitted"] == 1


async def test_sigterm_lets_the_running_job_finish(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = start_worker(broker.address, concurrency=2)
    async with Client(broker.address) as client:
        job = await client.submit("gated", [str(gate), "kept"])
        await wait_line(worker, rf"job {job.id} gated started")
        worker.signal(signal.SIGTERM)
        await wait_line(worker, r"stopping: 1 job")
        later = await client.submit("echo", ["not taken"])
        open_gate(gate)
        assert await job.result(timeout=WAIT) == "kept"
        assert await asyncio.to_thread(worker.wait) == 0
        assert (await client.status(later.id))["state"] == "queued"


async def test_grace_expiry_hands_the_job_back_to_run_elsewhere(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    worker = start_worker(broker.address, extra=["--grace", "0.3"])
    async with Client(broker.address) as client:
        job = await client.submit("gated", [str(gate), "elsewhere"])
        await wait_line(worker, rf"job {job.id} gated started")
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait) == 0

        async def handed_back() -> bool:
            return bool((await client.status(job.id))["state"] == "queued")

        await eventually(handed_back, "the job is queued again")
        status = await client.status(job.id)
        assert status["attempts"] == 0  # handed back, not failed: the attempt is not counted
        open_gate(gate)
        start_worker(broker.address)
        assert await job.result(timeout=WAIT) == "elsewhere"
        assert (await client.status(job.id))["attempts"] == 1


async def test_worker_and_client_reconnect_after_broker_restart(
    start_broker: Callable[..., BrokerProc], start_worker: Callable[..., WorkerProc]
) -> None:
    first = start_broker()
    worker = start_worker(first.address)
    client = Client(first.address, connect_timeout=WAIT)
    try:
        assert await (await client.submit("echo", [1])).result(timeout=WAIT) == 1
        pending = await client.submit("nap", [60])
        waiting = asyncio.ensure_future(pending.result())
        mark = worker.line_count()
        assert await asyncio.to_thread(first.stop) == 0
        await wait_line(worker, r"cannot reach the broker", mark)
        second = start_broker(port=first.port)
        # The result awaited across the restart is watched again on the new
        # broker, which has no journal: it no longer knows the job.
        with pytest.raises(ConnectionLost, match="no longer knows"):
            await asyncio.wait_for(waiting, WAIT)
        await wait_line(worker, r"reconnected to the broker", mark)
        # Capped exponential backoff: a handful of attempts, not one per millisecond.
        assert worker.count_lines(r"cannot reach the broker") < 20
        assert await (await client.submit("echo", [2])).result(timeout=WAIT) == 2
        assert (await client.stats())["workers"] == 1
        assert second.port == first.port
    finally:
        await client.close()
