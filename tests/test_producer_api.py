"""What a producer imports and sends: the light import, one options object, one vocabulary."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

import broker
from broker import JobCancelled, JobFailed
from broker.client import SUBMIT_FIELDS, job_spec, unpack_outcome
from harness.processes import ROOT
from protocol.errors import ErrorCode, QueueFull, RemoteError, StorageFailed, remote_error
from protocol.job_spec import WIRE_NAMES, JobSpec
from protocol.messages import JOB_SPEC, validate_request
from protocol.security import TOKEN_ENV, add_peer_arguments, peer_settings, resolve_token
from protocol.states import JobState
from worker.__main__ import parser as worker_parser

SERVER_SIDE = ("broker.server", "broker.session", "broker.manager", "broker.journal", "fcntl")


def modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    run = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(run.stdout.splitlines()[-1])
    return loaded


def test_importing_the_client_loads_no_server_code() -> None:
    loaded = set(modules_after("from broker import Client, JobFailed"))
    # asyncio itself may load fcntl (through subprocess, on some Pythons): only
    # what jobwire adds to that counts.
    baseline = set(modules_after("import asyncio, ssl, msgpack"))
    added = loaded - baseline
    assert "broker.client" in loaded
    assert [name for name in SERVER_SIDE if name in added] == []
    assert not any(name.startswith(("broker.", "worker")) for name in added - {"broker.client"})


def test_every_exported_name_of_broker_resolves() -> None:
    for name in broker.__all__:
        assert getattr(broker, name) is not None
    assert broker.StorageFailed is StorageFailed
    assert broker.JobState is JobState
    with pytest.raises(AttributeError):
        _ = broker.NoSuchName


def test_job_spec_fields_wire_names_and_schema_agree() -> None:
    attributes = [f.name for f in dataclasses.fields(JobSpec)]
    assert attributes == list(WIRE_NAMES)
    assert sorted(WIRE_NAMES.values()) == sorted(JOB_SPEC)
    required = {name for name, field in JOB_SPEC.items() if field.required}
    without_default = {
        WIRE_NAMES[f.name]
        for f in dataclasses.fields(JobSpec)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert required == without_default
    # A submit_many entry names every option but the encoded payload.
    assert (set(attributes) - {"payload"}) | {"args", "kwargs"} == SUBMIT_FIELDS


def test_a_full_spec_survives_the_wire_and_the_validator() -> None:
    spec = job_spec(
        "t",
        [1, 2],
        {"k": "v"},
        queue="q",
        priority=-3,
        delay=1.5,
        max_attempts=7,
        timeout=2.0,
        lease=9.0,
        job_id="order-1",
        result_ttl=0,
        depends_on=("order-0",),
        unique_key="order:1",
        unique_for=30.0,
    )
    wire = spec.to_wire()
    assert set(wire) == set(JOB_SPEC)
    validate_request({"op": "SUBMIT", "rid": 1, "jobs": [wire]})
    assert JobSpec.from_wire(wire) == spec
    assert msgpack.unpackb(wire["payload"]) == [[1, 2], {"k": "v"}]
    # The defaults stay off the wire.
    assert set(job_spec("t").to_wire()) == {"task", "payload"}


def test_job_spec_refuses_an_unknown_option_and_an_empty_task() -> None:
    with pytest.raises(TypeError):
        job_spec("t", colour="blue")
    with pytest.raises(ValueError, match="task"):
        job_spec("")


def test_outcomes_are_read_through_the_shared_states() -> None:
    done = {"op": "DONE", "id": "j", "state": JobState.SUCCEEDED, "result": msgpack.packb(5)}
    assert unpack_outcome(done) == 5
    error = {"type": "E", "message": "m"}
    with pytest.raises(JobCancelled):
        unpack_outcome({"op": "DONE", "id": "j", "state": JobState.CANCELLED, "error": error})
    with pytest.raises(JobFailed) as failed:
        unpack_outcome({"op": "DONE", "id": "j", "state": JobState.FAILED, "error": error})
    assert not isinstance(failed.value, JobCancelled)
    assert (failed.value.error_type, failed.value.error_message) == ("E", "m")


def test_storage_failed_is_a_stable_code_with_its_own_exception() -> None:
    assert ErrorCode.STORAGE_FAILED == "STORAGE_FAILED"
    error = remote_error("STORAGE_FAILED", "storage failed: write: no space left on device")
    assert isinstance(error, StorageFailed)
    assert isinstance(error, RemoteError)
    assert not isinstance(error, QueueFull)
    assert error.code == ErrorCode.STORAGE_FAILED


def test_a_token_is_stripped_however_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "  from-env\n")
    assert resolve_token() == "from-env"
    assert resolve_token("\tgiven \n") == "given"
    token_file = tmp_path / "token"
    token_file.write_text("\n  from-file  \nsecond line\n", encoding="utf-8")
    assert resolve_token(None, str(token_file)) == "from-file"
    # Only whitespace counts as none given.
    assert resolve_token("   ") == "from-env"
    monkeypatch.setenv(TOKEN_ENV, " \n")
    assert resolve_token() is None
    token_file.write_text(" \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        resolve_token(None, str(token_file))


def test_the_peer_command_lines_strip_the_token_too() -> None:
    parser = argparse.ArgumentParser()
    add_peer_arguments(parser)
    token, context = peer_settings(parser.parse_args(["--token", " s3cret\n"]))
    assert (token, context) == ("s3cret", None)


def test_worker_help_says_which_queues_it_serves_by_default() -> None:
    help_text = " ".join(worker_parser().format_help().split())
    assert "the queues the loaded tasks name" in help_text
    assert "plus 'default' if some task names none" in help_text
