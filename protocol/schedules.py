"""What makes a schedule valid, checked where it is declared (``@task(cron=...)``,
``Client.schedule``) and again by the broker that owns it.

A schedule fires a task at each tick of a cron expression (five fields,
parsed by cronsim, in an optional IANA time zone) or every N seconds.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

MIN_EVERY: Final = 1.0


def check_schedule(name: str, cron: str | None, every: float | None, timezone: str | None) -> None:
    """Raise :class:`ValueError` saying what is wrong with this schedule, if anything."""
    if (cron is None) == (every is None):
        raise ValueError(f"schedule {name!r}: give exactly one of cron and every")
    if every is not None and not MIN_EVERY <= every < math.inf:
        raise ValueError(f"schedule {name!r}: every must be at least {MIN_EVERY:g} second")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"schedule {name!r}: unknown time zone {timezone!r}") from None
    if cron is not None:
        try:
            CronSim(cron, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"schedule {name!r}: bad cron expression {cron!r}: {exc}") from None
