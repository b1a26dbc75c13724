"""Leadership of a shard: one key in a KV bucket whose TTL is the lease.

The leader *claims* the key with ``create`` (which succeeds only where the
key does not exist, so of two standbys exactly one wins) and *renews* it
every quarter TTL with ``update`` at the revision it last wrote
(compare-and-set: a renewal after another node claimed the key is refused).
If the key is not renewed it expires and a standby claims it. The leader's
own :class:`~broker.cluster.batches.LeaseClock` runs out before the servers'
TTL does; when it does, or a renewal is refused, the lease is *lost* and
``on_lost`` is called once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.cluster.batches import LeaseClock
from broker.cluster.shard import CANCEL_GRACE, settle

log = logging.getLogger("broker.cluster")


class Leadership:
    def __init__(self, bucket: KeyValue, key: str, address: str, ttl: float) -> None:
        self.bucket = bucket
        self.key = key
        # What the key holds while we lead: where peers should connect.
        self.address = address
        self.clock = LeaseClock(ttl)
        self.revision = 0
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] = lambda cause: None
        self._renewing: asyncio.Task[None] | None = None

    async def leader_address(self) -> str | None:
        """The current leader's ``host:port``, or None while there is none."""
        try:
            entry = await self.bucket.get(self.key)
        except KeyNotFoundError:
            return None
        return None if entry.value is None else entry.value.decode()

    async def claim(self) -> bool:
        """Become the leader if nobody is (the key absent); True if we are now."""
        sent_at = time.monotonic()
        try:
            self.revision = await self.bucket.create(self.key, self.address.encode())
        except KeyWrongLastSequenceError:
            return False
        self.clock.renewed(sent_at)
        return True

    def valid(self) -> bool:
        """Whether we may still act as the leader (checks the clock: loses the lease if not)."""
        if self.lost is None and not self.clock.valid(time.monotonic()):
            self.lose(f"the lease ran out ({self.clock.ttl:g} s without a renewal)")
        return self.lost is None

    def start_renewing(self) -> None:
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        interval = self.clock.ttl / 4
        while self.valid():
            await asyncio.sleep(max(0.0, min(interval, self.clock.left(time.monotonic()))))
            if not self.valid():
                return
            sent_at = time.monotonic()
            try:
                async with asyncio.timeout(max(0.01, self.clock.left(sent_at))):
                    self.revision = await self.bucket.update(
                        self.key, self.address.encode(), last=self.revision
                    )
            except KeyWrongLastSequenceError:
                self.lose("another broker holds the lease")
                return
            except (TimeoutError, NatsError) as exc:
                log.warning("could not renew the lease: %s", exc or type(exc).__name__)
                continue
            self.clock.renewed(sent_at)

    def lose(self, cause: str) -> None:
        """We may not lead any more (fenced out, or cut off): stop renewing."""
        if self.lost is not None:
            return
        self.lost = cause
        self.on_lost(cause)

    async def stop(self, release: bool) -> None:
        """Stop renewing; with ``release``, delete the key so that a standby takes over now."""
        task, self._renewing = self._renewing, None
        await settle(task, CANCEL_GRACE)
        if release and self.lost is None and self.clock.valid(time.monotonic()):
            self.lost = "released"
            try:
                async with asyncio.timeout(2.0):
                    await self.bucket.delete(self.key, last=self.revision)
            except (TimeoutError, NatsError) as exc:
                log.warning("could not release the lease (it expires by itself): %s", exc)
