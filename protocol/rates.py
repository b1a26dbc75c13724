"""Rates as people write them: ``"100/s"``, ``"10/min"``, ``"500/5m"``, ``"2/h"``.

Shared by the client (to refuse a bad rate before sending it), the broker (which
checks it again) and the CLI. A rate is at most N starts in any window of
``period`` seconds.
"""

from __future__ import annotations

import re
from typing import Final

_UNITS: Final = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
MAX_RATE_COUNT: Final = 1_000_000
MAX_RATE_PERIOD: Final = 7 * 86400.0


def parse_rate(rate: str) -> tuple[int, float]:
    """``"10/min"`` -> ``(10, 60.0)``; raises :class:`ValueError` naming what is wrong."""
    match = _RATE.match(rate.lower())
    unit = _UNITS.get(match.group(3)) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"rate {rate!r}: expected COUNT/PERIOD such as '100/s', '10/min', '500/5m' or '2/h'"
        )
    count = int(match.group(1))
    period = float(match.group(2) or 1) * unit
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"rate {rate!r}: the count must be in 1..{MAX_RATE_COUNT}")
    if not 0 < period <= MAX_RATE_PERIOD:
        raise ValueError(f"rate {rate!r}: the period must be more than 0 and at most 7 days")
    return count, period
