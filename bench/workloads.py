"""The workloads: each run starts a fresh broker, measures one thing, and stops everything.

A workload's ``run`` coroutine gets a :class:`Run` (the broker's address and
PID, N, a way to start workers) and returns a :class:`Sample`: its figures by
key, plus any extra numbers worth keeping in the JSON. The broker's command
line flags are the workload's ``broker_args``, so a variant with other flags
(``--data-dir {tmpdir} --fsync always``) is one more :class:`Workload` line;
``{tmpdir}`` becomes a fresh temporary directory for each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import BrokerProc, FaninProc, Proc, ProcessFailed, WorkerProc, progress
from bench.tasks import CPU, NOOP
from broker import Client, Job
from harness.nats import NatsCluster
from harness.processes import STARTUP_TIMEOUT

Sample = dict[str, float]

# Producers keep this many individual submits in flight (W1, W2b).
IN_FLIGHT = 50
SUBMIT_MANY_BATCH = 1_000
W4_WARMUP = 200
W4_ROUND_TRIPS = 2_000
W5_BATCH = 10_000
W6_HELPER_PROCESSES = 5
WORKER_WAIT_TIMEOUT = 60.0
STATS_POLL_INTERVAL = 0.005
# W1m: how often the scraper fetches /metrics (Prometheus' usual is 15 s; this is harsher).
SCRAPE_INTERVAL = 1.0
# W1L, W3L: global limits far above what a run reaches (the rate's count is the
# protocol's maximum), so the limit checks run on every dispatch but never bind.
UNBINDING_MAX_RUNNING = 10_000
UNBINDING_RATE = "1000000/s"


@dataclass(frozen=True, slots=True)
class Settings:
    n: int
    runs: int
    quick: bool


@dataclass(frozen=True, slots=True)
class Figure:
    """One number a workload reports: ``key`` in its samples, a label and a unit."""

    key: str
    label: str
    unit: str


@dataclass(slots=True)
class Run:
    """One run of one workload: a fresh broker, and the processes the run starts."""

    broker: BrokerProc
    n: int
    worker_profile: Path | None = None
    worker_args: tuple[str, ...] = ()
    procs: list[Proc] = field(default_factory=list)
    # The broker's flags, for a run that starts another (a cluster's standby).
    broker_args: tuple[str, ...] = ()
    # What workers are told to connect to, if not the broker's address (several nodes).
    connect: str | None = None
    # How far the run got ("submitted", "results"): reported if it times out.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.broker.address

    def start_worker(self) -> WorkerProc:
        profile_to = self.worker_profile
        if profile_to is not None and any(isinstance(p, WorkerProc) for p in self.procs):
            profile_to = None  # only the first worker of a run is profiled
        worker = WorkerProc(
            self.connect or self.address, profile_to=profile_to, extra=self.worker_args
        )
        self.procs.append(worker)
        return worker

    def start_fanin(self, count: int) -> FaninProc:
        helper = FaninProc(self.address, count)
        self.procs.append(helper)
        return helper

    def check_alive(self) -> None:
        self.broker.check_alive()
        for proc in self.procs:
            proc.check_alive()


@dataclass(frozen=True, slots=True)
class Workload:
    id: str
    title: str
    n: int
    run: Callable[[Run], Awaitable[Sample]]
    figures: tuple[Figure, ...]
    broker_args: tuple[str, ...] = ()
    # Seconds one run may take, broker start to stop.
    timeout: float = 120.0
    # Set instead of running: the reason the row has no figure (e.g. a missing flag).
    unavailable: str | None = None
    # Environment for the run (the broker, the workers and the bench's clients).
    env: tuple[tuple[str, str], ...] = ()
    # Flags added to every `python -m worker` of the run.
    worker_args: tuple[str, ...] = ()
    # Run against a shard on a fresh three-node NATS cluster: ``{nats}`` in
    # ``broker_args`` becomes its URLs (bench/cluster.py).
    nats: bool = False
    # ... whose servers fsync every write (jetstream { sync_interval: always }).
    nats_sync_always: bool = False


# -- helpers ------------------------------------------------------------------------


def job_spec(i: int) -> dict[str, Any]:
    return {"task": NOOP, "args": [{"i": i}]}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


async def submit_batches(
    client: Client, n: int, batch: int, counts: dict[str, int], *, keep: bool = True
) -> list[Job]:
    """Submit ``n`` jobs with ``submit_many``, ``batch`` at a time, one batch after another.

    Returns the jobs' handles, unless ``keep`` is false.
    """
    jobs: list[Job] = []
    counts["submitted"] = 0
    for start in range(0, n, batch):
        submitted = await client.submit_many(
            [job_spec(i) for i in range(start, min(n, start + batch))]
        )
        counts["submitted"] += len(submitted)
        if keep:
            jobs += submitted
    return jobs


async def submit_individually(
    client: Client, n: int, in_flight: int, counts: dict[str, int] | None = None
) -> list[Job]:
    """Submit ``n`` jobs with one ``await client.submit()`` each, ``in_flight`` at a time."""
    jobs: list[Job] = []
    indices = iter(range(n))
    counts = counts if counts is not None else {}
    counts.setdefault("submitted", 0)

    async def producer() -> None:
        for i in indices:  # shared: each producer takes the next index
            jobs.append(await client.submit(NOOP, [{"i": i}]))
            counts["submitted"] += 1

    await asyncio.gather(*(producer() for _ in range(in_flight)))
    return jobs


async def await_results(jobs: list[Job], counts: dict[str, int] | None = None) -> None:
    counts = counts if counts is not None else {}
    counts["results"] = 0
    for job in jobs:
        await job.result()
        counts["results"] += 1


async def wait_workers(client: Client, count: int, run: Run) -> float:
    """Poll the broker's stats until ``count`` workers are connected; return that moment."""
    async with asyncio.timeout(WORKER_WAIT_TIMEOUT):
        while True:
            stats = await client.stats()
            if stats["workers"] >= count:
                return time.perf_counter()
            run.check_alive()
            await asyncio.sleep(STATS_POLL_INTERVAL)


