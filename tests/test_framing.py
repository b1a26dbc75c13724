"""Unit tests for the sans-I/O framing layer (``protocol.framing``)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import (
    ABSOLUTE_MAX_FRAME,
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    FrameDecoder,
    decode_body,
    encode_frame,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``stream`` cut at every offset in ``cuts`` (offsets may repeat: empty chunks)."""
    points = sorted(min(max(c, 0), len(stream)) for c in cuts)
    chunks: list[bytes] = []
    start = 0
    for point in points:
        chunks.append(stream[start:point])
        start = point
    chunks.append(stream[start:])
    return chunks


def frame(body: bytes) -> bytes:
    """A frame around an arbitrary (possibly invalid) body."""
    return struct.pack(">I", len(body)) + body


def feed_all(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def expect_error(decoder: FrameDecoder, data: bytes, code: ErrorCode) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decoder.feed(data)
    assert info.value.code is code
    return info.value


# --- encode_frame: exact bytes -----------------------------------------------


def test_encode_frame_exact_bytes() -> None:
    # {"op": "PING", "rid": 1}: fixmap(2), fixstr "op", fixstr "PING", fixstr "rid", 1
    body = b"\x82\xa2op\xa4PING\xa3rid\x01"
    assert encode_frame({"op": "PING", "rid": 1}) == b"\x00\x00\x00\x0e" + body
    assert len(body) == 0x0E


def test_encode_frame_header_is_big_endian_body_length() -> None:
    for message in [0, "x" * 300, b"\x00" * 70_000, list(range(1000)), {"k": [b"v"] * 10}]:
        data = encode_frame(message)
        assert int.from_bytes(data[:HEADER_SIZE], "big") == len(data) - HEADER_SIZE
        assert data[HEADER_SIZE:] == msgpack.packb(message, use_bin_type=True)
    # 70_000 bytes of bin needs three significant bytes of length prefix
    assert encode_frame(b"\x00" * 70_000)[:HEADER_SIZE] == (70_005).to_bytes(4, "big")


def test_encode_frame_uses_bin_type_for_bytes_and_str_for_str() -> None:
    assert encode_frame(b"ab") == b"\x00\x00\x00\x04\xc4\x02ab"  # bin8
    assert encode_frame("ab") == b"\x00\x00\x00\x03\xa2ab"  # fixstr
    assert decode_body(encode_frame(b"ab")[HEADER_SIZE:]) == b"ab"
    assert type(decode_body(encode_frame(b"ab")[HEADER_SIZE:])) is bytes
    assert decode_body(encode_frame("ab")[HEADER_SIZE:]) == "ab"


def test_encode_frame_rejects_unencodable_values() -> None:
    with pytest.raises(TypeError):
        encode_frame({"x": object()})


# --- FrameDecoder: byte-by-byte behaviour ---------------------------------------


def test_single_frame_fed_one_byte_at_a_time() -> None:
    message = {"op": "SUBMIT", "rid": 7, "jobs": [{"task": "t", "payload": b"\x01\x02"}]}
    data = encode_frame(message)
    decoder = FrameDecoder()
    for i, byte in enumerate(data[:-1]):
        assert decoder.feed(bytes([byte])) == [], f"message yielded early at byte {i}"
        assert decoder.buffered <= i + 1
    assert decoder.feed(data[-1:]) == [message]
    assert decoder.buffered == 0


def test_several_frames_in_one_chunk() -> None:
    messages: list[Any] = [{"op": "PING", "rid": i} for i in range(5)] + [b"raw", [1, 2], "s"]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(m) for m in messages)) == messages
    assert decoder.buffered == 0


