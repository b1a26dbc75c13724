"""``/metrics``: a ``prometheus_client`` collector that reads the broker's state at scrape time.

Nothing is counted twice: the manager keeps its per-queue counters and
histograms (``broker/manager/metrics.py``) for its own reasons, and this
collector only turns them into metric families when Prometheus asks. It is
registered in its own :class:`~prometheus_client.CollectorRegistry` (no
global registry, no background thread), so two brokers in one process do
not mix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker.http.api import readiness
from broker.manager.metrics import Histogram
from broker.state import BrokerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def jobwire_version() -> str:
    try:
        return version("jobwire")
    except PackageNotFoundError:
        return "unknown"


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


class BrokerCollector(Collector):
    def __init__(
        self,
        state: BrokerState,
        fsync_histogram: Callable[[], Histogram | None] = lambda: None,
    ) -> None:
        self.state = state
        self.fsync_histogram = fsync_histogram
        self.version = jobwire_version()

    def collect(self) -> Iterator[Metric]:
        state = self.state
        manager = state.manager
        per_queue = sorted(manager.metrics.items())

        submitted = CounterMetricFamily(
            "jobwire_jobs_submitted", "Jobs accepted, by queue.", labels=["queue"]
        )
        finished = CounterMetricFamily(
            "jobwire_jobs_finished",
            "Jobs finished for good, by queue and outcome.",
            labels=["queue", "outcome"],
        )
        retried = CounterMetricFamily(
            "jobwire_jobs_retried", "Failed attempts scheduled to run again.", labels=["queue"]
        )
        expired = CounterMetricFamily(
            "jobwire_leases_expired", "Leases that ran out (the worker stalled).", labels=["queue"]
        )
        requeued = CounterMetricFamily(
            "jobwire_jobs_requeued",
            "Jobs put back in their queue: lease_expired, worker_lost, released.",
            labels=["queue", "reason"],
        )
        wait = HistogramMetricFamily(
            "jobwire_job_wait_seconds", "From ready to started.", labels=["queue"]
        )
        run = HistogramMetricFamily(
            "jobwire_job_run_seconds", "From started to reported.", labels=["queue"]
        )
        for name, counts in per_queue:
            submitted.add_metric([name], counts.submitted)
            finished.add_metric([name, "succeeded"], counts.succeeded)
            finished.add_metric([name, "failed"], counts.failed)
            finished.add_metric([name, "cancelled"], counts.cancelled)
            retried.add_metric([name], counts.retried)
            expired.add_metric([name], counts.lease_expired)
            requeued.add_metric([name, "lease_expired"], counts.requeued_expired)
            requeued.add_metric([name, "worker_lost"], counts.requeued_lost)
            requeued.add_metric([name, "released"], counts.released)
            _histogram(wait, [name], counts.wait)
            _histogram(run, [name], counts.run)
        yield from (submitted, finished, retried, expired, requeued, wait, run)

        queue_jobs = GaugeMetricFamily(
            "jobwire_queue_jobs", "Unfinished jobs by queue and state.", labels=["queue", "state"]
        )
        for name, live in sorted(manager.queues.items())[:1000]:
            queue_jobs.add_metric([name, "waiting"], live.waiting)
            queue_jobs.add_metric([name, "queued"], live.queued)
            queue_jobs.add_metric([name, "delayed"], live.delayed)
            queue_jobs.add_metric([name, "running"], live.running)
        yield queue_jobs
        yield GaugeMetricFamily(
            "jobwire_failed_jobs", "Jobs on the failed list.", value=manager.failed_count
        )

        fsync = HistogramMetricFamily(
            "jobwire_journal_fsync_seconds", "How long each journal fsync took."
        )
        histogram = self.fsync_histogram()
        if histogram is not None:
            _histogram(fsync, [], histogram)
        yield fsync

        roles = {"client": 0, "worker": 0, "handshake": 0}
        for session in state.sessions:
            roles[session.role or "handshake"] = roles.get(session.role or "handshake", 0) + 1
        connections = GaugeMetricFamily(
            "jobwire_connections", "Open TCP connections by role.", labels=["role"]
        )
        for role, count in sorted(roles.items()):
            connections.add_metric([role], count)
        yield connections

        slots = GaugeMetricFamily(
            "jobwire_worker_slots",
            "Workers' slots: busy (holding a job) and free (credit not used).",
            labels=["state"],
        )
        slots.add_metric(["busy"], manager.running)
        slots.add_metric(["free"], sum(consumer.credit for consumer in manager.consumers))
        yield slots

        journal_bytes = 0
        if state.storage_stats is not None:
            journal_bytes = int(state.storage_stats().get("journal_bytes", 0))
        yield GaugeMetricFamily(
            "jobwire_journal_bytes", "Size of the current journal file.", value=journal_bytes
        )
        ready = GaugeMetricFamily("jobwire_ready", "1 when submits are accepted, else 0.")

        ready.add_metric([], 0 if readiness(state) else 1)
        yield ready
        yield GaugeMetricFamily(
            "jobwire_uptime_seconds",
            "Seconds since the broker started.",
            value=time.time() - state.started_at,
        )
        info = GaugeMetricFamily("jobwire_build_info", "The jobwire version.", labels=["version"])
        info.add_metric([self.version], 1)
        yield info


def make_registry(collector: BrokerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
