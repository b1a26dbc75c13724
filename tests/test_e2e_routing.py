"""End to end: jobs go only to workers that announced their task (routing by task)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker import Client
from harness.processes import BrokerProc, WorkerProc

WAIT = 30.0


async def test_two_task_sets_on_one_queue_and_a_task_deployed_late(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    general = start_worker(broker.address, concurrency=4)  # tests.tasks_e2e: whoami, echo, ...
    routed = start_worker(broker.address, "tests.tasks_routing", concurrency=4)
    async with Client(broker.address) as client:
        late = await client.submit("deployed_late", [0])
        jobs = await client.submit_many(
            [{"task": "whoami", "args": [i]} for i in range(40)]
            + [{"task": "routed_pid", "args": [i]} for i in range(40)]
        )
        results = [await job.result(timeout=WAIT) for job in jobs]
        assert {result["pid"] for result in results[:40]} == {general.pid}
        assert {result["pid"] for result in results[40:]} == {routed.pid}
        stats = await client.stats()
        assert stats["failed"] == 0 and stats["retried"] == 0
        # No worker has it: the job waits, counted, instead of failing.
        assert (await client.status(late.id))["state"] == "queued"
        assert stats["no_worker"] == {"default": {"deployed_late": 1}}

        deployed = start_worker(broker.address, "tests.tasks_routing_late", concurrency=1)
        result = await asyncio.wait_for(late.result(), WAIT)
        assert result == {"pid": deployed.pid, "value": 0}
        status = await client.status(late.id)
        assert status["attempts"] == 1 and status["errors"] == []
        assert (await client.stats())["no_worker"] == {}
