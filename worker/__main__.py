"""``python -m worker [MODULE ...] [--connect HOST:PORT] [--concurrency 4] ...``

Exit codes: 0 after a clean stop (a signal, or ``--burst`` done); 2 for bad
usage, a task module that fails to import, an ``on_startup`` hook that
raises, or a broker that refuses the worker (token, TLS, protocol version);
3 when the broker stays unreachable for ``--connect-timeout`` seconds.

A task module may define ``on_startup(ctx)`` and ``on_shutdown(ctx)``
(plain or async) at module level: see :func:`find_hooks`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Sequence

from protocol.config import version
from protocol.errors import BrokerUnavailable
from protocol.logs import LOG_FORMATS, configure_logging
from protocol.security import add_peer_arguments, peer_settings
from protocol.stream import install_uvloop
from worker.registry import TaskRegistry, default_registry
from worker.runtime import Context, Hook, Worker, WorkerRefused
from worker.tasks import builtin_registry

log = logging.getLogger("worker")

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments, a task module that does not import, refused by the broker
EXIT_UNREACHABLE = 3  # the broker stayed unreachable for --connect-timeout


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker",
        description="Run jobwire tasks. With no MODULE, serves the built-in tasks "
        "(echo, sleep, fail, add, noop).",
    )
    p.add_argument(
        "modules", nargs="*", metavar="MODULE", help="modules whose @task functions to serve"
    )
    p.add_argument(
        "--connect",
        default=None,
        help="broker HOST:PORT or jobwire[s]://HOST:PORT, or several separated by commas "
        "(a cluster shard's brokers: the worker serves the leader) (default: JOBWIRE_URL, "
        "else 127.0.0.1:7878)",
    )
    p.add_argument("--version", action="version", version=f"jobwire {version()}")
    p.add_argument("--concurrency", type=int, default=4, help="jobs run at once")
    p.add_argument(
        "--prefetch",
        type=int,
        default=0,
        help="jobs taken beyond --concurrency, to wait here for a slot (default 0)",
    )
    p.add_argument(
        "--queues",
        default=None,
        help="comma-separated queues to take jobs from (default: the queues the loaded "
        "tasks name with @task(queue=...), plus 'default' if some task names none)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="run every plain def task in a pool of N processes (default: only "
        "@task(process=True) tasks, in min(concurrency, CPUs) processes)",
    )
    p.add_argument("--burst", action="store_true", help="exit 0 once the queues are empty")
    p.add_argument("--grace", type=float, default=30.0, help="seconds running jobs get on SIGTERM")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        help="exit 3 once the broker has been unreachable this many seconds "
        "(default: keep retrying)",
    )
    p.add_argument("--name", default=None, help="name shown in the broker's logs")
    add_peer_arguments(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS, help="json: one per line")
    return p


def load_registry(modules: Sequence[str]) -> TaskRegistry:
    if not modules:
        return builtin_registry
    sys.path.insert(0, os.getcwd())
    for module in modules:
        importlib.import_module(module)
    return default_registry


def find_hooks(modules: Sequence[str]) -> tuple[Hook | None, Hook | None]:
    """The task modules' module-level ``on_startup(ctx)`` and ``on_shutdown(ctx)``.

    Startup hooks run in the order the modules are named, shutdown hooks in
    the reverse order; each may be plain or async. Call after :func:`load_registry`.
    """
    startups: list[Hook] = []
    shutdowns: list[Hook] = []
    for name in modules:
        module = sys.modules[name]
        for attribute, hooks in (("on_startup", startups), ("on_shutdown", shutdowns)):
            hook = getattr(module, attribute, None)
            if hook is not None:
                if not callable(hook):
                    raise TypeError(f"{name}.{attribute} is not callable")
                hooks.append(hook)
    shutdowns.reverse()
    return _chain(startups), _chain(shutdowns)


def _chain(hooks: list[Hook]) -> Hook | None:
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    async def chained(context: Context) -> None:
        for hook in hooks:
            outcome = hook(context)
            if inspect.isawaitable(outcome):
                await outcome

    return chained


class StartupFailed(Exception):
    """The on_startup hook raised (its exception is the cause)."""


async def serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            worker.stop()
        else:
            log.warning("second signal: stopping now")
            worker.stop_now()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    startup = worker.on_startup
    if startup is not None:

        async def guarded(context: Context) -> None:
            try:
                outcome = startup(context)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:
                raise StartupFailed() from exc

        worker.on_startup = guarded
    await worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        registry = load_registry(args.modules)
        on_startup, on_shutdown = find_hooks(args.modules)
    except Exception:
        log.exception("cannot import the task module(s) %s", ", ".join(args.modules))
        return EXIT_USAGE
    try:
        token, context = peer_settings(args)
    except (OSError, ValueError) as exc:
        log.error("bad security settings: %s", exc)
        return EXIT_USAGE
    queues = [q for q in (args.queues or "").split(",") if q] or None
    try:
        worker = make_worker(args, registry, queues, token, context, on_startup, on_shutdown)
        worker.check()
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    install_uvloop()
    try:
        asyncio.run(serve(worker))
    except WorkerRefused as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except BrokerUnavailable as exc:
        log.error("%s", exc)
        return EXIT_UNREACHABLE
    except StartupFailed as exc:
        log.error("the on_startup hook failed: %s", exc.__cause__, exc_info=exc.__cause__)
        return EXIT_USAGE
    return EXIT_OK


def make_worker(
    args: argparse.Namespace,
    registry: TaskRegistry,
    queues: list[str] | None,
    token: str | None,
    context: ssl.SSLContext | None,
    on_startup: Hook | None,
    on_shutdown: Hook | None,
) -> Worker:
    return Worker(
        args.connect,
        registry=registry,
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        queues=queues,
        burst=args.burst,
        token=token,
        ssl=context,
        name=args.name or f"{socket.gethostname()}:{os.getpid()}",
        grace=args.grace,
        connect_timeout=args.connect_timeout,
        processes=args.processes,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )


if __name__ == "__main__":
    sys.exit(main())
