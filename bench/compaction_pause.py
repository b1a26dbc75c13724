"""How long compaction holds the event loop: ``python -m bench.compaction_pause [--jobs N]``.

An in-process broker with a data directory holds N queued jobs (100,000 by
default); a task measures the gaps between its turns of the loop while the
journal writes a snapshot. Prints the compaction's duration and the longest
and 99th-percentile gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from broker import Broker, BrokerConfig, Client, install_uvloop
from broker.journal import Journal, JournalConfig


async def measure(jobs: int) -> str:
    with tempfile.TemporaryDirectory(prefix="jobwire-compaction-") as directory:
        config = JournalConfig(Path(directory), compact_min_bytes=1 << 40)
        broker = Broker(BrokerConfig(port=0, journal=config))
        await broker.start()
        try:
            async with Client(broker.address, watch=False) as client:
                for first in range(0, jobs, 1000):
                    await client.submit_many(
                        [{"task": "noop", "args": [{"i": i}]} for i in range(first, first + 1000)]
                    )
            gaps: list[float] = []
            done = asyncio.Event()

            async def tick() -> None:
                last = time.perf_counter()
                while not done.is_set():
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            journal = broker.journal
            assert isinstance(journal, Journal)
            started = time.perf_counter()
            await journal.compact_now()
            took = time.perf_counter() - started
            done.set()
            await ticker
            gaps.sort()
            return (
                f"{len(broker.manager.jobs):,} live jobs: compaction took {took * 1000:.0f} ms, "
                f"snapshot {journal.snapshot_bytes:,} bytes; loop gaps meanwhile: longest "
                f"{gaps[-1] * 1000:.1f} ms, p99 {gaps[int(len(gaps) * 0.99)] * 1000:.2f} ms"
            )
        finally:
            await broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compaction_pause")
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    install_uvloop()
    print(asyncio.run(measure(args.jobs)))


if __name__ == "__main__":
    main()
