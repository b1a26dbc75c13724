"""A standby: the stream replayed as it grows, and ``NOT_LEADER`` to every connection.

:class:`Follower` keeps the shard's state as the leader writes it: the
newest snapshot, then every message after its marker through the journal's
own ``replay``, read by an ephemeral pull consumer (re-created, from the
next sequence, whenever NATS fails under it). A message past a gap means
the leader purged the stream below a newer snapshot: the follower loads
that snapshot and goes on from its marker.

:class:`NotLeaderListener` listens where the broker will once this node
leads, and answers every connection with ``ERR NOT_LEADER`` naming the
leader instead of ``WELCOME`` (as a broker at its connection limit answers
``TOO_MANY_CONNECTIONS``), then closes it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from pathlib import Path
from typing import Any, cast

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.cluster import snapshots
from broker.cluster.shard import Shard
from broker.jobs import Job
from broker.journal.codec import read_batch
from broker.journal.errors import JournalError
from broker.journal.records import replay
from protocol.errors import ErrorCode
from protocol.framing import encode_frame
from protocol.messages import Op

log = logging.getLogger("broker.cluster")

FETCH_BATCH = 256
FETCH_WAIT = 0.5
# Fetches that found nothing in a row before the consumer is re-created
# (it may have gone with a server): a few seconds.
IDLE_FETCHES = 8
RESUBSCRIBE_PAUSE = 0.2


class Follower:
    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.jobs: dict[str, Job] = {}
        self.settings: dict[str, Any] = {}
        # The last stream sequence whose message is in ``jobs``.
        self.applied = 0
        self.snapshot_bytes = 0
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def load_snapshot(self) -> None:
        loaded = await snapshots.load_newest(self.shard.snapshots, self.shard.config.shard)
        self.jobs = loaded.jobs
        self.settings = loaded.settings
        self.applied = loaded.marker
        self.snapshot_bytes = loaded.size
        await self._unsubscribe()

    async def follow(
        self,
        until: int | None = None,
        *,
        stop: asyncio.Event | None = None,
        deadline: float | None = None,
    ) -> bool:
        """Apply the stream's messages in order; True once ``until`` is applied (with
        None, never), False once ``stop`` is set or the monotonic ``deadline`` passed.

        Those are checked between fetches, each at most :data:`FETCH_WAIT`: a
        fetch is never cancelled (nats-py's can then hang on Python 3.11).
        """
        idle = 0
        while until is None or self.applied < until:
            if (stop is not None and stop.is_set()) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return False
            try:
                if self._subscription is None:
                    self._subscription = await self._subscribe()
                messages = await self._subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
            except NatsTimeoutError:
                idle += 1
                if idle >= IDLE_FETCHES or until is not None:
                    idle = 0
                    await self._unsubscribe()
                continue
            except (TimeoutError, NatsError) as exc:
                log.debug("following %s: %s", self.shard.config.stream, exc)
                await self._unsubscribe()
                await asyncio.sleep(RESUBSCRIBE_PAUSE)
                continue
            idle = 0
            try:
                await self._apply(messages)
            except (TimeoutError, NatsError) as exc:  # loading a snapshot
                log.debug("following %s: %s", self.shard.config.stream, exc)
                await self._unsubscribe()
                await asyncio.sleep(RESUBSCRIBE_PAUSE)
        return True

    async def _apply(self, messages: list[Msg]) -> None:
        for message in messages:
            sequence = message.metadata.sequence.stream
            if sequence <= self.applied:
                continue
            if sequence != self.applied + 1:
                await self._skip_gap(sequence)
                return
            where = Path(f"<stream {self.shard.config.stream} message {sequence}>")
            replay(read_batch(message.data, where), self.jobs, self.settings)
            self.applied = sequence

    async def _skip_gap(self, sequence: int) -> None:
        """Messages before ``sequence`` were purged: they are in a newer snapshot. (If
        they are still in the stream, the consumer lost them: it is made again.)"""
        stream = self.shard.config.stream
        first = (await self.shard.js.stream_info(stream)).state.first_seq
        if first <= self.applied + 1:
            await self._unsubscribe()
            return
        await self.load_snapshot()
        if self.applied + 1 < first:
            raise JournalError(
                f"stream {stream} starts at message {first} and no snapshot covers the ones "
                f"before it: it was purged by something other than a leader"
            )

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = self.shard.config
        return await self.shard.js.pull_subscribe(
            config.subject,
            stream=config.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.applied + 1,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=10.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except (TimeoutError, NatsError) as exc:
                log.debug("dropping a consumer: %s", exc)

    async def close(self) -> None:
        """Drop the consumer (after a ``follow`` was cancelled: the next one starts afresh
        from the next sequence)."""
        await self._unsubscribe()


class _NotLeader(asyncio.Protocol):
    def __init__(self, listener: NotLeaderListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        leader = self.listener.leader
        message: dict[str, Any] = {
            "op": Op.ERR,
            "rid": None,
            "code": ErrorCode.NOT_LEADER.value,
            "message": f"this broker is a standby of shard {self.listener.shard}"
            + (f"; the leader is {leader}" if leader else "; no leader right now"),
        }
        if leader:
            message["leader"] = leader
        transport.write(encode_frame(message))
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # whatever the peer says, the answer was given


class NotLeaderListener:
    def __init__(self, shard: str, ssl_context: ssl.SSLContext | None) -> None:
        self.shard = shard
        self.ssl = ssl_context
        # The leader's host:port, as the lease key holds it (None: none now).
        self.leader: str | None = None
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port bound (``port`` 0 picks one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _NotLeader(self), host, port, reuse_address=True, ssl=self.ssl
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
