"""Exceptions a task raises to steer its own retries."""

from __future__ import annotations


class Retry(Exception):
    """Raise from a task to run it again after ``delay`` seconds.

    The attempt counts against ``max_attempts`` like any failure; once none
    are left, the job fails for good with this exception's message.
    """

    def __init__(self, delay: float = 0.0, message: str = "") -> None:
        super().__init__(message or f"retry requested in {delay:g}s")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.delay = delay
