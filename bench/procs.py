"""The broker and worker processes a benchmark run starts: :mod:`harness.processes` with
the benchmarks' defaults (bench.tasks, concurrency 8, the last lines kept)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness import processes
from harness.processes import LIVE, ROOT, Proc, ProcessFailed, stop_all

KEPT_LINES = 200

WORKER_TASKS = "bench.tasks"
WORKER_CONCURRENCY = 8


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BrokerProc(processes.BrokerProc):
    """``python -m broker --port 0 --log-level info [EXTRA...]``, ready once it listens."""

    def __init__(self, extra: Sequence[str] = (), *, profile_to: Path | None = None) -> None:
        super().__init__(extra, profile_to=profile_to, keep_lines=KEPT_LINES)


class WorkerProc(processes.WorkerProc):
    """``python -m worker bench.tasks --concurrency 8 --log-level warning --connect ADDRESS``."""

    def __init__(
        self, address: str, *, profile_to: Path | None = None, extra: Sequence[str] = ()
    ) -> None:
        super().__init__(
            address,
            [WORKER_TASKS],
            concurrency=WORKER_CONCURRENCY,
            log_level="warning",
            extra=extra,
            wait_connected=False,
            profile_to=profile_to,
            keep_lines=KEPT_LINES,
        )


class FaninProc(Proc):
    """``python -m bench.fanin_workers ADDRESS COUNT``: COUNT worker connections."""

    def __init__(self, address: str, count: int) -> None:
        super().__init__(
            "fan-in workers",
            ["-m", "bench.fanin_workers", address, str(count)],
            keep_lines=KEPT_LINES,
        )


def broker_help() -> str:
    """``python -m broker --help``, to learn which flags this broker has."""
    done = subprocess.run(
        [sys.executable, "-m", "broker", "--help"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


__all__ = [
    "LIVE",
    "ROOT",
    "BrokerProc",
    "FaninProc",
    "Proc",
    "ProcessFailed",
    "WorkerProc",
    "broker_help",
    "progress",
    "stop_all",
]
