"""Progress: a task reports, the worker rate-limits, the broker keeps the latest,
a producer follows."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from broker import Broker, Client, NotFound
from broker.client import Progress
from tests.inprocess import running_broker
from tests.rawpeer import RawPeer
from tests.waiting import eventually
from worker import TaskRegistry, Worker, report_progress

WAIT = 30.0


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with running_broker() as broker:
        yield broker


class Collector:
    """Follows a job's progress in the background; the test waits on what it saw."""

    def __init__(self, reports: AsyncIterator[Progress]) -> None:
        self.seen: list[Progress] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._collect(reports))

    async def _collect(self, reports: AsyncIterator[Progress]) -> None:
        async for report in reports:
            self.seen.append(report)
            self._changed.set()

    async def until(self, check: Callable[[list[Progress]], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not check(self.seen):
                self._changed.clear()
                await self._changed.wait()


async def test_a_follower_sees_reports_rate_limited_and_the_end(broker: Broker) -> None:
    first_seen = asyncio.Event()
    looped = asyncio.Event()
    finish = asyncio.Event()
    registry = TaskRegistry()

    async def crunch() -> str:
        await report_progress(0.0, {"step": 0})
        await first_seen.wait()
        for i in range(1, 1001):  # a tight loop: the worker sends at most two of these
            await report_progress(i / 1000, {"step": i})
        looped.set()
        await finish.wait()
        return "done"

    registry.register(crunch)
    worker = Worker(broker.address, registry=registry)
    run = asyncio.create_task(worker.run())
    try:
        async with Client(broker.address) as client:
            job = await client.submit("crunch")
            collector = Collector(job.progress())
            await collector.until(lambda seen: len(seen) >= 1)
            assert collector.seen == [Progress(0.0, {"step": 0})]
            status = await job.status()
            assert status["progress"]["fraction"] == 0.0
            assert status["progress"]["info"] == {"step": 0}
            assert status["progress"]["attempt"] == 1
            first_seen.set()
            await asyncio.wait_for(looped.wait(), WAIT)
            await collector.until(lambda seen: seen[-1].fraction == 1.0)
            fractions = [report.fraction for report in collector.seen]
            assert len(fractions) <= 3 and fractions == sorted(fractions)
            assert collector.seen[-1] == Progress(1.0, {"step": 1000})
            assert not collector.task.done()
            finish.set()
            await asyncio.wait_for(collector.task, WAIT)  # the job ended: so did the loop
            assert await job.result(timeout=WAIT) == "done"
            # Following a finished job gives its last report and ends.
            after = [report async for report in job.progress()]
            assert after == [Progress(1.0, {"step": 1000})]
            with pytest.raises(NotFound):
                async for _ in client.job("no-such-job").progress():
                    pass
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, WAIT)


async def test_a_plain_def_task_reports_from_its_thread_and_bad_reports_raise(
    broker: Broker,
) -> None:
    reported = threading.Event()
    release = threading.Event()
    errors: list[str] = []
    registry = TaskRegistry()

    def threaded() -> list[str]:
        report_progress(0.5, {"rows": 4000})  # no await in a thread
        for bad_fraction, bad_info in ((1.5, None), (-0.1, None), (0.5, {"x": "y" * 2000})):
            try:
                report_progress(bad_fraction, bad_info)
            except ValueError as exc:
                errors.append(str(exc).split(" ")[0])
        reported.set()
        release.wait(WAIT)
        return errors

    registry.register(threaded)
    worker = Worker(broker.address, registry=registry)
    run = asyncio.create_task(worker.run())
    try:
        async with Client(broker.address) as client:
            job = await client.submit("threaded")
            assert await asyncio.to_thread(reported.wait, WAIT)

            async def reported_at_broker() -> bool:
                return (await job.status()).get("progress") is not None

            await eventually(reported_at_broker, "the report reached the broker")
            progress: dict[str, Any] = (await job.status())["progress"]
            assert (progress["fraction"], progress["info"]) == (0.5, {"rows": 4000})
            release.set()
            assert await job.result(timeout=WAIT) == ["progress", "progress", "progress"]
    finally:
        release.set()
        worker.stop_now()
        await asyncio.wait_for(run, WAIT)
    with pytest.raises(LookupError):
        report_progress(0.1)  # outside a task


async def test_the_broker_keeps_reports_only_from_the_attempt_it_delivered(broker: Broker) -> None:
    """A raw worker: a report for a job it does not hold, or from another attempt, is dropped."""
    peer = await RawPeer.connect(broker.address)
    try:
        assert (await peer.hello(role="worker", queues=["raw"]))["op"] == "OK"
        async with Client(broker.address) as client:
            held = await client.submit("t", queue="raw")
            other = await client.submit("t", queue="elsewhere")
            await peer.send({"op": "READY", "n": 1})
            delivered = await peer.read()
            assert delivered["op"] == "JOBS" and delivered["jobs"][0]["id"] == held.id
            for report in (
                {"id": held.id, "attempt": 2, "fraction": 0.9},  # not the attempt it holds
                {"id": other.id, "attempt": 1, "fraction": 0.9},  # not a job it holds
                {"id": held.id, "attempt": 1, "fraction": 0.5},  # the one that counts
            ):
                await peer.send({"op": "PROGRESS", **report})
            await peer.send({"op": "PING", "rid": 1})
            assert (await peer.read())["op"] == "OK"  # the reports before it were handled
            assert (await held.status())["progress"]["fraction"] == 0.5
            assert "progress" not in await other.status()
            # A schema breach is refused like any other.
            await peer.send({"op": "PROGRESS", "id": held.id, "attempt": 1, "fraction": 1.5})
            refused = await peer.read()
            assert (refused["op"], refused["code"]) == ("ERR", "BAD_REQUEST")
    finally:
        peer.close()
