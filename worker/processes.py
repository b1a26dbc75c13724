"""A pool of task processes, for CPU-bound ``def`` tasks (``@task(process=True)``, ``--processes``).

Threads share the GIL and cannot be stopped; a process can be killed. Each
process of the pool serves one job at a time over a pipe, and only msgpack
crosses it: the task's name with the job's payload (the ``[args, kwargs]``
bytes as they came from the broker) one way, the result's msgpack bytes or
the error the other. Functions are found in the child by importing their
module (``spawn``: no forked event loop, no inherited threads), so a process
task must be a module-level function.

A task past its timeout, or a job cancelled (revoked, the worker stopping),
has its process killed and replaced; a process that dies (``os._exit``, a
segfault) fails that attempt with :class:`ProcessCrashed` and is replaced.
Replacements start in the background; jobs wait for an idle process.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import signal
import traceback
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack

from protocol.errors import JobwireError
from protocol.framing import packb

log = logging.getLogger("worker.processes")

# Where each process task's function lives: task name -> (module, qualified name).
TaskHomes = dict[str, tuple[str, str]]

# How long a killed or closing process may take to go.
JOIN_TIMEOUT = 5.0


class ProcessCrashed(JobwireError):
    """The task's process died before it answered (a crash, ``os._exit``, a signal)."""


class ProcessTaskError(JobwireError):
    """The task raised in its process: ``info`` is that error's type, message and traceback."""

    def __init__(self, info: dict[str, str], retry_in: float | None = None) -> None:
        super().__init__(f"{info.get('type')}: {info.get('message')}")
        self.info = info
        self.retry_in = retry_in


def home_of(name: str, func: Any) -> tuple[str, str]:
    """Where a child finds ``func``; raises ``ValueError`` if it cannot."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module == "__main__":
        raise ValueError(
            f"task {name!r} runs in a process, so it must be a module-level function "
            f"of an importable module (it is {module}.{qualname})"
        )
    return module, qualname


class _Process:
    __slots__ = ("conn", "process")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn


class ProcessPool:
    """``size`` processes serving the tasks in ``homes``; :meth:`run` runs one job."""

    def __init__(self, size: int, homes: TaskHomes) -> None:
        if size < 1:
            raise ValueError("a process pool needs at least one process")
        self.size = size
        self.homes = homes
        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Process] = asyncio.Queue()
        self._all: set[_Process] = set()
        # Blocking pipe reads, process starts and joins: one thread per process, and one spare.
        self._threads = ThreadPoolExecutor(size + 1, thread_name_prefix="jobwire-proc")
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        started = await asyncio.gather(
            *(loop.run_in_executor(self._threads, self._spawn) for _ in range(self.size))
        )
        for proc in started:
            self._idle.put_nowait(proc)

    def _spawn(self) -> _Process:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=child_main, args=(child, self.homes), name="jobwire-task", daemon=True
        )
        process.start()
        child.close()
        proc = _Process(process, parent)
        self._all.add(proc)
        return proc

    async def run(self, task: str, payload: bytes, timeout: float | None) -> bytes:
        """Run one job in an idle process; return the result's msgpack bytes.

        Raises :class:`ProcessTaskError` (the task raised), :class:`ProcessCrashed`,
        or ``TimeoutError`` after ``timeout`` seconds of running (the wait for an
        idle process does not count). Cancelled, it kills the process.
        """
        proc = await self._idle.get()
        loop = asyncio.get_running_loop()
        healthy = False
        try:
            # Sending can block (a payload larger than the pipe's buffer, a child
            # still starting): both ends of the exchange run in a pool thread.
            request = packb([task, payload])
            async with asyncio.timeout(timeout):
                reply = await loop.run_in_executor(self._threads, _exchange, proc.conn, request)
            if reply is None:
                raise ProcessCrashed(await self._death_note(proc))
            healthy = True
        finally:
            if healthy:
                self._idle.put_nowait(proc)
            else:
                self._replace(proc)
        kind = reply[0]
        if kind == "ok":
            result: bytes = reply[1]
            return result
        raise ProcessTaskError(reply[1], reply[2] if kind == "retry" else None)

    async def _death_note(self, proc: _Process) -> str:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._threads, proc.process.join, JOIN_TIMEOUT)
        code = proc.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        return f"the task's process died before it answered ({how})"

    def _replace(self, proc: _Process) -> None:
        """Kill ``proc`` (it may be mid-task) and start another in the background."""
        self._all.discard(proc)
        if proc.process.is_alive():
            proc.process.kill()
        proc.conn.close()
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._respawn(proc))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _respawn(self, dead: _Process) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._threads, dead.process.join, JOIN_TIMEOUT)
        if self._closed:
            return
        try:
            fresh = await loop.run_in_executor(self._threads, self._spawn)
        except Exception:
            log.exception("cannot start a task process to replace one that ended")
            return
        if self._closed:  # closed meanwhile: this one is ours to stop
            self._all.discard(fresh)
            fresh.process.kill()
            fresh.conn.close()
            await loop.run_in_executor(self._threads, fresh.process.join, JOIN_TIMEOUT)
            return
        self._idle.put_nowait(fresh)

    async def close(self) -> None:
        """Stop every process (killed: a running task's job has been settled already)."""
        self._closed = True
        # Not cancelled: a cancelled wait would leave a spawn running in its thread,
        # whose process nobody would stop. Each sees _closed and stops its own.
        await asyncio.gather(*self._replacing, return_exceptions=True)
        procs = list(self._all)
        self._all.clear()
        for proc in procs:
            if proc.process.is_alive():
                proc.process.kill()
            proc.conn.close()
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._threads, p.process.join, JOIN_TIMEOUT) for p in procs)
        )
        self._threads.shutdown(wait=False, cancel_futures=True)


def _exchange(conn: Connection, request: bytes) -> list[Any] | None:
    """Send a child one job and return its reply, or None if it went away."""
    try:
        conn.send_bytes(request)
        data = conn.recv_bytes()
    except (EOFError, OSError):
        return None
    reply: list[Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return reply


# -- in the child -----------------------------------------------------------------


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    definition = getattr(target, "definition", None)  # a @task handle: its function
    return getattr(definition, "func", target)


def _error(exc: BaseException) -> dict[str, str]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def child_main(conn: Connection, homes: TaskHomes) -> None:
    """A task process: answer ``[task, payload]`` requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
    from worker.retry import Retry  # noqa: PLC0415 - in the child only

    functions: dict[str, Any] = {}
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        reply: list[Any]
        try:
            name, payload = msgpack.unpackb(request, raw=False, strict_map_key=False)
            func = functions.get(name)
            if func is None:
                func = functions[name] = _resolve(*homes[name])
            args, kwargs = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            result = func(*args, **kwargs)
            try:
                encoded = packb(result)
            except Exception as exc:
                raise TypeError(
                    f"the task's return value of type {type(result).__name__} cannot be "
                    f"encoded as msgpack: {exc}"
                ) from None
            reply = ["ok", encoded]
        except Retry as exc:
            reply = ["retry", _error(exc), exc.delay]
        except Exception as exc:
            reply = ["err", _error(exc)]
        conn.send_bytes(packb(reply))
