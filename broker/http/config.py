"""The HTTP side's settings: where it listens and the limits every request is held to."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 7879


@dataclass(slots=True)
class HttpConfig:
    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    # Given on the command line (an address that cannot be bound stops start-up)
    # rather than the default (which only warns when it is busy).
    explicit: bool = True
    # The request line and headers together (h11's max_incomplete_event_size).
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    # A request must arrive whole within this many seconds of its first byte,
    # and an idle keep-alive connection is closed after as long: slow clients
    # are cut off. A whole POST waiting for storage is not bound by it.
    request_timeout: float = 10.0
    max_connections: int = 256
    # Live-update streams (/api/events) open at once, and how often they get news.
    max_event_streams: int = 64
    event_interval: float = 1.0
    # A client whose unsent output passes this is dropped (a stream nobody reads).
    max_output_bytes: int = 4 * 1024 * 1024


def parse_http_address(value: str) -> HttpConfig | None:
    """``HOST:PORT`` (or ``off``) from ``--http``; raises ValueError."""
    if value.strip().lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--http wants HOST:PORT or off, not {value!r}")
    return HttpConfig(host=host.strip("[]"), port=int(port))
