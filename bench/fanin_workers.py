"""``python -m bench.fanin_workers ADDRESS COUNT``: COUNT worker connections in one process.

A worker process opens one connection; W6 needs hundreds. This runs COUNT
:class:`worker.Worker` objects (``concurrency=1``, the tasks of
:mod:`bench.tasks`) on one uvloop event loop until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import uvloop

import bench.tasks  # registers the tasks in worker.default_registry
from worker import Worker, default_registry


async def serve(address: str, count: int) -> None:
    workers = [
        Worker(
            address,
            registry=default_registry,
            concurrency=1,
            name=f"fanin-{os.getpid()}-{i}",
            grace=5.0,
        )
        for i in range(count)
    ]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for worker in workers:
            worker.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    await asyncio.gather(*(worker.run() for worker in workers))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanin_workers")
    parser.add_argument("address", help="broker HOST:PORT")
    parser.add_argument("count", type=int, help="worker connections to open")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    assert bench.tasks.NOOP in default_registry
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.address, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
