"""The HTTP side with the rest of the broker: durable acknowledgements, the journal's
metrics, TLS, shutdown with streams open, and the manager's per-queue bookkeeping."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import Broker, BrokerConfig, Client
from broker.durability import Volatile
from broker.http import HttpConfig
from broker.journal import FsyncMode, JournalConfig
from broker.manager import Consumer, JobManager
from harness.processes import BrokerProc, Proc, WorkerProc
from protocol.job_spec import JobSpec
from protocol.security import client_ssl_context, server_ssl_context
from tests.conftest import E2E_TASKS
from tests.httpclient import EventReader, request
from tests.scale import EMPTY_ARGS, Collecting, fill
from tests.test_http import samples, value
from tests.test_security import make_certificates
from tests.waiting import eventually

CSRF = {"x-jobwire-csrf": "1"}
WAIT = 30.0


class HeldGate(Volatile):
    """A durability gate that holds every mark until the test releases it."""

    def __init__(self) -> None:
        self.appended = 1
        self.released = False
        self.asked = asyncio.Event()
        self.waiting: list[Callable[[], None]] = []

    def is_durable(self, mark: int) -> bool:
        return self.released

    def when_durable(self, mark: int, callback: Callable[[], None]) -> None:
        self.waiting.append(callback)
        self.asked.set()

    def release(self) -> None:
        self.released = True
        for callback in self.waiting:
            callback()


async def test_a_post_answers_once_its_change_is_durable() -> None:
    broker = Broker(BrokerConfig(port=0, http=HttpConfig(port=0)))
    await broker.start()
    try:
        gate = HeldGate()
        broker.state.gate = gate
        port = broker.http_port
        assert port is not None
        answer = asyncio.ensure_future(request(port, "POST", "/api/failed/purge", headers=CSRF))
        await asyncio.wait_for(gate.asked.wait(), WAIT)
        assert not answer.done()
        gate.release()
        reply = await asyncio.wait_for(answer, WAIT)
        assert reply.json() == {"purged": 0}
    finally:
        await broker.stop()


async def test_a_post_waiting_for_storage_outlives_the_request_timeout() -> None:
    """The change is made once the request is whole: its answer is never a 408."""
    timeout = 0.05
    broker = Broker(BrokerConfig(port=0, http=HttpConfig(port=0, request_timeout=timeout)))
    await broker.start()
    try:
        gate = HeldGate()
        broker.state.gate = gate
        port = broker.http_port
        assert port is not None
        answer = asyncio.ensure_future(request(port, "POST", "/api/failed/purge", headers=CSRF))
        await asyncio.wait_for(gate.asked.wait(), WAIT)
        # Nothing announces that a timeout did not fire: give it many times over.
        await asyncio.sleep(timeout * 6)
        gate.release()
        reply = await asyncio.wait_for(answer, WAIT)
        assert (reply.status, reply.json()) == (200, {"purged": 0})
    finally:
        await broker.stop()


async def test_head_of_the_event_stream_opens_no_stream() -> None:
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: escaped.append(context))
    broker = Broker(BrokerConfig(port=0, http=HttpConfig(port=0)))
    await broker.start()
    try:
        port = broker.http_port
        assert port is not None
        reply = await request(port, "HEAD", "/api/events")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.body == b""
        assert not broker.state.sessions  # and the broker is fine: TCP side untouched
        assert (await request(port, "GET", "/healthz")).status == 200
        assert escaped == []  # nothing raised into the event loop
    finally:
        await broker.stop()
        loop.set_exception_handler(None)


async def test_a_failed_http_bind_gives_back_the_data_directory(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        journal = JournalConfig(tmp_path)
        broker = Broker(BrokerConfig(port=0, journal=journal, http=HttpConfig(port=busy)))
        with pytest.raises(OSError):
            await broker.start()
    # The lock is free again: another broker can use the directory at once.
    again = Broker(BrokerConfig(port=0, journal=JournalConfig(tmp_path)))
    await again.start()
    await again.stop()


async def test_journal_metrics(tmp_path: Path) -> None:
    journal = JournalConfig(tmp_path / "data", fsync=FsyncMode.ALWAYS)
    broker = Broker(BrokerConfig(port=0, journal=journal, http=HttpConfig(port=0)))
    await broker.start()
    try:
        async with Client(broker.address) as client:
            for i in range(3):
                await client.submit("echo", [i])  # each acknowledged after its fsync
        port = broker.http_port
        assert port is not None
        found = samples((await request(port, "GET", "/metrics")).text)
        assert value(found, "jobwire_journal_fsync_seconds_count") >= 1
        assert value(found, "jobwire_journal_bytes") > 0
    finally:
        await broker.stop()


async def test_https_with_the_brokers_certificate(tmp_path: Path) -> None:
    pem = make_certificates(tmp_path)
    context = server_ssl_context(pem["cert"], pem["key"])
    broker = Broker(BrokerConfig(port=0, ssl=context, http=HttpConfig(port=0)))
    await broker.start()
    try:
        port = broker.http_port
        assert port is not None
        assert broker.http is not None and broker.http.url.startswith("https://")
        reply = await request(port, "GET", "/healthz", ssl=client_ssl_context(pem["ca"]))
        assert reply.status == 200
    finally:
        await broker.stop()


async def test_stop_ends_event_streams_and_closes_http() -> None:
    broker = Broker(BrokerConfig(port=0, http=HttpConfig(port=0)))
    await broker.start()
    port = broker.http_port
    assert port is not None
    stream = await EventReader.open(port)
    try:
        await stream.next_event()
        await asyncio.wait_for(broker.stop(), WAIT)
        with pytest.raises(EOFError):
            while True:
                await stream.next_event()
    finally:
        stream.close()
    with pytest.raises(OSError):
        await request(port, "GET", "/healthz")


def test_manager_counts_per_queue_what_happens_to_jobs() -> None:
    manager = JobManager()
    sink = Collecting()
    consumer = Consumer(sink, ["q"], "w")
    manager.attach(consumer)
    jobs = [
        manager.submit(JobSpec("t", EMPTY_ARGS, queue="q", lease=5), 100.0)[0] for _ in range(4)
    ]
    manager.grant(consumer, 4, 102.0)  # each waited 2 s
    metrics = manager.metrics["q"]
    assert metrics.submitted == 4
    assert metrics.wait.count == 4 and metrics.wait.sum == pytest.approx(8.0)
    manager.ack(consumer, jobs[0].id, 1, b"\xc0", 102.5)
    manager.release(consumer, jobs[1].id, 1, 103.0)
    assert metrics.succeeded == 1 and metrics.released == 1
    assert metrics.run.count == 1 and metrics.run.sum == pytest.approx(0.5)
    # le="1.0" holds the 0.5 s run; every bucket from there on counts it
    assert dict(metrics.run.cumulative())["1.0"] == 1
    assert dict(metrics.run.cumulative())["0.25"] == 0
    assert manager.expire_leases(200.0) == 2  # the two still held
    assert metrics.lease_expired == 2 and metrics.requeued_expired == 2
    manager.grant(consumer, 3, 200.0)  # those two and the released one
    manager.detach(consumer, 201.0, "gone")
    assert metrics.requeued_lost == 3
    assert manager.metrics["q"].finished == 1


def test_worker_json_logs_carry_the_job(procs: list[Proc]) -> None:
    broker = BrokerProc(["--http", "off"])
    procs.append(broker)
    worker = WorkerProc(broker.address, (E2E_TASKS,), extra=["--log-format", "json"])
    procs.append(worker)

    async def submit() -> str:
        async with Client(broker.address) as client:
            job = await client.submit("echo", [1], queue="default")
            assert await job.result(timeout=WAIT) == 1
            return job.id

    job_id = asyncio.run(submit())
    line = worker.wait_for_line(rf'"job_id": "{job_id}"')
    entry = json.loads(line)
    assert (entry["job_id"], entry["queue"], entry["task"]) == (job_id, "default", "echo")
    assert entry["logger"].startswith("worker") and entry["level"] == "info"


async def test_an_event_stream_nobody_reads_is_dropped() -> None:
    http = HttpConfig(port=0, event_interval=0.01, max_output_bytes=256 * 1024)
    broker = Broker(BrokerConfig(port=0, http=http))
    await broker.start()
    try:
        fill(broker.manager, time.time())  # snapshots of about 150 KB, a hundred a second
        assert broker.http is not None and broker.http_port is not None
        hub = broker.http.app.events
        _unread, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
        try:
            writer.write(b"GET /api/events HTTP/1.1\r\nhost: x\r\n\r\n")  # and never read

            async def subscribed() -> bool:
                return bool(hub.streams)

            async def dropped() -> bool:
                return not hub.streams

            await eventually(subscribed, "the stream is open")
            await eventually(dropped, "the stream nobody reads is dropped")
        finally:
            writer.close()
        async with Client(broker.address) as client:
            await client.ping()
    finally:
        await broker.stop()
