"""The stream journal's bookkeeping, pure: records waiting, batches, marks, the lease clock.

Records are counted from the start, as the file journal counts them:
``appended`` (handed to the journal), ``durable`` (in a message the stream
acknowledged). Records wait in :class:`PublishQueue` until the one batch in
flight is acknowledged; the next batch then takes all of them (up to the
largest message the servers accept), so a slow round trip makes batches
larger, not replies later: the group commit of the file journal's
``--fsync always``.

:class:`LeaseClock` is the leader's own idea of how long its lease is
valid: measured from when it *sent* the renewal, so it always ends before
the lease the servers keep (which runs from when they received it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Batch:
    """One message: ``records`` whole encoded records, durable up to mark ``upto``."""

    number: int
    payload: bytes
    records: int
    upto: int


class PublishQueue:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.appended = 0
        self.durable = 0
        self.batches = 0
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        # Records taken into a batch not yet acknowledged.
        self._in_flight = 0
        self._waiters: list[tuple[int, Callable[[], None]]] = []

    def append(self, record: bytes) -> None:
        self._waiting.append(record)
        self._waiting_bytes += len(record)
        self.appended += 1

    @property
    def waiting(self) -> int:
        """Records appended and not yet in a batch."""
        return len(self._waiting)

    def next_batch(self) -> Batch | None:
        """The waiting records, as many as fit ``max_bytes`` (at least one), as a batch."""
        if not self._waiting:
            return None
        assert self._in_flight == 0, "one batch at a time"
        taken = 0
        size = 0
        for record in self._waiting:
            if taken and size + len(record) > self.max_bytes:
                break
            size += len(record)
            taken += 1
        records = self._waiting[:taken]
        del self._waiting[:taken]
        self._waiting_bytes -= size
        self._in_flight = taken
        self.batches += 1
        payload = b"".join(records)
        return Batch(self.batches, payload, taken, self.durable + taken)

    def acknowledged(self, batch: Batch) -> list[Callable[[], None]]:
        """The stream has ``batch``: the callbacks whose marks are now durable."""
        self._in_flight = 0
        self.durable = batch.upto
        return self._ready()

    def when_durable(self, mark: int, callback: Callable[[], None]) -> bool:
        """Keep ``callback`` for when ``mark`` is durable; False (not kept) if it already is."""
        if mark <= self.durable:
            return False
        self._waiters.append((mark, callback))
        return True

    def _ready(self) -> list[Callable[[], None]]:
        if not self._waiters:
            return []
        durable = self.durable
        ready = [callback for mark, callback in self._waiters if mark <= durable]
        self._waiters = [(mark, cb) for mark, cb in self._waiters if mark > durable]
        return ready

    def drop_waiters(self) -> int:
        """Forget every waiter (fenced: what they wait for will never be durable here)."""
        count = len(self._waiters)
        self._waiters = []
        return count


class LeaseClock:
    """Until when (on the monotonic clock) this node may act as the leader."""

    def __init__(self, ttl: float, margin: float = 0.1) -> None:
        self.ttl = ttl
        # Kept short of the servers' TTL by this share, for clocks that run apart.
        self.margin = margin
        self.valid_until = float("-inf")

    def renewed(self, sent_at: float) -> None:
        """A renewal (or the claim) sent at ``sent_at`` succeeded."""
        self.valid_until = max(self.valid_until, sent_at + self.ttl * (1.0 - self.margin))

    def valid(self, now: float) -> bool:
        return now < self.valid_until

    def left(self, now: float) -> float:
        return self.valid_until - now