class Meter:
    """Wall time and CPU time (broker, workers, this process) over a measured section."""

    def __init__(self, run: Run, workers: list[Proc] | None = None) -> None:
        self.run = run
        self.workers = workers or []
        self.broker_cpu = run.broker.cpu_seconds()
        self.worker_cpu = sum(worker.cpu_seconds() for worker in self.workers)
        self.bench_cpu = time.process_time()
        self.began = time.perf_counter()

    def sample(self, jobs: int) -> Sample:
        """Throughput and CPU microseconds per job since the meter was made."""
        elapsed = time.perf_counter() - self.began
        sample: Sample = {
            "jobs_per_s": jobs / elapsed,
            "seconds": elapsed,
            "broker_cpu_us_per_job": (self.run.broker.cpu_seconds() - self.broker_cpu) / jobs * 1e6,
            "bench_cpu_us_per_job": (time.process_time() - self.bench_cpu) / jobs * 1e6,
        }
        if self.workers:
            worker_cpu = sum(worker.cpu_seconds() for worker in self.workers)
            sample["worker_cpu_us_per_job"] = (worker_cpu - self.worker_cpu) / jobs * 1e6
        return sample


# -- the workloads ----------------------------------------------------------------


async def end_to_end(run: Run) -> Sample:
    """W1: one worker; N no-op jobs submitted individually, 50 in flight; all results in."""
    worker = run.start_worker()
    async with Client(run.address, name="bench-w1") as client:
        await wait_workers(client, 1, run)
        meter = Meter(run, [worker])
        jobs = await submit_individually(client, run.n, IN_FLIGHT, run.counts)
        await await_results(jobs, run.counts)
        return meter.sample(run.n)


async def scrape_metrics(port: int, scrapes: list[int]) -> None:
    """GET /metrics every ``SCRAPE_INTERVAL`` seconds, as Prometheus would, until cancelled."""
    request = b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            reply = await reader.read()
        finally:
            writer.close()
        if not reply.startswith(b"HTTP/1.1 200 "):
            raise ProcessFailed(f"/metrics answered {reply[:80]!r}")
        scrapes.append(len(reply))
        await asyncio.sleep(SCRAPE_INTERVAL)


