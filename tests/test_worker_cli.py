"""``python -m worker``'s exit codes: 0 clean stop, 2 bad usage or import, 3 unreachable."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from broker import Client
from harness.processes import ROOT, BrokerProc, WorkerProc


def worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def unused_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_an_unreachable_broker_within_the_connect_timeout_exits_3() -> None:
    run = worker("--connect", unused_address(), "--connect-timeout", "0.3")
    assert run.returncode == 3, run.stderr
    assert "cannot reach the broker" in run.stderr


def test_a_task_module_that_fails_to_import_exits_2_showing_why() -> None:
    missing = worker("no_such_module_here", "--connect", unused_address())
    assert missing.returncode == 2
    assert "No module named 'no_such_module_here'" in missing.stderr
    # A module that imports but raises: the error and its traceback are shown.
    broken = worker("tests.broken_tasks", "--connect", unused_address())
    assert broken.returncode == 2
    assert "RuntimeError: this task module is broken on purpose" in broken.stderr


def test_bad_usage_exits_2() -> None:
    assert worker("--concurrency", "many").returncode == 2


def test_processes_runs_plain_def_tasks_in_a_pool_it_announces(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    worker = start_worker(broker.address, extra=["--processes", "2"])
    worker.wait_for_line(r"process pool: 2 processes")

    async def pids() -> list[Any]:
        async with Client(broker.address) as client:
            plain = await client.submit("blocking_nap", [0, "slept"])
            native = await client.submit("whoami", [1])
            return [await plain.result(timeout=60), await native.result(timeout=60)]

    slept, who = asyncio.run(pids())
    assert slept == "slept" and who["pid"] == worker.pid  # async tasks stay in the worker


def test_a_failing_startup_hook_exits_2_before_connecting() -> None:
    run = worker("tests.tasks_bad_startup", "--connect", unused_address())
    assert run.returncode == 2
    assert "the on_startup hook failed: the database is not there" in run.stderr
    assert "cannot reach the broker" not in run.stderr  # it never tried
