"""``python -m broker``: serve, or administer a running broker.

python -m broker [--host 127.0.0.1] [--port 7878] [--log-level info] ...
python -m broker stats | status JOB_ID | submit TASK --args JSON [--wait]
python -m broker failed | retry JOB_ID|--all | purge-failed | jobs QUEUE [--state S]
python -m broker pause QUEUE | resume QUEUE | ping
python -m broker limits [--queue Q | --task T] [--max-running N] [--rate 10/s] [--clear]
python -m broker schedules [--remove NAME]
Admin commands take --json (one JSON document on stdout), --connect or
JOBWIRE_URL, and exit 0, 1 (the job failed, for submit --wait) or 2 (usage,
or the broker refused or could not be reached).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from broker.client import Client, JobFailed
from broker.cluster.config import ClusterConfig, parse_servers
from broker.config import BrokerConfig
from broker.http import (
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    HttpBindError,
    HttpConfig,
    HttpExposureRefused,
    parse_http_address,
)
from broker.journal import FsyncMode, JournalConfig, JournalError
from broker.manager import ManagerConfig
from broker.server import Broker, ExposureRefused
from protocol.config import version
from protocol.errors import JobwireError
from protocol.logs import LOG_FORMATS, configure_logging
from protocol.security import (
    add_peer_arguments,
    peer_settings,
    resolve_token,
    server_ssl_context,
)
from protocol.states import UNFINISHED_STATES, JobState
from protocol.stream import DEFAULT_PORT, install_uvloop

ADMIN_COMMANDS = (
    "stats",
    "status",
    "submit",
    "failed",
    "retry",
    "purge-failed",
    "jobs",
    "ping",
    "pause",
    "resume",
    "limits",
    "schedules",
)
DEFAULT_HTTP = f"{DEFAULT_HTTP_HOST}:{DEFAULT_HTTP_PORT}"


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker",
        description="Serve jobwire's broker. Admin commands: "
        + ", ".join(ADMIN_COMMANDS)
        + " (python -m broker COMMAND --help).",
    )
    parser.add_argument("--version", action="version", version=f"jobwire {version()}")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS)
    parser.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help=f"health, metrics and the status page (default {DEFAULT_HTTP}; off: none; "
        "port 0 picks a free one)",
    )
    parser.add_argument("--result-ttl", type=float, default=3600.0, help="seconds results are kept")
    parser.add_argument("--max-attempts", type=int, default=3, help="default attempts per job")
    parser.add_argument("--lease", type=float, default=60.0, help="default lease in seconds")
    parser.add_argument("--retry-backoff", type=float, default=1.0, help="backoff base, seconds")
    parser.add_argument("--retry-backoff-max", type=float, default=300.0, help="backoff cap")
    parser.add_argument("--max-failed", type=int, default=10_000, help="failed jobs kept")
    parser.add_argument(
        "--max-results", type=int, default=1_000_000, help="finished jobs' results kept at most"
    )
    parser.add_argument("--max-jobs", type=int, default=None, help="unfinished jobs held at most")
    parser.add_argument("--max-frame", type=int, default=1024 * 1024, help="largest frame, bytes")
    parser.add_argument("--max-connections", type=int, default=10_000)
    parser.add_argument("--handshake-timeout", type=float, default=5.0)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--data-dir", default=None, help="journal here: survive restarts")
    parser.add_argument(
        "--fsync",
        choices=[mode.value for mode in FsyncMode],
        default=FsyncMode.BATCH.value,
        help="always: ack after fsync; batch: fsync every --fsync-interval; off: the OS decides",
    )
    parser.add_argument("--fsync-interval", type=float, default=100.0, help="ms, for batch")
    parser.add_argument(
        "--compact-min-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="compact once the journal passes this and 4x the last snapshot",
    )
    parser.add_argument(
        "--repair-journal",
        action="store_true",
        help="truncate a corrupt journal at the damage (losing what follows) and start",
    )
    cluster = parser.add_argument_group(
        "cluster", "a shard replicated on NATS JetStream (docs/CLUSTER.md; needs jobwire[cluster])"
    )
    cluster.add_argument(
        "--cluster",
        default=None,
        metavar="URLS",
        help="NATS servers, nats://host:port,...: lead the shard, or stand by (no --data-dir)",
    )
    cluster.add_argument("--shard", default="s0", help="the shard's name (stream JW_<shard>)")
    cluster.add_argument(
        "--advertise",
        default=None,
        metavar="HOST:PORT",
        help="the address standbys send peers to while this node leads (default: the listen "
        "address)",
    )
    cluster.add_argument(
        "--lease-ttl", type=float, default=10.0, help="seconds a leader's lease lasts unrenewed"
    )
    cluster.add_argument(
        "--publish-timeout",
        type=float,
        default=5.0,
        help="seconds a publish may wait for its acknowledgement before the leader stops",
    )
    cluster.add_argument(
        "--replicas", type=int, default=None, help="stream replicas (default 3 with 3+ servers)"
    )
    parser.add_argument("--token", default=None, help="shared secret (or BROKER_TOKEN)")
    parser.add_argument("--token-file", default=None, help="file whose first line is the token")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind with no token"
    )
    parser.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    parser.add_argument(
        "--tls-client-ca", default=None, help="require client certs signed by this CA"
    )
    parser.add_argument(
        "--output-pause-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="stop reading from a peer whose unsent output passes this",
    )
    parser.add_argument(
        "--output-drop-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="drop a peer whose unsent output passes this",
    )
    parser.add_argument(
        "--output-stall-timeout",
        type=float,
        default=30.0,
        help="drop a peer whose output stays above --output-pause-bytes this many seconds",
    )
    return parser


def admin_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--connect",
        default=None,
        help=f"HOST:PORT or jobwire[s]://HOST:PORT, or several separated by commas (a "
        f"cluster shard's brokers: the leader answers) (default: JOBWIRE_URL, else "
        f"127.0.0.1:{DEFAULT_PORT})",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document")
    common.add_argument(
        "--connect-timeout",
        type=float,
        default=3.0,
        help="seconds to keep trying to reach the broker (default 3)",
    )
    add_peer_arguments(common)
    parser = argparse.ArgumentParser(prog="python -m broker", description="Administer a broker.")
    parser.add_argument("--version", action="version", version=f"jobwire {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=description, parents=[common])

    command("stats", "queues, running jobs, workers, counters")
    status = command("status", "one job's state")
    status.add_argument("job_id")
    submit = command("submit", "submit one job")
    submit.add_argument("task")
    submit.add_argument("--args", default="[]", help="JSON array of positional arguments")
    submit.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    submit.add_argument("--queue", default="default")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--delay", type=float, default=0.0)
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    failed = command("failed", "list failed jobs")
    failed.add_argument("--limit", type=int, default=None)
    retry = command("retry", "put failed jobs back in their queues")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?")
    which.add_argument("--all", action="store_true")
    command("purge-failed", "empty the failed list")
    command("ping", "exit 0 when the broker answers and accepts jobs (for health checks)")
    jobs = command("jobs", "list the jobs of a queue, oldest first")
    jobs.add_argument("queue")
    jobs.add_argument("--state", choices=[state.value for state in JobState], default=None)
    jobs.add_argument("--limit", type=int, default=None, help="at most this many (default 100)")
    pause = command("pause", "start no more jobs from a queue (it still accepts them)")
    pause.add_argument("queue")
    resume = command("resume", "start jobs from a paused queue again")
    resume.add_argument("queue")
    limits = command("limits", "show the global limits, or set those of a queue or a task")
    target = limits.add_mutually_exclusive_group()
    target.add_argument("--queue", help="set this queue's limits")
    target.add_argument("--task", help="set this task's limits")
    limits.add_argument("--max-running", type=int, default=None, help="at most N running at once")
    limits.add_argument("--rate", default=None, help="at most N starts per period: 100/s, 10/min")
    limits.add_argument("--clear", action="store_true", help="remove the queue's or task's limits")
    schedules = command("schedules", "list the periodic jobs with their next run")
    schedules.add_argument("--remove", metavar="NAME", help="remove this schedule")
    return parser


class UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit 2."""


