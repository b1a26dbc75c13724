"""``make demo``: the seed's master/slave run, done right, in one terminal.

Starts a broker and two workers on 127.0.0.1, then acts as the seed's
master: dispatches jobs ten at a time and moves on to the next ten only when
all ten have *finished* (the seed moved on once its dispatch queue was
empty). Stops every process it started, also when interrupted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from broker import Client

ROOT = Path(__file__).resolve().parent.parent
BATCH = 10
TOTAL = 30
STARTUP_TIMEOUT = 20.0


def say(line: str) -> None:
    """Print a line in one write(), so the workers' lines never split it."""
    os.write(1, f"{line}\n".encode())


def start_broker() -> tuple[subprocess.Popen[str], str]:
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker", "--port", "0", "--log-level", "info"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert broker.stderr is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for line in broker.stderr:
        if "listening on " in line:
            address = line.rsplit("listening on ", 1)[1].strip()
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the broker did not start")
    else:
        raise RuntimeError(f"the broker exited ({broker.wait()})")
    # Keep reading so the pipe never fills; show only what is worth a look.
    threading.Thread(target=forward_problems, args=(broker.stderr,), daemon=True).start()
    return broker, address


def forward_problems(stream: object) -> None:
    for line in stream:  # type: ignore[attr-defined]
        if " WARNING " in line or " ERROR " in line:
            print(f"[broker] {line}", end="", file=sys.stderr)


def start_worker(address: str, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "examples.demo_tasks",
            "--connect",
            address,
            "--concurrency",
            "5",
            "--name",
            name,
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


async def dispatch(address: str) -> None:
    started = time.perf_counter()
    results: dict[int, int] = {}
    async with Client(address, name="demo-master") as client:
        for first in range(0, TOTAL, BATCH):
            jobs = {}
            for n in range(first, first + BATCH):
                say(f"Dispatch job: {n}")
                job = await client.submit("seed_job", [n])
                jobs[job] = n
            async for job in client.as_completed(jobs):
                results[jobs[job]] = await job.result()
                say(f"Finished job: {jobs[job]}")
    assert all(results[n] == n * n for n in range(TOTAL))
    elapsed = time.perf_counter() - started
    say(
        f"Done: {len(results)} jobs in {TOTAL // BATCH} batches of {BATCH} "
        f"on 2 workers in {elapsed:.1f}s, every result checked."
    )


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    processes: list[subprocess.Popen[str]] = []
    try:
        broker, address = start_broker()
        processes.append(broker)
        processes.extend(start_worker(address, f"worker-{i}") for i in (1, 2))
        asyncio.run(dispatch(address))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for process in reversed(processes):
            stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
