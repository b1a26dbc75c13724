"""``make demo``: the seed's master/slave run, done right, in one terminal.

Starts a broker and two workers on 127.0.0.1, then acts as the seed's
master: dispatches jobs ten at a time and moves on to the next ten only when
all ten have *finished* (the seed moved on once its dispatch queue was
empty). Stops every process it started, also when interrupted.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from broker import Client
from examples.demo_tasks import seed_job
from harness.processes import BrokerProc, Proc, WorkerProc

BATCH = 10
TOTAL = 30


def say(line: str) -> None:
    """Print a line in one write(), so the workers' lines never split it."""
    os.write(1, f"{line}\n".encode())


def show_problems(line: str) -> None:
    """The broker's lines worth a look: warnings and errors, on stderr."""
    if " WARNING " in line or " ERROR " in line:
        print(f"[broker] {line}", file=sys.stderr)


def show_worker_line(line: str) -> None:
    """A worker's task prints go to stdout; its warnings and errors to stderr."""
    if " WARNING " in line or " ERROR " in line:
        print(line, file=sys.stderr)
    else:
        say(line)


def start_worker(address: str, name: str) -> WorkerProc:
    return WorkerProc(
        address,
        ["examples.demo_tasks"],
        concurrency=5,
        log_level="warning",
        extra=["--name", name],
        wait_connected=False,
        name=name,
        keep_lines=100,
        echo=show_worker_line,
    )


async def dispatch(address: str) -> None:
    started = time.perf_counter()
    results: dict[int, int] = {}
    async with Client(address, name="demo-master") as client:
        for first in range(1, TOTAL + 1, BATCH):  # numbered from 1, as the seed's run
            jobs = {}
            for n in range(first, first + BATCH):
                say(f"Dispatch job: {n}")
                job = await seed_job.submit(client, n)
                jobs[job] = n
            async for job in client.as_completed(jobs):
                results[jobs[job]] = await job.result()
                say(f"Finished job: {jobs[job]}")
    assert all(results[n] == n * n for n in range(1, TOTAL + 1))
    elapsed = time.perf_counter() - started
    say(
        f"Done: {len(results)} jobs in {TOTAL // BATCH} batches of {BATCH} "
        f"on 2 workers in {elapsed:.1f}s, every result checked."
    )


def main() -> int:
    processes: list[Proc] = []
    try:
        broker = BrokerProc(keep_lines=100, echo=show_problems)
        processes.append(broker)
        processes.extend(start_worker(broker.address, f"worker-{i}") for i in (1, 2))
        asyncio.run(dispatch(broker.address))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for process in reversed(processes):
            process.stop(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
