"""Real broker and worker processes, started from the project root and always stopped by PID.

One module for the tests, the benchmarks and the demo. Each process's output
(stdout and stderr, merged) is drained by a thread, so a chatty process
never blocks on a full pipe and a caller can wait for a line (an event, with
a deadline) instead of sleeping. Every process started is registered in
:data:`LIVE` until it has been stopped, so :func:`stop_all` can stop
whatever a failure left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

# Processes started and not yet stopped, by PID.
LIVE: dict[int, Proc] = {}


class ProcessFailed(AssertionError):
    """A process exited, or did not print what it should have, in time."""


class Proc:
    """``python ARGS...`` (or ``executable ARGS...``) in the project root, optionally
    under cProfile.

    ``keep_lines`` bounds the output kept (the newest lines; line numbers
    stay absolute); ``echo`` is called with every line as it is read.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        profile_to: Path | None = None,
        keep_lines: int | None = None,
        echo: Callable[[str], None] | None = None,
        executable: str | None = None,
    ) -> None:
        self.name = name
        self.profile_to = profile_to
        python_args = list(args)
        if profile_to is not None:
            python_args = ["-m", "cProfile", "-o", str(profile_to), *python_args]
        # Another program than Python (nats-server): ``args`` are its own.
        self.command = [executable or sys.executable, *python_args]
        self._keep = keep_lines
        self._echo = echo
        self._lines: list[str] = []
        self._dropped = 0  # lines read and no longer kept
        self._changed = threading.Condition()
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
        for raw in stream:
            line = raw.rstrip("\n")
            if self._echo is not None:
                self._echo(line)
            with self._changed:
                self._lines.append(line)
                if self._keep is not None and len(self._lines) > self._keep:
                    del self._lines[0]
                    self._dropped += 1
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    # -- output ------------------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        """The lines kept so far (a copy)."""
        with self._changed:
            return list(self._lines)

    def line_count(self) -> int:
        """How many lines the process has printed so far: a mark for ``wait_for_line``."""
        with self._changed:
            return self._dropped + len(self._lines)

    def output(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def tail(self, count: int = 20) -> str:
        with self._changed:
            return "\n".join(self._lines[-count:])

    def count_lines(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self._lines if regex.search(line))

    def wait_for_line_number(
        self, pattern: str, timeout: float = STARTUP_TIMEOUT, start: int = 0
    ) -> int:
        """The number of the first line from number ``start`` matching ``pattern``.

        Raises :class:`ProcessFailed` when the process exits first, or when
        ``timeout`` seconds have passed, however much else it prints meanwhile.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                first = max(seen - self._dropped, 0)
                for offset, line in enumerate(self._lines[first:]):
                    if regex.search(line):
                        return self._dropped + first + offset
                seen = self._dropped + len(self._lines)
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise ProcessFailed(
                        f"{self.name} exited ({self.popen.returncode}) before printing "
                        f"{pattern!r}:\n{self.tail(60)}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProcessFailed(
                        f"{self.name} did not print {pattern!r} within {timeout:g}s:\n"
                        f"{self.tail(60)}"
                    )
                # Bounded, so that an exit without a last line is noticed too.
                self._changed.wait(min(left, 0.5))

    def wait_for_line(self, pattern: str, timeout: float = STARTUP_TIMEOUT, start: int = 0) -> str:
        """The first line from number ``start`` matching ``pattern`` (see above)."""
        number = self.wait_for_line_number(pattern, timeout, start)
        with self._changed:
            return self._lines[number - self._dropped]

    # -- the process ---------------------------------------------------------------

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessFailed(
                f"{self.name} (pid {self.pid}) exited with {self.popen.returncode}:\n{self.tail()}"
            )

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        return self.popen.wait(timeout)

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
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop by PID: SIGCONT (in case it was stopped), then SIGINT under cProfile (so
        it writes its profile) or SIGTERM; SIGKILL if it has not exited after ``timeout``."""
        try:
            if self.popen.poll() is None:
                signum = signal.SIGINT if self.profile_to is not None else signal.SIGTERM
                for each in (signal.SIGCONT, signum):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, each)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout)
            self._reader.join(timeout)
        finally:
            LIVE.pop(self.pid, None)
        return self.popen.returncode


class BrokerProc(Proc):
    """``python -m broker --port PORT --log-level info [EXTRA...]``, ready once it listens.

    HTTP is off unless ``EXTRA`` names ``--http``: brokers started side by side
    (tests, benchmarks) must not race for the default HTTP port.
    """

    def __init__(
        self,
        extra: Sequence[str] = (),
        *,
        port: int = 0,
        profile_to: Path | None = None,
        keep_lines: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        http = [] if "--http" in extra else ["--http", "off"]
        super().__init__(
            "broker",
            ["-m", "broker", "--port", str(port), "--log-level", "info", *http, *extra],
            profile_to=profile_to,
            keep_lines=keep_lines,
            echo=echo,
        )
        try:
            line = self.wait_for_line(r"listening on \S+:\d+")
        except BaseException:
            self.stop()
            raise
        host_port = line.rsplit("listening on ", 1)[1].split()[0]
        self.port = int(host_port.rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"


class WorkerProc(Proc):
    """``python -m worker MODULE... --connect ADDRESS --concurrency N --log-level L [EXTRA...]``.

    With ``wait_connected`` (which needs ``log_level="info"``) it returns once
    the worker has connected.
    """

    def __init__(
        self,
        address: str,
        modules: Sequence[str] = (),
        *,
        concurrency: int = 4,
        log_level: str = "info",
        extra: Sequence[str] = (),
        wait_connected: bool = True,
        name: str = "worker",
        profile_to: Path | None = None,
        keep_lines: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            name,
            [
                "-m",
                "worker",
                *modules,
                "--connect",
                address,
                "--concurrency",
                str(concurrency),
                "--log-level",
                log_level,
                *extra,
            ],
            profile_to=profile_to,
            keep_lines=keep_lines,
            echo=echo,
        )
        if wait_connected:
            try:
                self.wait_for_line(r"connected to ")
            except BaseException:
                self.stop()
                raise


def stop_all() -> None:
    """Stop every process still registered, newest first."""
    for proc in reversed(list(LIVE.values())):
        proc.stop()
