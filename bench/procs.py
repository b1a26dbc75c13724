"""The broker and worker processes a benchmark run starts, always stopped by PID.

Every process's output (stdout and stderr, merged) is drained by a thread,
so a chatty process never blocks on a full pipe; the last lines are kept for
error reports. Every process started is registered in ``LIVE`` until it has
been stopped, so :func:`stop_all` can stop whatever a failure left behind.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
KEPT_LINES = 200
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

WORKER_TASKS = "bench.tasks"
WORKER_CONCURRENCY = 8

# Processes started and not yet stopped, by PID.
LIVE: dict[int, Proc] = {}


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ProcessFailed(RuntimeError):
    """A process exited, or did not print what it should have, in time."""


class Proc:
    """``python ARGS...`` in the project root, optionally under cProfile."""

    def __init__(self, name: str, args: Sequence[str], *, profile_to: Path | None = None) -> None:
        self.name = name
        self.profile_to = profile_to
        python_args = list(args)
        if profile_to is not None:
            python_args = ["-m", "cProfile", "-o", str(profile_to), *python_args]
        self.command = [sys.executable, *python_args]
        self.popen = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        LIVE[self.popen.pid] = self
        self._lines: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<{self.name} pid {self.pid}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        for line in stream:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def tail(self, count: int = 20) -> str:
        with self._changed:
            return "\n".join(list(self._lines)[-count:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessFailed(
                f"{self.name} (pid {self.pid}) exited with {self.popen.returncode}:\n{self.tail()}"
            )

    def wait_for_line(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """The first kept line matching ``pattern``; raises on exit or timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    if regex.search(line):
                        return line
                if not self.alive() and not self._reader.is_alive():
                    raise ProcessFailed(
                        f"{self.name} exited ({self.popen.returncode}) before printing "
                        f"{pattern!r}:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProcessFailed(
                        f"{self.name} did not print {pattern!r} within {timeout:g}s:\n{self.tail()}"
                    )
                self._changed.wait(min(left, 0.5))

    def rss_bytes(self) -> int:
        """Resident memory (VmRSS in /proc/PID/status) in bytes."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise ProcessFailed(f"no VmRSS for {self.name} (pid {self.pid})")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used (/proc/PID/stat), in seconds."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop by PID: SIGINT under cProfile (so it writes its profile), else SIGTERM;
        SIGKILL if it has not exited after ``timeout`` seconds."""
        try:
            if self.popen.poll() is None:
                signum = signal.SIGINT if self.profile_to is not None else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signum)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    progress(f"{self.name} (pid {self.pid}) ignored signal {signum}; killing it")
                    self.popen.kill()
                    self.popen.wait(timeout)
            self._reader.join(timeout)
        finally:
            LIVE.pop(self.pid, None)
        return self.popen.returncode


class BrokerProc(Proc):
    """``python -m broker --port 0 --log-level info [EXTRA...]``, ready once it listens."""

    def __init__(self, extra: Sequence[str] = (), *, profile_to: Path | None = None) -> None:
        super().__init__(
            "broker",
            ["-m", "broker", "--port", "0", "--log-level", "info", *extra],
            profile_to=profile_to,
        )
        try:
            line = self.wait_for_line(r"listening on \S+:\d+")
        except BaseException:
            self.stop()
            raise
        host_port = line.rsplit("listening on ", 1)[1].split()[0]
        port = int(host_port.rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{port}"


class WorkerProc(Proc):
    """``python -m worker bench.tasks --concurrency 8 --log-level warning --connect ADDRESS``."""

    def __init__(
        self, address: str, *, profile_to: Path | None = None, extra: Sequence[str] = ()
    ) -> None:
        super().__init__(
            "worker",
            [
                "-m",
                "worker",
                WORKER_TASKS,
                "--concurrency",
                str(WORKER_CONCURRENCY),
                "--log-level",
                "warning",
                "--connect",
                address,
                *extra,
            ],
            profile_to=profile_to,
        )


class FaninProc(Proc):
    """``python -m bench.fanin_workers ADDRESS COUNT``: COUNT worker connections."""

    def __init__(self, address: str, count: int) -> None:
        super().__init__("fan-in workers", ["-m", "bench.fanin_workers", address, str(count)])


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


def stop_all() -> None:
    """Stop every process still registered, newest first."""
    for proc in reversed(list(LIVE.values())):
        proc.stop()
