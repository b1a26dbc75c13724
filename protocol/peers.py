"""Which broker address a peer tries next, when it was given several (a cluster shard's).

Sans-I/O, shared by the client and the worker: they ask :meth:`LeaderSearch.next`
for an address, try it, and report how it went. A standby broker refuses
with ``NOT_LEADER`` and names the leader: that address is tried next, even
if it is not in the list (a standby is a broker the peer reached with its
own token and TLS settings, so its word is trusted as far as the broker
itself is; with TLS the leader's certificate is still checked). Otherwise
the next address of the list is tried. A *round* ends when every address
of the list, and every leader named during it, has been tried once; the
peer's backoff (:class:`protocol.backoff.Reconnect`) counts rounds, not
attempts, so that a failover is found at once, and a shard that is down
altogether is not hammered.

After a connection that worked, the next round starts at the address that
worked: with one address, this is exactly the reconnecting of a single
broker.

One attempt may take only its share of the peer's connect timeout
(:meth:`LeaderSearch.attempt_timeout`): a broker that accepts connections
but never answers (a stopped process, a machine gone without a reset) must
not keep the peer from the leader at the next address.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from protocol.backoff import Reconnect

# While a standby answers NOT_LEADER, a failover is under way and the leader
# may come up any moment: a round ends with a short wait (jittered between
# half and all of this), not the growing backoff of a shard that is down.
FAILOVER_RETRY = 0.2


class LeaderSearch:
    __slots__ = (
        "_leader",
        "_standby_answered",
        "_start",
        "_tried",
        "addresses",
        "current",
        "failover",
    )

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("no broker address given")
        self.addresses = tuple(addresses)
        # The address tried last (or connected to).
        self.current = self.addresses[0]
        # Where in the list the next round starts.
        self._start = 0
        # Addresses tried in this round.
        self._tried: set[str] = set()
        # A leader a standby named, to try next.
        self._leader: str | None = None
        # A standby refused in this round; in the last one (``failover``).
        self._standby_answered = False
        self.failover = False

    @property
    def round_start(self) -> bool:
        """Nothing tried yet in this round: the time for the backoff's wait."""
        return not self._tried

    def attempt_timeout(self, timeout: float) -> float:
        """How long one attempt may take, of a peer's ``timeout`` for connecting:
        an equal share per address, so that a round fits in it."""
        return timeout / len(self.addresses)

    def next(self) -> str:
        """The address to try now."""
        address = self._leader
        self._leader = None
        if address is None:
            count = len(self.addresses)
            for step in range(count):
                candidate = self.addresses[(self._start + step) % count]
                if candidate not in self._tried:
                    address = candidate
                    break
            else:  # pragma: no cover - a round ends before every address is tried
                address = self.addresses[self._start]
        self._tried.add(address)
        self.current = address
        return address

    def failed(self, leader: str | None = None, *, standby: bool = False) -> bool:
        """The attempt at :attr:`current` failed; ``standby``: refused by a standby
        (``NOT_LEADER``), ``leader``: the leader it named.

        Returns True when the round is over (every address tried): the
        caller then waits (:meth:`wait`) before the next. A ``leader`` that
        is not a ``host:port`` is ignored.
        """
        self._standby_answered = self._standby_answered or standby
        if leader and _is_host_port(leader) and leader not in self._tried:
            self._leader = leader
            return False
        if all(address in self._tried for address in self.addresses):
            self._tried.clear()
            self.failover, self._standby_answered = self._standby_answered, False
            return True
        return False

    def round_over(self, reconnect: Reconnect) -> float:
        """A round failed (:meth:`failed` returned True): count it in the peer's
        backoff, unless a standby answered in it (a failover is under way, and
        its rounds must not grow the wait that follows it); return the wait
        before the next round."""
        if not self.failover:
            reconnect.failed()
        return self.wait(reconnect.delay())

    def wait(self, backoff: float) -> float:
        """The wait before the next round: the peer's ``backoff``, or a short one
        while a failover is under way."""
        if self.failover:
            return FAILOVER_RETRY * random.uniform(0.5, 1.0)
        return backoff

    def connected(self) -> None:
        """The attempt at :attr:`current` worked: the next round starts there."""
        self._tried.clear()
        self._leader = None
        self.failover = self._standby_answered = False
        if self.current in self.addresses:
            self._start = self.addresses.index(self.current)
        else:  # a leader from outside the list: tried first again
            self._leader = self.current

    def __str__(self) -> str:
        return ", ".join(self.addresses)


def _is_host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)
