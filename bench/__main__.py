"""``python -m bench [--quick] [--n N] [--runs R] [--only W1,W4]``: run the benchmark suite.

Prints the table on stdout (progress goes to stderr) and writes the same
figures, with the machine's details, to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from bench import report
from bench.procs import LIVE, broker_help, progress, stop_all
from bench.workloads import Result, Settings, run_workload, suite

DEFAULT_N = 20_000
DEFAULT_RUNS = 3
QUICK_N = 5_000
QUICK_RUNS = 1
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--n", type=int, default=None, help=f"jobs per workload (default {DEFAULT_N:,})")
    p.add_argument("--runs", type=int, default=None, help="runs per figure, median reported")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"N={QUICK_N:,}, {QUICK_RUNS} run, smaller W5 and W6, no 1M-job W2a",
    )
    p.add_argument("--only", default=None, help="comma-separated workload ids (W1,W2a,...)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file to write")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    return p


async def run_suite(settings: Settings, only: set[str] | None, results: list[Result]) -> None:
    """Run the workloads in order, appending each one's result to ``results``."""
    # SIGINT and SIGTERM cancel the suite: every process it started gets stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    help_text = broker_help()
    for workload in suite(settings, help_text, only):
        results.append(await run_workload(workload, settings))
        if LIVE:  # pragma: no cover - run_once stops everything it starts
            progress(f"still running after {workload.id}: {list(LIVE.values())}; stopping")
            stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(arguments)
    default_n, default_runs = (QUICK_N, QUICK_RUNS) if args.quick else (DEFAULT_N, DEFAULT_RUNS)
    settings = Settings(
        n=args.n if args.n is not None else default_n,
        runs=args.runs if args.runs is not None else default_runs,
        quick=args.quick,
    )
    if settings.n < 1 or settings.runs < 1:
        parser().error("--n and --runs must be at least 1")
    only = {name.strip() for name in args.only.split(",") if name.strip()} if args.only else None
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    began = time.monotonic()
    load_at_start = os.getloadavg()
    sources_at_start = report.source_fingerprint()
    results: list[Result] = []
    interrupted = False
    try:
        asyncio.run(run_suite(settings, only, results))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        progress("interrupted: reporting the workloads that finished")
    finally:
        stop_all()
    table_rows = report.rows(results, settings)
    print(report.table(table_rows))
    if args.markdown:
        print()
        print(report.markdown_table(table_rows))
    report.write_json(
        args.output,
        table_rows,
        settings,
        arguments,
        interrupted=interrupted,
        load_average_at_start=load_at_start,
        sources_at_start=sources_at_start,
    )
    if report.source_fingerprint()["sha256"] != sources_at_start["sha256"]:
        progress("warning: broker/, protocol/ or worker/ changed during the run")
    progress(f"done in {time.monotonic() - began:.1f}s; wrote {args.output}")
    if interrupted:
        return 130
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
