"""The failed state of storage: what failed, who is told, and when to try again.

A failure is a value (:class:`~broker.durability.StorageFailure`), not an
exception: it is logged once per change (critical when storage fails, a
warning when the cause changes, info when it works again), every listener
hears of each change, and the recovery is retried on the shared backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from broker.durability import FailureListener, StorageFailure
from protocol.backoff import backoff_delay

log = logging.getLogger("broker.journal")


def describe_error(error: BaseException) -> str:
    """The cause in words: ``"no space left on device"`` for ENOSPC."""
    if isinstance(error, OSError) and error.errno is not None:
        text = os.strerror(error.errno)
    else:
        text = str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


class FailureState:
    def __init__(self, retry_base: float, retry_cap: float) -> None:
        self.current: StorageFailure | None = None
        self.listeners: list[FailureListener] = []
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._attempts = 0
        self._timer: asyncio.TimerHandle | None = None

    def fail(self, operation: str, error: BaseException) -> None:
        self.set(StorageFailure(operation, describe_error(error), time.time()))

    def set(self, failure: StorageFailure | None) -> None:
        """Record a change of state; the same cause again is no change."""
        previous = self.current
        if failure is None:
            if previous is None:
                return
            self._attempts = 0
            log.info(
                "storage works again after %.1f s (%s): every change is on disk",
                time.time() - previous.since,
                previous.describe(),
            )
        elif previous is None:
            log.critical(
                "%s; refusing new work and retrying until a new snapshot can be written",
                failure.describe(),
            )
        elif previous.cause == failure.cause:
            return  # the same failure, still there
        else:
            log.warning("%s (was: %s)", failure.describe(), previous.cause)
        self.current = failure
        for listener in list(self.listeners):
            try:
                listener(failure)
            except Exception:
                log.exception("a storage failure listener failed")

    def as_dict(self) -> dict[str, Any] | None:
        """For ``stats``: None while storage works."""
        failure = self.current
        if failure is None:
            return None
        return {"operation": failure.operation, "cause": failure.cause, "since": failure.since}

    def retry_later(self, loop: asyncio.AbstractEventLoop, retry: Callable[[], None]) -> None:
        """Call ``retry`` after the next backoff delay (unless one is already pending)."""
        if self._timer is not None:
            return
        self._attempts += 1

        def fire() -> None:
            self._timer = None
            retry()

        delay = backoff_delay(self._attempts, self._retry_base, self._retry_cap)
        self._timer = loop.call_later(delay, fire)

    def cancel_retry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
