"""The cluster's pieces without NATS: batching, the lease clock, fencing, the wire of a standby."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import Header
from nats.js.errors import APIError

from broker.cluster.batches import LeaseClock, PublishQueue
from broker.cluster.config import ClusterConfig, parse_servers
from broker.cluster.lease import Leadership
from broker.cluster.shard import Shard
from broker.cluster.standby import NotLeaderListener
from broker.cluster.stream_journal import WRONG_LAST_SEQUENCE, StreamJournal
from broker.config import BrokerConfig
from broker.durability import StorageFailure
from broker.journal import JournalCorrupt, encode_record
from broker.journal.codec import read_batch
from broker.output import Output
from tests.rawpeer import RawPeer

# -- batches --


def test_a_batch_takes_every_record_waiting_and_marks_them_durable_on_its_ack() -> None:
    queue = PublishQueue(max_bytes=1000)
    released: list[int] = []
    for index in range(3):
        queue.append(encode_record(["D", f"j{index}"]))
        assert queue.when_durable(queue.appended, functools.partial(released.append, index))
    batch = queue.next_batch()
    assert batch is not None and batch.records == 3 and batch.upto == 3
    assert queue.next_batch() is None  # nothing waiting
    queue.append(encode_record(["D", "late"]))  # appended while the batch is in flight
    for callback in queue.acknowledged(batch):
        callback()
    assert released == [0, 1, 2] and queue.durable == 3
    late = queue.next_batch()
    assert late is not None and late.records == 1 and late.upto == 4 and late.number == 2
    assert read_batch(late.payload, Path("<test>")) == [["D", "late"]]


def test_a_batch_stops_at_the_largest_message_but_takes_one_record_at_least() -> None:
    queue = PublishQueue(max_bytes=40)
    big = encode_record(["D", "x" * 100])
    small = encode_record(["D", "y"])
    for record in (big, small, small, small):
        queue.append(record)
    first = queue.next_batch()
    assert first is not None and first.records == 1 and first.payload == big
    queue.acknowledged(first)
    second = queue.next_batch()
    assert second is not None and second.records == 3 and second.upto == 4


def test_a_mark_already_durable_is_not_kept_and_dropping_forgets_the_waiters() -> None:
    queue = PublishQueue(max_bytes=1000)
    assert not queue.when_durable(0, lambda: None)
    queue.append(encode_record(["D", "a"]))
    assert queue.when_durable(1, lambda: None)
    assert queue.drop_waiters() == 1


def test_a_damaged_batch_is_corrupt_not_a_torn_tail() -> None:
    data = encode_record(["D", "a"]) + encode_record(["D", "b"])
    assert read_batch(data, Path("<m>")) == [["D", "a"], ["D", "b"]]
    with pytest.raises(JournalCorrupt):
        read_batch(data[:-1], Path("<m>"))


# -- the lease clock --


def test_the_lease_clock_runs_from_when_the_renewal_was_sent_short_of_the_ttl() -> None:
    clock = LeaseClock(ttl=10.0, margin=0.1)
    assert not clock.valid(0.0)
    clock.renewed(sent_at=100.0)
    assert clock.valid(108.9) and not clock.valid(109.0)
    clock.renewed(sent_at=99.0)  # an older renewal answered late changes nothing
    assert clock.valid(108.9)
    assert clock.left(105.0) == pytest.approx(4.0)


# -- configuration --


def test_servers_and_names() -> None:
    assert parse_servers("a:4222, nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]
    with pytest.raises(ValueError):
        parse_servers(" , ")
    config = ClusterConfig(["nats://a:4222"], shard="s1")
    assert (config.stream, config.subject) == ("JW_s1", "jobwire.s1.journal")
    with pytest.raises(ValueError):
        ClusterConfig(["nats://a:4222"], shard="a.b")
    with pytest.raises(ValueError):
        ClusterConfig(["nats://a:4222"], lease_ttl=0.5)


# -- fencing, with a fake JetStream --


class FakeMessage:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class FakeAck:
    def __init__(self, seq: int) -> None:
        self.seq = seq


class FakeStream:
    """A stream that checks Nats-Expected-Last-Sequence as JetStream does."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, dict[str, str]]] = []
        self.lose_next_ack = False
        self.hang = False

    async def publish(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]
    ) -> FakeAck:
        if self.hang:
            await asyncio.sleep(timeout)
            raise NatsTimeoutError
        expected = int(headers[Header.EXPECTED_LAST_SEQUENCE.value])
        if expected != len(self.messages):
            raise APIError(code=400, err_code=WRONG_LAST_SEQUENCE, description="wrong last seq")
        self.messages.append((payload, headers))
        if self.lose_next_ack:
            self.lose_next_ack = False
            raise NatsTimeoutError
        return FakeAck(len(self.messages))

    async def get_msg(self, stream: str, seq: int) -> FakeMessage:
        return FakeMessage(self.messages[seq - 1][1])


class FakeBucket:
    async def update(self, key: str, value: bytes, last: int) -> int:
        return last + 1

    async def delete(self, key: str, last: int) -> bool:
        return True