def test_frames_plus_partial_frame_in_one_chunk() -> None:
    first, second = {"a": 1}, {"b": b"x" * 100}
    data = encode_frame(first) + encode_frame(second)
    decoder = FrameDecoder()
    assert decoder.feed(data[:-10]) == [first]
    assert 0 < decoder.buffered < len(encode_frame(second))
    assert decoder.feed(data[-10:]) == [second]
    assert decoder.buffered == 0


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_header_split_across_chunks(cut: int) -> None:
    message = {"op": "PING", "rid": 99}
    data = encode_frame(message)
    decoder = FrameDecoder()
    assert decoder.feed(data[:cut]) == []
    assert decoder.buffered == cut
    assert decoder.feed(data[cut:HEADER_SIZE]) == []
    assert decoder.feed(data[HEADER_SIZE:]) == [message]
    assert decoder.buffered == 0


def test_empty_feeds_are_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    data = encode_frame("hello")
    assert decoder.feed(data[:2]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(data[2:]) == ["hello"]
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_buffered_returns_to_zero_after_each_complete_frame() -> None:
    decoder = FrameDecoder()
    for i in range(50):
        message = {"i": i, "pad": b"p" * (i * 37)}
        assert decoder.feed(encode_frame(message)) == [message]
        assert decoder.buffered == 0


def test_feed_accepts_bytearray_and_memoryview() -> None:
    data = encode_frame({"k": "v"}) * 2
    decoder = FrameDecoder()
    assert decoder.feed(bytearray(data[:5])) == []
    assert decoder.feed(memoryview(data)[5:]) == [{"k": "v"}, {"k": "v"}]
    assert decoder.buffered == 0


def test_decoded_values_do_not_alias_the_buffer() -> None:
    decoder = FrameDecoder()
    data = encode_frame({"payload": b"AAAA", "s": "BBBB"})
    (message,) = decoder.feed(data + encode_frame(b"C" * 50)[:10])
    # Feeding more (which compacts and reuses the internal buffer) must not
    # change an object already handed out.
    assert decoder.feed(encode_frame(b"C" * 50)[10:] + encode_frame(b"D" * 9)) == [
        b"C" * 50,
        b"D" * 9,
    ]
    assert message == {"payload": b"AAAA", "s": "BBBB"}
    assert type(message["payload"]) is bytes


def test_frame_exactly_at_max_frame_is_accepted() -> None:
    body = msgpack.packb(b"x" * 100, use_bin_type=True)
    decoder = FrameDecoder(max_frame=len(body))
    assert decoder.feed(frame(body)) == [b"x" * 100]
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(max_frame=len(body) - 1).feed(frame(body))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("bad", [0, -1, ABSOLUTE_MAX_FRAME + 1])
def test_max_frame_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=bad)


def test_max_frame_defaults_and_bounds() -> None:
    assert FrameDecoder().max_frame == DEFAULT_MAX_FRAME
    assert FrameDecoder(max_frame=1).max_frame == 1
    assert FrameDecoder(max_frame=ABSOLUTE_MAX_FRAME).max_frame == ABSOLUTE_MAX_FRAME


# --- limits and errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [b"\xff\xff\xff\xff", (DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"), b"\x80\x00\x00\x00"]
)
def test_oversized_length_prefix_fails_on_header_alone(header: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(header[:3]) == []
    # The 4th header byte alone triggers the error: no body has been sent.
    error = expect_error(decoder, header[3:], ErrorCode.FRAME_TOO_LARGE)
    assert str(DEFAULT_MAX_FRAME) in error.message
    assert decoder.buffered == 0


def test_oversized_prefix_after_valid_frames_in_same_chunk() -> None:
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(encode_frame(1) + (101).to_bytes(4, "big"))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_small_max_frame_limits_frames() -> None:
    decoder = FrameDecoder(max_frame=8)
    assert decoder.feed(encode_frame("1234567")) == ["1234567"]  # 8-byte body
    expect_error(decoder, encode_frame("12345678"), ErrorCode.FRAME_TOO_LARGE)


def test_zero_length_frame_is_bad_frame() -> None:
    decoder = FrameDecoder()
    expect_error(decoder, b"\x00\x00\x00\x00", ErrorCode.BAD_FRAME)


def test_zero_length_frame_after_valid_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame("ok")) == ["ok"]
    assert decoder.feed(b"\x00\x00") == []
    expect_error(decoder, b"\x00\x00", ErrorCode.BAD_FRAME)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used type byte
        b"\x92\x01",  # array of 2 with one element: truncated
        b"\xa5abc",  # str of 5 with 3 bytes
        b"\xc4\x10abc",  # bin8 of 16 with 3 bytes
        b"\xa2\xff\xfe",  # str that is not UTF-8
        b"\x81\x01\x02",  # map with int key (strict_map_key)
        b"\x81\x90\x02",  # map with array key: unhashable
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G elements
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4G entries
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\x91" * 10_000,  # nesting far deeper than msgpack's stack
    ],
)
def test_invalid_msgpack_body_is_bad_frame(body: bytes) -> None:
    decoder = FrameDecoder()
    expect_error(decoder, frame(body), ErrorCode.BAD_FRAME)
    with pytest.raises(ProtocolError) as info:
        decode_body(body)
    assert info.value.code is ErrorCode.BAD_FRAME


