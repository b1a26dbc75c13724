"""The peers' hot path against a scripted broker: what a worker writes, and when.

The scripted broker is an asyncio server on 127.0.0.1 that speaks the
handshake and then lets the test send raw frames and read every chunk the
peer wrote, as it arrived (one ``read`` per chunk), so a test can tell one
write from two. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from broker import Client
from protocol.errors import ConnectionLost, ProtocolError, QueueFull
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import PROTOCOL_VERSION, Op
from protocol.stream import open_connection
from worker import TaskRegistry, Worker, current_job
from worker.runtime import AUTO_PREFETCH_STREAK

WAIT = 20.0


class ScriptedBroker:
    """One connection at a time; ``chunks`` holds each read's decoded frames."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.chunks: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()

    @property
    def address(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        decoder = FrameDecoder()
        writer.write(
            encode_frame(
                {
                    "op": Op.WELCOME,
                    "version": PROTOCOL_VERSION,
                    "server": "scripted",
                    "nonce": b"0" * 16,
                    "auth": False,
                }
            )
        )
        hello = decoder.feed(await reader.read(65536))
        assert hello[0]["op"] == Op.HELLO
        writer.write(encode_frame({"op": Op.OK, "rid": hello[0]["rid"], "idle_timeout": 60.0}))
        self.connected.set()
        while data := await reader.read(65536):
            self.chunks.put_nowait(decoder.feed(data))
        self.disconnected.set()

    def send(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(encode_frame(message))

    async def next_chunk(self) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT):
            return await self.chunks.get()

    async def frames_until(self, op: str) -> list[dict[str, Any]]:
        """Every frame read up to and including the first ``op``."""
        frames: list[dict[str, Any]] = []
        while not any(frame["op"] == op for frame in frames):
            frames.extend(await self.next_chunk())
        return frames


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedBroker]:
    broker = ScriptedBroker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def delivery(job_id: str, task: str, *args: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "task": task,
        "queue": "default",
        "payload": msgpack.packb([list(args), {}]),
        "attempt": 1,
        "max_attempts": 3,
        "lease": 30.0,
    }


@pytest.fixture
async def worker_on(scripted: ScriptedBroker) -> AsyncIterator[tuple[Worker, list[str]]]:
    registry = TaskRegistry()
    seen: list[str] = []
    release = asyncio.Event()

    async def at_once(value: int) -> int:
        seen.append(current_job().id)
        return value + 1

    async def waits(value: int) -> int:
        seen.append(current_job().id)
        await release.wait()
        seen.append(current_job().id)  # its own job still, after the wait
        return value * 2

    registry.register(at_once, name="at_once")
    registry.register(waits, name="waits")

    worker = Worker(scripted.address, registry=registry, concurrency=2)
    worker.context["release"] = release
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(WAIT):
            await scripted.connected.wait()
        first = await scripted.next_chunk()
        assert first == [{"op": Op.READY, "n": 2}]
        yield worker, seen
    finally:
        worker.stop()
        try:
            async with asyncio.timeout(WAIT):
                await running
        except ConnectionLost:
            pass


