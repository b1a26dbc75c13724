"""Peers follow the leader: several broker addresses, standbys that name the leader,
results awaited across a failover.

No NATS here: standbys are fakes (tests/fakebrokers.py), and a failover is a
broker stopped at one address and another started at the other on the same
``--data-dir``, in the test's own program or as real processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from broker import Broker, BrokerConfig, BrokerUnavailable, Client, ConnectionLost, Job, JobState
from broker.journal import JournalConfig
from harness.processes import ROOT, BrokerProc, WorkerProc
from protocol.backoff import Reconnect
from protocol.config import URL_ENV, resolve_addresses
from protocol.errors import NotLeader
from protocol.peers import FAILOVER_RETRY, LeaderSearch
from tests.fakebrokers import dropping_broker, silent_broker, standby
from tests.inprocess import free_port, serving
from tests.test_cli import admin
from tests.waiting import eventually, open_gate
from worker import TaskRegistry, Worker, current_job

WAIT = 30.0
NOBODY = "nobody-serves-this"


@asynccontextmanager
async def broker_at(port: int = 0, data_dir: Path | None = None) -> AsyncIterator[Broker]:
    journal = JournalConfig(data_dir) if data_dir is not None else None
    broker = Broker(BrokerConfig(port=port, journal=journal))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- which address next (sans-I/O) --------------------------------------------------


def test_one_address_is_a_round_of_its_own() -> None:
    search = LeaderSearch(["a:1"])
    for _ in range(3):
        assert search.round_start
        assert search.next() == "a:1"
        assert search.failed() is True  # every attempt is a round: the backoff as before
    search.next()
    search.connected()
    assert search.round_start and search.next() == "a:1"


def test_the_named_leader_comes_next_and_a_round_tries_each_address_once() -> None:
    search = LeaderSearch(["a:1", "b:2", "c:3"])
    assert search.next() == "a:1"
    assert search.failed(leader="c:3") is False
    assert search.next() == "c:3"  # the leader a standby named, out of turn
    assert search.failed() is False
    assert search.next() == "b:2"
    assert search.failed(leader="a:1") is True  # already tried this round: the round is over
    assert search.round_start
    assert search.next() == "a:1"
    assert search.failed(leader="z:9") is False  # a leader outside the list is tried too
    assert search.next() == "z:9"
    search.connected()
    assert search.current == "z:9"
    assert search.next() == "z:9"  # after a loss, the address that worked comes first
    search.failed()
    assert search.next() == "a:1"
    assert search.next() == "b:2"
    search.connected()
    assert search.next() == "b:2"
    assert str(search) == "a:1, b:2, c:3"


def test_a_leader_that_is_not_an_address_is_ignored() -> None:
    for bad in ("", "nohost", "h:", ":80", "h:port", "h:0", "h:70000"):
        search = LeaderSearch(["a:1"])
        search.next()
        assert search.failed(leader=bad) is True, bad
    search = LeaderSearch(["a:1"])
    search.next()
    assert search.failed(leader="[::1]:7878") is False
    assert search.next() == "[::1]:7878"


def test_the_backoff_counts_rounds_not_attempts() -> None:
    search = LeaderSearch(["a:1", "b:2"])
    policy = Reconnect(0.1, 1.0, random.Random(0))
    waits = []
    for _ in range(6):
        if search.round_start:
            waits.append(policy.delay())
        search.next()
        if search.failed():
            policy.failed()
    assert policy.failures == 3 and len(waits) == 3
    assert waits[0] == 0.0 and all(w > 0 for w in waits[1:])


def test_a_round_a_standby_answered_in_waits_briefly_whatever_the_backoff() -> None:
    search = LeaderSearch(["a:1", "b:2"])
    long_backoff = 8.0
    search.next()
    assert not search.failed()  # a: unreachable (the leader died)
    search.next()
    assert search.failed("a:1", standby=True)  # b: a standby, naming the dead leader
    assert search.failover
    assert search.wait(long_backoff) <= FAILOVER_RETRY
    policy = Reconnect(0.1, 10.0, random.Random(0))
    assert search.round_over(policy) <= FAILOVER_RETRY
    assert policy.failures == 0  # a failover's round does not grow the backoff
    search.next()
    assert not search.failed()
    search.next()
    assert search.failed()  # nobody answers at all: the shard is down, back off
    assert not search.failover
    assert search.wait(long_backoff) == long_backoff
    assert search.round_over(policy) > 0
    assert policy.failures == 1


# --- addresses and JOBWIRE_URL -------------------------------------------------------


def test_several_addresses_in_arguments_and_in_jobwire_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert resolve_addresses("a:1, b:2") == (("a:1", "b:2"), False)
    assert resolve_addresses(["a:1", "jobwire://b:2"]) == (("a:1", "b:2"), False)
    assert resolve_addresses("jobwires://a:1,jobwires://b:2/") == (("a:1", "b:2"), True)
    assert resolve_addresses("a:1,b:2,a:1") == (("a:1", "b:2"), False)  # once each
    monkeypatch.setenv(URL_ENV, "jobwires://a:1,jobwires://b:2")
    assert resolve_addresses() == (("a:1", "b:2"), True)
    client = Client()
    assert client.addresses == ("a:1", "b:2") and client.address == "a:1"
    assert client._ssl is not None  # TLS for both, with the system's CAs
    worker = Worker()
    assert worker.addresses == ("a:1", "b:2") and worker.ssl is not None
    assert Client(["c:3", "d:4"]).addresses == ("c:3", "d:4")  # an explicit list wins


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("a:1,,b:2", "empty broker address"),
        ("a:1,", "empty broker address"),
        (",a:1", "empty broker address"),
        ([], "no broker address"),
        (["a:1", ""], "empty broker address"),
        ("jobwires://a:1,b:2", "jobwires://"),
        ("jobwire://a:1,jobwires://b:2", "jobwires://"),
        ("a:1,http://b:2", "scheme"),
    ],
)
def test_a_bad_address_list_is_refused_clearly(bad: str | list[str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        resolve_addresses(bad)
    with pytest.raises(ValueError, match=says):
        Client(bad)
    with pytest.raises(ValueError, match=says):
        Worker(bad)


def test_the_command_lines_refuse_a_bad_address_list() -> None:
    for command in (["broker", "ping"], ["worker"]):
        done = subprocess.run(
            [sys.executable, "-m", *command, "--connect", "127.0.0.1:1,,127.0.0.1:2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "empty broker address" in done.stderr


# --- finding the leader ---------------------------------------------------------------


async def test_a_client_given_a_standby_then_the_leader_uses_the_leader() -> None:
    async with broker_at() as leader, standby() as follower:
        client = Client([follower.address, leader.address], connect_timeout=WAIT)
        async with client:
            await client.ping()
            assert client.address == leader.address
            assert follower.connections == 1


async def test_the_leader_a_standby_names_is_tried_next_even_outside_the_list() -> None:
    async with broker_at() as leader, standby(leader.address) as named, standby() as other:
        # The list's next address is not tried: the standby named the leader.
        addresses = [named.address, other.address, leader.address]
        async with Client(addresses, connect_timeout=WAIT) as client:
            await client.ping()
            assert client.address == leader.address
            assert (named.connections, other.connections) == (1, 0)
        # Not in the list at all: still followed (docs: the standby is trusted as itself).
        async with Client(named.address, connect_timeout=WAIT) as client:
            await client.ping()
            assert client.address == leader.address


async def test_a_broker_that_never_answers_takes_only_its_share_of_the_connect_timeout() -> None:
    assert LeaderSearch(["a:1"]).attempt_timeout(10.0) == 10.0  # one address: as before
    assert LeaderSearch(["a:1", "b:2"]).attempt_timeout(10.0) == 5.0
    async with broker_at() as leader, silent_broker() as stopped:
        client = Client([stopped.address, leader.address], connect_timeout=6.0)
        async with client:
            await client.ping()  # within 6 s: 3 s for the silent one, then the leader
            assert client.address == leader.address
            assert stopped.connections == 1


async def test_a_shard_without_a_leader_is_unavailable_after_the_connect_timeout() -> None:
    async with standby() as first, standby() as second:
        client = Client([first.address, second.address], connect_timeout=0.5)
        with pytest.raises(BrokerUnavailable, match=r"within 0\.5s") as raised:
            await client.ping()
        assert isinstance(raised.value.__cause__, NotLeader)
        assert first.address in str(raised.value) and second.address in str(raised.value)
        # Rounds back off: a few dozen attempts in half a second, not thousands.
        assert 1 <= first.connections + second.connections < 60


async def test_a_worker_given_a_standby_then_the_leader_serves_the_leader() -> None:
    registry = TaskRegistry()

    async def double(x: int) -> int:
        return 2 * x

    registry.register(double)
    async with broker_at() as leader, standby(leader.address) as follower:
        worker = Worker(f"{follower.address},127.0.0.1:{free_port()}", registry=registry)
        async with Client(leader.address) as client, serving(worker):
            job = await client.submit("double", [4])
            assert await job.result(timeout=WAIT) == 8
            assert worker.address == leader.address
            assert follower.connections >= 1


# --- awaiting across a failover ------------------------------------------------------------


async def test_results_and_the_worker_follow_a_failover_to_the_other_address(
    tmp_path: Path,
) -> None:
    registry = TaskRegistry()
    attempts: asyncio.Queue[int] = asyncio.Queue()
    release = asyncio.Event()

    async def held(x: int) -> int:
        attempts.put_nowait(current_job().attempt)
        await release.wait()
        return 2 * x

    registry.register(held)
    second_port = free_port()
    first = Broker(BrokerConfig(port=0, journal=JournalConfig(tmp_path)))
    await first.start()
    addresses = [first.address, f"127.0.0.1:{second_port}"]
    worker = Worker(addresses, registry=registry)
    first_stopped = False
    try:
        async with Client(addresses, connect_timeout=WAIT) as client, serving(worker):
            running = await client.submit("held", [21])
            queued = await client.submit("held", [1], queue=NOBODY)
            assert await asyncio.wait_for(attempts.get(), WAIT) == 1
            waiting = asyncio.ensure_future(running.result())
            completing = asyncio.ensure_future(_completed(client, [queued, running]))
            first_stopped = True
            await first.stop()  # the leader goes; the jobs are in its journal
            async with broker_at(second_port, tmp_path) as second:
                # The running job was requeued, its attempt counted, and the
                # worker took it again from the broker at the other address.
                assert await asyncio.wait_for(attempts.get(), WAIT) == 2
                assert worker.address == second.address
                release.set()
                assert await asyncio.wait_for(waiting, WAIT) == 42
                assert client.address == second.address
                assert (await client.status(running.id))["attempts"] == 2
                await client.cancel(queued.id)
                assert await asyncio.wait_for(completing, WAIT) == [running.id, queued.id]
    finally:
        if not first_stopped:
            await first.stop()


async def _completed(client: Client, jobs: list[Job]) -> list[str]:
    return [job.id async for job in client.as_completed(jobs)]


async def test_progress_follows_a_broker_restarted_on_its_data_dir(tmp_path: Path) -> None:
    port = free_port()
    async with Client(f"127.0.0.1:{port}", connect_timeout=WAIT) as client:
        async with broker_at(port, tmp_path):
            job = await client.submit("t", queue=NOBODY)
            following = job.progress()
            first = asyncio.ensure_future(anext(following))
            await client.ping()
            await client.ping()  # sent after the FOLLOW: it was answered
        async with broker_at(port, tmp_path):
            await client.cancel(job.id)
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(first, WAIT)  # ended with the job, not lost
            assert (await client.status(job.id))["state"] == JobState.CANCELLED


async def test_a_result_raises_connection_lost_when_the_new_broker_does_not_know_the_job() -> None:
    port = free_port()
    async with Client(f"127.0.0.1:{port}", connect_timeout=WAIT) as client:
        async with broker_at(port):  # no journal: a restart forgets every job
            job = await client.submit("t", queue=NOBODY)
            waiting = asyncio.ensure_future(job.result())
            await client.ping()
        async with broker_at(port):
            with pytest.raises(ConnectionLost, match="no longer knows"):
                await asyncio.wait_for(waiting, WAIT)


async def test_a_result_raises_connection_lost_when_no_broker_comes_back_in_time() -> None:
    async with broker_at() as broker, Client(broker.address, connect_timeout=0.3) as client:
        job = await client.submit("t", queue=NOBODY)
        waiting = asyncio.ensure_future(job.result())
        await client.ping()
        await broker.stop()
        with pytest.raises(ConnectionLost, match=r"within 0\.3s") as raised:
            await asyncio.wait_for(waiting, WAIT)
        assert isinstance(raised.value.__cause__, BrokerUnavailable)


async def test_a_result_awaited_when_the_client_closes_raises_connection_lost() -> None:
    async with broker_at() as broker:
        client = Client(broker.address)
        job = await client.submit("t", queue=NOBODY)
        waiting = asyncio.ensure_future(job.result())
        await client.ping()
        await client.close()
        with pytest.raises(ConnectionLost, match="closed"):
            await asyncio.wait_for(waiting, WAIT)


async def test_a_submit_in_flight_when_the_connection_drops_raises_connection_lost() -> None:
    async with dropping_broker() as broker, Client(broker.address) as client:
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(client.submit("t"), WAIT)
        assert broker.dropped.is_set()


# --- real processes --------------------------------------------------------------------------


async def test_the_worker_and_admin_commands_follow_a_failover(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    data = str(tmp_path / "data")
    first = start_broker("--data-dir", data)
    second_port = free_port()
    async with standby(first.address) as follower:
        # The standby is first in every list: each peer is sent on to the leader.
        addresses = f"{follower.address},{first.address},127.0.0.1:{second_port}"
        worker = await asyncio.to_thread(start_worker, addresses)
        done = await asyncio.to_thread(
            admin, addresses, "submit", "echo", "--args", "[5]", "--wait"
        )
        assert done.returncode == 0 and done.stdout.splitlines()[-1] == "5", done.stderr
        gate = tmp_path / "gate"
        async with Client(addresses, connect_timeout=WAIT) as client:
            job = await client.submit("gated", [str(gate), "after"])
            waiting = asyncio.ensure_future(job.result())
            await _until_running(client, job.id)
            mark = worker.line_count()
            assert await asyncio.to_thread(first.stop) == 0
            second = await asyncio.to_thread(start_broker, "--data-dir", data, port=second_port)
            await asyncio.to_thread(worker.wait_for_line, r"reconnected to the broker", 60.0, mark)
            open_gate(gate)
            assert await asyncio.wait_for(waiting, WAIT) == "after"
            assert client.address == second.address
            # It was running at the failover: run again, its attempt counted.
            assert (await client.status(job.id))["attempts"] == 2
        # The same list in JOBWIRE_URL; the standby now names a dead leader.
        env = {**os.environ, URL_ENV: addresses}
        stats = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "broker", "stats", "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["workers"] == 1


async def _until_running(client: Client, job_id: str) -> None:
    async def running() -> bool:
        return bool((await client.status(job_id))["state"] == JobState.RUNNING)

    await eventually(running, f"job {job_id} running")