def test_two_objects_in_one_frame_is_bad_frame() -> None:
    body = msgpack.packb({"op": "PING", "rid": 1}) + msgpack.packb({"op": "PING", "rid": 2})
    expect_error(FrameDecoder(), frame(body), ErrorCode.BAD_FRAME)
    expect_error(FrameDecoder(), frame(b"\x01\x02"), ErrorCode.BAD_FRAME)
    expect_error(FrameDecoder(), frame(msgpack.packb("x") + b"\x00"), ErrorCode.BAD_FRAME)


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb(msgpack.ExtType(5, b"")),
        msgpack.packb(msgpack.ExtType(5, b"abc")),
        b"\xc8\x01\x2c\x80" + b"x" * 300,  # ext16 of 300 bytes, type -128
        msgpack.packb({"op": msgpack.ExtType(1, b"\x00")}),
        msgpack.packb(msgpack.Timestamp(1, 0)),  # timestamp32
        msgpack.packb(msgpack.Timestamp(2**34, 5)),  # timestamp96
        msgpack.packb([msgpack.Timestamp(0, 1)]),  # timestamp64, nested
        b"\xc7\x00\xff",  # ext8 of length 0 with the timestamp type
        b"\xd4\x01\x00",  # fixext1
    ],
)
def test_ext_types_and_timestamps_are_bad_frame(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body(body)
    assert info.value.code is ErrorCode.BAD_FRAME
    expect_error(FrameDecoder(), frame(body), ErrorCode.BAD_FRAME)


def test_decode_body_limits_follow_max_frame() -> None:
    body = msgpack.packb("x" * 10)
    assert decode_body(body, max_frame=64) == "x" * 10
    with pytest.raises(ProtocolError) as info:
        decode_body(body, max_frame=9)
    assert info.value.code is ErrorCode.BAD_FRAME


def test_decode_body_accepts_memoryview_and_returns_plain_types() -> None:
    body = msgpack.packb({"a": [1, (2, 3)], "b": b"\x00"}, use_bin_type=True)
    value = decode_body(memoryview(body))
    assert value == {"a": [1, [2, 3]], "b": b"\x00"}
    assert type(value["a"][1]) is list  # use_list: arrays never become tuples


def test_map_with_bytes_key_decodes() -> None:
    # strict_map_key allows str and bytes keys; the validator deals with them.
    assert decode_body(b"\x81\xc4\x01k\x02") == {b"k": 2}


@pytest.mark.parametrize(
    "poison",
    [
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x00",
        frame(b"\xc1"),
        frame(msgpack.packb(msgpack.ExtType(1, b"a"))),
    ],
)
def test_decoder_stays_broken_after_an_error(poison: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as first:
        decoder.feed(poison)
    assert decoder.buffered == 0
    # A perfectly valid frame, or nothing at all, still raises the same error.
    for data in (encode_frame({"op": "PING", "rid": 1}), b""):
        with pytest.raises(ProtocolError) as again:
            decoder.feed(data)
        assert again.value.code is first.value.code
        assert again.value.message == first.value.message
    assert decoder.buffered == 0


def test_error_after_good_frames_in_same_chunk_raises() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(encode_frame("good") + frame(b"\xc1") + encode_frame("later"))
    assert info.value.code is ErrorCode.BAD_FRAME
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame("after"))


# --- properties -------------------------------------------------------------------

_msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_leaves = st.one_of(
    _msgpack_ints,
    st.text(max_size=20),
    st.binary(max_size=40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=8,
)
messages_strategy = st.lists(
    st.dictionaries(st.text(max_size=12), _values, max_size=4), min_size=0, max_size=5
)


@FAST
@given(messages=messages_strategy, data=st.data())
def test_any_chunking_yields_same_messages_in_order(
    messages: list[dict[str, Any]], data: st.DataObject
) -> None:
    frames = [encode_frame(m) for m in messages]
    stream = b"".join(frames)
    ends: list[int] = []
    total = 0
    for f in frames:
        total += len(f)
        ends.append(total)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    decoder = FrameDecoder()
    out: list[Any] = []
    offset = 0
    for chunk in split(stream, cuts):
        offset += len(chunk)
        out.extend(decoder.feed(chunk))
        # exactly the frames whose last byte has been fed have come out
        assert len(out) == sum(1 for end in ends if end <= offset)
        # and only bytes of the incomplete frame are held
        assert decoder.buffered <= offset - (ends[len(out) - 1] if out else 0)
    assert out == messages
    assert decoder.buffered == 0


_max_frames = st.one_of(st.integers(1, 64), st.just(DEFAULT_MAX_FRAME), st.just(ABSOLUTE_MAX_FRAME))


@FAST
@given(stream=st.binary(max_size=300), max_frame=_max_frames, data=st.data())
def test_arbitrary_bytes_raise_only_protocol_error(
    stream: bytes, max_frame: int, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    decoder = FrameDecoder(max_frame=max_frame)
    try:
        for chunk in split(stream, cuts):
            decoder.feed(chunk)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE)
        assert decoder.buffered == 0
        with pytest.raises(ProtocolError):
            decoder.feed(b"")
    else:
        assert decoder.buffered <= len(stream)


def _splice(value: Any, junk: bytes, at: int) -> bytes:
    """``value`` packed, with ``junk`` inserted at offset ``at``: near-valid msgpack."""
    body: bytes = msgpack.packb(value, use_bin_type=True)
    return body[:at] + junk + body[at:]


# Frames whose length prefixes are mostly right and whose bodies are random
# or mutated msgpack, to get past the header checks into decode_body.
_bodies = st.one_of(
    st.binary(min_size=1, max_size=60),
    _values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.tuples(_values, st.binary(max_size=4), st.integers(0, 100)).map(lambda t: _splice(*t)),
)
_raw_frames = st.one_of(
    _bodies.map(frame),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=20)).map(
        lambda t: struct.pack(">I", t[0]) + t[1]
    ),
)


@FAST
@given(frames=st.lists(_raw_frames, max_size=6), max_frame=_max_frames, data=st.data())
def test_frame_shaped_garbage_raises_only_protocol_error(
    frames: list[bytes], max_frame: int, data: st.DataObject
) -> None:
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    decoder = FrameDecoder(max_frame=max_frame)
    try:
        feed_all(decoder, split(stream, cuts))
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE)


@FAST
@given(body=st.one_of(st.binary(max_size=200), _bodies))
def test_decode_body_raises_only_bad_frame(body: bytes) -> None:
    try:
        decode_body(body)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FRAME


@FAST
@given(value=_values)
def test_decode_body_inverts_encode_frame(value: Any) -> None:
    data = encode_frame(value)
    assert int.from_bytes(data[:HEADER_SIZE], "big") == len(data) - HEADER_SIZE
    assert decode_body(data[HEADER_SIZE:]) == value