async def end_to_end_scraped(run: Run) -> Sample:
    """W1m: W1 while a scraper fetches the broker's /metrics every second."""
    line = run.broker.wait_for_line(r"http on \S+:\d+")
    port = int(line.rsplit(":", 1)[1])
    scrapes: list[int] = []
    scraper = asyncio.ensure_future(scrape_metrics(port, scrapes))
    try:
        sample = await end_to_end(run)
    finally:
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
    sample["scrapes"] = len(scrapes)
    return sample


async def submit_many_only(run: Run) -> Sample:
    """W2a: no worker; ``submit_many`` in batches of 1,000, one batch after another.

    With at least 100 batches, also the throughput and the broker's CPU time
    per job over the first and the last tenth of them: whether a job costs
    more when the broker already holds many.
    """
    batches = range(0, run.n, SUBMIT_MANY_BATCH)
    tenth = len(batches) // 10
    split = tenth >= 10
    marks: dict[int, tuple[float, float]] = {}
    async with Client(run.address, name="bench-w2a") as client:
        meter = Meter(run)
        for k, start in enumerate(batches):
            if split and k in (0, tenth, len(batches) - tenth):
                marks[k] = (time.perf_counter(), run.broker.cpu_seconds())
            specs = [job_spec(i) for i in range(start, min(run.n, start + SUBMIT_MANY_BATCH))]
            await client.submit_many(specs)
            run.counts["submitted"] = run.counts.get("submitted", 0) + len(specs)
        sample = meter.sample(run.n)
        marks[len(batches)] = (time.perf_counter(), run.broker.cpu_seconds())
    if split:
        jobs = tenth * SUBMIT_MANY_BATCH
        for name, first, last in (
            ("first_tenth", 0, tenth),
            ("last_tenth", len(batches) - tenth, len(batches)),
        ):
            (wall0, cpu0), (wall1, cpu1) = marks[first], marks[last]
            sample[f"{name}_jobs_per_s"] = jobs / (wall1 - wall0)
            sample[f"{name}_broker_cpu_us_per_job"] = (cpu1 - cpu0) / jobs * 1e6
    return sample


async def submit_only(run: Run) -> Sample:
    """W2b: no worker; individual ``await submit()`` calls, 50 in flight."""
    async with Client(run.address, name="bench-w2b") as client:
        meter = Meter(run)
        await submit_individually(client, run.n, IN_FLIGHT, run.counts)
        return meter.sample(run.n)


async def drain(run: Run) -> Sample:
    """W3: N jobs queued first, then one worker started; until every result is in."""
    async with Client(run.address, name="bench-w3") as client:
        jobs = await submit_batches(client, run.n, SUBMIT_MANY_BATCH, run.counts)
        spawned = time.perf_counter()
        worker = run.start_worker()
        await wait_workers(client, 1, run)
        meter = Meter(run, [worker])
        await await_results(jobs, run.counts)
        sample = meter.sample(run.n)
    finished = meter.began + sample["seconds"]
    sample["jobs_per_s_from_spawn"] = run.n / (finished - spawned)
    sample["worker_startup_s"] = meter.began - spawned
    return sample


async def set_unbinding_limits(client: Client) -> None:
    """Limits on the workloads' queue and task that no run comes near (W1L, W3L)."""
    for scope in ({"queue": "default"}, {"task": NOOP}):
        await client.set_limits(**scope, max_running=UNBINDING_MAX_RUNNING, rate=UNBINDING_RATE)
    limits = (await client.stats())["limits"]
    if not limits.get("queues", {}).get("default") or not limits.get("tasks", {}).get(NOOP):
        raise RuntimeError(f"the broker did not keep the limits: {limits}")


def limited(inner: Callable[[Run], Awaitable[Sample]]) -> Callable[[Run], Awaitable[Sample]]:
    """W1L, W3L: ``inner`` after :func:`set_unbinding_limits`, before any job is submitted."""

    async def run_limited(run: Run) -> Sample:
        async with Client(run.address, name="bench-limits") as client:
            await set_unbinding_limits(client)
        return await inner(run)

    return run_limited


