"""Lifecycle hooks and the per-job context: ``on_startup``/``on_shutdown``, ``task_context()``,
``current_job()``."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from broker import Broker, Client
from harness.processes import BrokerProc, WorkerProc
from tests.inprocess import running_broker
from worker import TaskRegistry, Worker, current_job, task_context
from worker.__main__ import find_hooks

WAIT = 30.0


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with running_broker() as broker:
        yield broker


async def test_hooks_build_the_context_tasks_read_and_close_it_after_the_last_job(
    broker: Broker,
) -> None:
    events: list[str] = []
    release = asyncio.Event()
    started = asyncio.Event()
    registry = TaskRegistry()

    async def on_startup(ctx: dict[str, Any]) -> None:
        events.append("startup")
        ctx["pool"] = ["a connection"]

    def on_shutdown(ctx: dict[str, Any]) -> None:
        events.append(f"shutdown with {ctx['pool']}")

    async def slow() -> Any:
        started.set()
        await release.wait()
        events.append("slow finished")
        return task_context()["pool"]

    def threaded() -> Any:  # a plain def: the context reaches its thread
        job = current_job()
        return [task_context()["pool"], job.queue, job.attempt, job.deadline is not None]

    registry.register(slow)
    registry.register(threaded, timeout=60)
    worker = Worker(
        broker.address, registry=registry, on_startup=on_startup, on_shutdown=on_shutdown
    )
    assert worker.context["worker"] is worker
    run = asyncio.create_task(worker.run())
    async with Client(broker.address) as client:
        threaded_result = await (await client.submit("threaded")).result(timeout=WAIT)
        assert threaded_result == [["a connection"], "default", 1, True]
        slow_job = await client.submit("slow")
        await asyncio.wait_for(started.wait(), WAIT)
        worker.stop()  # graceful: the running job finishes first
        release.set()
        assert await slow_job.result(timeout=WAIT) == ["a connection"]
    await asyncio.wait_for(run, WAIT)
    assert events == ["startup", "slow finished", "shutdown with ['a connection']"]


async def test_a_deadline_is_the_timeout_from_the_start(broker: Broker) -> None:
    registry = TaskRegistry()

    async def when() -> list[float | None]:
        return [time.time(), current_job().deadline]

    registry.register(when)
    worker = Worker(broker.address, registry=registry)
    run = asyncio.create_task(worker.run())
    try:
        async with Client(broker.address) as client:
            started, deadline = await (await client.submit("when", timeout=100)).result(WAIT)
            assert deadline is not None and started < deadline <= started + 100
            _, none = await (await client.submit("when")).result(WAIT)
            assert none is None
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, WAIT)


async def test_a_failing_startup_hook_ends_run_before_connecting(broker: Broker) -> None:
    def on_startup(ctx: dict[str, Any]) -> None:
        raise RuntimeError("no database")

    worker = Worker(broker.address, registry=TaskRegistry(), on_startup=on_startup)
    with pytest.raises(RuntimeError, match="no database"):
        await asyncio.wait_for(worker.run(), WAIT)
    assert broker.state.stats()["workers"] == 0


async def test_find_hooks_runs_startups_in_order_and_shutdowns_in_reverse() -> None:
    calls: list[str] = []

    def module(name: str, **attributes: Callable[[dict[str, Any]], Any]) -> str:
        fake = types.ModuleType(name)
        for key, value in attributes.items():
            setattr(fake, key, value)
        sys.modules[name] = fake
        return name

    async def async_start(ctx: dict[str, Any]) -> None:
        calls.append("a start")

    names = [
        module("hooks_a", on_startup=async_start, on_shutdown=lambda ctx: calls.append("a stop")),
        module("hooks_b", on_startup=lambda ctx: calls.append("b start")),
        module("hooks_c"),
    ]
    try:
        startup, shutdown = find_hooks(names)
        assert startup is not None and shutdown is not None
        await startup({})  # type: ignore[misc]
        shutdown({})
        assert calls == ["a start", "b start", "a stop"]
        assert find_hooks(["hooks_c"]) == (None, None)
    finally:
        for name in names:
            del sys.modules[name]


def test_python_m_worker_finds_a_modules_hooks(
    broker_proc: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker_proc.address, "tests.tasks_hooks")

    async def greet() -> Any:
        async with Client(broker_proc.address) as client:
            return await (await client.submit("hooks.greet")).result(timeout=WAIT)

    assert asyncio.run(greet()) == {
        "greeting": "hello from on_startup",
        "queue": "default",
        "attempt": 1,
    }


@pytest.fixture
def broker_proc(start_broker: Callable[..., BrokerProc]) -> BrokerProc:
    return start_broker()
