"""jobwire's wire protocol: framing, message schema and error codes.

Pure and sans-I/O: nothing here touches a socket or an event loop, except
:mod:`protocol.stream`, the thin asyncio adapter the client and the worker
share, which is not imported by this package's ``__init__``.
"""

from protocol.errors import (
    ConnectionLost,
    ErrorCode,
    JobwireError,
    NotFound,
    NotLeader,
    ProtocolError,
    QueueFull,
    RemoteError,
    StorageFailed,
    remote_error,
)
from protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, decode_body, encode_frame
from protocol.messages import PROTOCOL_VERSION, Op, Role, validate_push, validate_request

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "ConnectionLost",
    "ErrorCode",
    "FrameDecoder",
    "JobwireError",
    "NotFound",
    "NotLeader",
    "Op",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "Role",
    "StorageFailed",
    "decode_body",
    "encode_frame",
    "remote_error",
    "validate_push",
    "validate_request",
]