async def test_a_job_that_finishes_at_once_is_acked_with_its_ready_in_one_write(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    scripted.send({"op": Op.JOBS, "jobs": [delivery("j1", "at_once", 41)]})
    chunk = await scripted.next_chunk()
    assert [frame["op"] for frame in chunk] == [Op.ACK, Op.READY]
    assert msgpack.unpackb(chunk[0]["result"]) == 42
    assert chunk[1]["n"] == 1


async def test_jobs_finishing_in_one_turn_share_one_ready(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    scripted.send(
        {"op": Op.JOBS, "jobs": [delivery("j1", "at_once", 1), delivery("j2", "at_once", 2)]}
    )
    chunk = await scripted.next_chunk()
    assert [frame["op"] for frame in chunk] == [Op.ACK, Op.ACK, Op.READY]
    assert chunk[2]["n"] == 2


async def test_a_job_that_waits_goes_on_in_a_task_with_its_own_context(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    worker, seen = worker_on
    scripted.send(
        {"op": Op.JOBS, "jobs": [delivery("slow", "waits", 5), delivery("fast", "at_once", 1)]}
    )
    frames = await scripted.frames_until(Op.ACK)
    assert [frame["id"] for frame in frames if frame["op"] == Op.ACK] == ["fast"]
    release = worker.context["release"]
    assert isinstance(release, asyncio.Event)
    release.set()
    frames = await scripted.frames_until(Op.ACK)
    acks = [frame for frame in frames if frame["op"] == Op.ACK]
    assert [frame["id"] for frame in acks] == ["slow"]
    assert msgpack.unpackb(acks[0]["result"]) == 10
    # "fast" ran at once in between, in a context of its own: "slow" still sees itself.
    assert seen == ["slow", "fast", "slow"]


async def test_a_revoked_job_that_waits_is_cancelled_and_reports_nothing(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    scripted.send({"op": Op.JOBS, "jobs": [delivery("slow", "waits", 5)]})
    scripted.send({"op": Op.REVOKE, "id": "slow", "attempt": 1})
    frames = await scripted.frames_until(Op.READY)
    assert [frame["op"] for frame in frames] == [Op.READY]  # the slot back, no report


async def test_a_malformed_hot_push_closes_the_connection_as_the_brokers_fault(
    scripted: ScriptedBroker,
) -> None:
    pushed: list[str] = []
    connection, _ = await open_connection(
        scripted.address,
        {"role": "client"},
        on_push=lambda message: pushed.append(message["id"]),
        timeout=WAIT,
    )
    scripted.send({"op": Op.DONE, "state": "succeeded"})  # no id
    async with asyncio.timeout(WAIT):
        reason = await connection.closed
    assert isinstance(reason, ProtocolError)
    assert "malformed DONE" in str(reason)
    assert pushed == []


async def test_a_malformed_delivery_closes_the_workers_connection_and_it_survives(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    broken = delivery("j1", "at_once", 1)
    del broken["lease"]
    scripted.send({"op": Op.JOBS, "jobs": [broken]})
    async with asyncio.timeout(WAIT):
        await scripted.disconnected.wait()
    while not scripted.chunks.empty():
        assert all(frame["op"] != Op.ACK for frame in scripted.chunks.get_nowait())


async def run_short_jobs(scripted: ScriptedBroker, count: int) -> list[int]:
    """Deliver ``count`` jobs that finish at once, two at a time; the READY counts."""
    granted: list[int] = []
    for pair in range(count // 2):
        jobs = [delivery(f"s{pair}-{k}", "at_once", k) for k in range(2)]
        scripted.send({"op": Op.JOBS, "jobs": jobs})
        frames = await scripted.frames_until(Op.READY)
        granted.extend(frame["n"] for frame in frames if frame["op"] == Op.READY)
    return granted


async def test_after_a_streak_of_short_jobs_the_worker_prefetches(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    granted = await run_short_jobs(scripted, AUTO_PREFETCH_STREAK)
    # Two slots: two credits back per pair, and with the streak 4 per slot more.
    assert granted == [2] * (AUTO_PREFETCH_STREAK // 2 - 1) + [2 + 4 * 2]


async def test_a_prefetched_job_kept_waiting_by_long_jobs_is_handed_back(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    worker, _ = worker_on
    await run_short_jobs(scripted, AUTO_PREFETCH_STREAK)
    long_jobs = [delivery("long1", "waits", 1), delivery("long2", "waits", 2)]
    scripted.send({"op": Op.JOBS, "jobs": [*long_jobs, delivery("stuck", "at_once", 3)]})
    frames = await scripted.frames_until(Op.RELEASE)
    assert [frame["id"] for frame in frames if frame["op"] == Op.RELEASE] == ["stuck"]
    release = worker.context["release"]
    assert isinstance(release, asyncio.Event)
    release.set()
    frames = []
    while sum(frame["op"] == Op.ACK for frame in frames) < 2:
        frames.extend(await scripted.next_chunk())
    assert sorted(frame["id"] for frame in frames if frame["op"] == Op.ACK) == ["long1", "long2"]
    # Prefetch is off again, and the broker still holds 7 of the credits granted
    # (10, less the 3 jobs sent): the 3 slots freed pay the cut off, none is owed.
    assert [frame for frame in frames if frame["op"] == Op.READY] == []


async def test_a_job_with_a_short_lease_brings_the_next_heartbeat_forward(
    scripted: ScriptedBroker, worker_on: tuple[Worker, list[str]]
) -> None:
    worker, _ = worker_on
    held = delivery("slow", "waits", 1)
    held["lease"] = 0.3  # the idle worker's next heartbeat is 20 s away (60 s / 3)
    scripted.send({"op": Op.JOBS, "jobs": [held]})
    frames = await scripted.frames_until(Op.HEARTBEAT)
    assert [frame["ids"] for frame in frames if frame["op"] == Op.HEARTBEAT] == [["slow"]]
    release = worker.context["release"]
    assert isinstance(release, asyncio.Event)
    release.set()
    frames = await scripted.frames_until(Op.ACK)
    assert [frame["id"] for frame in frames if frame["op"] == Op.ACK] == ["slow"]


# -- a producer's submits ----------------------------------------------------------


async def connected_client(scripted: ScriptedBroker) -> Client:
    client = Client(scripted.address, connect_timeout=WAIT)
    await client.connect()
    return client


async def test_submits_of_one_turn_share_one_frame_and_each_gets_its_job(
    scripted: ScriptedBroker,
) -> None:
    client = await connected_client(scripted)
    try:
        submits = [asyncio.ensure_future(client.submit("t", [n])) for n in range(3)]
        alone = asyncio.ensure_future(client.submit("t", [9], job_id="mine"))
        chunk = await scripted.next_chunk()
        assert [len(frame["jobs"]) for frame in chunk] == [3, 1]
        shared, single = chunk
        assert [msgpack.unpackb(spec["payload"]) for spec in shared["jobs"]] == [
            [[0], {}],
            [[1], {}],
            [[2], {}],
        ]
        assert single["jobs"][0]["id"] == "mine"
        scripted.send({"op": Op.OK, "rid": shared["rid"], "ids": ["a", "b", "c"]})
        scripted.send({"op": Op.OK, "rid": single["rid"], "ids": ["mine"]})
        async with asyncio.timeout(WAIT):
            jobs = await asyncio.gather(*submits, alone)
        assert [job.id for job in jobs] == ["a", "b", "c", "mine"]
    finally:
        await client.close()


async def test_a_refused_shared_frame_refuses_each_of_its_submits(
    scripted: ScriptedBroker,
) -> None:
    client = await connected_client(scripted)
    try:
        submits = [asyncio.ensure_future(client.submit("t", [n])) for n in range(2)]
        (shared,) = await scripted.next_chunk()
        scripted.send({"op": Op.ERR, "rid": shared["rid"], "code": "QUEUE_FULL", "message": "full"})
        async with asyncio.timeout(WAIT):
            outcomes = await asyncio.gather(*submits, return_exceptions=True)
        assert [type(outcome) for outcome in outcomes] == [QueueFull, QueueFull]
    finally:
        await client.close()


async def test_a_cancelled_submit_leaves_the_others_of_its_frame_alone(
    scripted: ScriptedBroker,
) -> None:
    client = await connected_client(scripted)
    try:
        first = asyncio.ensure_future(client.submit("t", [1]))
        second = asyncio.ensure_future(client.submit("t", [2]))
        (shared,) = await scripted.next_chunk()
        first.cancel()
        scripted.send({"op": Op.OK, "rid": shared["rid"], "ids": ["a", "b"]})
        async with asyncio.timeout(WAIT):
            assert (await second).id == "b"
        assert first.cancelled()
    finally:
        await client.close()
