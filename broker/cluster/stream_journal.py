"""The JetStream :class:`~broker.journal.JournalBackend`: one writer, fenced by sequence.

Each loop turn's records, encoded as the file journal encodes them, are
published as one message to the shard's stream while no other batch is in
flight (``batches.py``: the next batch takes everything appended
meanwhile). The publish acknowledgement is the durability the gate
promises: with replicas 3 the servers acknowledge once two of three have
the message. Replies held for durability are released by it, as
``--fsync always`` releases them after the fsync.

Every publish carries ``Nats-Expected-Last-Sequence``: the sequence this
leader last wrote. A standby that took over appended a message of its own,
so a publish of a replaced leader is refused; that, a publish not
acknowledged within ``publish_timeout``, and a lease that ran out or was
taken are *fatal* failures (:class:`~broker.durability.StorageFailure`
with ``fatal``): the broker stops serving at once and sends nothing more
(the lease is checked whenever :attr:`StreamJournal.failure` is read, which
the connections' writer does before every write). A publish whose
acknowledgement was lost is retried with the same ``Nats-Msg-Id``; if the
retry is refused for the sequence, the message at the expected sequence is
looked at: if it is ours, it is the acknowledgement.

Snapshots (``snapshots.py``) are taken after a takeover and once the
stream has grown by ``snapshot_min_bytes``; the stream is then purged below
the snapshot's marker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from nats.errors import Error as NatsError
from nats.js.api import Header
from nats.js.errors import APIError

from broker.cluster import snapshots
from broker.cluster.batches import Batch, PublishQueue
from broker.cluster.lease import Leadership
from broker.cluster.shard import CANCEL_GRACE, Shard, settle
from broker.durability import FailureListener, StorageFailure
from broker.jobs import Job
from broker.journal.sink import RecordSink

log = logging.getLogger("broker.cluster")

# JetStream's error code for a publish whose expected last sequence is not the stream's.
WRONG_LAST_SEQUENCE = 10071
# A publish that failed (not refused) is retried after this long, within the deadline.
RETRY_PAUSE = 0.05


def fenced_sequence(exc: APIError) -> bool:
    return exc.err_code == WRONG_LAST_SEQUENCE


class StreamJournal(RecordSink):
    """Records to the shard's stream, from the sequence the takeover left it at."""

    def __init__(
        self,
        shard: Shard,
        leadership: Leadership,
        *,
        jobs: dict[str, Job],
        settings: dict[str, Any],
        last_sequence: int,
        snapshot_bytes: int = 0,
    ) -> None:
        self._shard = shard
        self._config = shard.config
        self._leadership = leadership
        self._jobs = jobs
        self._settings = settings
        self.last_sequence = last_sequence
        self._queue = PublishQueue(shard.max_batch_bytes)
        # Messages of this process are told apart from a replaced leader's by this.
        self._node = os.urandom(6).hex()
        self._failure: StorageFailure | None = None
        self._listeners: list[FailureListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._fenced = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._snapshot: asyncio.Task[None] | None = None
        self._jobs_view: Callable[[], dict[str, Job]] | None = None
        self._settings_view: Callable[[], dict[str, Any]] | None = None
        self._closed = False
        self.published_bytes = 0
        self._bytes_at_snapshot = 0
        self.snapshot_bytes = snapshot_bytes
        self.compactions = 0
        leadership.on_lost = lambda cause: self._fence("lease", cause)

    # -- the lifecycle --

    def open(self) -> dict[str, Job]:
        """The jobs the standby replayed (the takeover already fenced the old leader)."""
        return self._jobs

    def recovered_settings(self) -> dict[str, Any]:
        return self._settings

    def start(
        self,
        jobs_view: Callable[[], dict[str, Job]],
        settings_view: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._jobs_view = jobs_view
        self._settings_view = settings_view
        self._wake = asyncio.Event()
        if self._queue.waiting:
            self._wake.set()
        self._publisher = self._loop.create_task(self._publish_loop())

    def compact_soon(self) -> None:
        if (
            self._loop is None
            or self._closed
            or self._failure is not None
            or (self._snapshot is not None and not self._snapshot.done())
        ):
            return
        self._snapshot = self._loop.create_task(self._take_snapshot())

    async def close(self) -> None:
        """Publish what is appended (within ``publish_timeout``), stop, release the lease."""
        if not self._closed:
            self._closed = True
            if self._failure is None and self._publisher is not None:
                try:
                    async with asyncio.timeout(self._config.publish_timeout):
                        await self._until_durable(self._queue.appended)
                except TimeoutError:
                    pass
            if self._failure is None and self._queue.durable < self._queue.appended:
                log.error(
                    "closing the stream journal: the last %d changes are not in the stream",
                    self._queue.appended - self._queue.durable,
                )
        for task in (self._publisher, self._snapshot):
            await settle(task, CANCEL_GRACE)
        await self._leadership.stop(release=self._failure is None)

    def abandon(self) -> None:
        """After a failed start: nothing more is published (``close()`` awaits the tasks)."""
        self._closed = True
        for task in (self._publisher, self._snapshot):
            if task is not None:
                task.cancel()

    def stats(self) -> dict[str, Any]:
        failure = self._failure
        return {
            "generation": self.compactions,
            "journal_bytes": self.published_bytes - self._bytes_at_snapshot,
            "snapshot_bytes": self.snapshot_bytes,
            "compactions": self.compactions,
            "fsync": "jetstream",
            "appended": self._queue.appended,
            "durable": self._queue.durable,
            "failure": None
            if failure is None
            else {"operation": failure.operation, "cause": failure.cause, "since": failure.since},
            "stream": self._config.stream,
            "stream_sequence": self.last_sequence,
            "replicas": self._shard.replicas,
            "batches": self._queue.batches,
        }

    # -- the manager's sink (RecordSink) --

    def _append(self, record: bytes) -> None:
        self._queue.append(record)
        if self._wake is not None:
            self._wake.set()

    # -- the durability gate --

    @property
    def appended(self) -> int:
        return self._queue.appended

    @property
    def failure(self) -> StorageFailure | None:
        """Set for good once fenced out; reading it checks that the lease still holds."""
        if self._failure is None and self._loop is not None:
            self._leadership.valid()  # loses the lease (and fences) once it ran out
        return self._failure

    def add_failure_listener(self, listener: FailureListener) -> None:
        self._listeners.append(listener)

    def is_durable(self, mark: int) -> bool:
        return self._failure is None and mark <= self._queue.durable

    def when_durable(self, mark: int, callback: Callable[[], None]) -> None:
        if self._failure is not None:
            return  # never: a fenced-out leader releases nothing
        if not self._queue.when_durable(mark, callback):
            assert self._loop is not None
            self._loop.call_soon(callback)

    async def _until_durable(self, mark: int) -> bool:
        """Wait until ``mark`` is durable (True) or this leader is fenced out (False)."""
        if self._failure is not None:
            return False
        assert self._loop is not None and self._wake is not None
        durable: asyncio.Future[None] = self._loop.create_future()

        def release() -> None:
            if not durable.done():
                durable.set_result(None)

        self.when_durable(mark, release)
        self._wake.set()
        fenced = asyncio.ensure_future(self._fenced.wait())
        either: set[asyncio.Future[Any]] = {durable, fenced}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fenced.cancel()
            durable.cancel()
            await asyncio.gather(fenced, return_exceptions=True)
        return self._failure is None

    # -- publishing --

    async def _publish_loop(self) -> None:
        assert self._wake is not None
        while self._failure is None:
            await self._wake.wait()
            self._wake.clear()
            while self._failure is None and (batch := self._queue.next_batch()) is not None:
                sequence = await self._publish(batch)
                if sequence is None:
                    return
                self.last_sequence = sequence
                self.published_bytes += len(batch.payload)
                for callback in self._queue.acknowledged(batch):
                    callback()
                if self.published_bytes - self._bytes_at_snapshot > self._config.snapshot_min_bytes:
                    self.compact_soon()

    async def _publish(self, batch: Batch) -> int | None:
        """Publish ``batch`` after :attr:`last_sequence`: its sequence, or None (fenced)."""
        if len(batch.payload) > self._shard.max_batch_bytes:
            self._fence(
                "publish",
                f"a record of {len(batch.payload)} bytes does not fit in a NATS message "
                f"(max_payload {self._shard.nc.max_payload}): raise max_payload in the "
                "servers' configuration",
            )
            return None
        expected = self.last_sequence
        message_id = f"{self._node}-{batch.number}"
        headers = {
            Header.EXPECTED_LAST_SEQUENCE.value: str(expected),
            Header.MSG_ID.value: message_id,
        }
        timeout = self._config.publish_timeout
        deadline = time.monotonic() + timeout
        while self._failure is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fence("publish", f"the stream acknowledged nothing for {timeout:g} s")
                return None
            try:
                ack = await self._shard.js.publish(
                    self._config.subject, batch.payload, timeout=left, headers=dict(headers)
                )
            except APIError as exc:
                if not fenced_sequence(exc):
                    log.warning("publishing to %s: %s", self._config.stream, exc)
                elif await self._is_ours(expected + 1, message_id):
                    return expected + 1  # an earlier attempt got in; its ack was lost
                else:
                    self._fence(
                        "publish",
                        f"another broker wrote to {self._config.stream} after sequence "
                        f"{expected}: it leads the shard now",
                    )
                    return None
            except (TimeoutError, NatsError) as exc:
                log.warning("publishing to %s: %s", self._config.stream, exc or type(exc).__name__)
            else:
                return int(ack.seq)
            await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
        return None

    async def _is_ours(self, sequence: int, message_id: str) -> bool:
        try:
            message = await self._shard.js.get_msg(self._config.stream, sequence)
        except (TimeoutError, NatsError):
            return False
        return (message.headers or {}).get(Header.MSG_ID.value) == message_id

    def _fence(self, operation: str, cause: str) -> None:
        """Fenced out, or cut off: fatal. Nothing waiting for durability is released."""
        if self._failure is not None:
            return
        self._failure = StorageFailure(operation, cause, time.time(), fatal=True)
        self._fenced.set()
        self._queue.drop_waiters()
        self._leadership.lose(cause)
        if self._snapshot is not None and asyncio.current_task() is not self._snapshot:
            self._snapshot.cancel()
        for listener in list(self._listeners):
            try:
                listener(self._failure)
            except Exception:
                log.exception("a storage failure listener failed")

    # -- snapshots --

    async def _take_snapshot(self) -> None:
        """Snapshot the live state once it is all durable; purge the stream below it."""
        assert self._jobs_view is not None
        marker = self.last_sequence  # every message up to here is in the live state
        bytes_at_start = self.published_bytes
        started = time.perf_counter()
        data, count = await snapshots.encode(self._jobs_view, self._settings_view)
        # The snapshot may hold changes not yet in the stream: it is stored
        # only once they are, so it never holds a change the stream lost.
        if not await self._until_durable(self._queue.appended):
            return
        try:
            await snapshots.store(self._shard.snapshots, marker, data)
            if not self._leadership.valid():
                return
            await self._shard.js.purge_stream(self._config.stream, seq=marker + 1)
        except (TimeoutError, NatsError) as exc:
            log.warning(
                "snapshot of %s failed (%s): the stream keeps its messages until the next one",
                self._config.stream,
                exc or type(exc).__name__,
            )
            return
        self.snapshot_bytes = len(data)
        self.compactions += 1
        self._bytes_at_snapshot = bytes_at_start
        log.info(
            "snapshot at stream sequence %d: %d jobs (%d bytes) in %.0f ms; purged below it",
            marker,
            count,
            len(data),
            (time.perf_counter() - started) * 1000,
        )
