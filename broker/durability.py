"""What the broker's sessions and server need of storage: a durability gate.

A reply that acknowledges a change must not leave before the change is as
durable as the configured storage promises. The gate counts records: a
session notes the gate's ``appended`` count when it queues a frame that
depends on changes made so far, and holds its output until
``is_durable(mark)``. Storage that can fail says so in ``failure``; the
broker then refuses new work (``STORAGE_FAILED``) but keeps answering reads.

:class:`Volatile` is the gate of a broker without a journal: every mark is
durable at once. The file journal (``broker.journal``) is the other one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StorageFailure:
    """Why storage cannot take records now.

    ``operation`` is what failed (``"write"``, ``"fsync"``, ``"snapshot"``),
    ``cause`` the reason in words (``"no space left on device"``). ``fatal``:
    retrying cannot help (the broker was fenced out by another writer); the
    broker must stop serving.
    """

    operation: str
    cause: str
    since: float
    fatal: bool = False

    def describe(self) -> str:
        return f"storage failed: {self.operation}: {self.cause}"


FailureListener = Callable[[StorageFailure | None], None]


class DurabilityGate(Protocol):
    @property
    def appended(self) -> int:
        """Records appended so far: the mark of everything changed until now."""
        ...

    @property
    def failure(self) -> StorageFailure | None:
        """Set while storage cannot take records; None when it works."""
        ...

    def is_durable(self, mark: int) -> bool:
        """Whether the first ``mark`` records are as durable as promised (may write them)."""
        ...

    def when_durable(self, mark: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) once the first ``mark`` records are durable."""
        ...

    def add_failure_listener(self, listener: FailureListener) -> None:
        """Call ``listener`` on every change of :attr:`failure` (set, changed, cleared)."""
        ...


class Volatile:
    """No storage: everything is "durable" at once, and nothing can fail."""

    appended = 0
    failure: StorageFailure | None = None

    def is_durable(self, mark: int) -> bool:
        return True

    def when_durable(self, mark: int, callback: Callable[[], None]) -> None:
        callback()

    def add_failure_listener(self, listener: FailureListener) -> None:
        pass
