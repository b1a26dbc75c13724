"""harness.processes: waiting for a process's lines has a real deadline; stopping always works."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from harness.processes import LIVE, Proc, ProcessFailed

CHATTY = """
import itertools, time
for i in itertools.count():
    print(f"line {i}", flush=True)
    time.sleep(0.005)
"""

COUNT_THEN_WAIT = """
import sys, time
for i in range(50):
    print(i)
sys.stdout.flush()
while True:  # until stopped
    time.sleep(60)
"""

IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


@pytest.fixture
def started() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.stop(5)


def python(
    started: list[Proc],
    code: str,
    keep_lines: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> Proc:
    proc = Proc("snippet", ["-c", code], keep_lines=keep_lines, echo=echo)
    started.append(proc)
    return proc


@pytest.mark.timeout(60)
def test_a_chatty_process_cannot_stretch_the_deadline(started: list[Proc]) -> None:
    chatty = python(started, CHATTY)
    chatty.wait_for_line(r"^line 3$", timeout=30)
    with pytest.raises(ProcessFailed, match="did not print"):
        chatty.wait_for_line(r"never printed", timeout=0.5)
    assert chatty.alive()  # it printed all along: the deadline, not silence, ended the wait


def test_lines_are_numbered_absolutely_when_only_the_newest_are_kept(
    started: list[Proc],
) -> None:
    echoed: list[str] = []
    proc = python(started, COUNT_THEN_WAIT, keep_lines=10, echo=echoed.append)
    assert proc.wait_for_line_number(r"^49$", timeout=30) == 49
    assert proc.line_count() == 50
    assert proc.lines == [str(i) for i in range(40, 50)]
    assert proc.wait_for_line_number(r"^4\d$", timeout=30, start=45) == 45
    assert echoed == [str(i) for i in range(50)]
    assert proc.count_lines(r"^4") == 10


def test_a_process_that_exits_first_fails_the_wait(started: list[Proc]) -> None:
    proc = python(started, "print('bye')")
    with pytest.raises(ProcessFailed, match="exited"):
        proc.wait_for_line(r"never printed", timeout=30)
    assert proc.output() == "bye"


def test_stop_kills_what_ignores_sigterm_and_forgets_it(started: list[Proc]) -> None:
    proc = python(started, IGNORES_SIGTERM)
    proc.wait_for_line(r"ready", timeout=30)
    assert proc.pid in LIVE
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert proc.pid not in LIVE
