"""The one backoff formula: retries of failed jobs, reconnecting peers."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait before try number ``attempt + 1`` (``attempt`` >= 1 tries made so far).

    Exponential (``base`` doubling per try) up to ``cap``, then drawn
    uniformly between half and all of that, so peers that failed together
    do not come back together.
    """
    ceiling = min(cap, base * 2 ** min(max(attempt, 1) - 1, 60))
    jitter = (rng or random).uniform(0.5, 1.0)
    return float(ceiling * jitter)


class Reconnect:
    """When a peer tries its next connection: at once after one that worked,
    with :func:`backoff_delay` only while attempts fail.

    Shared by the client and the worker, so that both come back as soon as a
    restarted broker listens, and neither hammers one that stays down. Given
    several addresses, they count a round of them as one attempt
    (:mod:`protocol.peers`).
    """

    __slots__ = ("base", "cap", "failures", "rng")

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        # Attempts that failed since the last connection that worked.
        self.failures = 0

    def delay(self) -> float:
        """The wait before the next attempt: 0 unless the last one failed."""
        if not self.failures:
            return 0.0
        return backoff_delay(self.failures, self.base, self.cap, self.rng)

    def failed(self) -> float:
        """An attempt failed: count it, and return the wait before the next."""
        self.failures += 1
        return self.delay()

    def connected(self) -> None:
        self.failures = 0
