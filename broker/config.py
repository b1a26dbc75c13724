"""The broker's settings, in one object passed to everything that needs them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.manager import ManagerConfig
from protocol.framing import DEFAULT_MAX_FRAME

if TYPE_CHECKING:  # only a type here: sessions need the config, not the journal
    from broker.http import HttpConfig
    from broker.journal import JournalConfig


@dataclass(slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 7878
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    # Durability; None keeps everything in memory only.
    journal: JournalConfig | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    # A connection that has not completed its handshake by then is closed.
    handshake_timeout: float = 5.0
    # A connection that sends nothing for this long is closed (workers heartbeat).
    idle_timeout: float = 300.0
    max_connections: int = 10_000
    # Output buffered for one peer: past the first bound the broker stops
    # reading from that peer; past the second it drops the connection.
    output_pause_bytes: int = 4 * 1024 * 1024
    output_drop_bytes: int = 64 * 1024 * 1024
    # A peer whose output stays above the first bound this long is dropped.
    output_stall_timeout: float = 30.0
    token: str | None = None
    # TLS for every connection (see protocol.security.server_ssl_context).
    ssl: ssl.SSLContext | None = None
    # Allow binding a non-loopback address without a token.
    insecure: bool = False
    # How long shutdown waits for connections to flush before cutting them.
    shutdown_grace: float = 2.0
    # The HTTP side (health, metrics, status page); None: no HTTP (embedding's default).
    http: HttpConfig | None = None
