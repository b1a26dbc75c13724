"""Error codes and exception classes, split by who is to blame.

- ``ProtocolError``: the *peer* sent something that breaks the protocol
  (bad frame, bad message, wrong handshake). It carries a stable ``code``.
  The codec and the message validator promise to raise nothing else on any
  input, however malformed.
- ``RemoteError``: the broker understood the request and refused it (an
  error reply: unknown job, queue full, ...). Usually the *caller's* doing.
- ``ConnectionLost``: the connection went away while something waited on it;
  whether the broker acted on the request is unknown.
- ``BrokerUnavailable``: no connection to the broker could be made within
  the connect timeout, so the request was never sent. Both are
  ``ConnectionError``s: catch that for either.
- Anything else escaping this package is a bug in jobwire.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error codes sent on the wire in ``ERR`` replies.

    The string values are part of the protocol: never rename one.
    """

    # The peer's fault: the connection is closed after the error is sent.
    BAD_FRAME = "BAD_FRAME"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    HANDSHAKE_REQUIRED = "HANDSHAKE_REQUIRED"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    AUTH_FAILED = "AUTH_FAILED"
    TIMEOUT = "TIMEOUT"
    # The request's fault: after the handshake the connection stays open, since
    # framing is intact (before it, and for a second HELLO, it is closed).
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_OP = "UNKNOWN_OP"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    QUEUE_FULL = "QUEUE_FULL"
    # The broker's situation.
    SHUTTING_DOWN = "SHUTTING_DOWN"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    INTERNAL = "INTERNAL"
    STORAGE_FAILED = "STORAGE_FAILED"
    # A standby broker of a cluster shard: the ERR names the leader, if known.
    NOT_LEADER = "NOT_LEADER"


class JobwireError(Exception):
    """Base class of every exception jobwire raises on purpose."""


class ProtocolError(JobwireError):
    """The peer broke the protocol. ``code`` is an :class:`ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RemoteError(JobwireError):
    """The broker answered a request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotFound(RemoteError):
    """The broker does not know the job id (never existed, or expired)."""


class QueueFull(RemoteError):
    """The broker holds as many jobs as it may (``--max-jobs``)."""


class StorageFailed(RemoteError):
    """The broker's storage (its journal) cannot take records now; retry later.

    Nothing the broker acknowledged is lost, and the condition clears by
    itself once a write succeeds again.
    """


class NotLeader(RemoteError):
    """The broker is a standby of its shard; ``leader`` is the leader's ``host:port``, if known.

    A peer given several addresses tries the next one (the leader first).
    """

    def __init__(self, code: str, message: str, leader: str | None = None) -> None:
        super().__init__(code, message)
        self.leader = leader


class ConnectionLost(JobwireError, ConnectionError):
    """The connection closed while a call waited on it; the call's outcome is unknown."""


class BrokerUnavailable(JobwireError, ConnectionError):
    """The broker could not be reached within the connect timeout; nothing was sent.

    Every way of not reaching it (refused, unreachable, unresolvable, a
    handshake cut short, a timeout) is this one class; ``__cause__`` is the
    last attempt's own error. A broker that answers but refuses the peer (a
    bad token, another protocol version) is a :class:`RemoteError` or a
    :class:`ProtocolError` instead: retrying would not help.
    """


# Refusals at the handshake that say "not now" rather than "not you": a
# peer retries them like a broker it cannot reach.
RETRYABLE_REFUSALS = frozenset(
    {ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.SHUTTING_DOWN, ErrorCode.NOT_LEADER}
)


def remote_error(code: str, message: str, leader: str | None = None) -> RemoteError:
    """The most specific :class:`RemoteError` subclass for an error reply's code."""
    if code == ErrorCode.NOT_LEADER:
        return NotLeader(code, message, leader)
    if code == ErrorCode.NOT_FOUND:
        return NotFound(code, message)
    if code == ErrorCode.QUEUE_FULL:
        return QueueFull(code, message)
    if code == ErrorCode.STORAGE_FAILED:
        return StorageFailed(code, message)
    return RemoteError(code, message)
