"""The admin command line against a real broker and worker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from harness.processes import ROOT, BrokerProc, WorkerProc


def admin(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args, "--connect", address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_submit_wait_status_and_stats(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    start_worker(broker.address)
    submitted = admin(broker.address, "submit", "echo", "--args", '[{"a": [1, 2]}]', "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id, result = submitted.stdout.split("\n", 1)
    assert json.loads(result) == {"a": [1, 2]}
    status = admin(broker.address, "status", job_id)
    assert status.returncode == 0
    assert json.loads(status.stdout)["state"] == "succeeded"
    stats = admin(broker.address, "stats")
    assert stats.returncode == 0
    assert "default" in stats.stdout
    assert "workers 1" in stats.stdout
    assert "succeeded 1" in stats.stdout
    missing = admin(broker.address, "status", "no-such-job")
    assert missing.returncode == 2
    assert "NOT_FOUND" in missing.stderr


def test_failed_retry_and_purge_failed(
    broker: BrokerProc, start_worker: Callable[..., WorkerProc]
) -> None:
    worker = start_worker(broker.address)
    failing = admin(broker.address, "submit", "always_fails", "--args", '["nope"]', "--wait")
    assert failing.returncode == 1
    assert "ValueError: nope" in failing.stderr
    first = failing.stdout.strip()
    second = admin(broker.address, "submit", "always_fails", "--args", '["again"]', "--wait")
    assert second.returncode == 1
    assert worker.stop() == 0  # nothing runs from here on: the lists hold still
    listed = admin(broker.address, "failed")
    assert listed.returncode == 0
    assert first in listed.stdout
    assert "2 failed job(s)" in listed.stdout
    assert admin(broker.address, "retry", first).stdout.strip() == "retried 1 job(s)"
    assert json.loads(admin(broker.address, "status", first).stdout)["state"] == "queued"
    assert "1 failed job(s)" in admin(broker.address, "failed").stdout
    assert admin(broker.address, "purge-failed").stdout.strip() == "purged 1 job(s)"
    assert "0 failed job(s)" in admin(broker.address, "failed").stdout
    assert admin(broker.address, "retry", "--all").stdout.strip() == "retried 0 job(s)"


def test_unreachable_broker_is_a_clear_error() -> None:
    unreachable = admin("127.0.0.1:1", "stats")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("error: ")
