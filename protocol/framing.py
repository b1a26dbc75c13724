"""Length-prefixed msgpack framing, sans-I/O.

A frame is a 4-byte unsigned big-endian length N followed by exactly N bytes
holding one msgpack object. :class:`FrameDecoder` turns a byte stream, split
anywhere, into those objects; :func:`encode_frame` does the reverse.

The decoder's promise (after h11): whatever bytes it is fed, it returns
decoded objects or raises :class:`~protocol.errors.ProtocolError`, nothing
else, and it never allocates from a length it has not checked against
``max_frame``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from protocol.errors import ErrorCode, ProtocolError

HEADER_SIZE = 4
_read_length = struct.Struct(">I").unpack_from
# Room a peer keeps in a frame for the fields around a job's payload or
# result, so a payload that fits in a SUBMIT also fits in the JOBS frame.
ENVELOPE_RESERVE = 2048
DEFAULT_MAX_FRAME = 1024 * 1024
# Lengths above this cannot be represented in the 4-byte prefix.
ABSOLUTE_MAX_FRAME = 2**32 - 1

# The one msgpack encoder (bin type for bytes): frames, payloads, results, journal records.
packb = msgpack.Packer(use_bin_type=True).pack


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(ErrorCode.BAD_FRAME, f"msgpack extension type {code} is not allowed")


def encode_frame(message: Any) -> bytes:
    """One frame holding ``message``.

    Raises ``TypeError``, ``ValueError`` or ``OverflowError`` (from msgpack)
    when the message holds something msgpack cannot encode: the caller's bug.
    """
    body: bytes = packb(message)
    return len(body).to_bytes(4, "big") + body


def decode_body(body: bytes | memoryview, max_frame: int = DEFAULT_MAX_FRAME) -> Any:
    """Decode one frame's body, with every container bounded by the body itself.

    Raises only :class:`ProtocolError` (``BAD_FRAME``).
    """
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_frame,
            max_bin_len=max_frame,
            max_array_len=max_frame,
            max_map_len=max_frame,
            max_ext_len=0,
            ext_hook=_refuse_ext,
            timestamp=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types; all mean a bad frame
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"frame body is not one valid msgpack object ({exc})"
        ) from None


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns every frame completed so far.

    The buffer holds at most one partial frame plus the last chunk fed, so
    its size is bounded by ``max_frame`` plus the transport's read size.
    After it has raised, the decoder stays broken: a stream that lost frame
    sync cannot be trusted again.
    """

    __slots__ = ("_broken", "_buffer", "_needed", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 < max_frame <= ABSOLUTE_MAX_FRAME:
            raise ValueError(f"max_frame must be in 1..{ABSOLUTE_MAX_FRAME}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._broken: ProtocolError | None = None
        # Length of the frame body being waited for, once its header is read.
        self._needed = -1

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        if self._broken is not None:
            raise self._broken
        buffer = self._buffer
        # With nothing held, the frames are read from data itself and only
        # its incomplete tail is copied.
        source = data
        if buffer:
            buffer += data
            source = buffer
        messages: list[Any] = []
        pos = 0
        end = len(source)
        max_frame = self.max_frame
        try:
            with memoryview(source) as view:
                while True:
                    needed = self._needed
                    if needed < 0:
                        if end - pos < HEADER_SIZE:
                            break
                        needed = _read_length(view, pos)[0]
                        if needed > max_frame:
                            raise ProtocolError(
                                ErrorCode.FRAME_TOO_LARGE,
                                f"frame of {needed} bytes exceeds the limit of {max_frame}",
                            )
                        if needed == 0:
                            raise ProtocolError(ErrorCode.BAD_FRAME, "empty frame")
                        pos += HEADER_SIZE
                        self._needed = needed
                    if end - pos < needed:
                        break
                    messages.append(decode_body(view[pos : pos + needed], max_frame))
                    pos += needed
                    self._needed = -1
        except ProtocolError as exc:
            self._broken = exc
            self._buffer = bytearray()
            raise
        if source is buffer:
            if pos:
                del buffer[:pos]
        elif pos < end:
            buffer += data[pos:]
        return messages
