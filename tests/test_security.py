"""Hostile input and who may talk to the broker, end to end against a real broker process.

After every attack a normal client still submits and completes a job, and
the jobs queued before it are all still there.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import Client, QueueFull, RemoteError
from broker.config import BrokerConfig
from broker.server import Broker, ExposureRefused
from harness.processes import ROOT, BrokerProc, WorkerProc
from protocol.errors import ProtocolError
from protocol.framing import encode_frame
from protocol.security import auth_proof, client_ssl_context
from tests.rawpeer import RawPeer

TOKEN = "s3cret-token"
WAIT = 30.0
KEEP_QUEUE = "keep"


async def queue_keepers(address: str, ssl_context: ssl.SSLContext | None = None) -> list[str]:
    """Five jobs on a queue no worker serves: they must survive every attack."""
    async with Client(address, token=TOKEN, ssl=ssl_context) as client:
        jobs = await client.submit_many(
            [{"task": "echo", "args": [i], "queue": KEEP_QUEUE} for i in range(5)]
        )
    return [job.id for job in jobs]


async def assert_healthy(
    address: str, keepers: list[str], ssl_context: ssl.SSLContext | None = None
) -> None:
    async with Client(address, token=TOKEN, ssl=ssl_context) as client:
        job = await client.submit("echo", ["still serving"])
        assert await job.result(timeout=WAIT) == "still serving"
        for job_id in keepers:
            assert (await client.status(job_id))["state"] == "queued"
        assert (await client.stats())["queues"][KEEP_QUEUE]["queued"] == len(keepers)


@pytest.fixture
def secured(
    start_broker: Callable[..., BrokerProc], start_worker: Callable[..., WorkerProc]
) -> BrokerProc:
    broker = start_broker("--token", TOKEN, "--handshake-timeout", "2")
    start_worker(broker.address, extra=["--token", TOKEN])
    return broker


async def test_garbage_bytes_close_only_that_connection(secured: BrokerProc) -> None:
    keepers = await queue_keepers(secured.address)
    peer = await RawPeer.connect(secured.address)
    await peer.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    frames = await peer.read_until_closed()
    assert [f["code"] for f in frames] == ["FRAME_TOO_LARGE"]
    await assert_healthy(secured.address, keepers)


async def test_four_gib_length_prefix_is_refused_before_any_body(secured: BrokerProc) -> None:
    keepers = await queue_keepers(secured.address)
    peer = await RawPeer.connect(secured.address)
    await peer.send_bytes(b"\xff\xff\xff\xff")  # and not one byte of the promised body
    frames = await peer.read_until_closed()
    assert frames[0]["code"] == "FRAME_TOO_LARGE"
    assert "4294967295" in frames[0]["message"]
    await assert_healthy(secured.address, keepers)


async def test_truncated_frame_then_close(secured: BrokerProc) -> None:
    keepers = await queue_keepers(secured.address)
    peer = await RawPeer.connect(secured.address)
    frame = encode_frame({"op": "HELLO", "rid": 0, "version": 1, "role": "client"})
    await peer.send_bytes(frame[: len(frame) // 2])
    peer.close()
    await assert_healthy(secured.address, keepers)


async def test_requests_before_the_handshake_are_refused(secured: BrokerProc) -> None:
    keepers = await queue_keepers(secured.address)
    peer = await RawPeer.connect(secured.address)
    assert peer.welcome["auth"] is True
    assert len(peer.welcome["nonce"]) == 16
    await peer.send(
        {"op": "SUBMIT", "rid": 1, "jobs": [{"task": "echo", "payload": b"\x92\x90\x80"}]}
    )
    frames = await peer.read_until_closed()
    assert [(f["code"], f["rid"]) for f in frames] == [("AUTH_REQUIRED", 1)]
    await assert_healthy(secured.address, keepers)


async def test_wrong_or_missing_token_is_refused(secured: BrokerProc) -> None:
    keepers = await queue_keepers(secured.address)
    for token in ("wrong-token", None):
        peer = await RawPeer.connect(secured.address)
        reply = await peer.hello(token)
        assert reply["code"] == "AUTH_FAILED"
        assert await peer.read_until_closed() == []
    with pytest.raises(RemoteError, match="AUTH_FAILED"):
        async with Client(secured.address, token="wrong-token") as client:
            await client.ping()
    await assert_healthy(secured.address, keepers)


async def test_replayed_handshake_is_refused(secured: BrokerProc) -> None:
    keepers = await queue_keepers(secured.address)
    first = await RawPeer.connect(secured.address)
    recorded: dict[str, object] = {"op": "HELLO", "rid": 0, "version": 1, "role": "client"}
    recorded["auth"] = auth_proof(TOKEN, first.welcome["nonce"])
    await first.send(recorded)
    assert (await first.read())["op"] == "OK"
    # The same proof, replayed on a new connection with a new nonce.
    second = await RawPeer.connect(secured.address)
    await second.send(recorded)
    assert (await second.read())["code"] == "AUTH_FAILED"
    assert await second.read_until_closed() == []
    # And a second HELLO on the authenticated connection is refused too.
    await first.send(recorded)
    assert (await first.read())["code"] == "BAD_REQUEST"
    assert await first.read_until_closed() == []
    await assert_healthy(secured.address, keepers)


async def test_wrong_types_get_bad_request_naming_the_field_and_keep_the_connection(
    secured: BrokerProc,
) -> None:
    keepers = await queue_keepers(secured.address)
    peer = await RawPeer.connect(secured.address)
    assert (await peer.hello(TOKEN))["op"] == "OK"
    await peer.send({"op": "SUBMIT", "rid": 1, "jobs": [{"task": 5, "payload": b"\x92\x90\x80"}]})
    error = await peer.read()
    assert (error["code"], error["rid"]) == ("BAD_REQUEST", 1)
    assert "SUBMIT.jobs[0].task" in error["message"]
    await peer.send({"op": "SUBMIT", "rid": 2, "jobs": [{"payload": b""}]})
    error = await peer.read()
    assert error["code"] == "BAD_REQUEST"
    assert "'task'" in error["message"]
    await peer.send({"op": "NOPE", "rid": 3})
    assert (await peer.read())["code"] == "UNKNOWN_OP"
    # A producer may not act as a worker.
    await peer.send({"op": "ACK", "id": keepers[0], "attempt": 1, "result": b"\xc0"})
    assert (await peer.read())["code"] == "FORBIDDEN"
    await peer.send({"op": "PING", "rid": 4})
    assert await peer.read() == {"op": "OK", "rid": 4}
    await assert_healthy(secured.address, keepers)


async def test_workers_may_not_submit(secured: BrokerProc) -> None:
    peer = await RawPeer.connect(secured.address)
    assert (await peer.hello(TOKEN, role="worker", queues=["nothing-here"]))["op"] == "OK"
    await peer.send(
        {"op": "SUBMIT", "rid": 1, "jobs": [{"task": "echo", "payload": b"\x92\x90\x80"}]}
    )
    assert (await peer.read())["code"] == "FORBIDDEN"


async def test_a_client_that_never_reads_is_dropped_and_loses_no_job(
    start_broker: Callable[..., BrokerProc], start_worker: Callable[..., WorkerProc]
) -> None:
    broker = start_broker(
        "--token", TOKEN, "--output-pause-bytes", "65536", "--output-stall-timeout", "1"
    )
    keepers = await queue_keepers(broker.address)
    blob = "x" * 32 * 1024
    async with Client(broker.address, token=TOKEN) as client:
        jobs = await client.submit_many([{"task": "echo", "args": [blob]} for _ in range(300)])
        # A peer with a tiny receive window that watches every job and never reads.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", broker.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        slow = RawPeer(reader, writer)
        slow.welcome = await slow.read()
        assert (await slow.hello(TOKEN))["op"] == "OK"
        await slow.send({"op": "WATCH", "rid": 1, "ids": [job.id for job in jobs]})
        start_worker(broker.address, extra=["--token", TOKEN])
        results = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), WAIT)
        assert results == [blob] * 300
        await asyncio.to_thread(broker.wait_for_line, r"reads too slowly", WAIT)
        slow.close()
    await assert_healthy(broker.address, keepers)


async def test_a_thousand_silent_connections_neither_stall_nor_stay(secured: BrokerProc) -> None:
    keepers = await queue_keepers(secured.address)
    silent = await asyncio.gather(
        *(RawPeer.connect(secured.address, read_welcome=False) for _ in range(1000))
    )
    try:
        await assert_healthy(secured.address, keepers)
        # --handshake-timeout 2: each gets WELCOME, then a TIMEOUT error and the door.
        everyones_frames = await asyncio.gather(
            *(peer.read_until_closed(timeout=WAIT) for peer in silent)
        )
        for frames in everyones_frames:
            assert [f["op"] for f in frames] == ["WELCOME", "ERR"]
            assert frames[1]["code"] == "TIMEOUT"
        async with Client(secured.address, token=TOKEN) as client:
            stats = await client.stats()
            assert stats["connections"] == 2  # this client and the worker
    finally:
        for peer in silent:
            peer.close()
    await assert_healthy(secured.address, keepers)


async def test_max_jobs_gives_queue_full_and_loses_nothing(
    start_broker: Callable[..., BrokerProc], start_worker: Callable[..., WorkerProc]
) -> None:
    broker = start_broker("--token", TOKEN, "--max-jobs", "9")
    keepers = await queue_keepers(broker.address)
    async with Client(broker.address, token=TOKEN) as client:
        with pytest.raises(QueueFull):
            await client.submit_many([{"task": "echo", "args": [i]} for i in range(5)])
        assert (await client.stats())["unfinished"] == 5
        # Re-submitting ids the broker already holds takes no room.
        again = await client.submit("echo", [0], queue=KEEP_QUEUE, job_id=keepers[0])
        assert again.id == keepers[0]
        await client.submit_many([{"task": "echo", "args": [i]} for i in range(3)])
    start_worker(broker.address, extra=["--token", TOKEN])
    await assert_healthy(broker.address, keepers)


async def test_max_connections(start_broker: Callable[..., BrokerProc]) -> None:
    broker = start_broker("--max-connections", "2")
    first = await RawPeer.connect(broker.address)
    second = await RawPeer.connect(broker.address, read_welcome=False)
    third = await RawPeer.connect(broker.address, read_welcome=False)
    frames = await third.read_until_closed()
    assert [f.get("code") for f in frames] == ["TOO_MANY_CONNECTIONS"]
    first.close()
    second.close()


def make_certificates(directory: Path, client_cert: bool = False) -> dict[str, str]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    if client_cert:
        client = ca.issue_cert("worker@jobwire")
        paths["client"] = directory / "client.pem"
        client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return {name: str(path) for name, path in paths.items()}


async def test_tls_end_to_end(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    pem = make_certificates(tmp_path)
    broker = start_broker("--token", TOKEN, "--tls-cert", pem["cert"], "--tls-key", pem["key"])
    context = client_ssl_context(pem["ca"])
    keepers = await queue_keepers(broker.address, context)
    start_worker(broker.address, extra=["--token", TOKEN, "--tls-ca", pem["ca"]])
    # A plaintext peer gets nothing it can read and does not disturb the broker.
    plain = await RawPeer.connect(broker.address, read_welcome=False)
    await plain.send_bytes(encode_frame({"op": "PING", "rid": 1}))
    with pytest.raises((EOFError, ConnectionError, ProtocolError)):
        await plain.read(timeout=5)  # the broker's TLS alert is not a frame
    plain.close()
    await assert_healthy(broker.address, keepers, context)


async def test_tls_client_certificates_are_required_when_asked(
    tmp_path: Path,
    start_broker: Callable[..., BrokerProc],
    start_worker: Callable[..., WorkerProc],
) -> None:
    pem = make_certificates(tmp_path, client_cert=True)
    broker = start_broker(
        "--token", TOKEN, "--tls-cert", pem["cert"], "--tls-key", pem["key"],
        "--tls-client-ca", pem["ca"],
    )  # fmt: skip
    with pytest.raises((ssl.SSLError, ConnectionError)):
        async with Client(broker.address, token=TOKEN, ssl=client_ssl_context(pem["ca"])) as c:
            await c.ping()
    with_cert = client_ssl_context(pem["ca"], pem["client"])
    keepers = await queue_keepers(broker.address, with_cert)
    start_worker(
        broker.address,
        extra=["--token", TOKEN, "--tls-ca", pem["ca"], "--tls-cert", pem["client"]],
    )
    await assert_healthy(broker.address, keepers, with_cert)


def test_refuses_to_expose_an_unauthenticated_broker() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "broker", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 1
    assert "refusing to listen on 0.0.0.0 without a token" in run.stderr
    assert "listening on" not in run.stderr


@pytest.mark.parametrize(
    ("host", "token", "insecure", "allowed"),
    [
        ("127.0.0.1", None, False, True),
        ("127.0.0.9", None, False, True),
        ("::1", None, False, True),
        ("localhost", None, False, True),
        ("0.0.0.0", None, False, False),
        ("192.0.2.7", None, False, False),
        ("jobs.example.com", None, False, False),
        ("0.0.0.0", "t", False, True),
        ("0.0.0.0", None, True, True),
    ],
)
def test_exposure_policy(host: str, token: str | None, insecure: bool, allowed: bool) -> None:
    broker = Broker(BrokerConfig(host=host, token=token, insecure=insecure))
    if allowed:
        broker.check_exposure()
    else:
        with pytest.raises(ExposureRefused):
            broker.check_exposure()


def test_worker_with_a_wrong_token_exits_with_a_clear_error(secured: BrokerProc) -> None:
    worker = WorkerProc(
        secured.address, ["tests.tasks_e2e"], extra=["--token", "nope"], wait_connected=False
    )
    try:
        assert worker.wait(WAIT) == 2  # refused: a usage error, not a retry
        assert "AUTH_FAILED" in worker.output()
    finally:
        worker.stop()
