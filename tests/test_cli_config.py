"""A friendlier command line and configuration: JOBWIRE_URL, JOBWIRE_TOKEN, --version,
mistyped commands, JSON arguments, --json output, ``jobs``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from broker import Client
from harness.processes import ROOT, BrokerProc, WorkerProc
from protocol.config import URL_ENV, resolve_addresses
from protocol.security import TOKEN_ENV, TOKEN_ENV_ALT, resolve_token
from worker import Worker


def cli(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, **(env or {})),
    )


def unused_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_addresses_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert resolve_addresses() == (("127.0.0.1:7878",), False)
    assert resolve_addresses("host:1") == (("host:1",), False)
    assert resolve_addresses("jobwire://host:1") == (("host:1",), False)
    assert resolve_addresses("jobwires://host:1/") == (("host:1",), True)
    monkeypatch.setenv(URL_ENV, "jobwires://from-env:9")
    assert resolve_addresses() == (("from-env:9",), True)
    assert resolve_addresses("given:2") == (("given:2",), False)  # an explicit address wins
    for bad in ("http://host:1", "jobwire://", "jobwire://host:1/path"):
        with pytest.raises(ValueError):
            resolve_addresses(bad)
    client = Client()  # JOBWIRE_URL, TLS with the system's CAs
    assert client.address == "from-env:9" and client._ssl is not None
    worker = Worker()
    assert worker.address == "from-env:9" and worker.ssl is not None
    assert Client("jobwire://plain:1")._ssl is None


def test_jobwire_token_backs_broker_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv(TOKEN_ENV_ALT, " alt-secret \n")
    assert resolve_token() == "alt-secret"
    monkeypatch.setenv(TOKEN_ENV, "main-secret")
    assert resolve_token() == "main-secret"


def test_versions_and_help() -> None:
    for module in ("broker", "worker"):
        run = cli(module, "--version")
        assert run.returncode == 0 and run.stdout.startswith("jobwire ")
    helped = cli("broker", "--help")
    assert helped.returncode == 0 and "jobs" in helped.stdout and "purge-failed" in helped.stdout


def test_a_mistyped_command_gets_a_suggestion() -> None:
    run = cli("broker", "stat")
    assert run.returncode == 2
    assert run.stderr.strip() == "error: unknown command 'stat'; did you mean 'stats'?"
    nothing_close = cli("broker", "frobnicate")
    assert nothing_close.returncode == 2
    assert "unknown command 'frobnicate'; commands: stats, status" in nothing_close.stderr


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--args", "5", "--args must be a JSON array"),
        ("--args", '"abc"', "--args must be a JSON array"),
        ("--args", "[1,", "--args is not valid JSON"),
        ("--kwargs", "[1]", "--kwargs must be a JSON object"),
    ],
)
def test_submit_arguments_must_be_an_array_and_an_object(flag: str, value: str, says: str) -> None:
    run = cli("broker", "submit", "echo", flag, value, "--connect", unused_address())
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {says}")
    assert len(run.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_json_output_jobs_and_jobwire_url(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    env = {URL_ENV: f"jobwire://{broker.address}"}
    for n in range(3):
        queued = cli(
            "broker", "submit", "echo", "--args", f"[{n}]", "--queue", "later", "--json", env=env
        )
        assert queued.returncode == 0, queued.stderr
        assert set(json.loads(queued.stdout)) == {"id"}
    listed = cli("broker", "jobs", "later", "--state", "queued", "--limit", "2", "--json", env=env)
    jobs = json.loads(listed.stdout)
    assert [job["state"] for job in jobs] == ["queued", "queued"]
    assert "3 job(s)" in cli("broker", "jobs", "later", env=env).stdout
    assert (
        json.loads(cli("broker", "jobs", "later", "--state", "running", "--json", env=env).stdout)
        == []
    )
    stats = json.loads(cli("broker", "stats", "--json", env=env).stdout)
    assert stats["queues"]["later"]["queued"] == 3
    # The worker finds the broker through JOBWIRE_URL too.
    old = os.environ.get(URL_ENV)
    os.environ[URL_ENV] = env[URL_ENV]
    try:
        start_worker("")
    finally:
        if old is None:
            del os.environ[URL_ENV]
        else:
            os.environ[URL_ENV] = old
    waited = cli("broker", "submit", "echo", "--args", '["hi"]', "--wait", "--json", env=env)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["result"] == "hi"
    for command in (["failed"], ["retry", "--all"], ["purge-failed"]):
        assert isinstance(
            json.loads(cli("broker", *command, "--json", env=env).stdout), (list, dict)
        )
