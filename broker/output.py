"""What the broker writes to one peer: coalesced, durable first, bounded.

:class:`Output` is the one writer of a connection. Frames queued during a
loop turn leave in one ``write`` at the end of it. Before a frame that
depends on changes leaves, those changes must be durable: each such frame
raises the output's *mark* to the durability gate's count of records, and
the output holds everything back until the gate says the mark is durable
(replies to pure reads do not raise it, so they are never held back by
storage that is failing, unless an earlier frame of the same peer is).

A peer that reads too slowly: past ``output_pause_bytes`` the transport
tells us (``pause_writing``) and the session stops reading the peer's
requests; its ``DONE`` pushes are then held back as frames, counted against
``output_drop_bytes``, and the peer is dropped if it stays stuck for
``output_stall_timeout`` or passes ``output_drop_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from broker.config import BrokerConfig
from broker.durability import DurabilityGate
from broker.jobs import Job, JobState
from broker.wire import delivery, delivery_cost
from protocol.framing import encode_frame
from protocol.messages import Op

log = logging.getLogger("broker.session")

# DONE pushes held back from a slow peer go out this many per write.
HELD_BACK_BATCH = 64
# Deliveries are cut into JOBS frames whose payloads add up to at most this
# share of the peer's frame limit, so the envelope always fits too.
DELIVERY_BATCH_SHARE = 2


class Output:
    """The frames on their way to one peer."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        config: BrokerConfig,
        gate: DurabilityGate,
        describe_peer: Callable[[], str],
        flush_later: Callable[[Output], None] | None = None,
    ) -> None:
        """``flush_later(output)``: have ``output.flush()`` called by the end of
        this loop turn (the broker flushes every output at the end of each
        read); by default a ``call_soon`` of its own."""
        self.transport: asyncio.Transport | None = transport
        self._flush_later = flush_later or _call_soon_flush
        self._loop = loop
        self._config = config
        self._gate = gate
        self._describe_peer = describe_peer
        self._frames: list[bytes] = []
        # Jobs handed to this peer in this loop turn, with the attempt they were
        # handed out at; encoded at the flush, so one JOBS frame carries them all.
        self._deliveries: list[tuple[Job, int]] = []
        self._delivery_owner: Any = None
        self._flush_scheduled = False
        # The gate's record count the queued frames depend on (0: none).
        self._mark = 0
        self._awaiting_durability = False
        self._held_back: deque[bytes] = deque()
        self._held_back_bytes = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        self.paused = False
        # Bytes queued in _frames, and whether they wait for durability past
        # output_pause_bytes: then the peer's requests are not read either.
        self._frames_bytes = 0
        self._held_for_durability = False
        self.reading_paused = False
        self.closing = False
        self._close_when_flushed = False
        transport.set_write_buffer_limits(high=config.output_pause_bytes)

    # -- queueing --

    def send_frame(self, frame: bytes, durable: bool = True) -> None:
        """Queue a frame; ``durable=False`` for one that acknowledges no change."""
        if self.transport is None or self.closing:
            return
        self._frames.append(frame)
        self._frames_bytes += len(frame)
        if durable:
            self._mark = self._gate.appended
        if (
            self._awaiting_durability
            and not self._held_for_durability
            and self._frames_bytes > self._config.output_pause_bytes
        ):
            # Storage is slow or failing and the peer keeps asking: stop
            # reading it, so what waits here stays bounded.
            self._held_for_durability = True
            self._update_reading()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_later(self)

    def send(self, message: dict[str, Any], durable: bool = True) -> None:
        self.send_frame(encode_frame(message), durable)

    def deliver(self, job: Job, owner: Any) -> None:
        """Queue ``job``'s current attempt for ``owner`` (its consumer) in this turn's JOBS."""
        self._deliveries.append((job, job.extras.attempts))
        self._delivery_owner = owner
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_later(self)

    def push_outcome(self, frame: bytes) -> None:
        """Send a watched job's DONE now, or once a slow peer has caught up.

        Held-back frames are the outcome as it was when the job finished (it
        may be retried since); they count against ``output_drop_bytes``.
        """
        transport = self.transport
        if transport is None or self.closing:
            return  # the watcher went away
        if not self.paused:
            self.send_frame(frame)
            return
        self._held_back.append(frame)
        self._held_back_bytes += len(frame)
        waiting = self._held_back_bytes + transport.get_write_buffer_size()
        if waiting > self._config.output_drop_bytes:
            log.warning(
                "dropping %s: it reads too slowly (%d bytes waiting)",
                self._describe_peer(),
                waiting,
            )
            self.abort()

    # -- writing --

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._deliveries:
            self._encode_deliveries()
        transport = self.transport
        if transport is None:
            return
        failure = self._gate.failure
        if failure is not None and failure.fatal:
            # Fenced out (another broker owns the jobs now): say nothing more.
            # The broker aborts every connection when it hears of it.
            return
        if not self._frames:
            if self._close_when_flushed:
                transport.close()
            return
        mark = self._mark
        if mark and not self._gate.is_durable(mark):
            # What we are about to say acknowledges changes that are not yet as
            # durable as promised: everything waits (order is kept per peer).
            if not self._awaiting_durability:
                self._awaiting_durability = True
                self._gate.when_durable(mark, self._on_durable)
            return
        frames = self._frames
        self._frames = []
        self._frames_bytes = 0
        transport.write(b"".join(frames) if len(frames) > 1 else frames[0])
        if self._close_when_flushed:
            transport.close()
        elif transport.get_write_buffer_size() > self._config.output_drop_bytes:
            log.warning(
                "dropping %s: it reads too slowly (%d bytes waiting)",
                self._describe_peer(),
                transport.get_write_buffer_size(),
            )
            self.abort()

    def _on_durable(self) -> None:
        self._awaiting_durability = False
        self.flush()
        if self._held_for_durability:
            self._held_for_durability = False
            self._update_reading()

    def _update_reading(self) -> None:
        """Read the peer's requests unless it reads too slowly or replies wait for storage."""
        transport = self.transport
        want_paused = self.paused or self._held_for_durability
        if transport is None or want_paused == self.reading_paused:
            return
        self.reading_paused = want_paused
        if want_paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _encode_deliveries(self) -> None:
        budget = self._config.max_frame // DELIVERY_BATCH_SHARE
        owner = self._delivery_owner
        batch: list[dict[str, Any]] = []
        size = 0
        for job, attempt in self._deliveries:
            extras = job.extras
            if (
                extras.owner is not owner
                or job.state is not JobState.RUNNING
                or extras.attempts != attempt
            ):
                continue  # revoked, cancelled or delivered again before it left
            cost = delivery_cost(job)
            if batch and size + cost > budget:
                self._queue_jobs_frame(batch)
                batch, size = [], 0
            batch.append(delivery(job))
            size += cost
        if batch:
            self._queue_jobs_frame(batch)
        self._deliveries = []

    def _queue_jobs_frame(self, batch: list[dict[str, Any]]) -> None:
        self._frames.append(encode_frame({"op": Op.JOBS, "jobs": batch}))
        self._mark = self._gate.appended  # the reservations' records

    # -- a slow reader --

    def pause(self) -> None:
        """The transport's buffer is full: start the stall clock."""
        if not self.paused:
            self.paused = True
            self._update_reading()
            self._stall_timer = self._loop.call_later(
                self._config.output_stall_timeout, self._drop_stalled
            )

    def resume(self) -> None:
        """The transport drained: send what was held back."""
        if not self.paused:
            return
        self.paused = False
        self._update_reading()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        held = self._held_back
        while held and not self.paused and not self.closing:
            for _ in range(min(len(held), HELD_BACK_BATCH)):
                frame = held.popleft()
                self._held_back_bytes -= len(frame)
                self._frames.append(frame)
            self._mark = self._gate.appended
            self.flush()  # write() calls pause_writing() again once the buffer is full

    def _drop_stalled(self) -> None:
        self._stall_timer = None
        transport = self.transport
        if transport is None or self.closing:
            return
        log.warning(
            "dropping %s: it reads too slowly (no progress for %gs, %d bytes and %d results "
            "waiting)",
            self._describe_peer(),
            self._config.output_stall_timeout,
            transport.get_write_buffer_size(),
            len(self._held_back),
        )
        self.abort()

    # -- closing --

    def close(self) -> None:
        """Send what is queued (after the gate, if it must wait), then close."""
        if self.transport is not None and not self.closing:
            self.closing = True
            self._close_when_flushed = True
            self.flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.closing = True
            self.transport.abort()

    def connection_lost(self) -> None:
        self.closing = True
        self.transport = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._held_back.clear()
        self._held_back_bytes = 0


def _call_soon_flush(output: Output) -> None:
    output._loop.call_soon(output.flush)
