"""End to end: dependencies (depends_on, chains, chords) with real processes, through a SIGKILL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import Client, JobCancelled, NotFound
from harness.processes import BrokerProc, WorkerProc
from tests.waiting import open_gate

WAIT = 30.0


async def test_a_three_level_graph_runs_in_order_and_a_failure_cancels_descendants(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker.address, concurrency=8)
    start_worker(broker.address, concurrency=8)
    async with Client(broker.address) as client:
        # Children listed before their parents: the broker orders the batch itself.
        nap = {"task": "timed_nap", "args": [0.05]}
        graph = {
            "leaf-1": ["mid"],
            "leaf-2": ["mid"],
            "mid": ["root-1", "root-2"],
            "root-1": [],
            "root-2": [],
        }
        jobs = await client.submit_many(
            [{**nap, "job_id": job_id, "depends_on": parents} for job_id, parents in graph.items()]
        )
        spans = {job.id: await job.result(timeout=WAIT) for job in jobs}
        for job_id, parents in graph.items():
            for parent in parents:
                assert spans[job_id][0] >= spans[parent][1], f"{job_id} started before {parent}"

        with pytest.raises(NotFound):
            await client.submit("echo", [1], depends_on=["no-such-job"])
        failing = await client.submit("always_fails", ["boom"], max_attempts=1)
        child = await client.submit("echo", ["never"], depends_on=[failing])
        grandchild = await client.submit("echo", ["never"], depends_on=[child])
        with pytest.raises(JobCancelled) as cancelled:
            await grandchild.result(timeout=WAIT)
        assert cancelled.value.error_type == "ParentFailed"
        assert child.id in cancelled.value.error_message
        status = await client.status(child.id)
        assert status["state"] == "cancelled" and status["attempts"] == 0
        assert status["errors"][-1]["message"] == f"parent job {failing.id} failed"
        assert status["depends_on"] == [failing.id]


async def test_chain_and_chord(broker: BrokerProc, start_worker: Callable[..., WorkerProc]) -> None:
    start_worker(broker.address, concurrency=8)
    async with Client(broker.address) as client:
        steps = await client.chain(*({"task": "timed_nap", "args": [0.02]} for _ in range(3)))
        spans = [await step.result(timeout=WAIT) for step in steps]
        assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0]
        header, body = await client.chord(
            [{"task": "timed_nap", "args": [0.02]} for _ in range(4)],
            {"task": "timed_nap", "args": [0.0]},
        )
        ends = [(await job.result(timeout=WAIT))[1] for job in header]
        assert (await body.result(timeout=WAIT))[0] >= max(ends)


async def test_waiting_jobs_survive_a_kill_and_run_after_their_parent(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = str(tmp_path / "data")
    gate = tmp_path / "gate"
    broker = start_broker("--data-dir", data)
    worker = start_worker(broker.address, concurrency=4)
    async with Client(broker.address) as client:
        parent, child, grandchild = await client.chain(
            {"task": "gated", "args": [str(gate), "parent"]},
            {"task": "echo", "args": ["child"]},
            {"task": "echo", "args": ["grandchild"]},
        )
        assert (await client.status(grandchild.id))["state"] == "waiting"
        assert (await client.stats())["queues"]["default"]["waiting"] == 2
    broker.signal(signal.SIGKILL)
    broker.wait()
    restarted = start_broker("--data-dir", data, port=broker.port)
    async with Client(restarted.address) as client:
        assert (await client.status(child.id))["state"] == "waiting"
        open_gate(gate)
        await asyncio.to_thread(worker.wait_for_line, r"reconnected to the broker", WAIT)
        assert await client.job(parent.id).result(timeout=WAIT) == "parent"
        assert await client.job(grandchild.id).result(timeout=WAIT) == "grandchild"
        assert (await client.status(child.id))["state"] == "succeeded"


async def test_a_unique_key_survives_a_kill(
    tmp_path: Path, start_broker: Callable[..., BrokerProc]
) -> None:
    data = str(tmp_path / "data")
    broker = start_broker("--data-dir", data)
    async with Client(broker.address) as client:
        first = await client.submit("echo", [1], unique_key="nightly", unique_for=3600)
    broker.signal(signal.SIGKILL)
    broker.wait()
    restarted = start_broker("--data-dir", data, port=broker.port)
    async with Client(restarted.address) as client:
        again = await client.submit("echo", [2], unique_key="nightly")
        assert again.id == first.id and again.existing_state == "queued"
        assert (await client.stats())["unique_keys"] == 1
