"""Hostile bytes into one HTTP connection: it answers HTTP or closes, and never raises.

Driven through a fake transport (``fuzz.targets.FakeTransport``), so
hypothesis can try many inputs quickly; the end-to-end tests show the same
limits on real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import Broker, BrokerConfig
from broker.http import HttpConfig
from broker.http.app import App
from broker.http.protocol import HttpConnection
from fuzz.targets import FakeTransport

METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"G\x00T", b""])
PATHS = st.sampled_from(
    [
        b"/",
        b"/metrics",
        b"/api/events",
        b"/api/failed?limit=-1",
        b"/api/jobs/%ff",
        b"/static/../x",
        b"/api/failed/purge",
        b"/login",
        b"*",
        b"/api/jobs//retry",
    ]
)
HEADER = st.tuples(
    st.sampled_from(
        [
            b"host",
            b"content-length",
            b"transfer-encoding",
            b"x-jobwire-csrf",
            b"cookie",
            b"authorization",
            b"x",
        ]
    ),
    st.binary(max_size=40),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    head = (
        draw(METHODS) + b" " + draw(PATHS) + b" HTTP/1." + draw(st.sampled_from([b"1", b"0", b"9"]))
    )
    headers = b"".join(
        name + b": " + value + b"\r\n" for name, value in draw(st.lists(HEADER, max_size=6))
    )
    return head + b"\r\n" + headers + b"\r\n" + draw(st.binary(max_size=200))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.lists(st.one_of(requests(), st.binary(max_size=300)), min_size=1, max_size=4),
    splits=st.integers(min_value=1, max_value=7),
)
def test_any_bytes_get_http_answers_or_a_close(
    loop: asyncio.AbstractEventLoop, data: list[bytes], splits: int
) -> None:
    async def feed() -> FakeTransport:
        broker = Broker(
            BrokerConfig(port=0, token="t", http=HttpConfig(port=0, max_header_bytes=512))
        )
        app = App(HttpConfig(port=0, max_header_bytes=512, max_body_bytes=128), broker.state)
        connection = HttpConnection(app)
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        stream = b"".join(data)
        step = max(1, len(stream) // splits)
        for start in range(0, len(stream), step):
            connection.data_received(stream[start : start + step])
        connection.eof_received()
        connection.connection_lost(None)
        app.events.close()
        return transport

    transport = loop.run_until_complete(feed())
    written = bytes(transport.written)
    assert not written or written.startswith(b"HTTP/1.1 ")
