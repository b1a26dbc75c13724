"""A broker session driven by hand, through a fake transport: the edge cases of its output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from broker.client import SPEC_OVERHEAD, split_into_frames
from broker.config import BrokerConfig
from broker.journal import FsyncMode, JournalConfig
from broker.server import Broker
from broker.session import Session
from fuzz.targets import FakeTransport
from protocol.framing import ENVELOPE_RESERVE, FrameDecoder, encode_frame
from protocol.messages import PROTOCOL_VERSION
from tests.builders import submit_job
from tests.rawpeer import RawPeer

PAYLOAD = msgpack.packb([[1], {}])


class Peer:
    """A session with its fake transport, and the frames it has been sent."""

    def __init__(self, broker: Broker, role: str) -> None:
        self.transport = FakeTransport()
        self.session = Session(broker.state)
        self.session.connection_made(self.transport)  # type: ignore[arg-type]
        self.decoder = FrameDecoder(max_frame=64 * 1024 * 1024)
        self.send({"op": "HELLO", "rid": 0, "version": PROTOCOL_VERSION, "role": role})
        assert [m["op"] for m in self.received()] == ["WELCOME", "OK"]

    def send(self, message: dict[str, Any]) -> None:
        self.session.data_received(encode_frame(message))
        self.session.flush()

    def received(self) -> list[Any]:
        self.session.flush()
        frames = self.decoder.feed(bytes(self.transport.written))
        self.transport.written.clear()
        return frames


async def test_a_held_back_outcome_is_the_one_the_job_finished_with() -> None:
    broker = Broker(BrokerConfig(port=0))
    broker.adopt_running_loop()
    watcher = Peer(broker, "client")
    worker = Peer(broker, "worker")
    watcher.send(
        {
            "op": "SUBMIT",
            "rid": 1,
            "watch": True,
            "jobs": [{"task": "t", "payload": PAYLOAD, "max_attempts": 1}],
        }
    )
    job_id = watcher.received()[0]["ids"][0]
    worker.send({"op": "READY", "n": 1})
    assert worker.received()[0]["jobs"][0]["id"] == job_id
    watcher.session.pause_writing()  # the watcher reads too slowly
    error = {"type": "ValueError", "message": "first", "traceback": ""}
    worker.send({"op": "FAIL", "id": job_id, "attempt": 1, "error": error})
    assert watcher.received() == []  # held back
    # Retried before the watcher catches up: it must still hear how the job ended.
    assert broker.manager.retry_failed([job_id], 0.0) == 1
    watcher.session.resume_writing()
    done = watcher.received()
    assert [(m["op"], m["state"], m["error"]["message"]) for m in done] == [
        ("DONE", "failed", "first")
    ]


async def test_the_last_frames_before_a_close_wait_for_the_fsync(tmp_path: Path) -> None:
    config = JournalConfig(tmp_path, fsync=FsyncMode.ALWAYS)
    broker = Broker(BrokerConfig(port=0, journal=config))
    await broker.start()
    try:
        peer = await RawPeer.connect(broker.address)
        assert (await peer.hello())["op"] == "OK"
        submit = {"op": "SUBMIT", "rid": 1, "jobs": [{"task": "t", "payload": PAYLOAD}]}
        hello = {"op": "HELLO", "rid": 2, "version": PROTOCOL_VERSION, "role": "client"}
        await peer.send_bytes(encode_frame(submit) + encode_frame(hello))
        frames = await peer.read_until_closed()
        assert [(f["op"], f["rid"]) for f in frames] == [("OK", 1), ("ERR", 2)]
        assert frames[1]["code"] == "BAD_REQUEST"
    finally:
        await broker.stop()


async def test_status_of_a_job_with_huge_errors_fits_in_a_frame() -> None:
    broker = Broker(BrokerConfig(port=0))
    broker.adopt_running_loop()
    client = Peer(broker, "client")
    job, _ = submit_job(broker.manager, "t", PAYLOAD, 0.0, max_attempts=100)
    wide = "\U0001f4a5" * 70_000  # 4 bytes each in UTF-8
    for attempt in range(30):
        job.add_error({"type": wide, "message": wide, "traceback": wide, "attempt": attempt})
    client.send({"op": "STATUS", "rid": 5, "id": job.id})
    reply = client.received()[0]
    assert reply["op"] == "OK"
    assert len(encode_frame(reply)) <= broker.config.max_frame
    assert reply["job"]["errors"][-1]["attempt"] == 29
    assert reply["job"]["errors_left_out"] == 25 - len(reply["job"]["errors"])


async def test_a_worker_announcing_malformed_tasks_is_refused_with_a_short_error() -> None:
    broker = Broker(BrokerConfig(port=0))
    broker.adopt_running_loop()
    transport = FakeTransport()
    session = Session(broker.state)
    session.connection_made(transport)  # type: ignore[arg-type]
    hello = {"op": "HELLO", "rid": 3, "version": PROTOCOL_VERSION, "role": "worker"}
    session.data_received(encode_frame({**hello, "tasks": {"x" * 200: {"lease": -1}}}))
    session.flush()
    frames = FrameDecoder(max_frame=1 << 20).feed(bytes(transport.written))
    assert [m["op"] for m in frames] == ["WELCOME", "ERR"]
    error = frames[1]
    assert (error["rid"], error["code"]) == (3, "BAD_REQUEST")
    assert error["message"].startswith("HELLO.tasks['xxx")
    assert len(error["message"]) < 200
    assert transport.closed
    assert broker.manager.task_defaults == {}
    assert broker.manager.consumers == set()


def test_submit_frames_fit_the_limit_with_wide_names() -> None:
    budget = 64 * 1024
    specs = [
        {
            "task": "\U0001f4a5" * 200,
            "queue": "é" * 200,
            "id": f"{i}" + "€" * 190,
            "payload": b"x" * n,
        }
        for i, n in enumerate([10, 5000, 300, 0, 20_000, 40] * 30)
    ]
    batches = split_into_frames(specs, budget - ENVELOPE_RESERVE)
    assert sum(len(batch) for batch in batches) == len(specs)
    assert [spec for batch in batches for spec in batch] == specs
    for batch in batches:
        frame = encode_frame({"op": "SUBMIT", "rid": 2**40, "jobs": batch, "watch": True})
        assert len(frame) <= budget
    assert SPEC_OVERHEAD > 0


async def test_a_revoked_job_delivered_again_in_the_same_turn_goes_out_once() -> None:
    broker = Broker(BrokerConfig(port=0))
    broker.adopt_running_loop()
    worker = Peer(broker, "worker")
    job, _ = submit_job(broker.manager, "t", PAYLOAD, 0.0, lease=1.0)
    assert worker.session.worker is not None
    consumer = worker.session.worker.consumer
    broker.manager.grant(consumer, 2, 0.0)  # delivered (not yet sent) ...
    broker.manager.expire_leases(5.0)  # ... its lease runs out: revoked, requeued, delivered again
    frames = worker.received()
    deliveries = [(d["id"], d["attempt"]) for m in frames if m["op"] == "JOBS" for d in m["jobs"]]
    assert deliveries == [(job.id, 2)]
    assert [m["op"] for m in frames].count("REVOKE") == 1


async def test_compactions_under_fsync_always_keep_every_acknowledged_job(tmp_path: Path) -> None:
    """Each compaction retires the journal file while fsyncs of it may be in flight."""
    config = JournalConfig(tmp_path, fsync=FsyncMode.ALWAYS, compact_min_bytes=20_000)
    broker = Broker(BrokerConfig(port=0, journal=config))
    await broker.start()
    try:
        client = await RawPeer.connect(broker.address)
        assert (await client.hello())["op"] == "OK"
        acknowledged: list[str] = []
        for rid in range(1, 61):
            jobs = [{"task": "t", "payload": PAYLOAD, "id": f"j{rid}-{i}"} for i in range(50)]
            await client.send({"op": "SUBMIT", "rid": rid, "jobs": jobs})
            reply = await client.read()
            assert reply["op"] == "OK"
            acknowledged += reply["ids"]
        journal = broker.journal
        assert journal is not None
        assert journal.stats()["compactions"] >= 3
        client.close()
    finally:
        await broker.stop()
    again = Broker(BrokerConfig(port=0, journal=JournalConfig(tmp_path)))
    await again.start()
    try:
        assert sorted(again.manager.jobs) == sorted(acknowledged)
    finally:
        await again.stop()


async def test_a_batch_parent_answered_by_a_unique_key_stands_for_that_job() -> None:
    broker = Broker(BrokerConfig(port=0))
    broker.adopt_running_loop()
    client = Peer(broker, "client")
    first = {"task": "t", "payload": PAYLOAD, "unique_key": "K"}
    client.send({"op": "SUBMIT", "rid": 1, "jobs": [first]})
    holder = client.received()[0]["ids"][0]
    batch = [
        {"task": "t", "payload": PAYLOAD, "id": "X", "unique_key": "K"},
        {"task": "t", "payload": PAYLOAD, "depends_on": ["X"]},
    ]
    client.send({"op": "SUBMIT", "rid": 2, "jobs": batch})
    [reply] = client.received()
    assert reply["op"] == "OK"
    assert reply["ids"][0] == holder
    child = broker.manager.get(reply["ids"][1])
    assert child is not None
    assert child.depends_on == (holder,)
    assert child.state.value == "waiting"


class SlowGate:
    """Storage whose records become durable only when the test says so."""

    def __init__(self) -> None:
        self.appended = 0
        self.failure = None
        self.durable = 0
        self.waiters: list[tuple[int, Callable[[], None]]] = []

    def job_submitted(self, job: Any) -> None:
        self.appended += 1

    def job_changed(self, job: Any) -> None:
        self.appended += 1

    def job_reserved(self, job: Any) -> None:
        self.appended += 1

    def job_deleted(self, job_id: str) -> None:
        self.appended += 1

    def setting_changed(self, key: str, value: Any) -> None:
        self.appended += 1

    def is_durable(self, mark: int) -> bool:
        return mark <= self.durable

    def when_durable(self, mark: int, callback: Callable[[], None]) -> None:
        self.waiters.append((mark, callback))

    def add_failure_listener(self, listener: Any) -> None:
        pass

    def make_durable(self) -> None:
        self.durable = self.appended
        waiters, self.waiters = self.waiters, []
        for _, callback in waiters:
            callback()


class RecordingTransport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def test_replies_piling_up_behind_slow_storage_stop_the_peer_being_read() -> None:
    broker = Broker(BrokerConfig(port=0, output_pause_bytes=2_000))
    broker.adopt_running_loop()
    gate = SlowGate()
    broker.state.gate = gate
    broker.manager.journal = gate
    peer = Peer(broker, "client")
    transport = RecordingTransport()
    peer.session.output.transport = transport  # type: ignore[assignment]
    peer.transport = transport
    peer.send({"op": "SUBMIT", "rid": 1, "jobs": [{"task": "t", "payload": PAYLOAD}]})
    assert peer.received() == []  # the acknowledgement waits for storage
    rid = 2
    while transport.reading:  # a peer that keeps asking meanwhile
        peer.send({"op": "STATS", "rid": rid})
        rid += 1
        assert rid < 1_000, "the peer was never stopped being read"
    gate.make_durable()
    replies = peer.received()
    assert [m["rid"] for m in replies] == list(range(1, rid))
    assert transport.reading
