"""The broker's HTTP side in one program: health, readiness, metrics, the JSON API, live events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import Broker, BrokerConfig, Client
from broker.durability import StorageFailure, Volatile
from broker.http import HttpConfig
from broker.http.api import readiness
from broker.manager import JobManager, ManagerConfig
from broker.state import BrokerState
from protocol.job_spec import JobSpec
from tests.httpclient import EventReader, request
from tests.scale import FAILED, QUEUES, fill
from worker import TaskRegistry, Worker

WAIT = 30.0
CSRF = {"x-jobwire-csrf": "1"}


def registry() -> TaskRegistry:
    tasks = TaskRegistry()

    async def echo(value: Any) -> Any:
        return value

    async def always_fails(message: str) -> None:
        raise RuntimeError(message)

    tasks.register(echo)
    tasks.register(always_fails)
    return tasks


def http_port(broker: Broker) -> int:
    port = broker.http_port
    assert port is not None
    return port


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    config = BrokerConfig(
        port=0,
        http=HttpConfig(port=0),
        manager=ManagerConfig(backoff_base=0.01, backoff_cap=0.02, max_jobs=100),
    )
    broker = Broker(config)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


async def run_burst_worker(broker: Broker, queues: list[str]) -> None:
    worker = Worker(broker.address, registry=registry(), concurrency=4, queues=queues, burst=True)
    await asyncio.wait_for(worker.run(), WAIT)


async def test_no_http_unless_configured() -> None:
    broker = Broker(BrokerConfig(port=0))
    await broker.start()
    try:
        assert broker.http_port is None
    finally:
        await broker.stop()


async def test_health_and_readiness(broker: Broker) -> None:
    port = http_port(broker)
    assert (await request(port, "GET", "/healthz")).status == 200
    ready = await request(port, "GET", "/readyz")
    assert (ready.status, ready.json()) == (200, {"ready": True})

    # Storage failed: not ready, and the reason says why.
    failing = Volatile()
    failing.failure = StorageFailure("fsync", "no space left on device", time.time())
    working, broker.state.gate = broker.state.gate, failing
    try:
        reply = await request(port, "GET", "/readyz")
        assert reply.status == 503
        assert "no space left on device" in reply.json()["reason"]
        # and the POSTs that change jobs are refused like STORAGE_FAILED
        assert (await request(port, "POST", "/api/failed/purge", headers=CSRF)).status == 503
    finally:
        broker.state.gate = working
    assert (await request(port, "GET", "/readyz")).status == 200

    # Full (--max-jobs): not ready until jobs finish.
    async with Client(broker.address) as client:
        await client.submit_many([{"task": "echo", "args": [i]} for i in range(100)])
        reply = await request(port, "GET", "/readyz")
        assert reply.status == 503
        assert "max-jobs" in reply.json()["reason"]
        await run_burst_worker(broker, ["default"])
        assert (await request(port, "GET", "/readyz")).status == 200


async def test_metrics_count_what_happened(broker: Broker) -> None:
    port = http_port(broker)
    async with Client(broker.address) as client:
        ok = await client.submit_many(
            [{"task": "echo", "args": [i], "queue": "alpha"} for i in range(20)]
        )
        bad = [
            await client.submit("always_fails", ["boom"], queue="beta", max_attempts=2)
            for _ in range(5)
        ]
        later = [await client.submit("echo", [0], queue="gamma", delay=600) for _ in range(3)]
        for job in later:
            assert await client.cancel(job.id)
        await run_burst_worker(broker, ["alpha", "beta"])
        assert [await job.result() for job in ok] == list(range(20))
        for job in bad:
            assert (await client.status(job.id))["state"] == "failed"

    reply = await request(port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(reply.text)
    assert value(found, "jobwire_jobs_submitted_total", queue="alpha") == 20
    assert value(found, "jobwire_jobs_submitted_total", queue="beta") == 5
    assert value(found, "jobwire_jobs_submitted_total", queue="gamma") == 3
    assert value(found, "jobwire_jobs_finished_total", queue="alpha", outcome="succeeded") == 20
    assert value(found, "jobwire_jobs_finished_total", queue="alpha", outcome="failed") == 0
    assert value(found, "jobwire_jobs_finished_total", queue="beta", outcome="failed") == 5
    assert value(found, "jobwire_jobs_finished_total", queue="gamma", outcome="cancelled") == 3
    assert value(found, "jobwire_jobs_retried_total", queue="beta") == 5
    assert value(found, "jobwire_leases_expired_total", queue="alpha") == 0
    assert value(found, "jobwire_jobs_requeued_total", queue="alpha", reason="worker_lost") == 0
    # Every start is one wait observation; every report one run observation.
    assert value(found, "jobwire_job_wait_seconds_count", queue="alpha") == 20
    assert value(found, "jobwire_job_wait_seconds_count", queue="beta") == 10
    assert value(found, "jobwire_job_run_seconds_count", queue="beta") == 10
    assert value(found, "jobwire_job_run_seconds_bucket", queue="alpha", le="+Inf") == 20
    assert value(found, "jobwire_queue_jobs", queue="alpha", state="queued") == 0
    assert value(found, "jobwire_failed_jobs") == 5
    assert value(found, "jobwire_worker_slots", state="busy") == 0
    assert value(found, "jobwire_connections", role="worker") == 0
    assert value(found, "jobwire_uptime_seconds") > 0
    assert any(name == "jobwire_build_info" for name, _ in found)
    assert ("jobwire_journal_bytes", frozenset()) in found


async def test_api_jobs_failed_pages_retry_and_cancel(broker: Broker) -> None:
    port = http_port(broker)
    async with Client(broker.address) as client:
        done = await client.submit("echo", [{"a": [1, 2]}])
        failed = [
            await client.submit("always_fails", [f"no {i}"], max_attempts=1) for i in range(7)
        ]
        waiting = await client.submit("echo", [1], queue="later", delay=600)
        await run_burst_worker(broker, ["default"])
        assert await done.result() == {"a": [1, 2]}

        detail = (await request(port, "GET", f"/api/jobs/{done.id}")).json()
        assert (detail["state"], detail["result"], detail["attempts"]) == (
            "succeeded",
            {"a": [1, 2]},
            1,
        )
        assert (await request(port, "GET", "/api/jobs/nope")).status == 404

        first = (await request(port, "GET", "/api/failed?limit=5")).json()
        second = (await request(port, "GET", "/api/failed?offset=5&limit=5")).json()
        assert first["total"] == second["total"] == 7
        ids = [job["id"] for job in first["jobs"] + second["jobs"]]
        assert ids == [job.id for job in reversed(failed)]  # newest first, no overlap
        assert first["jobs"][0]["errors"][-1]["message"] == "no 6"
        assert "RuntimeError" in first["jobs"][0]["errors"][-1]["traceback"]
        assert (await request(port, "GET", "/api/failed?limit=x")).status == 400

        # POSTs without the CSRF header change nothing.
        assert (await request(port, "POST", f"/api/jobs/{failed[0].id}/retry")).status == 403
        assert (await request(port, "POST", "/api/failed/purge")).status == 403
        assert (await request(port, "GET", "/api/failed")).json()["total"] == 7

        retried = await request(port, "POST", f"/api/jobs/{failed[0].id}/retry", headers=CSRF)
        assert retried.json() == {"retried": 1}
        assert (await client.status(failed[0].id))["state"] == "queued"
        cancelled = await request(port, "POST", f"/api/jobs/{waiting.id}/cancel", headers=CSRF)
        assert cancelled.json() == {"cancelled": True}
        assert (await client.status(waiting.id))["state"] == "cancelled"
        purged = await request(port, "POST", "/api/failed/purge", headers=CSRF)
        assert purged.json() == {"purged": 6}
        assert (await request(port, "GET", "/api/failed")).json()["total"] == 0

        queues = (await request(port, "GET", "/api/queues")).json()
        assert [queue["name"] for queue in queues["queues"]] == ["default", "later"]
        stats = (await request(port, "GET", "/api/stats")).json()
        assert stats["ready"] is True and stats["submitted"] == 9


async def test_events_are_pushed_as_jobs_change(broker: Broker) -> None:
    stream = await EventReader.open(http_port(broker))
    try:
        name, first = await stream.next_event()
        assert (stream.status, name) == (200, "snapshot")
        assert first["summary"]["submitted"] == 0
        async with Client(broker.address) as client:
            await client.submit_many(
                [{"task": "echo", "args": [i], "queue": "q1"} for i in range(4)]
            )
            # The next pushes show the jobs, without the stream asking for anything.
            while True:
                _, snapshot = await stream.next_event()
                if snapshot["summary"]["submitted"] == 4:
                    break
            assert snapshot["queues"] == [
                {
                    "name": "q1",
                    "waiting": 0,
                    "queued": 4,
                    "delayed": 0,
                    "running": 0,
                    "submitted": 4,
                    "succeeded": 0,
                    "failed": 0,
                    "finished": 0,
                }
            ]
    finally:
        stream.close()


async def test_the_page_and_its_files_are_served(broker: Broker) -> None:
    port = http_port(broker)
    page = await request(port, "GET", "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert (await request(port, "GET", f"/static/{name}")).status == 200
    assert (await request(port, "GET", "/static/../server.py")).status == 404
    assert (await request(port, "GET", "/static/nothing.js")).status == 404
    assert (await request(port, "DELETE", "/api/failed")).status == 405


async def test_a_thousand_queues_and_ten_thousand_failed_jobs_answer_in_pages(
    broker: Broker,
) -> None:
    broker.manager.config.max_jobs = None
    fill(broker.manager, time.time())
    port = http_port(broker)
    queues = (await request(port, "GET", "/api/queues?offset=950")).json()
    assert queues["total"] >= QUEUES
    assert len(queues["queues"]) == 50
    assert queues["queues"][0]["name"] == "q-0950"
    only = (await request(port, "GET", "/api/queues?q=q-0999")).json()
    assert [queue["name"] for queue in only["queues"]] == ["q-0999"]

    last = (await request(port, "GET", f"/api/failed?offset={FAILED - 50}")).json()
    assert last["total"] == FAILED
    assert [job["errors"][-1]["message"] for job in last["jobs"]][-1] == "failure 0"
    assert len(last["jobs"]) == 50

    stream = await EventReader.open(port)
    try:
        _, snapshot = await stream.next_event()
    finally:
        stream.close()
    assert len(snapshot["queues"]) <= 1000
    assert snapshot["summary"]["failed_list"] == FAILED

    found = samples((await request(port, "GET", "/metrics")).text)
    queue_labels = {dict(labels).get("queue") for _, labels in found} - {None}
    assert len(queue_labels) <= 1001  # bounded labels
    assert value(found, "jobwire_failed_jobs") == FAILED


def test_readiness_reasons() -> None:
    state = BrokerState(BrokerConfig(), JobManager(ManagerConfig(max_jobs=1)))
    assert readiness(state) is None
    state.manager.submit(JobSpec("echo", b"\x90"), time.time())
    assert "max-jobs" in (readiness(state) or "")
    state.shutting_down = True
    assert readiness(state) == "shutting down"
