"""The HTTP listener, started and stopped by the broker on its own event loop.

:class:`HttpServer` binds the address, builds the :class:`~broker.http.app.App`
and closes everything on :meth:`stop`: it stops accepting, ends the event
streams, closes idle connections and, after the broker's grace period, cuts
the rest, as the TCP listener does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from broker.http.app import App
from broker.http.config import HttpConfig
from broker.http.protocol import HttpConnection
from broker.manager import Histogram
from broker.state import BrokerState
from protocol.security import is_loopback

log = logging.getLogger("broker.http")


class HttpExposureRefused(ValueError):
    """HTTP on a non-loopback address without a token (and without --insecure)."""


class HttpBindError(OSError):
    """An HTTP address given explicitly cannot be bound."""


class HttpServer:
    def __init__(
        self,
        config: HttpConfig,
        state: BrokerState,
        *,
        ssl_context: ssl.SSLContext | None = None,
        fsync_histogram: Callable[[], Histogram | None] = lambda: None,
    ) -> None:
        self.config = config
        self.state = state
        self.ssl = ssl_context
        self.app = App(config, state, fsync_histogram)
        self._server: asyncio.Server | None = None

    def check_exposure(self) -> None:
        broker = self.state.config
        if not is_loopback(self.config.host) and broker.token is None and not broker.insecure:
            raise HttpExposureRefused(
                f"refusing to serve HTTP on {self.config.host} without a token: anyone who can "
                "reach it could retry, cancel and purge jobs. Set --token, pass --http "
                "127.0.0.1:PORT (or --http off), or --insecure if this network is trusted."
            )

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        assert self._server is not None, "HTTP is not serving"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown = "127.0.0.1"
        return f"{'https' if self.ssl else 'http'}://{shown}:{self.port}/"

    async def start(self) -> bool:
        """Listen; False (with a warning) if the default address is busy."""
        self.check_exposure()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: HttpConnection(self.app),
                self.config.host,
                self.config.port,
                reuse_address=True,
                ssl=self.ssl,
            )
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            if self.config.explicit:
                raise HttpBindError(exc.errno, f"cannot serve HTTP on {where}: {exc}") from exc
            log.warning("cannot serve HTTP on %s (%s): serving without HTTP", where, exc)
            return False
        log.info("http on %s:%d", self.config.host, self.port)
        log.info("status page: %s", self.url)
        return True

    async def stop(self, grace: float) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self.app.events.close()
        for connection in list(self.app.connections):
            connection.close_when_idle()
        if self.app.connections:
            gone = asyncio.Event()
            self.app.when_no_connections(gone.set)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await gone.wait()
            self.app.when_no_connections(None)
        for connection in list(self.app.connections):
            connection.abort()
        await server.wait_closed()
