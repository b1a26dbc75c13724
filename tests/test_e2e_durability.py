"""End to end: a broker killed with SIGKILL and restarted on its data directory loses nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import Client, NotFound
from broker.journal import HEADER
from harness.processes import ROOT, BrokerProc, WorkerProc

WAIT = 60.0
IN_FLIGHT = 50


async def submit_until_killed(
    broker: BrokerProc, acked: dict[str, int], sent: dict[str, int], kill_after: int
) -> None:
    """Submit as fast as possible, 50 in flight; SIGKILL the broker after ``kill_after`` acks."""
    counter = iter(range(10**9))

    async with Client(broker.address) as client:

        async def producer() -> None:
            while True:
                i = next(counter)
                job_id = f"k-{i}"
                sent[job_id] = i
                try:
                    await client.submit("echo", [i], job_id=job_id)
                except ConnectionError:
                    return
                acked[job_id] = i
                if len(acked) == kill_after:
                    broker.signal(signal.SIGKILL)

        await asyncio.wait_for(asyncio.gather(*(producer() for _ in range(IN_FLIGHT))), WAIT)
    assert broker.wait() == -signal.SIGKILL


async def check_nothing_lost_or_invented(
    address: str, acked: dict[str, int], sent: dict[str, int]
) -> None:
    async with Client(address) as client:
        present = 0
        for job_id in sent:
            try:
                await client.status(job_id)
            except NotFound:
                assert job_id not in acked, f"acknowledged job {job_id} was lost"
            else:
                present += 1
        # Every job the broker holds is one the producer sent, each once.
        assert (await client.stats())["jobs"] == present
        assert present >= len(acked)


@pytest.mark.parametrize("fsync", ["batch", "always"])
async def test_sigkill_while_submitting_loses_no_acknowledged_job(
    fsync: str,
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = str(tmp_path / "data")
    broker = start_broker("--data-dir", data, "--fsync", fsync)
    acked: dict[str, int] = {}
    sent: dict[str, int] = {}
    await submit_until_killed(broker, acked, sent, kill_after=3000)
    assert len(acked) >= 3000
    restarted = start_broker("--data-dir", data, "--fsync", fsync)
    await check_nothing_lost_or_invented(restarted.address, acked, sent)
    start_worker(restarted.address, concurrency=8)
    async with Client(restarted.address) as client:
        jobs = [client.job(job_id) for job_id in acked]
        results = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        assert results == list(acked.values())


async def test_sigkill_with_jobs_in_flight_on_workers(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = str(tmp_path / "data")
    broker = start_broker("--data-dir", data)
    async with Client(broker.address) as client:
        jobs = await client.submit_many(
            [{"task": "nap", "args": [0.02, i], "job_id": f"f-{i}"} for i in range(600)]
        )
    worker = start_worker(broker.address, concurrency=8)
    await asyncio.to_thread(worker.wait_for_line, r"job f-\d+ nap succeeded", WAIT)
    broker.signal(signal.SIGKILL)
    broker.wait()
    restarted = start_broker("--data-dir", data, port=broker.port)
    async with Client(restarted.address) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(client.job(job.id).result() for job in jobs)), WAIT
        )
        assert results == list(range(600))
        statuses = await asyncio.gather(*(client.status(job.id) for job in jobs))
        # Jobs that were running when the broker died ran again, attempt counted.
        assert all(s["state"] == "succeeded" and s["attempts"] in (1, 2) for s in statuses)
    assert worker.count_lines(r"reconnected to the broker") >= 1


async def test_compaction_under_load_keeps_the_state(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = tmp_path / "data"
    broker = start_broker("--data-dir", str(data), "--compact-min-bytes", "40000")
    start_worker(broker.address, concurrency=8)
    async with Client(broker.address) as client:
        jobs = []
        for batch in range(10):
            prompt = await client.submit_many(
                [{"task": "echo", "args": [batch * 500 + i]} for i in range(500)]
            )
            jobs += prompt
            jobs += await client.submit_many(
                [
                    {"task": "echo", "args": [-1], "delay": 3600, "priority": i % 5}
                    for i in range(50)
                ]
            )
            await asyncio.wait_for(asyncio.gather(*(job.result() for job in prompt)), WAIT)
        stats = await client.stats()
        assert stats["journal"]["compactions"] >= 3
    await asyncio.to_thread(broker.wait_for_line, r"compacted: snapshot", WAIT)
    broker.signal(signal.SIGKILL)
    broker.wait()
    # Old generations are gone: startup reads the live state, not the history.
    assert len(list(data.glob("journal-*.jwj"))) <= 2
    restarted = start_broker("--data-dir", str(data))
    async with Client(restarted.address) as client:
        statuses = await asyncio.gather(*(client.status(job.id) for job in jobs))
        assert sum(s["state"] == "succeeded" for s in statuses) == 5000
        assert sum(s["state"] == "delayed" for s in statuses) == 500
        queue = (await client.stats())["queues"]["default"]
        assert queue == {"waiting": 0, "queued": 0, "delayed": 500, "running": 0}
        done = [job for job, s in zip(jobs, statuses, strict=True) if s["state"] == "succeeded"]
        results = await asyncio.gather(*(client.job(job.id).result() for job in done))
        assert sorted(results) == list(range(5000))


async def test_two_brokers_on_one_directory(
    tmp_path: Path, start_broker: Callable[..., BrokerProc]
) -> None:
    data = str(tmp_path / "data")
    start_broker("--data-dir", data)
    second = BrokerProcOrExit("--data-dir", data)
    assert second.returncode == 1
    assert "in use by another broker" in second.output


async def test_corruption_stops_the_broker_with_a_way_out(
    tmp_path: Path, start_broker: Callable[..., BrokerProc]
) -> None:
    data = tmp_path / "data"
    broker = start_broker("--data-dir", str(data))
    async with Client(broker.address) as client:
        for i in range(20):
            await client.submit("echo", [i], queue="nobody", job_id=f"c-{i}")
    broker.signal(signal.SIGKILL)
    broker.wait()
    journal = max(data.glob("journal-*.jwj"))
    raw = bytearray(journal.read_bytes())
    middle = HEADER.size + (len(raw) - HEADER.size) // 2
    raw[middle : middle + 4] = b"\xde\xad\xbe\xef"
    journal.write_bytes(bytes(raw))
    refused = BrokerProcOrExit("--data-dir", str(data))
    assert refused.returncode == 1
    assert f"{journal.name} is corrupt at byte offset" in refused.output
    assert "--repair-journal" in refused.output
    repaired = start_broker("--data-dir", str(data), "--repair-journal")
    async with Client(repaired.address) as client:
        held = (await client.stats())["queues"]["nobody"]["queued"]
        assert 0 < held < 20  # everything before the damage, nothing after


class BrokerProcOrExit:
    """A broker expected to refuse to start: its exit code and output."""

    def __init__(self, *args: str) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "broker", "--port", "0", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        self.returncode = run.returncode
        self.output = run.stdout + run.stderr
