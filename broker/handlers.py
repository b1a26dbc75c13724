"""What the broker does for each request, by op and by role.

:data:`ROUTES` is the one table: op -> handler, the roles that may send it,
and whether it changes jobs (refused with ``STORAGE_FAILED`` while the
broker's storage cannot take records). A session creates the handler
object for its peer's role at the handshake: :class:`ClientHandlers` for a
producer, :class:`WorkerHandlers` (which is also the manager's sink for
that worker's deliveries and revocations) for a worker. Handlers are
synchronous: a message and the time in, manager calls and frames out.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from broker.jobs import Job
from broker.manager import Consumer, Schedule
from broker.manager.schedules import NO_ARGUMENTS
from broker.state import BrokerState
from broker.wire import done_message, failed_reply, status_reply
from protocol.errors import ErrorCode
from protocol.framing import encode_frame
from protocol.job_spec import DEFAULT_QUEUE, JobSpec
from protocol.messages import Op, Role
from protocol.states import JobState

if TYPE_CHECKING:
    from broker.session import Session

Message = dict[str, Any]

DEFAULT_FAILED_LIMIT = 100
DEFAULT_LIST_LIMIT = 100


def dependency_order(
    entries: list[Message], known: Mapping[str, Job]
) -> list[int] | tuple[ErrorCode, str]:
    """The order to submit a batch in so that every parent comes before its children.

    A parent is a job the broker knows or an entry of this batch with that
    ``id``; an unknown one is ``NOT_FOUND``, a cycle within the batch
    ``BAD_REQUEST``. Entries keep their order where no dependency forces another.
    """
    in_batch: dict[str, int] = {}
    for index, entry in enumerate(entries):
        job_id = entry.get("id")
        if job_id is not None and job_id not in known:
            in_batch.setdefault(job_id, index)
    parents_left = [0] * len(entries)
    children: dict[int, list[int]] = {}
    for index, entry in enumerate(entries):
        for parent_id in entry.get("depends_on") or ():
            parent = in_batch.get(parent_id)
            if parent is not None:
                if parent == index:
                    return ErrorCode.BAD_REQUEST, (
                        f"SUBMIT.jobs[{index}].depends_on: the job depends on itself"
                    )
                parents_left[index] += 1
                children.setdefault(parent, []).append(index)
            elif parent_id not in known:
                return ErrorCode.NOT_FOUND, (
                    f"SUBMIT.jobs[{index}].depends_on: no job {parent_id!r}"
                )
    ready = [index for index in range(len(entries)) if not parents_left[index]]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for child in children.get(index, ()):
            parents_left[child] -= 1
            if not parents_left[child]:
                heapq.heappush(ready, child)
    if len(order) < len(entries):
        cycle = sorted(index for index in range(len(entries)) if parents_left[index])
        return ErrorCode.BAD_REQUEST, (
            f"SUBMIT.jobs: a dependency cycle among jobs {cycle[:10]} of the batch"
        )
    return order


def schedule_from_wire(wire: Message) -> Schedule:
    """A schedule map (HELLO.schedules, SCHEDULE) the schema accepted; ValueError if bad."""
    return Schedule(
        wire["name"],
        wire["task"],
        cron=wire.get("cron"),
        every=wire.get("every"),
        timezone=wire.get("timezone"),
        payload=wire.get("payload") or NO_ARGUMENTS,
        queue=wire.get("queue") or DEFAULT_QUEUE,
    )


class PeerHandlers:
    """What any peer may ask once its handshake is done."""

    def __init__(self, session: Session, state: BrokerState) -> None:
        self.session = session
        self.state = state
        self.manager = state.manager

    def ping(self, message: Message, now: float) -> None:
        self.session.reply(message["rid"], durable=False)

    def stats(self, message: Message, now: float) -> None:
        self.session.reply(message["rid"], {"stats": self.state.stats()}, durable=False)


class ClientHandlers(PeerHandlers):
    """A producer's requests: submit and watch jobs, ask about them, manage failures."""

    def submit(self, message: Message, now: float) -> None:
        session = self.session
        rid = message["rid"]
        if self.state.shutting_down:
            session.reply_error(rid, ErrorCode.SHUTTING_DOWN, "the broker is shutting down")
            return
        entries = message["jobs"]
        manager = self.manager
        known = manager.jobs
        limit = session.payload_limit
        new = 0
        has_parents = False
        for index, entry in enumerate(entries):
            size = len(entry["payload"])
            if size > limit:
                session.reply_error(
                    rid,
                    ErrorCode.BAD_REQUEST,
                    f"SUBMIT.jobs[{index}].payload: {size} bytes is more than "
                    f"the {limit} a delivery can carry",
                )
                return
            if len(entry) == 2:  # task and payload only (the schema requires both)
                new += 1
                continue
            job_id = entry.get("id")
            if job_id is None or job_id not in known:
                new += 1
            if "depends_on" in entry:
                has_parents = True
        manager.check_capacity(new)  # all or nothing: QUEUE_FULL before any is accepted
        order: Iterable[int] = range(len(entries))
        if has_parents:
            # All or nothing too: every parent known or in this batch, and no cycle.
            order_or_error = dependency_order(entries, known)
            if isinstance(order_or_error, tuple):
                session.reply_error(rid, *order_or_error)
                return
            order = order_or_error
        submit = manager.submit
        from_wire = JobSpec.from_wire
        submitted: list[Job | None] = [None] * len(entries)
        already_done: list[Job] = []
        watch = message.get("watch", False)
        existing: list[Message] | None = None
        # An entry's id that a unique key answered with another job: later
        # entries that name it as a parent mean that job.
        stands_for: dict[str, str] | None = None
        for index in order:
            entry = entries[index]
            if stands_for is not None and entry.get("depends_on"):
                parents = [stands_for.get(parent, parent) for parent in entry["depends_on"]]
                entry = dict(entry, depends_on=parents)
            job, created = submit(from_wire(entry), now)
            submitted[index] = job
            if not created:  # a known id, or a unique key a job holds
                if existing is None:
                    existing = []
                existing.append({"index": index, "id": job.id, "state": job.state.value})
                asked = entry.get("id")
                if asked is not None and asked != job.id:
                    if stands_for is None:
                        stands_for = {}
                    stands_for[asked] = job.id
        jobs = cast(list[Job], submitted)  # order holds every index
        if watch:
            for job in jobs:
                if job.state.finished:
                    already_done.append(job)
                else:
                    job.add_watcher(session)
        reply: Message = {"ids": [job.id for job in jobs]}
        if existing is not None:
            reply["existing"] = sorted(existing, key=lambda entry: entry["index"])
        session.reply(rid, reply)
        for job in already_done:
            session.send(done_message(job))

    def watch(self, message: Message, now: float) -> None:
        unknown: list[str] = []
        already_done: list[Job] = []
        session = self.session
        for job_id in message["ids"]:
            job = self.manager.get(job_id)
            if job is None:
                unknown.append(job_id)
            elif job.state.finished:
                already_done.append(job)
            else:
                job.add_watcher(session)
        session.reply(message["rid"], {"unknown": unknown}, durable=False)
        for job in already_done:
            session.send(done_message(job))

    def status(self, message: Message, now: float) -> None:
        job = self.manager.get(message["id"])
        if job is None:
            self.session.reply_error(
                message["rid"], ErrorCode.NOT_FOUND, f"no job {message['id']!r}"
            )
            return
        described = status_reply(job, self.state.config.max_frame // 2)
        self.session.reply(message["rid"], {"job": described}, durable=False)

    def cancel(self, message: Message, now: float) -> None:
        outcome = self.manager.cancel(message["id"], now)
        if outcome is None:
            self.session.reply_error(
                message["rid"], ErrorCode.NOT_FOUND, f"no job {message['id']!r}"
            )
            return
        self.session.reply(message["rid"], {"cancelled": outcome})

    def failed(self, message: Message, now: float) -> None:
        limit = message.get("limit")
        jobs = self.manager.failed_jobs(DEFAULT_FAILED_LIMIT if limit is None else limit)
        described = failed_reply(jobs, self.state.config.max_frame // 2)
        self.session.reply(message["rid"], {"jobs": described}, durable=False)

    def retry(self, message: Message, now: float) -> None:
        ids = message.get("ids")
        retry_all = bool(message.get("all"))
        if ids is None and not retry_all:
            self.session.reply_error(
                message["rid"], ErrorCode.BAD_REQUEST, "RETRY needs 'ids' or 'all'"
            )
            return
        count = self.manager.retry_failed(None if retry_all else ids, now)
        self.session.reply(message["rid"], {"retried": count})

    def purge_failed(self, message: Message, now: float) -> None:
        self.session.reply(message["rid"], {"purged": self.manager.purge_failed()})

    def list_jobs(self, message: Message, now: float) -> None:
        rid = message["rid"]
        state_name = message.get("state")
        try:
            state = None if state_name is None else JobState(state_name)
        except ValueError:
            self.session.reply_error(
                rid, ErrorCode.BAD_REQUEST, f"LIST.state: no job state {state_name!r}"
            )
            return
        limit = message.get("limit")
        jobs = self.manager.list_jobs(
            message["queue"], state, DEFAULT_LIST_LIMIT if limit is None else limit
        )
        described = failed_reply(jobs, self.state.config.max_frame // 2)
        self.session.reply(rid, {"jobs": described}, durable=False)

    def follow(self, message: Message, now: float) -> None:
        """Push this job's progress reports here (``PROGRESSED``) until it finishes."""
        job = self.manager.get(message["id"])
        if job is None:
            self.session.reply_error(
                message["rid"], ErrorCode.NOT_FOUND, f"no job {message['id']!r}"
            )
            return
        if not job.state.finished:
            self.state.followers.setdefault(job.id, set()).add(self.session)
        latest = job.progress
        self.session.reply(
            message["rid"],
            {
                "state": job.state.value,
                "fraction": None if latest is None else latest[0],
                "info": None if latest is None else latest[1],
            },
            durable=False,
        )

    def pause(self, message: Message, now: float) -> None:
        changed = self.manager.pause_queue(message["queue"])
        self.session.reply(message["rid"], {"changed": changed})

    def resume(self, message: Message, now: float) -> None:
        changed = self.manager.resume_queue(message["queue"], now)
        self.session.reply(message["rid"], {"changed": changed})

    def schedule(self, message: Message, now: float) -> None:
        try:
            schedule = schedule_from_wire(message)
        except ValueError as exc:
            self.session.reply_error(message["rid"], ErrorCode.BAD_REQUEST, f"SCHEDULE: {exc}")
            return
        changed = self.manager.set_schedule(schedule, now)
        self.session.reply(message["rid"], {"changed": changed, "next_run": schedule.next})

    def unschedule(self, message: Message, now: float) -> None:
        removed = self.manager.remove_schedule(message["name"])
        self.session.reply(message["rid"], {"removed": removed})

    def schedules(self, message: Message, now: float) -> None:
        self.session.reply(
            message["rid"], {"schedules": self.manager.schedules_list()}, durable=False
        )

    def set_limits(self, message: Message, now: float) -> None:
        rid = message["rid"]
        queue = message.get("queue")
        task = message.get("task")
        if (queue is None) == (task is None):
            self.session.reply_error(
                rid, ErrorCode.BAD_REQUEST, "SET_LIMITS needs exactly one of 'queue' and 'task'"
            )
            return
        max_running = message.get("max_running")
        if max_running == 0:
            self.session.reply_error(
                rid,
                ErrorCode.BAD_REQUEST,
                "SET_LIMITS.max_running: at least 1 (to start nothing, PAUSE the queue)",
            )
            return
        kind, name = ("queue", queue) if queue is not None else ("task", str(task))
        try:
            limit = self.manager.set_limits(kind, name, max_running, message.get("rate"), now)
        except ValueError as exc:
            self.session.reply_error(rid, ErrorCode.BAD_REQUEST, f"SET_LIMITS.{exc}")
            return
        self.session.reply(rid, {"limits": None if limit is None else limit.setting()})


class WorkerHandlers(PeerHandlers):
    """A worker's reports and credit, and the manager's sink for this worker."""

    def __init__(
        self,
        session: Session,
        state: BrokerState,
        queues: list[str],
        burst: bool,
        task_names: list[str] | None = None,
    ) -> None:
        super().__init__(session, state)
        self.consumer = Consumer(self, queues, session.name, task_names)
        self.burst = burst
        self._empty_sent = False
        state.manager.attach(self.consumer)
        if burst:
            state.burst_workers.add(self)

    # -- the manager's sink --

    def deliver(self, job: Job) -> None:
        self._empty_sent = False
        self.session.output.deliver(job, self.consumer)

    def revoke(self, job: Job) -> None:
        self.session.send({"op": Op.REVOKE, "id": job.id, "attempt": job.attempts})

    # -- requests --

    def ready(self, message: Message, now: float) -> None:
        if not self.state.shutting_down:
            self.manager.grant(self.consumer, message["n"], now)
        if self.burst:
            self.check_burst_empty()

    def ack(self, message: Message, now: float) -> None:
        result = message["result"]
        limit = self.session.payload_limit
        if len(result) > limit:
            error = {
                "type": "ResultTooLarge",
                "message": f"the result of {len(result)} bytes is more than the "
                f"{limit} a DONE frame can carry",
                "traceback": "",
            }
            self.manager.fail(self.consumer, message["id"], message["attempt"], error, now)
            return
        self.manager.ack(self.consumer, message["id"], message["attempt"], result, now)

    def fail(self, message: Message, now: float) -> None:
        self.manager.fail(
            self.consumer,
            message["id"],
            message["attempt"],
            message["error"],
            now,
            message.get("retry_in"),
        )

    def release(self, message: Message, now: float) -> None:
        self.manager.release(self.consumer, message["id"], message["attempt"], now)

    def heartbeat(self, message: Message, now: float) -> None:
        self.manager.heartbeat(self.consumer, message["ids"], now)

    def quiet(self, message: Message, now: float) -> None:
        self.manager.quiet(self.consumer)

    def progress(self, message: Message, now: float) -> None:
        """Keep a running attempt's latest report and pass it to the job's followers.

        A report from an attempt this worker no longer holds is ignored.
        """
        job = self.consumer.jobs.get(message["id"])
        attempt = message["attempt"]
        if job is None or job.extras.attempts != attempt or job.state is not JobState.RUNNING:
            return
        fraction = message["fraction"]
        info = message.get("info")
        job.progress = [fraction, info, now, attempt]
        followers = self.state.followers.get(job.id)
        if followers:
            push: Message = {"op": Op.PROGRESSED, "id": job.id, "fraction": fraction}
            if info is not None:
                push["info"] = info
            frame = encode_frame(push)  # once for every follower
            for session in list(followers):
                if session.is_closing:
                    followers.discard(session)
                else:
                    session.output.send_frame(frame, durable=False)

    # -- the end --

    def check_burst_empty(self) -> None:
        """Tell a burst worker with nothing left to do that its queues are empty."""
        consumer = self.consumer
        if (
            self.burst
            and not self._empty_sent
            and not consumer.jobs
            and self.manager.queues_idle(consumer.queues, consumer.tasks)
        ):
            self._empty_sent = True
            self.session.send({"op": Op.EMPTY}, durable=False)

    def detach(self, now: float, reason: str) -> None:
        """The connection is gone: every job this worker held goes back to its queue."""
        self.state.burst_workers.discard(self)
        self.manager.detach(self.consumer, now, reason)


Handler = Callable[[Any, Message, float], None]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    roles: frozenset[str]
    # Changes jobs: refused with STORAGE_FAILED while storage cannot take records.
    changes_jobs: bool = False


# A route as a session holds it: the handler bound to the session's handler
# object, and changes_jobs.
BoundRoute = tuple[Callable[[Message, float], None], bool]


def routes_for(role: str, handlers: PeerHandlers) -> dict[str, BoundRoute]:
    """The routes a peer of ``role`` may take, bound to its handler object (at the handshake)."""
    return {
        op: (route.handler.__get__(handlers), route.changes_jobs)
        for op, route in ROUTES.items()
        if role in route.roles
    }


_ANY = frozenset({Role.CLIENT, Role.WORKER})
_CLIENT = frozenset({Role.CLIENT})
_WORKER = frozenset({Role.WORKER})

# Every op a peer may send after its handshake (HELLO is the session's own).
ROUTES: dict[str, Route] = {
    Op.PING: Route(PeerHandlers.ping, _ANY),
    Op.STATS: Route(PeerHandlers.stats, _ANY),
    Op.SUBMIT: Route(ClientHandlers.submit, _CLIENT, changes_jobs=True),
    Op.WATCH: Route(ClientHandlers.watch, _CLIENT),
    Op.STATUS: Route(ClientHandlers.status, _CLIENT),
    Op.CANCEL: Route(ClientHandlers.cancel, _CLIENT, changes_jobs=True),
    Op.FAILED: Route(ClientHandlers.failed, _CLIENT),
    Op.RETRY: Route(ClientHandlers.retry, _CLIENT, changes_jobs=True),
    Op.PURGE_FAILED: Route(ClientHandlers.purge_failed, _CLIENT, changes_jobs=True),
    Op.PAUSE: Route(ClientHandlers.pause, _CLIENT, changes_jobs=True),
    Op.RESUME: Route(ClientHandlers.resume, _CLIENT, changes_jobs=True),
    Op.SET_LIMITS: Route(ClientHandlers.set_limits, _CLIENT, changes_jobs=True),
    Op.SCHEDULE: Route(ClientHandlers.schedule, _CLIENT, changes_jobs=True),
    Op.UNSCHEDULE: Route(ClientHandlers.unschedule, _CLIENT, changes_jobs=True),
    Op.SCHEDULES: Route(ClientHandlers.schedules, _CLIENT),
    Op.READY: Route(WorkerHandlers.ready, _WORKER),
    Op.ACK: Route(WorkerHandlers.ack, _WORKER),
    Op.FAIL: Route(WorkerHandlers.fail, _WORKER),
    Op.RELEASE: Route(WorkerHandlers.release, _WORKER),
    Op.HEARTBEAT: Route(WorkerHandlers.heartbeat, _WORKER),
    Op.QUIET: Route(WorkerHandlers.quiet, _WORKER),
    Op.FOLLOW: Route(ClientHandlers.follow, _CLIENT),
    Op.LIST: Route(ClientHandlers.list_jobs, _CLIENT),
    Op.PROGRESS: Route(WorkerHandlers.progress, _WORKER),
}
