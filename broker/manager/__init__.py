"""The job lifecycle: enqueue, reserve, ack, fail, retry, cancel, reap expired.

:class:`JobManager` is a plain synchronous object. It owns every job, the
ready queues, the delayed and lease timers and the finished-job results. It
knows nothing of sockets or event loops: time is passed in as ``now``
(seconds since the epoch), and its effects on the outside world go through
the :class:`Consumer` sinks, the :class:`JournalSink` and the
``on_finished`` callback the server gives it. That makes every transition
unit-testable with plain calls.

One file per concern, combined into the one :class:`JobManager` facade:

- ``config``: ManagerConfig, Consumer, the Sink and JournalSink interfaces;
- ``state``: the tables every concern shares (read this first);
- ``dispatch``: ready queues (by queue and task), waiting consumers and
  their credit, delayed jobs, pausing (the hot path);
- ``flow``: paused queues, and the journaled broker settings;
- ``limits``: global max_running and rates per queue and per task;
- ``dependencies``: jobs waiting for their parents (``depends_on``);
- ``unique``: one job per ``unique_key``;
- ``schedules``: periodic jobs, each tick fired once;
- ``leases``: holding a job, heartbeats, lease expiry, losing a job;
- ``retention``: finished jobs (results TTL, ``max_results``), the failed
  list (retry, purge), forgetting idle queues;
- ``recovery``: taking over the jobs of a journal replay;
- ``jobmanager``: the facade: submit, the workers' reports, cancel, timers,
  stats.
"""

from broker.manager.config import (
    MAX_INTERNED_NAMES,
    MAX_QUEUES_KEPT,
    Consumer,
    JournalSink,
    ManagerConfig,
    QueueCounts,
    QueueFullError,
    Sink,
)
from broker.manager.dependencies import UnknownParentError
from broker.manager.dispatch import ReadyQueue
from broker.manager.jobmanager import JobManager
from broker.manager.metrics import Histogram, QueueMetrics
from broker.manager.schedules import Schedule

__all__ = [
    "MAX_INTERNED_NAMES",
    "MAX_QUEUES_KEPT",
    "Consumer",
    "Histogram",
    "JobManager",
    "JournalSink",
    "ManagerConfig",
    "QueueCounts",
    "QueueFullError",
    "QueueMetrics",
    "ReadyQueue",
    "Schedule",
    "Sink",
    "UnknownParentError",
]
