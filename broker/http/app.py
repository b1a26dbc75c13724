"""The HTTP application: the routes, who may call them, and what they answer.

:meth:`App.handle` takes a whole :class:`~broker.http.protocol.Request` and
returns a :class:`~broker.http.protocol.Response` (or the marker that opens
a live-update stream); it is synchronous, like the TCP side's handlers, and
changes jobs only through the :class:`~broker.manager.JobManager`.

Security, as on the TCP side: with a token configured every route but
``/healthz``, ``/readyz`` and the login page wants it, as
``Authorization: Bearer TOKEN`` or as the cookie the login form sets
(HttpOnly, SameSite=Strict, Secure under TLS; its value is an HMAC of the
token, so the token itself is never stored in the browser). Every request
that changes something is a POST and needs the ``X-Jobwire-CSRF`` header,
which a cross-site form cannot send and a cross-site script cannot add
without a CORS preflight this server never grants.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, unquote

from broker.http import api
from broker.http.config import HttpConfig
from broker.http.events import EventHub
from broker.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from broker.http.metrics import BrokerCollector, make_registry, render
from broker.http.protocol import EVENT_STREAM, EventStream, HttpConnection, Request, Response
from broker.manager import Histogram, QueueFullError
from broker.state import BrokerState

log = logging.getLogger("broker.http")

COOKIE = "jobwire_session"
CSRF_HEADER = "x-jobwire-csrf"
# How long a login cookie is good for, in seconds.
SESSION_MAX_AGE = 12 * 3600
JSON_TYPE = "application/json"
STATIC_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
PAGE_SECURITY = [
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login", "/static/login.js", "/static/style.css"})

Answer = Response | EventStream


def json_response(
    status: int, value: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(value, separators=(",", ":"), default=str).encode()
    return Response(status, body, JSON_TYPE, headers or [])


def error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _static(name: str) -> bytes:
    return files("broker.http").joinpath("static", name).read_bytes()


class App:
    def __init__(
        self,
        config: HttpConfig,
        state: BrokerState,
        fsync_histogram: Callable[[], Histogram | None] = lambda: None,
    ) -> None:
        self.config = config
        self.state = state
        self.token = state.config.token
        self.connections: set[HttpConnection] = set()
        self.events = EventHub(state, config.event_interval, config.max_event_streams)
        self.registry = make_registry(BrokerCollector(state, fsync_histogram))
        # Login cookies are signed with a key of this process: a restart, or
        # SESSION_MAX_AGE, ends them; a copied cookie is not good forever.
        self._session_key = secrets.token_bytes(32)
        self._static: dict[str, bytes] = {}
        self._on_last_connection_gone: Callable[[], None] | None = None

    # -- connections --

    def connection_opened(self, connection: HttpConnection) -> bool:
        self.connections.add(connection)
        return len(self.connections) <= self.config.max_connections

    def connection_closed(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        self.events.unsubscribe(connection)
        if not self.connections and self._on_last_connection_gone is not None:
            self._on_last_connection_gone()

    def when_no_connections(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once the last connection is gone (for shutdown)."""
        self._on_last_connection_gone = callback

    # -- who may --

    def _session_cookie(self, issued: int) -> str:
        assert self.token is not None
        message = f"{issued}:{self.token}".encode()
        return f"{issued}.{hmac.new(self._session_key, message, hashlib.sha256).hexdigest()}"

    def _session_valid(self, value: str) -> bool:
        issued_text, _, _ = value.partition(".")
        if not issued_text.isdigit():
            return False
        issued = int(issued_text)
        if not 0 <= time.time() - issued <= SESSION_MAX_AGE:
            return False
        return hmac.compare_digest(value.encode(), self._session_cookie(issued).encode())

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self.token.encode()
        ):
            return True
        cookie = request.headers.get("cookie")
        if cookie:
            try:
                jar = SimpleCookie(cookie)
            except CookieError:
                return False
            morsel = jar.get(COOKIE)
            if morsel is not None and self._session_valid(morsel.value):
                return True
        return False

    # -- routing --

    def handle(self, request: Request) -> Answer:
        method, path = request.method, request.path
        if method not in ("GET", "HEAD", "POST"):
            return error(405, f"{method} is not served here")
        if method == "POST" and not request.headers.get(CSRF_HEADER):
            return error(403, f"a POST needs the {CSRF_HEADER} header")
        if path not in OPEN_PATHS and not self.authorized(request):
            if method in ("GET", "HEAD") and path == "/":
                return Response(303, headers=[("location", "/login")])
            return error(401, "this broker wants its token (Authorization: Bearer TOKEN)")
        try:
            if method == "POST":
                return self._post(request, path)
            return self._get(request, path)
        except ValueError as exc:
            return error(400, str(exc))

    def _get(self, request: Request, path: str) -> Answer:
        state = self.state
        if path == "/healthz":
            return json_response(200, {"ok": True})
        if path == "/readyz":
            reason = api.readiness(state)
            if reason is None:
                return json_response(200, {"ready": True})
            return json_response(503, {"ready": False, "reason": reason})
        if path == "/metrics":
            return Response(200, render(self.registry), METRICS_CONTENT_TYPE)
        if path in ("/", "/index.html"):
            return self._file("index.html", PAGE_SECURITY)
        if path == "/login":
            return self._file("login.html", PAGE_SECURITY)
        if path.startswith("/static/"):
            return self._file(path.removeprefix("/static/"))
        if path == "/api/events":
            # HEAD gets the headers a stream would have, and no stream.
            return (
                EVENT_STREAM if request.method == "GET" else Response(200, b"", "text/event-stream")
            )
        if path == "/api/stats":
            stats = state.stats()
            stats["ready"] = api.readiness(state) is None
            return json_response(200, stats)
        if path == "/api/summary":
            return json_response(200, api.summary(state))
        if path == "/api/queues":
            return json_response(200, api.queues_page(state, request.query))
        if path == "/api/workers":
            return json_response(200, api.workers(state))
        if path == "/api/running":
            return json_response(200, api.running(state))
        if path == "/api/failed":
            return json_response(200, api.failed_page(state, request.query))
        if path.startswith("/api/jobs/"):
            job_id = unquote(path.removeprefix("/api/jobs/"))
            job = state.manager.get(job_id)
            if job is None:
                return error(404, f"no job {job_id!r}")
            return json_response(200, api.job_detail(job))
        return error(404, f"nothing at {path}")

    def _post(self, request: Request, path: str) -> Answer:
        if path == "/login":
            return self._login(request)
        state = self.state
        manager = state.manager
        if path.startswith("/api/"):
            failure = state.gate.failure
            if failure is not None:
                return error(503, failure.describe())
        now = time.time()
        try:
            if path == "/api/failed/retry":
                return self._changed({"retried": manager.retry_failed(None, now)})
            if path == "/api/failed/purge":
                return self._changed({"purged": manager.purge_failed()})
            if path.startswith("/api/jobs/"):
                rest = path.removeprefix("/api/jobs/")
                job_id, _, action = rest.rpartition("/")
                job_id = unquote(job_id)
                if action == "retry":
                    count = manager.retry_failed([job_id], now)
                    if not count:
                        return error(404, f"no failed job {job_id!r}")
                    return self._changed({"retried": count})
                if action == "cancel":
                    outcome = manager.cancel(job_id, now)
                    if outcome is None:
                        return error(404, f"no job {job_id!r}")
                    return self._changed({"cancelled": outcome})
        except QueueFullError as exc:
            return error(503, str(exc))
        return error(404, f"nothing to POST at {path}")

    def _changed(self, value: dict[str, Any]) -> Response:
        self.state.arm_timer()
        return json_response(200, value)

    def _login(self, request: Request) -> Response:
        if self.token is None:
            return json_response(200, {"ok": True, "token": "not required"})
        content_type = request.headers.get("content-type", "")
        given = ""
        if content_type.startswith("application/json"):
            try:
                value = json.loads(request.body or b"{}")
            except ValueError:
                return error(400, "the body is not JSON")
            given = str(value.get("token", "")) if isinstance(value, dict) else ""
        else:
            given = dict(parse_qsl(request.body.decode("utf-8", "replace"))).get("token", "")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            log.warning("HTTP login from %s with a wrong token", request.peer)
            return error(403, "wrong token")
        value = self._session_cookie(int(time.time()))
        cookie = f"{COOKIE}={value}; Path=/; Max-Age={SESSION_MAX_AGE}; HttpOnly; SameSite=Strict"
        if request.secure:
            cookie += "; Secure"
        return json_response(200, {"ok": True}, [("set-cookie", cookie)])

    def _file(self, name: str, headers: list[tuple[str, str]] | None = None) -> Response:
        kind = name.rpartition(".")[2]
        if "/" in name or ".." in name or kind not in STATIC_TYPES:
            return error(404, "no such file")
        body = self._static.get(name)
        if body is None:
            try:
                body = self._static[name] = _static(name)
            except (FileNotFoundError, IsADirectoryError):
                return error(404, "no such file")
        return Response(200, body, STATIC_TYPES[kind], list(headers or []))
