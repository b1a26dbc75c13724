"""Fuzz targets: feed untrusted bytes to the decoder and to a broker session.

A target returns normally for every input, or raises :class:`Bug`. The
session target drives a real :class:`~broker.session.Session` and
:class:`~broker.manager.JobManager` through a fake transport, without
sockets, so one input runs in microseconds. The session turns unexpected
exceptions into ``INTERNAL`` replies to keep serving; here that is a bug,
caught through its log record.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack

from broker.config import BrokerConfig
from broker.jobs import JobState
from broker.server import Broker
from broker.session import Session
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import PROTOCOL_VERSION, Op, Role
from protocol.security import auth_proof

FUZZ_TOKEN = "fuzz-token"


class Bug(AssertionError):
    """The code under test did something it promises never to do."""


def fuzz_decoder(data: bytes) -> None:
    """Any bytes, fed in any two pieces: frames or ProtocolError, nothing else."""
    cut = data[0] % (len(data) + 1) if data else 0
    for pieces in ([data], [data[:cut], data[cut:]]):
        decoder = FrameDecoder(max_frame=4096)
        try:
            for piece in pieces:
                decoder.feed(piece)
        except ProtocolError:
            pass
        except Exception as exc:
            raise Bug(f"decoder raised {type(exc).__name__}: {exc}") from exc
        if decoder.buffered > 4096 + len(data):
            raise Bug("decoder buffered more than one frame plus its input")


class FakeTransport:
    """Just enough of ``asyncio.Transport`` for a session; remembers what was written."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _BugDetector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class SessionHarness:
    """A broker with no listener, and sessions driven by hand, on a private loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.detector = _BugDetector()
        session_log = logging.getLogger("broker.session")
        session_log.addHandler(self.detector)
        session_log.propagate = False
        logging.getLogger("broker.manager").setLevel(logging.CRITICAL)

    def run(self, frames_then_data: tuple[list[bytes], bytes], role: str | None) -> bytes:
        return self.loop.run_until_complete(self._run(*frames_then_data, role))

    async def _run(self, frames: list[bytes], data: bytes, role: str | None) -> bytes:
        broker = Broker(BrokerConfig(port=0, token=FUZZ_TOKEN, max_frame=64 * 1024))
        broker.adopt_running_loop()
        transport = FakeTransport()
        session = Session(broker.state)
        session.connection_made(transport)  # type: ignore[arg-type]
        self.detector.records.clear()
        try:
            if role is not None:
                hello = {
                    "op": Op.HELLO,
                    "rid": 0,
                    "version": PROTOCOL_VERSION,
                    "role": role,
                    "auth": auth_proof(FUZZ_TOKEN, session.nonce),
                    "queues": ["default", "other"],
                }
                session.data_received(encode_frame(hello))
                if session.role != role:
                    raise Bug("a valid handshake was refused")
            for frame in frames:
                session.data_received(frame)
            if data:
                session.data_received(data)
            session.flush()
            await asyncio.sleep(0)  # let scheduled flushes and deliveries run
        except Bug:
            raise
        except Exception as exc:
            raise Bug(f"session raised {type(exc).__name__}: {exc}") from exc
        finally:
            session.connection_lost(None)
        if self.detector.records:
            record = self.detector.records[0]
            raise Bug(f"session hit an internal error: {record.getMessage()}") from (
                record.exc_info[1] if record.exc_info else None
            )
        check_manager_invariants(broker)
        return bytes(transport.written)


def check_manager_invariants(broker: Broker) -> None:
    manager = broker.manager
    counts = {"queued": 0, "delayed": 0, "running": 0}
    unfinished = 0
    for job in manager.jobs.values():
        if job.state.value in counts:
            counts[job.state.value] += 1
        if not job.state.finished:
            unfinished += 1
    for state, expected in counts.items():
        actual = sum(getattr(c, state) for c in manager.queues.values())
        if actual != expected:
            raise Bug(f"queue counts say {actual} {state}, jobs say {expected}")
    if manager.unfinished != unfinished:
        raise Bug(f"unfinished is {manager.unfinished}, jobs say {unfinished}")
    for consumer in manager.consumers:
        for job in consumer.jobs.values():
            if job.state is not JobState.RUNNING or job.owner is not consumer:
                raise Bug(f"{consumer} holds {job}")


_harness: SessionHarness | None = None


def harness() -> SessionHarness:
    global _harness  # noqa: PLW0603 - one loop for every input keeps a fuzz run fast
    if _harness is None:
        _harness = SessionHarness()
    return _harness


def fuzz_session(data: bytes) -> None:
    """Raw bytes to a fresh session, before or after a valid handshake (first byte picks)."""
    if not data:
        return
    role = (None, Role.CLIENT, Role.WORKER)[data[0] % 3]
    harness().run(([], data[1:]), role)


def fuzz_session_msgpack(data: bytes) -> None:
    """The input as a msgpack stream, each object sent as one frame: reaches the handlers."""
    if not data:
        return
    role = (None, Role.CLIENT, Role.WORKER)[data[0] % 3]
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data))
    unpacker.feed(data[1:])
    messages: list[Any] = []
    try:
        for message in unpacker:
            messages.append(message)
    except Exception:  # the rest of the input is not msgpack: use what came before
        pass
    fuzz_session_messages(role, messages)


def fuzz_session_messages(role: str | None, messages: list[Any]) -> bytes:
    """Well-framed messages of any shape to a session; returns what the broker wrote back."""
    frames = []
    for message in messages:
        try:
            frames.append(encode_frame(message))
        except (TypeError, ValueError, OverflowError):
            continue
    return harness().run((frames, b""), role)
