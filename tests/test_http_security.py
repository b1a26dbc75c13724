"""The HTTP side's security and limits: the token, CSRF, exposure, oversized and slow requests,
bind failures; and the CLI around it (``ping``, ``--log-format json``)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from broker import Broker, BrokerConfig, Client
from broker.http import HttpConfig, HttpExposureRefused
from harness.processes import ROOT, BrokerProc, Proc
from tests.httpclient import EventReader, raw_exchange, request

TOKEN = "s3cret-token"
CSRF = {"x-jobwire-csrf": "1"}
CLI_TIMEOUT = 60.0


@pytest.fixture
async def guarded() -> AsyncIterator[Broker]:
    """A broker with a token, its HTTP side on a free loopback port, with short limits."""
    http = HttpConfig(port=0, request_timeout=0.5, max_body_bytes=1024, max_header_bytes=4096)
    broker = Broker(BrokerConfig(port=0, token=TOKEN, http=http))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def port_of(broker: Broker) -> int:
    port = broker.http_port
    assert port is not None
    return port


async def test_the_token_is_wanted_and_the_login_sets_a_strict_cookie(guarded: Broker) -> None:
    port = port_of(guarded)
    assert (await request(port, "GET", "/healthz")).status == 200  # health stays open
    assert (await request(port, "GET", "/api/stats")).status == 401
    assert (await request(port, "GET", "/metrics")).status == 401
    page = await request(port, "GET", "/")
    assert (page.status, page.headers["location"]) == (303, "/login")
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert (await request(port, "GET", "/api/stats", headers=bearer)).status == 200
    wrong = {"authorization": "Bearer nope"}
    assert (await request(port, "GET", "/api/stats", headers=wrong)).status == 401

    form = b"token=" + TOKEN.encode()
    form_type = {"content-type": "application/x-www-form-urlencoded"}
    assert (await request(port, "POST", "/login", headers=form_type, body=form)).status == 403
    bad = await request(port, "POST", "/login", headers={**form_type, **CSRF}, body=b"token=x")
    assert bad.status == 403 and "set-cookie" not in bad.headers
    login = await request(port, "POST", "/login", headers={**form_type, **CSRF}, body=form)
    assert login.status == 200
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    session = {"cookie": cookie.split(";", 1)[0]}
    assert (await request(port, "GET", "/api/stats", headers=session)).status == 200
    # The cookie alone does not make a POST: it needs the CSRF header too.
    assert (await request(port, "POST", "/api/failed/purge", headers=session)).status == 403
    purge = await request(port, "POST", "/api/failed/purge", headers={**session, **CSRF})
    assert purge.json() == {"purged": 0}


async def test_oversized_and_slow_requests_are_cut_off_and_tcp_goes_on(guarded: Broker) -> None:
    port = port_of(guarded)
    async with Client(guarded.address, token=TOKEN) as client:
        job = await client.submit("echo", [1])
        huge_header = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n"
        answer = await raw_exchange(port, huge_header)
        assert answer.startswith(b"HTTP/1.1 431 ")
        big_body = (
            b"POST /login HTTP/1.1\r\nhost: x\r\nx-jobwire-csrf: 1\r\n"
            b"content-length: 10000000\r\n\r\n"
        )
        assert (await raw_exchange(port, big_body)).startswith(b"HTTP/1.1 413 ")
        chunked = (
            b"POST /login HTTP/1.1\r\nhost: x\r\nx-jobwire-csrf: 1\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"800\r\n" + b"a" * 2048 + b"\r\n"
        )
        assert (await raw_exchange(port, chunked)).startswith(b"HTTP/1.1 413 ")
        assert (await raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")

        # A slow client (half a request, then nothing) is cut off after request_timeout;
        # meanwhile the TCP side answers as usual.
        slow = asyncio.ensure_future(raw_exchange(port, b"GET /api/stats HTTP/1.1\r\nhost: x\r\n"))
        await client.ping()
        assert (await client.status(job.id))["state"] == "queued"
        assert (await slow).startswith(b"HTTP/1.1 408 ")
        # An idle keep-alive connection is closed too, without an answer.
        assert await raw_exchange(port, b"") == b""
        await client.ping()
    assert (await request(port, "GET", "/healthz")).status == 200


async def test_non_loopback_http_without_a_token_is_refused() -> None:
    broker = Broker(BrokerConfig(port=0, http=HttpConfig(host="0.0.0.0", port=0)))
    with pytest.raises(HttpExposureRefused, match="without a token"):
        await broker.start()  # refused before anything is bound


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_busy_default_address_only_warns(busy_port: int) -> None:
    broker = Broker(BrokerConfig(port=0, http=HttpConfig(port=busy_port, explicit=False)))
    await broker.start()
    try:
        assert broker.http_port is None
        async with Client(broker.address) as client:
            await client.ping()
    finally:
        await broker.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_cli_exits_2_when_an_explicit_http_address_is_busy(busy_port: int) -> None:
    done = run_cli("--port", "0", "--http", f"127.0.0.1:{busy_port}")
    assert done.returncode == 2
    assert f"cannot serve HTTP on 127.0.0.1:{busy_port}" in done.stderr


def test_cli_refuses_non_loopback_http_without_a_token() -> None:
    done = run_cli("--port", "0", "--http", "0.0.0.0:0")
    assert done.returncode != 0
    assert "refusing to serve HTTP on 0.0.0.0 without a token" in done.stderr


def test_ping_says_whether_the_broker_is_ready(procs: list[Proc]) -> None:
    broker = BrokerProc(["--http", "off"])
    procs.append(broker)
    ok = run_cli("ping", "--connect", broker.address)
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok")
    broker.stop()
    gone = run_cli("ping", "--connect", broker.address)
    assert gone.returncode != 0
    assert gone.stderr.strip()


def test_json_logs_are_one_object_per_line(procs: list[Proc]) -> None:
    broker = Proc(
        "broker",
        ["-m", "broker", "--port", "0", "--http", "127.0.0.1:0", "--log-format", "json"],
    )
    procs.append(broker)
    broker.wait_for_line(r"listening on")
    broker.wait_for_line(r"status page")
    broker.stop()
    entries = [json.loads(line) for line in broker.lines if line.strip()]
    assert entries
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= entry.keys()
    assert any(entry["logger"] == "broker.http" and "http on" in entry["msg"] for entry in entries)


async def test_many_pipelined_requests_are_answered_in_order(guarded: Broker) -> None:
    port = port_of(guarded)
    one = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    answer = await raw_exchange(port, one * 2000 + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 2001


async def test_sigterm_with_an_event_stream_open_exits_zero(procs: list[Proc]) -> None:
    broker = BrokerProc(["--http", "127.0.0.1:0"])
    procs.append(broker)
    port = int(broker.wait_for_line(r"http on \S+:\d+").rsplit(":", 1)[1])
    stream = await EventReader.open(port)
    try:
        await stream.next_event()
        assert await asyncio.to_thread(broker.stop) == 0
        with pytest.raises(EOFError):
            while True:
                await stream.next_event()
    finally:
        stream.close()