async def end_to_end_dependent(run: Run) -> Sample:
    """W1D: W1 where job 2k+1 depends on job 2k: each of the 50 producers takes the
    next pair, submits the parent, then the child with ``depends_on=[parent]``."""
    worker = run.start_worker()
    jobs: list[Job] = []
    pairs = iter(range(0, run.n, 2))
    run.counts["submitted"] = 0

    async def producer() -> None:
        for i in pairs:  # shared: each producer takes the next pair
            parent = await client.submit(NOOP, [{"i": i}])
            jobs.append(parent)
            run.counts["submitted"] += 1
            if i + 1 < run.n:
                jobs.append(await client.submit(NOOP, [{"i": i + 1}], depends_on=[parent]))
                run.counts["submitted"] += 1

    async with Client(run.address, name="bench-w1d") as client:
        await wait_workers(client, 1, run)
        meter = Meter(run, [worker])
        await asyncio.gather(*(producer() for _ in range(IN_FLIGHT)))
        await await_results(jobs, run.counts)
        sample = meter.sample(run.n)
        stats = await client.stats()
    check_all_succeeded(stats, run.n)
    return sample


def dependent_spec(i: int) -> dict[str, Any]:
    """W3D's jobs: 2k gets the id ``p2k``, and 2k+1 depends on it."""
    if i % 2 == 0:
        return {"task": NOOP, "args": [{"i": i}], "job_id": f"p{i}"}
    return {"task": NOOP, "args": [{"i": i}], "depends_on": [f"p{i - 1}"]}


def check_all_succeeded(stats: dict[str, Any], n: int) -> None:
    if stats.get("succeeded") != n:
        raise RuntimeError(f"the broker counts {stats.get('succeeded')} jobs succeeded, not {n}")


async def drain_dependent(run: Run) -> Sample:
    """W3D: W3 where job 2k+1 depends on job 2k, both in the same ``submit_many`` batch
    (batches of 1,000 keep every pair together); the children wait until their parent
    succeeds."""
    async with Client(run.address, name="bench-w3d") as client:
        jobs: list[Job] = []
        run.counts["submitted"] = 0
        for start in range(0, run.n, SUBMIT_MANY_BATCH):
            stop = min(run.n, start + SUBMIT_MANY_BATCH)
            jobs += await client.submit_many([dependent_spec(i) for i in range(start, stop)])
            run.counts["submitted"] = len(jobs)
        waiting = (await client.stats())["queues"]["default"]["waiting"]
        if waiting != run.n // 2:
            raise RuntimeError(f"{waiting} jobs waiting for a parent, expected {run.n // 2}")
        spawned = time.perf_counter()
        worker = run.start_worker()
        await wait_workers(client, 1, run)
        meter = Meter(run, [worker])
        await await_results(jobs, run.counts)
        sample = meter.sample(run.n)
        check_all_succeeded(await client.stats(), run.n)
    finished = meter.began + sample["seconds"]
    sample["jobs_per_s_from_spawn"] = run.n / (finished - spawned)
    sample["worker_startup_s"] = meter.began - spawned
    sample["waiting_before_worker"] = waiting
    return sample


async def round_trip(run: Run) -> Sample:
    """W4: one worker; one job at a time, submit then await its result."""
    run.start_worker()
    latencies: list[float] = []
    async with Client(run.address, name="bench-w4") as client:
        await wait_workers(client, 1, run)
        for i in range(W4_WARMUP + run.n):
            began = time.perf_counter()
            job = await client.submit(NOOP, [{"i": i}])
            await job.result()
            if i >= W4_WARMUP:
                latencies.append(time.perf_counter() - began)
            run.counts["results"] = i + 1
    return {
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "mean_ms": statistics.fmean(latencies) * 1e3,
    }


async def cpu_bound(run: Run) -> Sample:
    """W7: one worker (8 slots); N jobs of ``bench.tasks.cpu`` (~20 ms of pure Python)
    submitted at once; until every result is in."""
    worker = run.start_worker()
    async with Client(run.address, name="bench-w7") as client:
        await wait_workers(client, 1, run)
        meter = Meter(run, [worker])
        jobs = await client.submit_many([{"task": CPU} for _ in range(run.n)])
        run.counts["submitted"] = run.n
        await await_results(jobs, run.counts)
        return meter.sample(run.n)