def json_argument(name: str, text: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """``--args`` (a JSON array) or ``--kwargs`` (a JSON object), or a :class:`UsageError`."""
    what = "array" if kind is list else "object"
    example = "'[1, \"a\"]'" if kind is list else "'{\"key\": 1}'"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{name} is not valid JSON ({exc}); expected a JSON {what}") from None
    if not isinstance(value, kind):
        raise UsageError(
            f"{name} must be a JSON {what}, e.g. {example}; got {type(value).__name__} {text!r}"
        )
    return value


def unknown_command(word: str) -> str:
    """The one-line error for a mistyped admin command."""
    close = difflib.get_close_matches(word, ADMIN_COMMANDS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"commands: {', '.join(ADMIN_COMMANDS)}"
    return f"unknown command {word!r}; {hint}"


async def serve(config: BrokerConfig, cluster: ClusterConfig | None = None) -> int:
    """Serve until SIGINT or SIGTERM; the exit code (3: a cluster leader fenced out)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if cluster is not None:
        # Imported only here: nats is an optional dependency.
        from broker.cluster.node import serve_cluster  # noqa: PLC0415

        return await serve_cluster(config, cluster, stop)
    broker = Broker(config)
    await broker.serve_until(stop)
    return 0 if broker.fatal_failure is None else 3


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_stats(stats: dict[str, Any]) -> None:
    print(f"{'queue':<20}" + "".join(f" {state:>8}" for state in UNFINISHED_STATES))
    for name, counts in stats["queues"].items():
        print(f"{name:<20}" + "".join(f" {counts[state]:>8}" for state in UNFINISHED_STATES))
    print(
        f"workers {stats['workers']}  clients {stats['clients']}  running {stats['running']}  "
        f"succeeded {stats[JobState.SUCCEEDED]}  failed {stats[JobState.FAILED]}  "
        f"failed list {stats['failed_list']}  submitted {stats['submitted']}"
    )
    if stats.get("paused"):
        print("paused: " + ", ".join(stats["paused"]))
    for queue, tasks in (stats.get("no_worker") or {}).items():
        waiting = ", ".join(f"{task} ({count})" for task, count in tasks.items())
        print(f"waiting for a worker with their task on {queue}: {waiting}")


def print_jobs(jobs: list[dict[str, Any]], what: str) -> None:
    for job in jobs:
        last = job["errors"][-1] if job["errors"] else {}
        error = f"  {last.get('type', '')}: {last.get('message', '')}" if last else ""
        print(
            f"{job['id']}  {job['task']}  queue={job['queue']}  state={job['state']}  "
            f"attempts={job['attempts']}{error}"
        )
    print(f"{len(jobs)} {what}(s)")


async def run_admin(args: argparse.Namespace) -> int:
    token, context = peer_settings(args)
    as_json: bool = args.json
    command: str = args.command
    if command == "submit":  # checked before connecting
        job_args = json_argument("--args", args.args, list)
        job_kwargs = json_argument("--kwargs", args.kwargs, dict)
    async with Client(
        args.connect,
        token=token,
        ssl=context,
        name="admin",
        connect_timeout=args.connect_timeout,
    ) as client:
        if command == "stats":
            stats = await client.stats()
            print_json(stats) if as_json else print_stats(stats)
        elif command == "status":
            print_json(await client.status(args.job_id))
        elif command == "submit":
            job = await client.submit(
                args.task,
                job_args,
                job_kwargs,
                queue=args.queue,
                priority=args.priority,
                delay=args.delay,
            )
            if not args.wait:
                print_json({"id": job.id}) if as_json else print(job.id)
                return 0
            if not as_json:
                print(job.id)
            try:
                result = await job.result()
            except JobFailed as exc:
                if as_json:
                    error = {"type": exc.error_type, "message": exc.error_message}
                    print_json({"id": job.id, "state": "failed", "error": error})
                else:
                    print(str(exc), file=sys.stderr)
                    if exc.traceback:
                        print(exc.traceback, file=sys.stderr)
                return 1
            print_json({"id": job.id, "result": result} if as_json else result)
        elif command == "failed":
            failed_jobs = await client.failed(args.limit)
            print_json(failed_jobs) if as_json else print_jobs(failed_jobs, "failed job")
        elif command == "jobs":
            jobs = await client.jobs(args.queue, args.state, args.limit)
            print_json(jobs) if as_json else print_jobs(jobs, "job")
        elif command == "retry":
            count = await client.retry(None if args.all else [args.job_id])
            print_json({"retried": count}) if as_json else print(f"retried {count} job(s)")
        elif command == "purge-failed":
            count = await client.purge_failed()
            print_json({"purged": count}) if as_json else print(f"purged {count} job(s)")
        elif command == "ping":
            await client.ping()
            storage = (await client.stats())["storage"]
            if not storage["ok"]:
                print(f"not ready: {storage['failure']}", file=sys.stderr)
                return 1
            print("ok")
        elif command == "pause":
            changed = await client.pause(args.queue)
            print(f"paused {args.queue}" if changed else f"{args.queue} was already paused")
        elif command == "resume":
            changed = await client.resume(args.queue)
            print(f"resumed {args.queue}" if changed else f"{args.queue} was not paused")
        elif command == "limits":
            return await limits_command(client, args)
        elif command == "schedules":
            if args.remove is not None:
                removed = await client.unschedule(args.remove)
                print(f"removed {args.remove}" if removed else f"no schedule {args.remove}")
                return 0
            for entry in await client.schedules():
                when = f"cron {entry['cron']!r}" if entry["cron"] else f"every {entry['every']:g}s"
                zone = f" ({entry['timezone']})" if entry["timezone"] else ""
                next_run = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["next_run"]))
                print(
                    f"{entry['name']:<24} {entry['task']:<24} {when}{zone}  "
                    f"queue={entry['queue']}  next={next_run}"
                )
    return 0


async def limits_command(client: Client, args: argparse.Namespace) -> int:
    if args.queue is None and args.task is None:
        if args.clear or args.max_running is not None or args.rate is not None:
            print("error: name a --queue or a --task to set its limits", file=sys.stderr)
            return 2
        for kind, table in (await client.stats())["limits"].items():
            for name, limit in table.items():
                print(
                    f"{kind[:-1]:<6} {name:<20} max_running={limit['max_running']}  "
                    f"rate={limit['rate']}  running={limit['running']}  "
                    f"started_in_window={limit['started_in_window']}"
                )
        return 0
    if args.clear:
        args.max_running = args.rate = None
    elif args.max_running is None and args.rate is None:
        print("error: give --max-running and/or --rate, or --clear", file=sys.stderr)
        return 2
    name = args.queue if args.queue is not None else args.task
    try:
        limits = await client.set_limits(
            queue=args.queue, task=args.task, max_running=args.max_running, rate=args.rate
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{name}: no limits" if limits is None else f"{name}: {json.dumps(limits)}")
    return 0


def run(coroutine_factory: Callable[[], Awaitable[int]]) -> int:
    async def main() -> int:
        return await coroutine_factory()

    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ADMIN_COMMANDS:
        args = admin_parser().parse_args(argv)
        configure_logging("warning")
        try:
            return run(lambda: run_admin(args))
        except (JobwireError, OSError, ValueError, UsageError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if argv and not argv[0].startswith("-"):  # the server takes no positional argument
        print(f"error: {unknown_command(argv[0])}", file=sys.stderr)
        return 2
    args = serve_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    log = logging.getLogger("broker")
    try:
        if args.http is None:
            http: HttpConfig | None = HttpConfig(explicit=False)
        else:
            http = parse_http_address(args.http)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        token = resolve_token(args.token, args.token_file)
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        context = (
            server_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca)
            if args.tls_cert
            else None
        )
    except (OSError, ValueError) as exc:
        log.error("bad security settings: %s", exc)
        return 2
    cluster: ClusterConfig | None = None
    if args.cluster is not None:
        if args.data_dir:
            log.error("--cluster and --data-dir exclude each other: the journal is the stream")
            return 2
        try:
            cluster = ClusterConfig(
                parse_servers(args.cluster),
                shard=args.shard,
                advertise=args.advertise,
                lease_ttl=args.lease_ttl,
                publish_timeout=args.publish_timeout,
                replicas=args.replicas,
            )
        except ValueError as exc:
            log.error("%s", exc)
            return 2
    config = BrokerConfig(
        host=args.host,
        port=args.port,
        manager=ManagerConfig(
            result_ttl=args.result_ttl,
            max_attempts=args.max_attempts,
            lease=args.lease,
            backoff_base=args.retry_backoff,
            backoff_cap=args.retry_backoff_max,
            max_failed=args.max_failed,
            max_results=args.max_results,
            max_jobs=args.max_jobs,
        ),
        max_frame=args.max_frame,
        max_connections=args.max_connections,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
        token=token,
        ssl=context,
        insecure=args.insecure,
        output_pause_bytes=args.output_pause_bytes,
        output_drop_bytes=args.output_drop_bytes,
        output_stall_timeout=args.output_stall_timeout,
        http=http,
        journal=JournalConfig(
            Path(args.data_dir),
            fsync=FsyncMode(args.fsync),
            fsync_interval=args.fsync_interval / 1000,
            compact_min_bytes=args.compact_min_bytes,
            repair=args.repair_journal,
        )
        if args.data_dir
        else None,
    )
    install_uvloop()

    async def serve_and_exit() -> int:
        return await serve(config, cluster)

    try:
        return run(serve_and_exit)
    except HttpBindError as exc:
        log.error("%s", exc)
        return 2
    except (OSError, ExposureRefused, HttpExposureRefused, JournalError) as exc:
        log.error("cannot serve: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
