"""The client and the worker against a broker in the same program (no subprocesses).

Tasks block on events the test controls, so nothing here depends on a sleep
landing in time; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgpack
import pytest

from broker import (
    Broker,
    BrokerConfig,
    Client,
    ConnectionLost,
    JobCancelled,
    JobFailed,
    JobState,
    NotFound,
    RemoteError,
)
from broker.manager import Consumer, ManagerConfig
from tests.inprocess import running_broker, serving
from tests.waiting import eventually
from worker import Retry, TaskRegistry, Worker, current_job

WAIT = 30.0
NOBODY = "nobody-serves-this"


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    config = BrokerConfig(port=0, manager=ManagerConfig(backoff_base=0.01, backoff_cap=0.05))
    async with running_broker(config) as broker:
        yield broker


class Gates:
    """Tasks that wait for the test: ``gated(name)`` returns ``name`` once opened."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: set[str] = set()
        self.executing = 0
        self.most_executing = 0

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def started_event(self, name: str) -> asyncio.Event:
        return self.started.setdefault(name, asyncio.Event())

    async def gated(self, name: str) -> str:
        self.executing += 1
        self.most_executing = max(self.most_executing, self.executing)
        self.started_event(name).set()
        try:
            await self.gate(name).wait()
        except asyncio.CancelledError:
            self.cancelled.add(name)
            raise
        finally:
            self.executing -= 1
        return name

    def registry(self) -> TaskRegistry:
        registry = TaskRegistry()
        registry.register(self.gated, name="gated")
        return registry


async def wait_started(gates: Gates, *names: str) -> None:
    async with asyncio.timeout(WAIT):
        for name in names:
            await gates.started_event(name).wait()


async def running_at_broker(client: Client, queue: str = "default") -> int:
    counts: dict[str, int] = (await client.stats())["queues"].get(queue, {})
    return counts.get(JobState.RUNNING, 0)


# -- the client ------------------------------------------------------------------------


async def test_submit_result_and_status(broker: Broker) -> None:
    gates = Gates()
    async with (
        Client(broker.address) as client,
        serving(Worker(broker.address, registry=gates.registry())),
    ):
        job = await client.submit("gated", ["a"])
        await wait_started(gates, "a")
        status = await client.status(job.id)
        assert (status["state"], status["attempts"]) == (JobState.RUNNING, 1)
        gates.gate("a").set()
        assert await job.result(timeout=WAIT) == "a"
        status = await job.status()
        assert (status["state"], status["attempts"]) == (JobState.SUCCEEDED, 1)
        assert status["task"] == "gated"
        with pytest.raises(NotFound):
            await client.status("no-such-job")


async def test_as_completed_yields_in_the_order_jobs_finish(broker: Broker) -> None:
    gates = Gates()
    registry = gates.registry()
    async with (
        Client(broker.address) as client,
        serving(Worker(broker.address, registry=registry, concurrency=3)),
    ):
        jobs = await client.submit_many([{"task": "gated", "args": [n]} for n in "abc"])
        await wait_started(gates, "a", "b", "c")
        order = ["c", "a", "b"]
        gates.gate(order[0]).set()
        finished = []
        async with asyncio.timeout(WAIT):
            async for job in client.as_completed(jobs):
                finished.append(await job.result())
                if len(finished) < len(order):
                    gates.gate(order[len(finished)]).set()
        assert finished == order


async def test_cancel_a_queued_job(broker: Broker) -> None:
    async with Client(broker.address) as client:
        job = await client.submit("gated", ["x"], queue=NOBODY)
        assert await job.cancel() is True
        assert (await client.status(job.id))["state"] == JobState.CANCELLED
        with pytest.raises(JobCancelled):
            await job.result(timeout=WAIT)
        assert await client.cancel(job.id) is False


async def test_failed_list_retry_and_purge(broker: Broker) -> None:
    registry = TaskRegistry()
    calls: list[int] = []

    def breaks() -> None:
        calls.append(current_job().attempt)
        raise ValueError("broken")

    registry.register(breaks)
    async with Client(broker.address) as client, serving(Worker(broker.address, registry=registry)):
        job = await client.submit("breaks", max_attempts=1)
        with pytest.raises(JobFailed) as failed:
            await job.result(timeout=WAIT)
        assert (failed.value.error_type, failed.value.error_message) == ("ValueError", "broken")
        assert "raise ValueError" in failed.value.traceback
        assert [entry["id"] for entry in await client.failed()] == [job.id]
        assert await client.retry([job.id]) == 1
        with pytest.raises(JobFailed):
            await client.job(job.id).result(timeout=WAIT)
        assert calls == [1, 1]  # fresh attempts after a retry
        assert await client.purge_failed() == 1
        assert await client.failed() == []


async def test_a_waiting_result_raises_connection_lost_when_the_broker_stays_away(
    broker: Broker,
) -> None:
    # The result is watched again on the next connection, but none comes
    # within the connect timeout (tests/test_peers.py: when one does).
    async with Client(broker.address, connect_timeout=0.2) as client:
        job = await client.submit("gated", ["never"], queue=NOBODY)
        waiting = asyncio.ensure_future(job.result())
        await client.ping()  # the WATCH is in place before the broker goes
        await broker.stop()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(waiting, WAIT)


