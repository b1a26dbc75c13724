"""A broker and workers in the test's own program: no subprocesses, always stopped."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broker import Broker, BrokerConfig
from worker import Worker

WAIT = 30.0


def free_port() -> int:
    """A port of 127.0.0.1 free now, for a broker to be started on it later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def running_broker(config: BrokerConfig | None = None) -> AsyncIterator[Broker]:
    """A started broker on an ephemeral port of 127.0.0.1, stopped on the way out."""
    broker = Broker(config or BrokerConfig(port=0))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Worker]:
    """The worker runs in the background; it is stopped at once on the way out."""
    run = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, WAIT)
