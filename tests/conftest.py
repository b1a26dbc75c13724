from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.processes import BrokerProc, Proc, WorkerProc

E2E_TASKS = "tests.tasks_e2e"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts goes in here and is stopped, pass or fail."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()
    # pytest shows this only for a failed test: the processes' own account.
    for proc in started:
        print(f"----- {proc.name} {proc.pid} (exit {proc.popen.returncode}) -----")
        print(proc.tail(60))


@pytest.fixture
def start_broker(procs: list[Proc]) -> Callable[..., BrokerProc]:
    def start(*extra: str, port: int = 0) -> BrokerProc:
        proc = BrokerProc(extra, port=port)
        procs.append(proc)
        return proc

    return start


@pytest.fixture
def broker(start_broker: Callable[..., BrokerProc]) -> BrokerProc:
    return start_broker("--retry-backoff", "0.05", "--retry-backoff-max", "0.2")


@pytest.fixture
def start_worker(procs: list[Proc]) -> Callable[..., WorkerProc]:
    def start(address: str, *modules: str, **kwargs: Any) -> WorkerProc:
        proc = WorkerProc(address, modules or (E2E_TASKS,), **kwargs)
        procs.append(proc)
        return proc

    return start
