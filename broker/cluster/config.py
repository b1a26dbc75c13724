"""How a cluster node is configured (``--cluster``, ``--shard`` and friends), and the
names its shard uses in JetStream. Pure: no ``nats`` here."""

from __future__ import annotations

import re
from dataclasses import dataclass

SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(slots=True)
class ClusterConfig:
    # nats://host:port URLs of the NATS servers (any of them; the others are discovered).
    servers: list[str]
    shard: str = "s0"
    # host:port peers are told to connect to when this node leads (NOT_LEADER's
    # ``leader``); None: the address it listens on.
    advertise: str | None = None
    # The leader renews its lease every lease_ttl / 4; a standby takes over once
    # the lease has expired.
    lease_ttl: float = 10.0
    # A publish not acknowledged within this long: the leader stops serving.
    publish_timeout: float = 5.0
    # Replicas of the stream, the lease bucket and the snapshot store; None:
    # 3 when the cluster has at least 3 servers, else 1.
    replicas: int | None = None
    # Snapshot once the stream has grown by this many bytes since the last one.
    snapshot_min_bytes: int = 16 * 1024 * 1024
    # How often a standby looks at the lease.
    poll_interval: float = 0.25

    def __post_init__(self) -> None:
        if not SHARD_NAME.match(self.shard):
            raise ValueError(f"shard name {self.shard!r}: letters, digits, _ and - only")
        if not self.servers:
            raise ValueError("--cluster needs at least one nats:// URL")
        if self.lease_ttl < 1.0:
            raise ValueError("--lease-ttl must be at least 1 second")

    @property
    def stream(self) -> str:
        return f"JW_{self.shard}"

    @property
    def subject(self) -> str:
        return f"jobwire.{self.shard}.journal"

    @property
    def lease_bucket(self) -> str:
        return f"JW_{self.shard}_lease"

    @property
    def snapshot_bucket(self) -> str:
        return f"JW_{self.shard}_snapshots"

    # The lease bucket's one key.
    lease_key = "leader"


def parse_servers(text: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` (``nats://`` may be left out) as URLs."""
    urls = []
    for part in text.split(","):
        url = part.strip()
        if url:
            urls.append(url if "://" in url else f"nats://{url}")
    if not urls:
        raise ValueError("--cluster needs at least one nats:// URL")
    return urls
