"""CPU-bound tasks in a process pool: what crosses, timeouts, crashes, healing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import Broker, Client, JobFailed
from tests import tasks_cpu
from tests.inprocess import running_broker, serving
from tests.waiting import eventually
from worker import TaskRegistry, Worker, task

WAIT = 60.0


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with running_broker() as broker:
        yield broker


async def failure(client: Client, name: str, *args: object) -> JobFailed:
    job = await client.submit(name, list(args), max_attempts=1, timeout=2.0)
    with pytest.raises(JobFailed) as failed:
        await job.result(timeout=WAIT)
    return failed.value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_process_tasks_run_in_children_and_the_pool_heals(
    broker: Broker, tmp_path: Path
) -> None:
    worker = Worker(broker.address, registry=tasks_cpu.REGISTRY, concurrency=2, processes=2)
    async with serving(worker), Client(broker.address) as client:
        pid, parent = await (await tasks_cpu.where.submit(client)).result(timeout=WAIT)
        assert parent == os.getpid() and pid != os.getpid()
        paired = await (await tasks_cpu.pair.submit(client, 1, "x")).result(WAIT)
        assert list(paired) == [1, "x"] and isinstance(paired, list)  # msgpack: a list
        # --processes: every plain def task runs in a process; async ones stay on the loop.
        assert await (await client.submit("threaded_pid")).result(WAIT) != os.getpid()
        assert await (await client.submit("async_pid")).result(WAIT) == os.getpid()

        raised = await failure(client, "raises", "bad input")
        assert (raised.error_type, raised.error_message) == ("ValueError", "bad input")
        assert "raise ValueError(message)" in raised.traceback

        pid_file = tmp_path / "spin.pid"
        timed_out = await failure(client, "spin", str(pid_file))
        assert timed_out.error_type == "JobTimeout"
        assert "its process was killed" in timed_out.error_message
        spun = int(pid_file.read_text())

        async def spinner_gone() -> bool:
            return not alive(spun)

        await eventually(spinner_gone, "the timed-out task's process is gone")

        crashed = await failure(client, "exit_now", 3)
        assert crashed.error_type == "ProcessCrashed"
        assert "exit code 3" in crashed.error_message
        segfaulted = await failure(client, "segfault")
        assert (segfaulted.error_type, "SIGSEGV" in segfaulted.error_message) == (
            "ProcessCrashed",
            True,
        )
        # Healed: both processes serve again.
        pids = await asyncio.gather(
            *[(await tasks_cpu.where.submit(client)).result(WAIT) for _ in range(4)]
        )
        assert all(child != os.getpid() for child, _ in pids)

        retried = await client.submit("again", max_attempts=2)
        with pytest.raises(JobFailed) as failed:
            await retried.result(timeout=WAIT)
        assert failed.value.error_message == "once more"
        assert (await retried.status())["attempts"] == 2


async def test_only_process_tasks_use_the_pool_without_processes(broker: Broker) -> None:
    worker = Worker(broker.address, registry=tasks_cpu.REGISTRY, concurrency=1)
    async with serving(worker), Client(broker.address) as client:
        assert await (await client.submit("threaded_pid")).result(WAIT) == os.getpid()
        child, _ = await (await client.submit("where")).result(WAIT)
        assert child != os.getpid()
    assert worker._pool is None  # closed on the way out


async def test_a_process_task_must_be_a_module_level_def() -> None:
    registry = TaskRegistry()

    @task(registry=registry, process=True)
    def nested() -> None:
        pass

    with pytest.raises(ValueError, match="module-level"):
        await Worker("127.0.0.1:1", registry=registry).run()
    with pytest.raises(ValueError, match="async def"):

        @task(registry=registry, process=True)
        async def not_in_a_process() -> None:
            pass