async def test_submit_many_refuses_unknown_options(broker: Broker) -> None:
    async with Client(broker.address) as client:
        with pytest.raises(ValueError, match="colour"):
            await client.submit_many([{"task": "t", "colour": "blue"}])
        with pytest.raises(ValueError, match="'task' is required"):
            await client.submit_many([{"args": [1]}])
        assert await client.submit_many([]) == []
        job = await client.submit("t", queue=NOBODY, priority=3, job_id="mine", max_attempts=2)
        status = await client.status("mine")
        assert (job.id, status["queue"], status["priority"]) == ("mine", NOBODY, 3)


# -- the worker ------------------------------------------------------------------------


async def test_credit_never_exceeds_concurrency_plus_prefetch(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    concurrency, prefetch = 2, 3
    held_most = promised_most = 0
    grant = broker.manager.grant

    def checked_grant(consumer: Consumer, n: int, now: float) -> None:
        nonlocal held_most, promised_most
        grant(consumer, n, now)
        # What the worker holds plus what it may still be sent.
        promised_most = max(promised_most, consumer.credit + len(consumer.jobs))
        held_most = max(held_most, len(consumer.jobs))

    monkeypatch.setattr(broker.manager, "grant", checked_grant)
    gates = Gates()
    names = [f"j{i}" for i in range(12)]
    worker = Worker(
        broker.address, registry=gates.registry(), concurrency=concurrency, prefetch=prefetch
    )
    async with Client(broker.address) as client, serving(worker):
        jobs = await client.submit_many([{"task": "gated", "args": [name]} for name in names])
        await wait_started(gates, "j0", "j1")

        async def holds_all_it_may() -> bool:
            return await running_at_broker(client) == concurrency + prefetch

        await eventually(holds_all_it_may, "the worker holds concurrency + prefetch jobs")
        for name in names:  # in arrival order, one at a time
            await wait_started(gates, name)
            gates.gate(name).set()
        assert [await job.result(timeout=WAIT) for job in jobs] == names
    assert gates.most_executing == concurrency
    assert held_most == promised_most == concurrency + prefetch


async def test_revoke_cancels_the_running_async_task_and_frees_its_slot(broker: Broker) -> None:
    gates = Gates()
    async with (
        Client(broker.address) as client,
        serving(Worker(broker.address, registry=gates.registry(), concurrency=1)),
    ):
        doomed = await client.submit("gated", ["doomed"])
        await wait_started(gates, "doomed")
        assert await client.cancel(doomed.id) is True
        nxt = await client.submit("gated", ["next"])
        await wait_started(gates, "next")  # the only slot is free again
        assert gates.cancelled == {"doomed"}
        gates.gate("next").set()
        assert await nxt.result(timeout=WAIT) == "next"
        with pytest.raises(JobCancelled):
            await doomed.result(timeout=WAIT)


async def test_stop_hands_prefetched_jobs_back_and_lets_the_running_one_finish(
    broker: Broker,
) -> None:
    gates = Gates()
    worker = Worker(broker.address, registry=gates.registry(), concurrency=1, prefetch=2)
    async with Client(broker.address) as client:
        run = asyncio.create_task(worker.run())
        try:
            running = await client.submit("gated", ["running"])
            await wait_started(gates, "running")
            waiting = await client.submit_many([{"task": "gated", "args": [n]} for n in "xy"])

            async def all_held() -> bool:
                return await running_at_broker(client) == 3

            await eventually(all_held, "the worker holds its prefetched jobs")
            worker.stop()

            async def handed_back() -> bool:
                statuses = [await client.status(job.id) for job in waiting]
                return all(s["state"] == JobState.QUEUED for s in statuses)

            await eventually(handed_back, "the prefetched jobs are queued again")
            for job in waiting:
                assert (await client.status(job.id))["attempts"] == 0
            assert not run.done()  # the running job has its grace period
            gates.gate("running").set()
            assert await running.result(timeout=WAIT) == "running"
            await asyncio.wait_for(run, WAIT)
        finally:
            worker.stop_now()
            await asyncio.wait_for(run, WAIT)
        assert set(gates.started) == {"running"}  # the others never started here


async def test_retry_timeout_and_a_task_deployed_later(broker: Broker) -> None:
    registry = TaskRegistry()
    never = asyncio.Event()

    async def retries_once() -> int:
        if current_job().attempt == 1:
            raise Retry(delay=0.01)
        return current_job().attempt

    async def hangs() -> None:
        await never.wait()

    registry.register(retries_once)
    registry.register(hangs, timeout=0.05)
    async with Client(broker.address) as client, serving(Worker(broker.address, registry=registry)):
        retried = await client.submit("retries_once")
        hung = await client.submit("hangs", max_attempts=1)
        unknown = await client.submit("deployed_later", max_attempts=1)
        assert await retried.result(timeout=WAIT) == 2
        status = await client.status(retried.id)
        assert [e["type"] for e in status["errors"]] == ["Retry"]
        with pytest.raises(JobFailed) as timed_out:
            await hung.result(timeout=WAIT)
        assert timed_out.value.error_type == "JobTimeout"
        # No worker announced it: the job waits for one instead of failing.
        assert (await client.status(unknown.id))["state"] == JobState.QUEUED
        assert (await client.stats())["no_worker"] == {"default": {"deployed_later": 1}}
        later = TaskRegistry()

        async def deployed_later() -> str:
            return "ran"

        later.register(deployed_later)
        async with serving(Worker(broker.address, registry=later)):
            assert await unknown.result(timeout=WAIT) == "ran"
        assert (await client.status(unknown.id))["attempts"] == 1


async def test_set_limits_refuses_what_it_cannot_enforce(broker: Broker) -> None:
    async with Client(broker.address) as client:
        with pytest.raises(ValueError, match="exactly one of queue= and task="):
            await client.set_limits(max_running=1)
        with pytest.raises(ValueError, match="expected COUNT/PERIOD"):
            await client.set_limits(task="t", rate="lots")
        with pytest.raises(RemoteError) as zero:
            await client.set_limits(queue="q", max_running=0)
        assert zero.value.code == "BAD_REQUEST" and "PAUSE" in zero.value.message
        # What a client written from the spec alone could send.
        with pytest.raises(RemoteError, match="exactly one of 'queue' and 'task'"):
            await client._call({"op": "SET_LIMITS", "queue": "a", "task": "b"})
        with pytest.raises(RemoteError, match="expected COUNT/PERIOD"):
            await client._call({"op": "SET_LIMITS", "task": "t", "rate": "lots"})
        assert (await client.stats())["limits"] == {"queues": {}, "tasks": {}}
        assert await client.set_limits(task="t", max_running=3) == {
            "max_running": 3,
            "rate": None,
        }


async def test_a_unique_key_returns_the_existing_job_and_says_so(broker: Broker) -> None:
    async with Client(broker.address) as client:
        first = await client.submit("nobody-runs-this", [1], queue=NOBODY, unique_key="sync:7")
        assert first.existing_state is None
        again = await client.submit("nobody-runs-this", [2], queue=NOBODY, unique_key="sync:7")
        assert again.id == first.id and again.existing_state == "queued"
        batch = await client.submit_many(
            [
                {"task": "t", "queue": NOBODY, "unique_key": "sync:8", "unique_for": 60},
                {"task": "t", "queue": NOBODY, "unique_key": "sync:8"},
                {"task": "t", "queue": NOBODY, "unique_key": "sync:7"},
            ]
        )
        assert [job.existing_state for job in batch] == [None, "queued", "queued"]
        assert batch[1].id == batch[0].id and batch[2].id == first.id
        assert await client.cancel(batch[0].id)
        # Within unique_for of its submission, the cancelled job still holds its key.
        held = await client.submit("t", queue=NOBODY, unique_key="sync:8")
        assert held.id == batch[0].id and held.existing_state == "cancelled"
        assert (await client.stats())["unique_keys"] == 2


async def test_schedule_unschedule_and_schedules(broker: Broker) -> None:
    async with Client(broker.address) as client:
        with pytest.raises(ValueError, match="bad cron expression"):
            await client.schedule("nightly", "report", cron="at night")
        with pytest.raises(RemoteError, match="unknown time zone"):
            await client._call(
                {"op": "SCHEDULE", "name": "n", "task": "t", "every": 5, "timezone": "Nowhere/X"}
            )
        first = await client.schedule(
            "nightly", "report", cron="0 2 * * *", timezone="Europe/Paris", args=[1], queue=NOBODY
        )
        assert first["changed"] and first["next_run"] > time.time()
        again = await client.schedule(
            "nightly", "report", cron="0 2 * * *", timezone="Europe/Paris", args=[1], queue=NOBODY
        )
        assert not again["changed"]
        (listed,) = await client.schedules()
        assert listed["name"] == "nightly" and listed["args"] == [1] and listed["kwargs"] == {}
        assert listed["cron"] == "0 2 * * *" and listed["last_run"] is None
        assert (await client.stats())["schedules"] == 1
        assert await client.unschedule("nightly")
        assert not await client.unschedule("nightly")
        assert await client.schedules() == []


def test_a_task_schedule_is_checked_at_declaration_and_announced() -> None:
    registry = TaskRegistry()

    async def beat(word: str) -> str:
        return word

    with pytest.raises(ValueError, match="bad cron expression"):
        registry.register(beat, cron="61 * * * *")
    registry.register(beat, every=30, args=["hi"], queue="periodic")
    (announced,) = registry.schedules()
    assert announced["name"] == announced["task"] == "beat"
    assert announced["every"] == 30 and announced["queue"] == "periodic"
    assert msgpack.unpackb(announced["payload"]) == [["hi"], {}]
