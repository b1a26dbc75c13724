"""A worker's slots, prefetch and credit, without I/O: what to start, hand back, credit.

The runtime (:mod:`worker.runtime`) owns the connection and the asyncio
tasks; this object owns the numbers and decides. It is generic in the job
object the runtime keeps, so the unit tests drive it with plain strings.

- ``concurrency`` jobs execute at once; ``prefetch`` more may be held,
  waiting for a slot in arrival order, so that a freed slot never waits a
  round trip for its next job. At the broker all held jobs count as running.
- Credit: the worker may hold at most ``concurrency + prefetch`` jobs. On a
  (re)connection it announces what it can still take; after that every slot
  freed is owed back, and the slots freed in one loop turn go out as one
  ``READY n`` (:meth:`Slots.take_credit`).
- Prefetch can change while the worker runs (its automatic prefetch does):
  credit granted is never taken back, so a cut is paid off by keeping freed
  slots (:meth:`Slots.set_prefetch`).
- Stopping: no new job starts and no credit goes out; jobs waiting for a slot
  are handed back at once (``RELEASE``), executing ones get the grace period.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Generic, TypeVar

J = TypeVar("J")


class StopReason(Enum):
    """Why the worker stopped a job it held before the job's task finished."""

    # The broker took it back (cancelled, or its lease was lost): report nothing.
    REVOKED = "revoked"
    # The worker is stopping: hand it back (RELEASE), its attempt uncounted.
    SHUTDOWN = "shutdown"
    # The connection dropped: the broker requeues it by itself; send nothing.
    LOST = "lost"


class Arrival(Enum):
    """What to do with a job the broker delivered."""

    START = "start"  # a slot was free: it is taken, run the job now
    WAIT = "wait"  # held, waiting for a slot
    HAND_BACK = "hand back"  # the worker is stopping: RELEASE it, it is not held


class Slots(Generic[J]):
    """The jobs a worker holds (by job id) and the credit it owes the broker."""

    def __init__(self, concurrency: int, prefetch: int = 0) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch < 0:
            raise ValueError("prefetch must be at least 0")
        self.concurrency = concurrency
        self.prefetch = prefetch
        # Every job held, executing or waiting for a slot, by job id.
        self._held: dict[str, J] = {}
        self._waiting: deque[tuple[str, J]] = deque()
        # Tasks executing, including a superseded attempt still winding down.
        self.executing = 0
        # Slots freed and not yet credited back with a READY.
        self._owed = 0
        # Credit announced to the broker and not yet used by a delivery.
        self.outstanding = 0
        # Slots to keep when freed, not credit back: prefetch was cut by more
        # than the credit still owed (see set_prefetch).
        self._surplus = 0
        self._stopping = False

    @property
    def capacity(self) -> int:
        """The most jobs held at once: ``concurrency + prefetch``."""
        return self.concurrency + self.prefetch

    @property
    def surplus(self) -> int:
        """Slots to keep rather than credit back when freed (prefetch was cut)."""
        return self._surplus

    @property
    def stopping(self) -> bool:
        return self._stopping

    def __len__(self) -> int:
        return len(self._held)

    def get(self, job_id: str) -> J | None:
        return self._held.get(job_id)

    def held(self) -> list[J]:
        """Every job held, executing or waiting."""
        return list(self._held.values())

    def held_ids(self) -> list[str]:
        return list(self._held)

    def waiting(self) -> list[J]:
        """The jobs waiting for a slot, longest-waiting first."""
        return [job for _, job in self._waiting]

    @property
    def credit_owed(self) -> int:
        """Slots freed since the last READY (none once stopping)."""
        return 0 if self._stopping else self._owed

    # -- the connection ------------------------------------------------------------

    def connected(self) -> int:
        """A new connection: the credit to announce in its first READY (may be 0).

        Jobs still held from an earlier connection keep their slots until they end.
        """
        self._owed = 0
        self._surplus = 0
        self.outstanding = 0 if self._stopping else max(0, self.capacity - len(self._held))
        return self.outstanding

    def set_prefetch(self, prefetch: int) -> None:
        """Change how many jobs may wait for a slot (the worker's automatic prefetch).

        More: the new room is owed to the broker at once. Fewer: credit not
        yet sent is withheld, and if that is not enough, slots freed later
        are kept rather than credited back, until the cut is paid off (credit
        sent cannot be taken back).
        """
        if prefetch < 0:
            raise ValueError("prefetch must be at least 0")
        change = prefetch - self.prefetch
        self.prefetch = prefetch
        if change > 0:
            kept = min(change, self._surplus)
            self._surplus -= kept
            self._owed += change - kept
        elif change < 0:
            withheld = min(-change, self._owed)
            self._owed -= withheld
            self._surplus += -change - withheld

    def _free_slot(self) -> None:
        if self._surplus:
            self._surplus -= 1
        else:
            self._owed += 1

    def take_credit(self) -> int:
        """The ``n`` of the READY to send now (0: send none); the debt is paid."""
        owed = self.credit_owed
        self._owed = 0
        self.outstanding += owed
        return owed

    # -- jobs ------------------------------------------------------------------------

    def arrive(self, job_id: str, job: J) -> Arrival:
        """A delivery. A job of the same id held already is replaced: the caller
        stops that older attempt (``REVOKED``) before calling this."""
        self.outstanding = max(0, self.outstanding - 1)
        if self._stopping:
            return Arrival.HAND_BACK
        self._held[job_id] = job
        if self.executing < self.concurrency:
            self.executing += 1
            return Arrival.START
        self._waiting.append((job_id, job))
        return Arrival.WAIT

    def ended(self, job_id: str, job: J, reason: StopReason | None = None) -> None:
        """A started job's task ended, however: its slot is free, and owed back
        unless the worker is stopping or the connection was lost."""
        if self._held.get(job_id) is job:
            del self._held[job_id]
        self.executing -= 1
        if reason is not StopReason.LOST and not self._stopping:
            self._free_slot()

    def start_next(self) -> J | None:
        """The job that has waited longest, if a slot is free: its slot is taken."""
        if self._stopping or not self._waiting or self.executing >= self.concurrency:
            return None
        _, job = self._waiting.popleft()
        self.executing += 1
        return job

    def drop(self, job_id: str, job: J, reason: StopReason) -> bool:
        """A job waiting for a slot is stopped before it started: no longer held.

        True when it must be handed back (``RELEASE``): on ``SHUTDOWN``. A
        revoked one's slot is owed back (unless stopping); a lost one needs nothing.
        False too when the job was not waiting.
        """
        for index, (_, waiting) in enumerate(self._waiting):
            if waiting is job:
                del self._waiting[index]
                break
        else:
            return False
        if self._held.get(job_id) is job:
            del self._held[job_id]
        if reason is StopReason.SHUTDOWN:
            return True
        if reason is StopReason.REVOKED and not self._stopping:
            self._free_slot()
        return False

    def hand_back_waiting(self) -> list[J]:
        """Every job waiting for a slot, in arrival order: no longer held, to be
        handed back (``RELEASE``); their slots are free again."""
        handed_back = []
        for job_id, job in self._waiting:
            if self._held.get(job_id) is job:
                del self._held[job_id]
            handed_back.append(job)
            if not self._stopping:
                self._free_slot()
        self._waiting.clear()
        return handed_back

    def stop(self) -> list[J]:
        """Begin a graceful stop: nothing starts or is credited from now on.

        Returns the jobs that were waiting for a slot, in arrival order: no
        longer held, to be handed back at once.
        """
        self._stopping = True
        return self.hand_back_waiting()