async def memory(run: Run) -> Sample:
    """W5: the broker's RSS growth per queued job, N small jobs queued, no worker."""
    async with Client(run.address, name="bench-w5") as client:
        await client.ping()
        before = run.broker.rss_bytes()
        await submit_batches(client, run.n, W5_BATCH, run.counts, keep=False)
        stats = await client.stats()
        queued = stats["queues"]["default"]["queued"]
        if queued != run.n:
            raise RuntimeError(f"the broker holds {queued} queued jobs, expected {run.n}")
        after = run.broker.rss_bytes()
    return {
        "bytes_per_job": (after - before) / run.n,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
    }


def fan_in(worker_connections: int, producers: int) -> Callable[[Run], Awaitable[Sample]]:
    """W6: many worker connections (in helper processes) and many producer connections."""

    async def run_fan_in(run: Run) -> Sample:
        per_helper = math.ceil(worker_connections / W6_HELPER_PROCESSES)
        left = worker_connections
        while left > 0:
            run.start_fanin(min(per_helper, left))
            left -= per_helper
        # As many jobs in flight as there are worker slots.
        in_flight = max(1, worker_connections // producers)
        clients = [Client(run.address, name=f"bench-w6-{k}") for k in range(producers)]
        latencies: list[float] = []

        async def lane(client: Client, indices: Iterator[int]) -> None:
            for i in indices:
                began = time.perf_counter()
                job = await client.submit(NOOP, [{"i": i}])
                run.counts["submitted"] = run.counts.get("submitted", 0) + 1
                await job.result()
                latencies.append(time.perf_counter() - began)
                run.counts["results"] = len(latencies)

        try:
            await asyncio.gather(*(client.connect() for client in clients))
            await wait_workers(clients[0], worker_connections, run)
            lanes: list[Coroutine[Any, Any, None]] = []
            for k, client in enumerate(clients):
                indices = iter(range(k, run.n, producers))
                lanes.extend(lane(client, indices) for _ in range(in_flight))
            began = time.perf_counter()
            await asyncio.gather(*lanes)
            elapsed = time.perf_counter() - began
        finally:
            await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
        return {
            "jobs_per_s": run.n / elapsed,
            "p99_ms": percentile(latencies, 99) * 1e3,
            "p50_ms": percentile(latencies, 50) * 1e3,
            "worker_connections": worker_connections,
            "producers": producers,
            "in_flight": in_flight * producers,
        }

    return run_fan_in


# -- running ------------------------------------------------------------------------


async def run_once(
    workload: Workload,
    *,
    broker_profile: Path | None = None,
    worker_profile: Path | None = None,
) -> Sample:
    """One run: a fresh broker (with the workload's flags), the workload, everything stopped."""
    saved = {name: os.environ.get(name) for name, _ in workload.env}
    os.environ.update(dict(workload.env))
    try:
        return await _run_once(workload, broker_profile, worker_profile)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _run_once(
    workload: Workload, broker_profile: Path | None, worker_profile: Path | None
) -> Sample:
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-") as tmpdir:
        nats = (
            NatsCluster(Path(tmpdir) / "nats", sync_always=workload.nats_sync_always)
            if workload.nats
            else None
        )
        try:
            if nats is not None:
                nats.start()
            return await _run_on(workload, tmpdir, nats, broker_profile, worker_profile)
        finally:
            if nats is not None:
                nats.stop()


async def _run_on(
    workload: Workload,
    tmpdir: str,
    nats: NatsCluster | None,
    broker_profile: Path | None,
    worker_profile: Path | None,
) -> Sample:
    urls = nats.url_list if nats is not None else ""
    args = [arg.replace("{tmpdir}", tmpdir).replace("{nats}", urls) for arg in workload.broker_args]
    broker = BrokerProc(args, profile_to=broker_profile)
    if nats is not None:
        # It listens (answering NOT_LEADER) before it leads: wait for the broker proper.
        broker.wait_for_line(r"shard \S+: leading at", STARTUP_TIMEOUT)
        broker.wait_for_line(r"broker: listening on", STARTUP_TIMEOUT)
    run = Run(
        broker,
        workload.n,
        worker_profile=worker_profile,
        worker_args=workload.worker_args,
        broker_args=tuple(args),
    )
    try:
        async with asyncio.timeout(workload.timeout):
            return await workload.run(run)
    except TimeoutError as exc:
        raise WorkloadTimeout(
            f"timed out after {workload.timeout:g}s; {await post_mortem(run)}"
        ) from exc
    except Exception as exc:
        if not broker.alive():
            raise ProcessFailed(
                f"{type(exc).__name__}: {exc}; the broker exited "
                f"({broker.popen.returncode}):\n{broker.tail(10)}"
            ) from exc
        raise
    finally:
        for proc in reversed(run.procs):
            proc.stop()
        broker.stop()


class WorkloadTimeout(Exception):
    """A run did not finish within its workload's timeout."""


async def post_mortem(run: Run) -> str:
    """How far a run that timed out got, and what the broker says it holds."""
    parts = [", ".join(f"{key} {value:,}" for key, value in run.counts.items()) or "no progress"]
    for proc in [run.broker, *run.procs]:
        if not proc.alive():
            parts.append(f"{proc.name} (pid {proc.pid}) exited {proc.popen.returncode}")
    try:
        async with asyncio.timeout(5.0), Client(run.address, name="bench-post-mortem") as client:
            stats = await client.stats()
        keys = ("queues", "running", "workers", "clients", "submitted", "succeeded", "failed")
        parts.append("broker stats " + ", ".join(f"{k}={stats.get(k)}" for k in keys))
    except Exception as exc:
        parts.append(f"no broker stats ({type(exc).__name__}: {exc})")
    for proc in [run.broker, *run.procs]:
        tail = proc.tail(5)
        if tail:
            parts.append(f"{proc.name} (pid {proc.pid}) said:\n{tail}")
    return "; ".join(parts)


@dataclass(slots=True)
class Result:
    """A workload's outcome over all its runs."""

    workload: Workload
    samples: list[Sample]
    error: str | None = None

    def median(self, key: str) -> float | None:
        values = [sample[key] for sample in self.samples if key in sample]
        return statistics.median(values) if values else None


async def run_workload(workload: Workload, settings: Settings) -> Result:
    if workload.unavailable is not None:
        progress(f"{workload.id} {workload.title}: {workload.unavailable}")
        return Result(workload, [], None)
    samples: list[Sample] = []
    for k in range(settings.runs):
        progress(f"{workload.id} {workload.title}, N={workload.n:,}: run {k + 1}/{settings.runs}")
        try:
            sample = await run_once(workload)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, WorkloadTimeout):
                error = str(exc)
            progress(f"{workload.id} failed: {error}")
            return Result(workload, samples, error)
        samples.append(sample)
        progress(
            f"{workload.id}: "
            + ", ".join(f"{figure.key}={sample[figure.key]:,.2f}" for figure in workload.figures)
        )
    return Result(workload, samples)


