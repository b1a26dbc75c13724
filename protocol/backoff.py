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
