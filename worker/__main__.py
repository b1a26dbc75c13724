"""``python -m worker [MODULE ...] [--connect HOST:PORT] [--concurrency 4] ...``

Exit codes: 0 after a clean stop (a signal, or ``--burst`` done); 2 for bad
usage, a task module that fails to import, or a broker that refuses the
worker (token, TLS, protocol version); 3 when the broker stays unreachable
for ``--connect-timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from protocol.errors import BrokerUnavailable
from protocol.security import add_peer_arguments, peer_settings
from protocol.stream import install_uvloop
from worker.registry import TaskRegistry, default_registry
from worker.runtime import Worker, WorkerRefused
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
    p.add_argument("--connect", default="127.0.0.1:7878", help="broker HOST:PORT")
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
    return p


def load_registry(modules: Sequence[str]) -> TaskRegistry:
    if not modules:
        return builtin_registry
    sys.path.insert(0, os.getcwd())
    for module in modules:
        importlib.import_module(module)
    return default_registry


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
    await worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        registry = load_registry(args.modules)
    except Exception:
        log.exception("cannot import the task module(s) %s", ", ".join(args.modules))
        return EXIT_USAGE
    try:
        token, context = peer_settings(args)
    except (OSError, ValueError) as exc:
        log.error("bad security settings: %s", exc)
        return EXIT_USAGE
    queues = [q for q in (args.queues or "").split(",") if q] or None
    worker = Worker(
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
    )
    install_uvloop()
    try:
        asyncio.run(serve(worker))
    except WorkerRefused as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except BrokerUnavailable as exc:
        log.error("%s", exc)
        return EXIT_UNREACHABLE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