# -- the suite ----------------------------------------------------------------------

THROUGHPUT = "jobs/s"
CPU_PER_JOB = "us/job"


def suite(settings: Settings, broker_help: str, only: set[str] | None = None) -> list[Workload]:
    """The workloads to run, in order, for these settings and this broker's flags."""
    n = settings.n
    quick = settings.quick
    big = 100_000 if quick else 1_000_000
    conns, producers = (50, 10) if quick else (500, 50)
    workloads = [
        Workload(
            "W1",
            "end to end",
            n,
            end_to_end,
            (
                Figure("jobs_per_s", "W1 end to end (1 worker, 50 in flight)", THROUGHPUT),
                Figure("broker_cpu_us_per_job", "W1 broker CPU per job", CPU_PER_JOB),
            ),
            timeout=60 + n * 0.005,
        ),
        Workload(
            "W1m",
            "end to end, /metrics scraped every second",
            n,
            end_to_end_scraped,
            (
                Figure("jobs_per_s", "W1 with /metrics scraped every second", THROUGHPUT),
                Figure("broker_cpu_us_per_job", "W1m broker CPU per job", CPU_PER_JOB),
            ),
            broker_args=("--http", "127.0.0.1:0"),
            timeout=60 + n * 0.005,
            unavailable=None if "--http" in broker_help else "not available (no --http)",
        ),
        Workload(
            "W2a",
            "submit_many, no worker",
            n,
            submit_many_only,
            (
                Figure("jobs_per_s", "W2a submit_many x1,000, no worker", THROUGHPUT),
                Figure("broker_cpu_us_per_job", "W2a broker CPU per job", CPU_PER_JOB),
            ),
            timeout=60 + n * 0.002,
        ),
    ]
    if not quick:
        workloads.append(
            Workload(
                "W2a-1M",
                "submit_many, no worker, 1M jobs",
                1_000_000,
                submit_many_only,
                (
                    Figure("jobs_per_s", "W2a submit_many x1,000, 1M jobs held", THROUGHPUT),
                    Figure("broker_cpu_us_per_job", "W2a 1M: broker CPU per job", CPU_PER_JOB),
                    Figure(
                        "first_tenth_broker_cpu_us_per_job",
                        "W2a 1M: broker CPU per job, first 100k",
                        CPU_PER_JOB,
                    ),
                    Figure(
                        "last_tenth_broker_cpu_us_per_job",
                        "W2a 1M: broker CPU per job, last 100k",
                        CPU_PER_JOB,
                    ),
                ),
                timeout=60 + 1_000_000 * 0.002,
            )
        )
    workloads += [
        Workload(
            "W2b",
            "submit, no worker",
            n,
            submit_only,
            (Figure("jobs_per_s", "W2b submit, 50 in flight, no worker", THROUGHPUT),),
            timeout=60 + n * 0.005,
        ),
        Workload(
            "W3",
            "drain",
            n,
            drain,
            (
                Figure("jobs_per_s", "W3 drain (from worker connected)", THROUGHPUT),
                Figure("jobs_per_s_from_spawn", "W3 drain (from worker process spawn)", THROUGHPUT),
                Figure("broker_cpu_us_per_job", "W3 broker CPU per job", CPU_PER_JOB),
            ),
            timeout=60 + n * 0.007,
        ),
        Workload(
            "W4",
            "round trip",
            W4_ROUND_TRIPS,
            round_trip,
            (
                Figure("p50_ms", "W4 round trip p50 (1 job at a time)", "ms"),
                Figure("p99_ms", "W4 round trip p99 (1 job at a time)", "ms"),
            ),
            timeout=120.0,
        ),
        Workload(
            "W5",
            "memory",
            big,
            memory,
            (Figure("bytes_per_job", "W5 broker RSS per queued job", "bytes/job"),),
            timeout=60 + big * 0.002,
        ),
        Workload(
            "W6",
            f"fan-in, {conns} worker connections, {producers} producers",
            n,
            fan_in(conns, producers),
            (
                Figure(
                    "jobs_per_s",
                    f"W6 fan-in ({conns} worker conns, {producers} producers)",
                    THROUGHPUT,
                ),
                Figure("p99_ms", "W6 fan-in round trip p99", "ms"),
            ),
            timeout=120 + n * 0.01,
        ),
    ]
    workloads += limits_and_dependencies(settings)
    workloads += durability(settings, broker_help)
    # Imported here: bench.cluster builds on this module.
    from bench.cluster import cluster_workloads  # noqa: PLC0415

    workloads += cluster_workloads(settings, broker_help)
    workloads += cpu_bound_workloads(settings)
    if only:
        workloads = [w for w in workloads if w.id in only or w.id.split("-")[0] in only]
    return workloads


