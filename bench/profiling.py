"""``python -m bench.profiling [--n N]``: where the time goes, per job, under cProfile.

- the broker (``python -m cProfile -o ... -m broker``, stopped with SIGINT so
  it writes its profile) during W2a (submit_many, no worker) and during W1
  (end to end, one worker);
- the worker process (also under cProfile) during that W1;
- the client: this process, cProfile around W2b's measured section only.

Each profile is summarized as the functions with the most ``tottime``, in
microseconds per job (and calls per job). cProfile slows Python code down
several times over, so read the shares, not the absolute figures; the
unprofiled CPU time per job is in the suite's JSON (``*_cpu_us_per_job``).
Profiles and the summary go to ``bench/results/profile/``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from bench.procs import ROOT, BrokerProc, progress, stop_all
from bench.report import source_fingerprint
from bench.workloads import (
    IN_FLIGHT,
    Figure,
    Workload,
    end_to_end,
    run_once,
    submit_individually,
    submit_many_only,
)
from broker import Client

DEFAULT_N = 50_000
TOP = 15
AREAS = 10
OUTPUT = Path(__file__).resolve().parent / "results" / "profile"
# What the event loop's own entry point accounts for: libuv, C callbacks, idle time.
LOOP_ENTRIES = ("run_until_complete", "run_forever")

FuncKey = tuple[str, int, str]


def describe(func: FuncKey) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    path = Path(filename)
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        parts = path.parts
        shown = (
            "/".join(parts[parts.index("site-packages") + 1 :])
            if "site-packages" in parts
            else ("/".join(parts[-2:]))
        )
    return f"{shown}:{line}({name})"


def is_loop_entry(func: FuncKey) -> bool:
    """The event loop's entry point: its tottime is libuv, Cython code and idle time."""
    filename, _, name = func
    if filename == "~":
        return any(entry in name for entry in LOOP_ENTRIES)
    return filename.endswith("asyncio/runners.py") and name == "run"


def area(func: FuncKey) -> str:
    """The file a function is in, or "C builtins" (msgpack, dict, list...)."""
    if func[0] == "~":
        return "C builtins (msgpack, dict, list, ...)"
    return describe(func).rsplit(":", 1)[0]


def summarize(title: str, path: Path, jobs: int, top: int = TOP) -> str:
    """The top functions and files of one profile by tottime, per job."""
    stats = pstats.Stats(str(path))
    entries: dict[FuncKey, tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    loop_time = 0.0
    rows: list[tuple[float, int, str]] = []
    areas: dict[str, float] = {}
    for func, (_, calls, tottime, _, _) in entries.items():
        if is_loop_entry(func):
            loop_time += tottime
            continue
        rows.append((tottime, calls, describe(func)))
        areas[area(func)] = areas.get(area(func), 0.0) + tottime
    rows.sort(reverse=True)
    total = sum(tottime for tottime, _, _ in rows)
    lines = [
        f"## {title}",
        f"{jobs:,} jobs; Python-visible tottime {total / jobs * 1e6:.1f} us/job; "
        f"the event loop's entry (libuv, Cython, idle) {loop_time / jobs * 1e6:.1f} us/job",
        "",
        f"{'us/job':>8} {'share':>6} {'calls/job':>9}  function",
    ]
    for tottime, calls, name in rows[:top]:
        lines.append(
            f"{tottime / jobs * 1e6:8.2f} {tottime / total:6.1%} {calls / jobs:9.2f}  {name}"
        )
    lines += ["", f"{'us/job':>8} {'share':>6}  file"]
    for name, tottime in sorted(areas.items(), key=lambda item: -item[1])[:AREAS]:
        lines.append(f"{tottime / jobs * 1e6:8.2f} {tottime / total:6.1%}  {name}")
    return "\n".join(lines)


async def profile_client_w2b(n: int, path: Path) -> None:
    """W2b with this process's cProfile on around the submits only."""
    broker = BrokerProc()
    try:
        async with Client(broker.address, name="bench-profile-w2b") as client:
            profiler = cProfile.Profile()
            profiler.enable()
            try:
                await submit_individually(client, n, IN_FLIGHT)
            finally:
                profiler.disable()
            profiler.dump_stats(str(path))
    finally:
        broker.stop()


async def profile_all(n: int, out: Path, top: int = TOP) -> list[str]:
    jobs_figure = (Figure("jobs_per_s", "", "jobs/s"),)
    w2a = Workload("W2a", "submit_many, no worker", n, submit_many_only, jobs_figure)
    w1 = Workload("W1", "end to end", n, end_to_end, jobs_figure, timeout=600.0)
    sections: list[str] = []

    progress(f"profiling the broker during W2a, N={n:,}")
    broker_w2a = out / "broker-W2a.prof"
    sample = await run_once(w2a, broker_profile=broker_w2a)
    progress(f"W2a under cProfile: {sample['jobs_per_s']:,.0f} jobs/s")
    sections.append(summarize("broker, W2a (submit_many x1,000, no worker)", broker_w2a, n, top))

    progress(f"profiling the broker and the worker during W1, N={n:,}")
    broker_w1 = out / "broker-W1.prof"
    worker_w1 = out / "worker-W1.prof"
    sample = await run_once(w1, broker_profile=broker_w1, worker_profile=worker_w1)
    progress(f"W1 under cProfile: {sample['jobs_per_s']:,.0f} jobs/s")
    sections.append(summarize("broker, W1 (end to end, 1 worker)", broker_w1, n, top))
    sections.append(summarize("worker process, W1", worker_w1, n, top))

    progress(f"profiling the client during W2b, N={n:,}")
    client_w2b = out / "client-W2b.prof"
    await profile_client_w2b(n, client_w2b)
    sections.append(
        summarize("client (this process), W2b (submit, 50 in flight)", client_w2b, n, top)
    )
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling", description=__doc__)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="jobs per profiled workload")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="directory for the profiles")
    parser.add_argument("--top", type=int, default=TOP, help="functions listed per profile")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        sections = asyncio.run(profile_all(args.n, args.out, args.top))
    finally:
        stop_all()
    sources = source_fingerprint()
    header = (
        f"# cProfile, N={args.n:,} per workload; code {sources['sha256']} "
        f"(broker/, protocol/, worker/; newest change {sources['newest_change']})"
    )
    text = "\n\n".join([header, *sections]) + "\n"
    (args.out / "summary.txt").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
