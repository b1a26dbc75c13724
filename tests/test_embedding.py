"""The broker, a worker and the client inside one asyncio program, and burst mode."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker import Broker, BrokerConfig, Client
from broker.manager import ManagerConfig
from harness.processes import BrokerProc, WorkerProc
from worker import Retry, TaskRegistry, Worker, current_job

WAIT = 30.0


async def test_everything_in_one_program_with_a_burst_worker() -> None:
    registry = TaskRegistry()
    seen: list[tuple[str, int]] = []

    async def square(x: int) -> int:
        seen.append((current_job().id, current_job().attempt))
        return x * x

    def flaky(x: int) -> int:  # a plain function: runs in the worker's threads
        if current_job().attempt == 1:
            raise Retry(delay=0.05)
        return -x

    registry.register(square)
    registry.register(flaky, max_attempts=2)
    broker = Broker(BrokerConfig(port=0, manager=ManagerConfig(backoff_base=0.01)))
    await broker.start()
    try:
        async with Client(broker.address) as client:
            jobs = await client.submit_many([{"task": "square", "args": [i]} for i in range(50)])
            worker = Worker(broker.address, registry=registry, concurrency=4, burst=True)
            # burst: the worker returns by itself once its queues are empty
            await asyncio.wait_for(worker.run(), WAIT)
            assert [await job.result() for job in jobs] == [i * i for i in range(50)]
            assert worker.jobs_done == 50
            assert sorted(job_id for job_id, _ in seen) == sorted(job.id for job in jobs)

            # A queued job of a task this worker does not have never reaches it,
            # so it does not keep a burst worker from finishing.
            other = await client.submit("not_here", [1])
            flaky_job = await client.submit("flaky", [3])
            await asyncio.wait_for(
                Worker(broker.address, registry=registry, burst=True).run(), WAIT
            )
            assert await flaky_job.result() == -3
            assert (await client.status(flaky_job.id))["attempts"] == 2
            assert (await client.status(other.id))["state"] == "queued"
    finally:
        await broker.stop()
    assert not broker.sessions


async def test_burst_worker_process_exits_zero_when_the_queue_is_empty(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    async with Client(broker.address) as client:
        jobs = await client.submit_many([{"task": "nap", "args": [0.01, i]} for i in range(40)])
        worker = start_worker(broker.address, extra=["--burst"], wait_connected=False)
        assert await asyncio.to_thread(worker.wait, WAIT) == 0
        assert [await job.result(timeout=WAIT) for job in jobs] == list(range(40))
        assert (await client.stats())["workers"] == 0


async def test_a_client_that_does_not_watch_still_gets_results() -> None:
    registry = TaskRegistry()

    async def double(x: int) -> int:
        return 2 * x

    registry.register(double)
    broker = Broker(BrokerConfig(port=0))
    await broker.start()
    try:
        async with Client(broker.address, watch=False) as client:
            jobs = await client.submit_many([{"task": "double", "args": [i]} for i in range(10)])
            assert client._outcomes == {}  # nothing registered until asked
            await asyncio.wait_for(
                Worker(broker.address, registry=registry, burst=True).run(), WAIT
            )
            assert [await job.result(timeout=WAIT) for job in jobs] == [2 * i for i in range(10)]
            finished = [job async for job in client.as_completed(jobs)]
            assert sorted(job.id for job in finished) == sorted(job.id for job in jobs)
    finally:
        await broker.stop()


def test_a_worker_listens_on_the_queues_its_tasks_name() -> None:
    registry = TaskRegistry()

    def plain() -> None: ...

    def mail() -> None: ...

    registry.register(plain)
    registry.register(mail, queue="emails")
    assert Worker(registry=registry).queues == ["default", "emails"]
    assert Worker(registry=registry, queues=["only"]).queues == ["only"]
    assert Worker(registry=TaskRegistry()).queues == ["default"]
