"""The broker's HTTP side: health checks, Prometheus metrics, a JSON API and a live status page.

- ``config``: :class:`HttpConfig` (address and limits), ``--http`` parsing;
- ``protocol``: one connection, an ``asyncio.Protocol`` over h11;
- ``app``: the routes, the token and CSRF checks;
- ``api``: the JSON the endpoints and the event stream send;
- ``events``: server-sent events for the status page;
- ``metrics``: the Prometheus collector;
- ``server``: the listener the broker starts and stops;
- ``static/``: the page (HTML, CSS, JavaScript; no build step, no CDN).
"""

from broker.http.config import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, HttpConfig, parse_http_address
from broker.http.server import HttpBindError, HttpExposureRefused, HttpServer

__all__ = [
    "DEFAULT_HTTP_HOST",
    "DEFAULT_HTTP_PORT",
    "HttpBindError",
    "HttpConfig",
    "HttpExposureRefused",
    "HttpServer",
    "parse_http_address",
]
