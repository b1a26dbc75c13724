"""The NATS connection and what one shard keeps in JetStream.

- the stream ``JW_<shard>`` (subject ``jobwire.<shard>.journal``, file
  storage): one message per batch of journal records;
- the KV bucket ``JW_<shard>_lease`` (TTL = the lease's): the key
  ``leader`` holds the leader's ``host:port``;
- the object store ``JW_<shard>_snapshots``: snapshots, named by the stream
  sequence they cover.

Creating them is idempotent: every node of the shard does it at start, with
the same settings (a node with another ``--lease-ttl`` is refused by the servers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from broker.cluster.config import ClusterConfig

log = logging.getLogger("broker.cluster")

T = TypeVar("T")

# How long a JetStream API request may take (then it is tried again, as the case may be).
API_TIMEOUT = 2.0
# How long a task doing NATS work is given to stop once cancelled.
CANCEL_GRACE = 2.0
# How long creating the shard's stream and buckets may be tried again at start.
SETUP_TIMEOUT = 30.0
SETUP_RETRY = 0.2
# Room left in a message for the headers.
HEADERS_RESERVE = 1024


@dataclass(slots=True)
class Shard:
    config: ClusterConfig
    nc: NatsClient
    js: JetStreamContext
    lease: KeyValue
    snapshots: ObjectStore
    replicas: int

    @property
    def max_batch_bytes(self) -> int:
        """The largest batch of records one message may carry."""
        return int(self.nc.max_payload) - HEADERS_RESERVE

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()


async def connect(config: ClusterConfig, name: str) -> Shard:
    """Connect (retrying on every server for ever) and make sure the shard's stream,
    lease bucket and snapshot store exist."""

    async def disconnected() -> None:
        if not nc.is_closed:
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected() -> None:
        url = nc.connected_url
        log.info("reconnected to NATS at %s", url.netloc if url else "?")

    async def error(exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    nc = await nats.connect(
        servers=config.servers,
        name=name,
        connect_timeout=2,
        reconnect_time_wait=0.1,  # seconds
        max_reconnect_attempts=-1,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )
    try:
        servers = max(len(config.servers), len(nc.servers))
        replicas = config.replicas or (3 if servers >= 3 else 1)
        js = nc.jetstream(timeout=API_TIMEOUT)
        lease, snapshots = await retrying(
            f"setting up shard {config.shard} in JetStream", lambda: _create(js, config, replicas)
        )
    except BaseException:
        await nc.close()
        raise
    return Shard(config, nc, js, lease, snapshots, replicas)


async def settle(task: asyncio.Task[Any] | None, grace: float) -> None:
    """Cancel ``task`` and wait for it, at most ``grace`` seconds. nats-py can lose a
    cancellation in a wait on a queue (Python 3.11's ``wait_for``): such a task is
    logged and left, so that stopping cannot hang on it."""
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.warning("%s did not stop within %g s; leaving it", task.get_name(), grace)
    elif not task.cancelled() and task.exception() is not None:
        log.debug("%s ended with %r", task.get_name(), task.exception())


async def retrying(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` until it works, for at most :data:`SETUP_TIMEOUT` seconds: at start,
    the cluster may still be electing the leaders of new streams."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        try:
            return await attempt()
        except (TimeoutError, NatsError) as exc:
            # A bad request too: two nodes creating the same stream at once can
            # get one (the second sees the first's half made); with other
            # settings it stays, and is raised at the deadline.
            if time.monotonic() > deadline:
                raise
            level = logging.WARNING if isinstance(exc, BadRequestError) else logging.INFO
            log.log(level, "%s: %s; again", what, exc or type(exc).__name__)
            await asyncio.sleep(SETUP_RETRY)


async def _create(
    js: JetStreamContext, config: ClusterConfig, replicas: int
) -> tuple[KeyValue, ObjectStore]:
    await js.add_stream(
        StreamConfig(
            name=config.stream,
            subjects=[config.subject],
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
        )
    )
    lease = await js.create_key_value(
        KeyValueConfig(
            bucket=config.lease_bucket,
            history=1,
            ttl=config.lease_ttl,
            storage=StorageType.FILE,
            replicas=replicas,
        )
    )
    snapshots = await js.create_object_store(
        config.snapshot_bucket,
        ObjectStoreConfig(storage=StorageType.FILE, replicas=replicas),
    )
    return lease, snapshots
