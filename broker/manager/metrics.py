"""Per-queue counters and histograms, kept by the manager for ``/metrics`` and the status page.

Cheap on the hot path by construction: one :class:`QueueMetrics` object per
queue (a dict lookup, then attribute increments), and histograms as fixed
bucket arrays updated with :func:`bisect.bisect_left` (no allocation). The
labels stay bounded: past ``MAX_QUEUES_MEASURED`` queues, the rest share
the ``OTHER_QUEUES`` entry. Nothing here is cleared when a queue goes idle,
so the counters only grow, as Prometheus expects.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds: from 1 ms to 5 minutes, as Prometheus' default buckets are, a little wider.
TIME_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
MAX_QUEUES_MEASURED = 1000
OTHER_QUEUES = "_other"


class Histogram:
    """Observations counted into fixed buckets (``le`` bounds, then +Inf), and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, ending with ``+Inf``, as Prometheus wants them."""
        pairs: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            pairs.append((repr(bound), total))
        pairs.append(("+Inf", total + self.counts[-1]))
        return pairs


class QueueMetrics:
    """What happened on one queue since the broker started."""

    __slots__ = (
        "cancelled",
        "failed",
        "lease_expired",
        "released",
        "requeued_expired",
        "requeued_lost",
        "retried",
        "run",
        "submitted",
        "succeeded",
        "wait",
    )

    def __init__(self) -> None:
        self.submitted = 0
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.retried = 0
        self.lease_expired = 0
        # Requeued by reason: the lease ran out, the worker went away, handed back.
        self.requeued_expired = 0
        self.requeued_lost = 0
        self.released = 0
        # Ready to started; started to finished (seconds).
        self.wait = Histogram()
        self.run = Histogram()

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled


class MetricsTable(dict[str, QueueMetrics]):
    """Queue name -> :class:`QueueMetrics`, at most ``MAX_QUEUES_MEASURED`` names and ``_other``."""

    def of(self, queue: str) -> QueueMetrics:
        metrics = self.get(queue)
        if metrics is None:
            if len(self) >= MAX_QUEUES_MEASURED:
                queue = OTHER_QUEUES
                metrics = self.get(queue)
            if metrics is None:
                metrics = self[queue] = QueueMetrics()
        return metrics
