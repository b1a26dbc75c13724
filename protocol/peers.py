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
"""

from __future__ import annotations

from collections.abc import Sequence


class LeaderSearch:
    __slots__ = ("_leader", "_start", "_tried", "addresses", "current")

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

    @property
    def round_start(self) -> bool:
        """Nothing tried yet in this round: the time for the backoff's wait."""
        return not self._tried

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

    def failed(self, leader: str | None = None) -> bool:
        """The attempt at :attr:`current` failed; ``leader``: the leader a standby named.

        Returns True when the round is over (every address tried): the
        caller then waits its backoff before the next.
        """
        if leader and leader not in self._tried:
            self._leader = leader
            return False
        if all(address in self._tried for address in self.addresses):
            self._tried.clear()
            return True
        return False

    def connected(self) -> None:
        """The attempt at :attr:`current` worked: the next round starts there."""
        self._tried.clear()
        self._leader = None
        if self.current in self.addresses:
            self._start = self.addresses.index(self.current)
        else:  # a leader from outside the list: tried first again
            self._leader = self.current

    def __str__(self) -> str:
        return ", ".join(self.addresses)
