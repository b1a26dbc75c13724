"""Real broker and worker processes for end-to-end tests.

Each process's output is drained by a thread into memory, so a test can wait
for a line (an event, with a timeout) instead of sleeping, and a chatty
process never blocks on a full pipe. Processes are always stopped by PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0


class Proc:
    def __init__(self, args: Sequence[str], name: str) -> None:
        self.name = name
        self.args = list(args)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [sys.executable, *self.args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = STARTUP_TIMEOUT, start: int = 0) -> str:
        """The first line (from index ``start``) matching ``pattern``; raises on timeout or exit."""
        regex = re.compile(pattern)
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"{self.name} exited ({self.popen.returncode}) before printing "
                        f"{pattern!r}:\n{self.output()}"
                    )
                if not self._changed.wait(timeout):
                    raise AssertionError(
                        f"{self.name} did not print {pattern!r} within {timeout}s:\n{self.output()}"
                    )

    def count_lines(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self.lines if regex.search(line))

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGCONT (in case it was stopped), SIGTERM, then SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            for signum in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(self.pid, signum)
                except ProcessLookupError:
                    break
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._reader.join(timeout)
        return self.popen.returncode


class BrokerProc(Proc):
    def __init__(self, *extra: str, port: int = 0) -> None:
        super().__init__(
            ["-m", "broker", "--port", str(port), "--log-level", "info", *extra], "broker"
        )
        line = self.wait_for_line(r"listening on ")
        self.port = int(line.rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"


class WorkerProc(Proc):
    def __init__(
        self,
        address: str,
        *modules: str,
        concurrency: int = 4,
        extra: Sequence[str] = (),
        wait_connected: bool = True,
    ) -> None:
        super().__init__(
            [
                "-m",
                "worker",
                *modules,
                "--connect",
                address,
                "--concurrency",
                str(concurrency),
                "--log-level",
                "info",
                *extra,
            ],
            "worker",
        )
        if wait_connected:
            self.wait_for_line(r"connected to ")
