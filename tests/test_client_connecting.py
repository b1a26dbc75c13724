"""Connecting on demand: a client (and a worker) before, without and after a broker.

Brokers run in the test's own program, on a port chosen before they start.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from broker import (
    Broker,
    BrokerConfig,
    BrokerUnavailable,
    Client,
    ConnectionLost,
    JobState,
)
from protocol.backoff import Reconnect
from tests.inprocess import free_port
from worker import TaskRegistry, Worker

WAIT = 30.0
NOBODY = "nobody-serves-this"


@pytest.fixture
async def brokers() -> AsyncIterator[Callable[[int], Awaitable[Broker]]]:
    """Start brokers on a given port; every one is stopped on the way out."""
    started: list[Broker] = []

    async def start(port: int) -> Broker:
        broker = Broker(BrokerConfig(port=port))
        await broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        await broker.stop()


def test_reconnect_waits_only_while_attempts_fail() -> None:
    policy = Reconnect(0.1, 1.0, random.Random(0))
    assert policy.delay() == 0.0  # the first attempt, and the first after a loss
    delays = [policy.failed() for _ in range(8)]
    assert all(0 < d <= 1.0 for d in delays) and delays[-1] >= 0.5  # capped, jittered
    assert policy.delay() > 0
    policy.connected()
    assert policy.delay() == 0.0


async def test_a_client_before_its_broker_raises_one_error_then_works_when_it_is_up(
    brokers: Callable[[int], Awaitable[Broker]],
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    async with Client(address, connect_timeout=0.2) as client:  # entering needs no broker
        for call in (client.ping(), client.submit("t"), client.stats(), client.connect()):
            with pytest.raises(BrokerUnavailable) as raised:
                await call
            assert isinstance(raised.value, ConnectionError)
            assert not isinstance(raised.value, ConnectionLost)
            assert isinstance(raised.value.__cause__, OSError)
        await brokers(port)
        await client.ping()


async def test_a_call_made_while_the_broker_is_down_waits_for_it(
    brokers: Callable[[int], Awaitable[Broker]],
) -> None:
    port = free_port()
    async with Client(f"127.0.0.1:{port}", connect_timeout=WAIT) as client:
        submitting = asyncio.create_task(client.submit("t", queue=NOBODY))
        # Not done: it keeps retrying within its connect_timeout.
        done, _ = await asyncio.wait({submitting}, timeout=0.3)
        assert not done
        await brokers(port)
        job = await asyncio.wait_for(submitting, WAIT)
        assert (await client.status(job.id))["state"] == JobState.QUEUED


async def test_client_and_worker_come_back_after_a_broker_restart(
    brokers: Callable[[int], Awaitable[Broker]],
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    first = await brokers(port)
    registry = TaskRegistry()

    async def double(x: int) -> int:
        return 2 * x

    registry.register(double)
    worker = Worker(address, registry=registry)
    run = asyncio.create_task(worker.run())
    try:
        async with Client(address, connect_timeout=WAIT) as client:
            assert await (await client.submit("double", [1])).result(timeout=WAIT) == 2
            await first.stop()
            with pytest.raises(ConnectionError):  # lost, or not reachable for a moment
                await client.ping()
            await brokers(port)
            job = await client.submit("double", [2])
            assert await job.result(timeout=WAIT) == 4  # the worker is back too
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, WAIT)


async def test_a_worker_with_a_connect_timeout_gives_up_with_broker_unavailable() -> None:
    worker = Worker(f"127.0.0.1:{free_port()}", registry=TaskRegistry(), connect_timeout=0.2)
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(worker.run(), WAIT)


async def test_a_result_timeout_can_cancel_the_job(
    brokers: Callable[[int], Awaitable[Broker]],
) -> None:
    broker = await brokers(0)
    async with Client(broker.address) as client:
        job = await client.submit("t", queue=NOBODY)
        with pytest.raises(TimeoutError):
            await job.result(timeout=0.05)
        assert (await job.status())["state"] == JobState.QUEUED  # a timeout alone: it goes on
        with pytest.raises(TimeoutError):
            await job.result(timeout=0.05, cancel=True)
        assert (await job.status())["state"] == JobState.CANCELLED


async def test_a_full_broker_is_unavailable_for_a_moment_not_a_refusal() -> None:
    broker = Broker(BrokerConfig(port=0, max_connections=1))
    await broker.start()
    try:
        async with (
            Client(broker.address) as first,
            Client(broker.address, connect_timeout=0.3) as second,
        ):
            await first.ping()
            with pytest.raises(BrokerUnavailable) as raised:
                await second.ping()
            assert "TOO_MANY_CONNECTIONS" in str(raised.value)
            await first.close()
            second._connect_timeout = WAIT
            await second.ping()  # retried until the slot was free
    finally:
        await broker.stop()