def limits_and_dependencies(settings: Settings) -> list[Workload]:
    """W1 and W3 with global limits that never bind (L), and with half the jobs
    depending on the job before them (D): compare each with W1 and W3."""
    n = settings.n
    limits = "limits that never bind"
    parents = "half the jobs wait for a parent"
    variants: list[tuple[str, str, str, Callable[[Run], Awaitable[Sample]], float]] = [
        ("W1L", "end to end", limits, limited(end_to_end), 0.005),
        ("W1D", "end to end", parents, end_to_end_dependent, 0.005),
        ("W3L", "drain", limits, limited(drain), 0.007),
        ("W3D", "drain", parents, drain_dependent, 0.007),
    ]
    return [
        Workload(
            key,
            f"{base}, {label}",
            n,
            run,
            (
                Figure("jobs_per_s", f"{key} {base}, {label}", THROUGHPUT),
                Figure("broker_cpu_us_per_job", f"{key} broker CPU per job", CPU_PER_JOB),
            ),
            timeout=60 + n * per_job,
        )
        for key, base, label, run, per_job in variants
    ]


def durability(settings: Settings, broker_help: str) -> list[Workload]:
    """W2a against a broker with a data directory, per fsync mode, beside no data directory."""
    n = settings.n
    figure = "jobs_per_s"
    unit = THROUGHPUT
    timeout = 60 + n * 0.01
    if "--data-dir" not in broker_help:
        return [
            Workload(
                "W2d",
                "W2 with durability",
                n,
                submit_many_only,
                (Figure(figure, "W2 with durability (W2a, fsync modes)", unit),),
                unavailable="not available (no --data-dir)",
            )
        ]
    modes: list[tuple[str, tuple[str, ...]]] = [("none (no --data-dir)", ())]
    if "--fsync" in broker_help:
        for mode in ("always", "batch", "off"):
            modes.append((f"fsync={mode}", ("--data-dir", "{tmpdir}", "--fsync", mode)))
    else:
        modes.append(("--data-dir", ("--data-dir", "{tmpdir}")))
    return (
        [
            Workload(
                f"W2d-{k}",
                f"W2 with durability, {label}",
                n,
                submit_many_only,
                (Figure(figure, f"W2 with durability, W2a, {label}", unit),),
                broker_args=args,
                timeout=timeout,
            )
            for k, (label, args) in enumerate(modes)
        ]
        + secured(settings)
        + prefetched(settings)
    )