class FakeNats:
    max_payload = 1024 * 1024


def journal_on(stream: FakeStream, publish_timeout: float = 5.0) -> StreamJournal:
    config = ClusterConfig(["nats://x:1"], lease_ttl=30.0, publish_timeout=publish_timeout)
    shard = Shard(
        config, cast(Any, FakeNats()), cast(Any, stream), cast(Any, None), cast(Any, None), 3
    )
    leadership = Leadership(cast(Any, FakeBucket()), "leader", "127.0.0.1:1", config.lease_ttl)
    leadership.clock.renewed(time.monotonic())
    return StreamJournal(
        shard, leadership, jobs={}, settings={}, last_sequence=len(stream.messages)
    )


async def durable(journal: StreamJournal) -> bool:
    """Wait for every record appended so far; whether they became durable."""
    done = asyncio.Event()
    journal.when_durable(journal.appended, done.set)
    failed = asyncio.Event()
    journal.add_failure_listener(lambda failure: failed.set())
    waiters = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(failed.wait())]
    await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    return done.is_set()


async def test_each_batch_expects_the_sequence_the_last_one_got() -> None:
    stream = FakeStream()
    stream.messages.append((b"", {Header.EXPECTED_LAST_SEQUENCE.value: "0"}))  # the takeover
    journal = journal_on(stream)
    journal.start(dict)
    journal.job_deleted("a")
    assert await durable(journal)
    journal.job_deleted("b")
    journal.job_deleted("c")
    assert await durable(journal)
    assert [h[Header.EXPECTED_LAST_SEQUENCE.value] for _, h in stream.messages] == ["0", "1", "2"]
    assert journal.last_sequence == 3 and journal.failure is None
    await journal.close()


async def test_another_writer_fences_the_leader_out_and_nothing_is_released() -> None:
    stream = FakeStream()
    journal = journal_on(stream)
    failures: list[StorageFailure | None] = []
    journal.add_failure_listener(failures.append)
    journal.start(dict)
    stream.messages.append((b"", {Header.MSG_ID.value: "someone else"}))  # a takeover
    journal.job_deleted("a")
    assert not await durable(journal)
    failure = journal.failure
    assert failure is not None and failure.fatal and "another broker" in failure.cause
    assert failures == [failure]
    assert not journal.is_durable(1)
    released: list[bool] = []
    journal.when_durable(1, lambda: released.append(True))
    await asyncio.sleep(0)
    assert released == []
    await journal.close()


async def test_a_lost_acknowledgement_is_found_by_the_message_id() -> None:
    stream = FakeStream()
    journal = journal_on(stream)
    journal.start(dict)
    stream.lose_next_ack = True
    journal.job_deleted("a")
    assert await durable(journal)
    assert len(stream.messages) == 1 and journal.last_sequence == 1
    assert journal.failure is None
    await journal.close()


async def test_no_acknowledgement_within_the_deadline_is_fatal() -> None:
    stream = FakeStream()
    stream.hang = True
    journal = journal_on(stream, publish_timeout=0.2)
    journal.start(dict)
    journal.job_deleted("a")
    assert not await durable(journal)
    failure = journal.failure
    assert failure is not None and failure.fatal and "acknowledged nothing" in failure.cause
    await journal.close()


async def test_a_lease_that_ran_out_is_a_fatal_failure_when_next_asked() -> None:
    journal = journal_on(FakeStream())
    journal.start(dict)
    assert journal.failure is None
    journal._leadership.clock.valid_until = 0.0
    failure = journal.failure
    assert failure is not None and failure.fatal and "lease" in failure.cause
    await journal.close()


# -- a standby's answer --


async def test_a_standby_answers_not_leader_with_the_leaders_address() -> None:
    listener = NotLeaderListener("s0", None)
    port = await listener.start("127.0.0.1", 0)
    listener.leader = "127.0.0.1:9999"
    try:
        peer = await RawPeer.connect(f"127.0.0.1:{port}", read_welcome=False)
        frames = await peer.read_until_closed()
        peer.close()
    finally:
        await listener.close()
    assert len(frames) == 1
    assert frames[0]["op"] == "ERR" and frames[0]["code"] == "NOT_LEADER"
    assert frames[0]["leader"] == "127.0.0.1:9999" and frames[0]["rid"] is None


# -- the connections' writer --


class FencedGate:
    appended = 1
    failure: StorageFailure | None = StorageFailure("lease", "fenced", 0.0, fatal=True)

    def is_durable(self, mark: int) -> bool:
        return True

    def when_durable(self, mark: int, callback: Callable[[], None]) -> None:
        callback()

    def add_failure_listener(self, listener: Any) -> None:
        pass


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


async def test_the_writer_sends_nothing_once_storage_failed_for_good() -> None:
    transport = RecordingTransport()
    output = Output(
        cast(Any, transport), asyncio.get_running_loop(), BrokerConfig(), FencedGate(), str
    )
    output.send({"op": "OK", "rid": 1}, durable=False)  # even a pure read's reply
    output.flush()
    assert transport.written == []
