"""``python -m bench.manager_micro [--n N] [--runs R]``: the manager's hot path, in process.

No sockets, no event loop: a :class:`~broker.manager.JobManager` and one
consumer whose sink does nothing, so the figures are the manager's own cost
per job. Two shapes, each the best of ``--runs`` runs, in µs per job:

- ``backlog``: submit N jobs with nobody waiting (each goes to its ready
  queue), then grant N credit at once (``_feed`` takes them all), then ack
  each;
- ``streaming``: the consumer waits with credit; each submitted job goes
  straight to it (``_make_ready`` -> ``_reserve``), is acked, and one credit
  is granted back, as a worker with prefetch does.

Compare figures taken on the same machine one after the other; a difference
of a few percent is noise.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable, Sequence

from broker.jobs import Job
from broker.manager import Consumer, JobManager, ManagerConfig
from protocol.job_spec import JobSpec

DEFAULT_N = 200_000
DEFAULT_RUNS = 5


class NullSink:
    def deliver(self, job: Job) -> None:
        pass

    def revoke(self, job: Job) -> None:
        pass


def _fresh() -> tuple[JobManager, Consumer]:
    manager = JobManager(ManagerConfig(max_results=1_000_000), rng=random.Random(0), id_prefix="b")
    consumer = Consumer(NullSink(), ["default"], "bench")
    manager.attach(consumer)
    return manager, consumer


def backlog(n: int) -> float:
    """Seconds for n jobs: submit all, grant all, ack each."""
    manager, consumer = _fresh()
    specs = [JobSpec("task", b"\x92\x90\x80") for _ in range(n)]
    now = 1000.0
    submit, ack = manager.submit, manager.ack
    start = time.perf_counter()
    for spec in specs:
        submit(spec, now)
    manager.grant(consumer, n, now)
    for job_id in list(consumer.jobs):
        ack(consumer, job_id, 1, b"\xc0", now)
    elapsed = time.perf_counter() - start
    assert manager.counters["succeeded"] == n and manager.unfinished == 0
    return elapsed


def streaming(n: int) -> float:
    """Seconds for n jobs: each submitted to a waiting consumer, acked, one credit back."""
    manager, consumer = _fresh()
    specs = [JobSpec("task", b"\x92\x90\x80") for _ in range(n)]
    now = 1000.0
    submit, ack, grant = manager.submit, manager.ack, manager.grant
    grant(consumer, 1, now)
    start = time.perf_counter()
    for spec in specs:
        job, _ = submit(spec, now)
        ack(consumer, job.id, 1, b"\xc0", now)
        grant(consumer, 1, now)
    elapsed = time.perf_counter() - start
    assert manager.counters["succeeded"] == n and manager.unfinished == 0
    return elapsed


def best_of(runs: int, n: int, shape: Callable[[int], float]) -> float:
    """The best run, in µs per job (the collector runs between runs, not during)."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            best = min(best, shape(n))
        finally:
            gc.enable()
    return best / n * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.manager_micro", description=__doc__)
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"jobs per run (default {DEFAULT_N:,})")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs per figure, best kept")
    args = p.parse_args(argv)
    for name, shape in (("backlog", backlog), ("streaming", streaming)):
        print(f"{name:10} {best_of(args.runs, args.n, shape):6.2f} µs/job")


if __name__ == "__main__":
    main()