def cpu_bound_workloads(settings: Settings) -> list[Workload]:
    """W7: a CPU-bound task in threads (the GIL's one core), then in 1 and 2 processes."""
    n = 50 if settings.quick else 400
    variants = [("threads", ()), ("--processes 1", ("--processes", "1"))]
    variants.append(("--processes 2", ("--processes", "2")))
    return [
        Workload(
            f"W7-{k}",
            f"CPU-bound 20 ms task, {label}",
            n,
            cpu_bound,
            (Figure("jobs_per_s", f"W7 CPU-bound 20 ms task, {label}", THROUGHPUT),),
            timeout=60 + n * 0.1,
            worker_args=args,
        )
        for k, (label, args) in enumerate(variants)
    ]


def prefetched(settings: Settings) -> list[Workload]:
    """W1 and W3 with workers that take 56 jobs beyond their 8 slots (credit 64)."""
    args = ("--prefetch", "56")
    return [
        Workload(
            "W1p",
            "end to end, worker --prefetch 56",
            settings.n,
            end_to_end,
            (Figure("jobs_per_s", "W1 end to end, worker --prefetch 56", THROUGHPUT),),
            timeout=60 + settings.n * 0.005,
            worker_args=args,
        ),
        Workload(
            "W3p",
            "drain, worker --prefetch 56",
            settings.n,
            drain,
            (Figure("jobs_per_s", "W3 drain, worker --prefetch 56", THROUGHPUT),),
            timeout=60 + settings.n * 0.005,
            worker_args=args,
        ),
    ]


# A token for the secured runs: the broker, the workers and the bench's
# clients all take it from the environment.
BENCH_TOKEN = "jobwire-bench-token"


def secured(settings: Settings) -> list[Workload]:
    """W1 and W4 again with a journal (fsync=batch) and token authentication on."""
    args = ("--data-dir", "{tmpdir}", "--fsync", "batch")
    env = (("BROKER_TOKEN", BENCH_TOKEN),)
    label = "with --data-dir, fsync=batch, and a token"
    return [
        Workload(
            "W1s",
            f"end to end {label}",
            settings.n,
            end_to_end,
            (Figure("jobs_per_s", f"W1 end to end {label}", THROUGHPUT),),
            broker_args=args,
            timeout=60 + settings.n * 0.005,
            env=env,
        ),
        Workload(
            "W4s",
            f"round trip {label}",
            W4_ROUND_TRIPS,
            round_trip,
            (
                Figure("p50_ms", f"W4 round trip p50 {label}", "ms"),
                Figure("p99_ms", f"W4 round trip p99 {label}", "ms"),
            ),
            broker_args=args,
            timeout=120,
            env=env,
        ),
    ]
