"""``python -m bench.per_process W1|W4 [N] [BROKER ARGS...]``: CPU per job in each process.

A real broker and one worker process (``bench.procs``), the producer in this
process: W1 submits N no-op jobs with ``submit_many`` in chunks of 500 and
awaits every result; W4 submits one job at a time and awaits it (p50 and p99
printed too). Prints the CPU time each of the three processes spent per job
(user plus system, from ``/proc``), which on a shared machine moves less
than wall-clock figures do. Compare two trees by running it from each,
alternately (``cd OLD && PYTHONPATH=OLD python -m bench.per_process W4``).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

import uvloop

from bench.procs import BrokerProc, WorkerProc
from broker import Client

CHUNK = 500
WARM_UP = 200


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(kind: str, n: int, broker_args: list[str]) -> str:
    broker = BrokerProc(broker_args)
    worker = WorkerProc(broker.address)
    try:
        async with Client(broker.address) as client:
            for k in range(WARM_UP):
                await (await client.submit("noop", args=[k])).result(timeout=30)
            cpu_before = broker.cpu_seconds(), worker.cpu_seconds(), own_cpu_seconds()
            started = time.perf_counter()
            latencies: list[float] = []
            if kind == "W4":
                for k in range(n):
                    sent = time.perf_counter()
                    await (await client.submit("noop", args=[k])).result(timeout=30)
                    latencies.append(time.perf_counter() - sent)
            else:
                jobs = []
                for first in range(0, n, CHUNK):
                    batch = range(first, min(n, first + CHUNK))
                    jobs.extend(
                        await client.submit_many([{"task": "noop", "args": [i]} for i in batch])
                    )
                await asyncio.gather(*(job.result(timeout=120) for job in jobs))
            elapsed = time.perf_counter() - started
            cpu_after = broker.cpu_seconds(), worker.cpu_seconds(), own_cpu_seconds()
    finally:
        worker.stop()
        broker.stop()
    spent = [
        (after - before) / n * 1e6 for before, after in zip(cpu_before, cpu_after, strict=True)
    ]
    line = (
        f"{kind} n={n}: {elapsed / n * 1e6:.1f} us/job wall; CPU per job: broker {spent[0]:.1f}, "
        f"worker {spent[1]:.1f}, producer {spent[2]:.1f} us"
    )
    if latencies:
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        line += f"; p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms"
    return line


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("W1", "W4"):
        sys.exit(__doc__)
    kind = argv[0]
    n = int(argv[1]) if len(argv) > 1 else (3_000 if kind == "W4" else 20_000)
    uvloop.install()
    print(asyncio.run(measure(kind, n, argv[2:])))


if __name__ == "__main__":
    main(sys.argv[1:])
