"""The async client that producers embed: submit jobs, await their results.

One :class:`Client` multiplexes any number of concurrent calls over one
connection. Results are pushed by the broker (``DONE``), never polled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, cast

import msgpack

from protocol.backoff import Reconnect
from protocol.config import resolve_addresses
from protocol.errors import (
    RETRYABLE_REFUSALS,
    BrokerUnavailable,
    ConnectionLost,
    JobwireError,
    NotFound,
    NotLeader,
    RemoteError,
    remote_error,
)
from protocol.framing import DEFAULT_MAX_FRAME, ENVELOPE_RESERVE
from protocol.job_spec import DEFAULT_QUEUE, JobSpec, encode_payload
from protocol.messages import MAX_NAME_LENGTH, MAX_UINT, Op, Role
from protocol.peers import LeaderSearch
from protocol.rates import parse_rate
from protocol.schedules import check_schedule
from protocol.security import client_ssl_context, resolve_token
from protocol.states import JobState
from protocol.stream import (
    DEFAULT_CONNECT_TIMEOUT,
    Connection,
    Message,
    ReplyHook,
    open_connection,
)

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    # Defaults to Any, so that a bare ``Job`` in existing code keeps type-checking.
    ResultT = TypeVar("ResultT", default=Any)
else:
    from typing import TypeVar

    ResultT = TypeVar("ResultT")

# Reconnecting: at once after a connection that worked, then from 50 ms
# doubling to 1 s while attempts fail, all within ``connect_timeout``.
RECONNECT_BASE = 0.05
RECONNECT_CAP = 1.0

# Marks an outcome future whose connection dropped (whoever awaits it watches
# the job again on the next connection); a plain value rather than an
# exception, so an outcome nobody awaits never logs "exception never retrieved".
LOST = "LOST"
# Ids per WATCH when many outcomes are watched again after a lost connection.
REWATCH_BATCH = 1000

# What a ``submit_many`` entry may hold: JobSpec's options, with the arguments
# in place of their encoding. A new job option is added in JobSpec alone.
SUBMIT_FIELDS = frozenset(
    {f.name for f in dataclasses.fields(JobSpec) if f.name != "payload"} | {"args", "kwargs"}
)


# submit_many's entries that need no JobSpec: the wire entry is built directly.
PLAIN_FIELDS = frozenset({"task", "args", "kwargs"})


class JobFailed(JobwireError):
    """The job ended without a result: its task raised, timed out, or was lost for good.

    ``error_type``, ``error_message`` and ``traceback`` are the remote error's.
    """

    def __init__(self, job_id: str, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.error_message = message
        self.traceback = traceback


class JobCancelled(JobFailed):
    """The job was cancelled before it finished."""


def job_spec(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> JobSpec:
    """One job to submit; ``options`` are :class:`JobSpec`'s (``queue``, ``priority``, ...)."""
    if not isinstance(task, str) or not task:
        raise ValueError("task must be a non-empty string")
    return JobSpec(task, encode_payload(args, kwargs), **options)


def parent_ids(parents: Iterable[str | Job] | None) -> tuple[str, ...] | None:
    """``depends_on`` as ids (a :class:`Job` handle stands for its id)."""
    if parents is None:
        return None
    ids = tuple(parent.id if isinstance(parent, Job) else parent for parent in parents)
    return ids or None


def with_job_id(step: Mapping[str, Any]) -> dict[str, Any]:
    """A step of a chain or chord, with a job id of its own for the others to name."""
    spec = dict(step)
    if spec.get("job_id") is None:
        spec["job_id"] = f"wf-{secrets.token_hex(10)}"
    return spec


# A generous bound on what a job spec adds around its payload on the wire.
SPEC_OVERHEAD = 128
MAX_SPECS_PER_FRAME = 10_000


# A submit with only these options may share its SUBMIT frame with the other
# submits of the same loop turn: nothing in it can make the broker refuse the
# frame that the client did not check (see _shareable). Ids, dependencies and
# unique keys go alone, so that one job's refusal is never another's.
SHAREABLE_SPEC = frozenset({"task", "payload", "queue", "priority"})


def _shareable(task: str, queue: Any, priority: Any) -> bool:
    return (
        len(task) <= MAX_NAME_LENGTH
        and type(queue) is str
        and 0 < len(queue) <= MAX_NAME_LENGTH
        and type(priority) is int
        and -MAX_UINT <= priority <= MAX_UINT
    )


class _SharedSubmit:
    """The SUBMIT the submits of this loop turn join (``Client.submit``)."""

    __slots__ = ("connection", "flushes", "jobs", "reply", "size", "specs")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # It takes more jobs until the connection writes it.
        self.flushes = connection.flushes
        self.specs: list[Message] = []
        self.jobs: list[Job] = []
        self.size = 0
        self.reply: asyncio.Future[Message]


def split_into_frames(specs: list[Message], budget: int) -> list[list[Message]]:
    """Consecutive runs of specs whose SUBMIT frame stays within ``budget`` bytes.

    Raises ``ValueError`` for a payload that no frame could carry.
    """
    batches: list[list[Message]] = []
    batch: list[Message] = []
    size = 0
    for spec in specs:
        payload = len(spec["payload"])
        if payload > budget:
            raise ValueError(
                f"the arguments of a {spec['task']!r} job encode to {payload} bytes, "
                f"more than the {budget} a frame can carry"
            )
        # Names are counted at 4 bytes a character: UTF-8's worst case.
        cost = payload + SPEC_OVERHEAD + 4 * len(spec["task"])
        if len(spec) > 2:  # it names a queue or an id
            cost += 4 * (len(spec.get("queue", "")) + len(spec.get("id", "")))
        if batch and (size + cost > budget or len(batch) >= MAX_SPECS_PER_FRAME):
            batches.append(batch)
            batch = []
            size = 0
        batch.append(spec)
        size += cost
    batches.append(batch)
    return batches


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """A running job's progress report: what its task passed to ``report_progress``."""

    fraction: float
    info: dict[str, Any] | None = None


def _progress(fraction: Any, info: bytes | None) -> Progress:
    decoded = None if info is None else msgpack.unpackb(info, raw=False, strict_map_key=False)
    return Progress(float(fraction), decoded if isinstance(decoded, dict) else None)


class Job(Generic[ResultT]):
    """A handle on a job the broker holds. ``await job.result()`` waits for it.

    ``Job[int]`` (what a typed task handle's ``submit`` returns) says what
    ``result()`` gives to a type checker; a bare ``Job`` means ``Job[Any]``.
    The result is the task's return value after a msgpack round trip: tuples
    come back as lists, and only msgpack's types exist.
    """

    __slots__ = ("_client", "_outcome", "existing_state", "id")

    def __init__(
        self, client: Client, job_id: str, outcome: asyncio.Future[Message] | None = None
    ) -> None:
        self._client = client
        self.id = job_id
        # Set when the submit returned a job the broker already had (a known
        # job_id, or a unique_key a job holds): its state then. None: a new job.
        self.existing_state: str | None = None
        # Resolved with the broker's DONE message (or a LOST marker).
        self._outcome = outcome

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def _outcome_future(self) -> asyncio.Future[Message]:
        future = self._outcome
        if future is None:
            future = self._outcome = (await self._client._watch([self.id]))[self.id]
        elif future.done() and future.result()["op"] == LOST:
            future = self._outcome = (await self._client._watch_again([self.id]))[self.id]
        return future

    async def result(self, timeout: float | None = None, *, cancel: bool = False) -> ResultT:
        """The task's return value; raises :class:`JobFailed` (or :class:`JobCancelled`).

        ``timeout`` bounds the wait (``TimeoutError``); the job itself goes on
        unless ``cancel`` is true, which cancels it before raising.

        If the connection drops while waiting (a broker restarted, a cluster's
        failover), the client reconnects (to the new leader) and watches the
        job there, within its ``connect_timeout``. It raises
        :class:`ConnectionLost` if no broker could be reached by then, or if
        the broker reached no longer knows the job (one without a journal
        restarted, or the result expired): the job's outcome is then unknown.
        """
        future = self._outcome
        if future is not None:
            if not future.done():  # watched since the submit: the common case, kept cheap
                started = asyncio.get_running_loop().time()
                try:
                    await _wait_for(future, timeout)
                except TimeoutError:
                    if cancel:
                        await self._client.cancel(self.id)
                    raise
                if timeout is not None:
                    timeout -= asyncio.get_running_loop().time() - started
            outcome = future.result()
            if outcome["op"] != LOST or outcome["closed"]:
                return cast(ResultT, unpack_outcome(outcome))
        try:
            # shield: a caller's timeout must not cancel the future the handle keeps
            async with asyncio.timeout(timeout):
                while True:
                    future = await self._outcome_future()
                    outcome = await asyncio.shield(future)
                    if outcome["op"] != LOST or outcome["closed"]:
                        break  # closed by close(): unpack_outcome raises
                    # The connection dropped: the next turn watches the job again.
        except TimeoutError:
            if cancel:
                await self._client.cancel(self.id)
            raise
        return cast(ResultT, unpack_outcome(outcome))

    async def status(self) -> dict[str, Any]:
        return await self._client.status(self.id)

    async def progress(self) -> AsyncIterator[Progress]:
        """Each progress report of the job, from the latest one on; ends when the job ends.

        ``async for p in job.progress(): print(p.fraction, p.info)``. Reports
        are rate-limited at the worker, so some may be skipped (never the
        latest one before a pause); a consumer slower than the reports sees
        the latest one when it asks again. A connection lost while it waits
        for reports is survived as in :meth:`result` (the latest report may
        then come twice); one lost during its FOLLOW request raises
        :class:`ConnectionLost`. Raises :class:`NotFound` for an unknown job.
        """
        client = self._client
        # At most one report waits: a slow consumer sees the latest, as the worker sends.
        reports: asyncio.Queue[Progress] = asyncio.Queue(maxsize=1)
        followers = client._followers.setdefault(self.id, [])
        followers.append(reports)
        try:
            while True:  # once per connection
                outcome = await self._outcome_future()
                reply = await client._call({"op": Op.FOLLOW, "id": self.id})
                if reply.get("fraction") is not None:
                    yield _progress(reply["fraction"], reply.get("info"))
                if JobState(reply["state"]).finished:
                    return
                while True:
                    if not reports.empty():
                        yield reports.get_nowait()
                        continue
                    if outcome.done():
                        break
                    getter = asyncio.ensure_future(reports.get())
                    waiting: set[asyncio.Future[Any]] = {getter, outcome}
                    try:
                        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        getter.cancel()  # nothing if it is done
                    if getter.done() and not getter.cancelled():
                        yield getter.result()
                ending = outcome.result()
                if ending["op"] != LOST:
                    return
                if ending["closed"]:
                    raise ConnectionLost("the client was closed while following a job")
                # The connection dropped: watch and follow the job on the next one.
        finally:
            followers.remove(reports)
            if not followers:
                client._followers.pop(self.id, None)

    async def cancel(self) -> bool:
        return await self._client.cancel(self.id)


async def _wait_for(future: asyncio.Future[Message], timeout: float | None) -> None:
    """Wait until ``future`` is done, at most ``timeout`` seconds (``TimeoutError``).

    What ``asyncio.timeout`` around ``asyncio.shield`` does, for one future
    and a third of the cost: a caller cancelled or timed out leaves ``future``
    as it was, for the handle to keep.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    timer = None if timeout is None else loop.call_later(max(0.0, timeout), wake, None)
    try:
        await waiter
    finally:
        future.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()
    if not future.done():
        raise TimeoutError


def unpack_outcome(outcome: Message) -> Any:
    """A DONE message to the task's return value, or the matching exception."""
    state = outcome.get("state")
    if state == JobState.SUCCEEDED:
        return msgpack.unpackb(outcome["result"], raw=False, strict_map_key=False)
    if outcome["op"] == LOST:
        raise ConnectionLost("the client was closed while waiting for a job's result")
    error = outcome.get("error") or {}
    error_class = JobCancelled if state == JobState.CANCELLED else JobFailed
    raise error_class(
        outcome["id"],
        error.get("type", "Error"),
        error.get("message", str(state)),
        error.get("traceback", ""),
    )


class Client:
    """``async with Client("127.0.0.1:7878") as client: ...``

    One client is meant to be shared by a whole program (every request of a
    web app): its calls are multiplexed over one connection. It connects on
    demand, so it can be created, entered and used before the broker is up:
    a call waits up to ``connect_timeout`` for a connection, retrying with a
    bounded backoff, then raises :class:`BrokerUnavailable`. A connection
    lost after it worked is retried at once by the next call; calls in
    flight raise :class:`ConnectionLost` (a submit's outcome is then
    unknown: submit again with the same ``job_id``), but awaited results
    are watched again on the next connection (see :meth:`Job.result`).

    Given several addresses (a cluster shard's brokers), it connects to the
    leader among them (:mod:`protocol.peers`), and follows it after a failover.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        name: str = "",
        max_frame: int = DEFAULT_MAX_FRAME,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        watch: bool = True,
    ) -> None:
        """``address``: ``host:port``, ``jobwire://host:port`` or ``jobwires://host:port``
        (TLS: verified against the system's CAs unless ``ssl`` is given); by
        default ``JOBWIRE_URL``, else 127.0.0.1:7878. Several addresses, a
        cluster shard's brokers, as a list or separated by commas: the client
        connects to whichever leads (a standby's ``NOT_LEADER`` names it),
        trying the others in turn, and does so again after a failover. The
        same token and TLS settings apply to every address.

        ``token``: the shared secret, by default from ``BROKER_TOKEN`` (or
        ``JOBWIRE_TOKEN``).

        ``watch``: have the broker push every submitted job's outcome, so that
        ``result()`` costs no extra round trip. A producer that rarely awaits
        results can pass False: ``result()`` then asks for the outcome itself.
        """
        addresses, tls = resolve_addresses(address)
        self._peers = LeaderSearch(addresses)
        self._watch_on_submit = watch
        self._token = token.strip() if token is not None else resolve_token()
        self._ssl = ssl if ssl is not None or not tls else client_ssl_context()
        self._name = name
        self._max_frame = max_frame
        self._connect_timeout = connect_timeout
        self._frame_limit = max_frame
        self._connection: Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._reconnect = Reconnect(RECONNECT_BASE, RECONNECT_CAP)
        # The last failed attempt's error, the cause of a BrokerUnavailable.
        self._last_failure: BaseException | None = None
        # Outcomes (DONE messages) by job id: a future per job being waited for.
        self._outcomes: dict[str, asyncio.Future[Message]] = {}
        # Progress reports by job id, for each job.progress() iterating.
        self._followers: dict[str, list[asyncio.Queue[Progress]]] = {}
        # The SUBMIT this loop turn's submits join, until it is written.
        self._open_submit: _SharedSubmit | None = None

    @property
    def address(self) -> str:
        """The broker's address: the one connected to, else the one tried last."""
        return self._peers.current

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address the client was given, in order."""
        return self._peers.addresses

    async def __aenter__(self) -> Client:
        """Connects nothing: the first call does (see :meth:`connect` to fail early)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect now; raises :class:`BrokerUnavailable` after ``connect_timeout``."""
        await self._ensure_connection()

    async def close(self) -> None:
        """Close the connection; results awaited meanwhile raise :class:`ConnectionLost`.

        The client may still be used: its next call connects again.
        """
        self._lose_outcomes(closed=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _ensure_connection(self) -> Connection:
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        try:
            async with asyncio.timeout(self._connect_timeout) as scope, self._connecting:
                connection = self._connection
                if connection is not None and connection.is_open:
                    return connection  # another call connected meanwhile
                return await self._open(scope.when())
        except TimeoutError:
            cause = self._last_failure
            raise BrokerUnavailable(
                f"cannot reach the broker at {self._peers} within {self._connect_timeout:g}s"
                + (f": {cause}" if cause else "")
            ) from cause

    async def _open(self, deadline: float | None) -> Connection:
        """Try until a connection works; the caller's timeout, at ``deadline``, ends it.

        With several addresses, a round tries each (the leader a standby
        names first); the backoff waits between rounds, not attempts.
        """
        loop = asyncio.get_running_loop()
        peers = self._peers
        while True:
            if peers.round_start:
                delay = peers.wait(self._reconnect.delay())
                if deadline is not None:
                    # The backoff spans calls; each call still gets an attempt of its own.
                    delay = min(delay, max(0.0, (deadline - loop.time()) * 0.75))
                await asyncio.sleep(delay)
            address = peers.next()
            try:
                connection, welcome = await open_connection(
                    address,
                    {"role": Role.CLIENT, "name": self._name},
                    on_push=self._on_push,
                    token=self._token,
                    ssl=self._ssl,
                    max_frame=self._max_frame,
                    timeout=peers.attempt_timeout(self._connect_timeout),
                )
            except (OSError, ConnectionLost) as exc:  # TimeoutError is an OSError
                self._last_failure = exc
                if peers.failed():
                    peers.round_over(self._reconnect)
                continue
            except RemoteError as exc:
                if exc.code not in RETRYABLE_REFUSALS:
                    raise  # refused for good: a bad token, say
                self._last_failure = exc
                leader = exc.leader if isinstance(exc, NotLeader) else None
                if peers.failed(leader, standby=isinstance(exc, NotLeader)):
                    peers.round_over(self._reconnect)
                continue
            peers.connected()
            self._reconnect.connected()
            self._last_failure = None
            connection.closed.add_done_callback(
                functools.partial(self._connection_closed, connection)
            )
            broker_limit = welcome.get("max_frame")
            if isinstance(broker_limit, int) and broker_limit > ENVELOPE_RESERVE:
                # Frames we send must fit the broker's limit as well as ours.
                self._frame_limit = min(self._max_frame, broker_limit)
            self._connection = connection
            return connection

    def _connection_closed(self, connection: Connection, _: object = None) -> None:
        """Wake every outcome awaited on ``connection`` with a LOST marker.

        Whoever awaits one watches the job again on the next connection
        (:meth:`_watch_again`); an outcome nobody awaits costs nothing more.
        """
        if self._connection is connection:
            self._connection = None
        self._lose_outcomes(closed=False)

    def _lose_outcomes(self, closed: bool) -> None:
        """Resolve every outcome future with a LOST marker; ``closed``: by :meth:`close`."""
        outcomes, self._outcomes = self._outcomes, {}
        for job_id, future in outcomes.items():
            if not future.done():
                future.set_result({"op": LOST, "id": job_id, "closed": closed})

    async def _call(self, message: Message, on_reply: ReplyHook | None = None) -> Message:
        connection = await self._ensure_connection()
        return await connection.call(message, on_reply)

    def _on_push(self, message: Message) -> None:
        op = message["op"]
        if op == Op.DONE:
            future = self._outcomes.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(message)
        elif op == Op.PROGRESSED:
            followers = self._followers.get(message["id"])
            if followers:
                report = _progress(message["fraction"], message.get("info"))
                for reports in followers:
                    if reports.full():
                        reports.get_nowait()  # the newer report replaces it
                    reports.put_nowait(report)

    # -- submitting ---------------------------------------------------------------

    async def submit(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float = 0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        lease: float | None = None,
        job_id: str | None = None,
        result_ttl: float | None = None,
        depends_on: Iterable[str | Job] | None = None,
        unique_key: str | None = None,
        unique_for: float | None = None,
    ) -> Job:
        """Submit one job; returns its :class:`Job` handle once the broker has accepted it.

        ``result_ttl``: seconds the broker keeps the outcome after the job
        ends (default: its ``--result-ttl``); 0 keeps it only until it is
        pushed to the clients waiting for it (``result()`` after that, or
        ``status()``, raises :class:`NotFound`).

        ``depends_on``: jobs (handles or ids) that must all succeed first; the
        job waits in state ``waiting``, and is cancelled if one of them fails
        for good or is cancelled. An unknown one raises :class:`NotFound`.

        ``unique_key``: while a job with this key is unfinished, or within
        ``unique_for`` seconds of its submission, this returns that job
        instead of a new one; ``job.existing_state`` then says its state.
        """
        if not isinstance(task, str) or not task:
            raise ValueError("task must be a non-empty string")
        # Positional: a keyword call through job_spec() costs a microsecond more,
        # and this is most of what a producer does.
        spec = JobSpec(
            task,
            encode_payload(args, kwargs),
            queue,
            priority,
            delay,
            max_attempts,
            timeout,
            lease,
            job_id,
            result_ttl,
            None if depends_on is None else parent_ids(depends_on),
            unique_key,
            unique_for,
        ).to_wire()
        connection = self._connection
        if connection is None or not connection.is_open:
            return (await self._submit_specs([spec]))[0]
        # The common case, kept short: it is most of what a producer does.
        budget = self._frame_limit - ENVELOPE_RESERVE
        cost = len(spec["payload"]) + SPEC_OVERHEAD + 4 * (len(task) + len(queue))
        if cost > budget:
            split_into_frames([spec], budget)  # raises
        if not spec.keys() <= SHAREABLE_SPEC or not _shareable(task, queue, priority):
            jobs: list[Job] = []
            watch = self._watch_on_submit
            message = {"op": Op.SUBMIT, "jobs": [spec], "watch": watch}
            await connection.call(message, self._outcome_hook(jobs, watch))
            return jobs[0]
        # Submits made in the same loop turn share one SUBMIT frame (and the
        # broker's one reply): a producer with many in flight pays per frame
        # once per turn, and one alone waits no longer than it would have.
        if connection.write_paused:
            await connection.drain()
        batch = self._open_submit
        if (
            batch is None
            or batch.connection is not connection
            or batch.flushes != connection.flushes
            or batch.size + cost > budget
            or len(batch.specs) >= MAX_SPECS_PER_FRAME
        ):
            batch = self._open_submit = _SharedSubmit(connection)
            watch = self._watch_on_submit
            message = {"op": Op.SUBMIT, "jobs": batch.specs, "watch": watch}
            batch.reply = connection.request(
                message, self._outcome_hook(batch.jobs, watch), deferred=True
            )
        index = len(batch.specs)
        batch.specs.append(spec)
        batch.size += cost
        await _wait_for(batch.reply, None)  # one caller cancelled cancels no other
        reply = batch.reply.result()
        if reply["op"] == Op.ERR:
            raise remote_error(reply["code"], reply["message"], reply.get("leader"))
        return batch.jobs[index]

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Submit many jobs in one round trip; each dict has ``submit``'s parameter names.

        Jobs go in as few SUBMIT frames as the frame limit allows, pipelined;
        the broker accepts or refuses each frame whole (``QueueFull``). A job's
        ``depends_on`` may name jobs of the same call by their ``job_id``, in
        any order within a frame (a cycle is refused), and earlier frames' jobs.
        """
        specs = []
        for i, job in enumerate(jobs):
            task = job.get("task")
            if job.keys() <= PLAIN_FIELDS and type(task) is str and task:
                # Only task and arguments: the wire entry directly, as most are.
                payload = encode_payload(job.get("args", ()), job.get("kwargs"))
                specs.append({"task": task, "payload": payload})
                continue
            if not job.keys() <= SUBMIT_FIELDS:
                raise ValueError(f"job {i}: unknown keys {sorted(set(job) - SUBMIT_FIELDS)}")
            if "task" not in job:
                raise ValueError(f"job {i}: 'task' is required")
            options = dict(job)
            if options.get("depends_on") is not None:
                options["depends_on"] = parent_ids(options["depends_on"])
            specs.append(job_spec(**options).to_wire())
        if not specs:
            return []
        return await self._submit_specs(specs)

    async def _submit_specs(self, specs: list[Message]) -> list[Job]:
        await self._ensure_connection()  # it learns the broker's frame limit
        batches = split_into_frames(specs, self._frame_limit - ENVELOPE_RESERVE)
        if len(batches) == 1:
            return await self._submit_batch(specs)
        # Pipelined on the one connection; each frame is accepted or refused whole.
        submitted = await asyncio.gather(*(self._submit_batch(batch) for batch in batches))
        return [job for jobs in submitted for job in jobs]

    async def _submit_batch(self, specs: list[Message]) -> list[Job]:
        jobs: list[Job] = []
        watch = self._watch_on_submit
        message = {"op": Op.SUBMIT, "jobs": specs, "watch": watch}
        await self._call(message, self._outcome_hook(jobs, watch))
        return jobs

    def _outcome_hook(self, jobs: list[Job], watch: bool) -> ReplyHook:
        """The SUBMIT reply's hook: fills ``jobs``, each watched job with its outcome future.

        It runs before the frames after the reply, and a DONE may be among them.
        """
        loop = asyncio.get_running_loop()
        outcomes = self._outcomes

        def expect_outcomes(reply: Message) -> None:
            for job_id in reply["ids"]:
                if not watch:
                    jobs.append(Job(self, job_id))
                    continue
                future = outcomes.get(job_id)
                if future is None:
                    future = outcomes[job_id] = loop.create_future()
                jobs.append(Job(self, job_id, future))
            for entry in reply.get("existing") or ():
                jobs[entry["index"]].existing_state = entry["state"]

        return expect_outcomes

    def job(self, job_id: str) -> Job:
        """The handle of a job submitted earlier, by anyone."""
        return Job(self, job_id)

    # -- results ------------------------------------------------------------------

    async def _watch(self, job_ids: list[str]) -> dict[str, asyncio.Future[Message]]:
        """A future per id that the broker's DONE push will resolve.

        Raises :class:`NotFound` if the broker knows none of some id.
        """
        loop = asyncio.get_running_loop()
        outcomes = self._outcomes
        futures: dict[str, asyncio.Future[Message]] = {}
        missing = []
        for job_id in job_ids:
            future = outcomes.get(job_id)
            if future is None:
                future = outcomes[job_id] = loop.create_future()
                missing.append(job_id)
            futures[job_id] = future
        if missing:
            try:
                reply = await self._call({"op": Op.WATCH, "ids": missing})
            except BaseException:
                for job_id in missing:
                    outcomes.pop(job_id, None)
                raise
            unknown: list[str] = reply.get("unknown") or []
            for job_id in unknown:
                outcomes.pop(job_id, None)
            if unknown:
                raise NotFound("NOT_FOUND", f"no job {unknown[0]!r}")
        return futures

    async def _watch_again(self, job_ids: list[str]) -> dict[str, asyncio.Future[Message]]:
        """:meth:`_watch` after the connection the jobs were watched on dropped.

        Reconnects (to whichever broker leads now) and watches them there.
        Raises :class:`ConnectionLost` when no broker can be reached within
        ``connect_timeout``, or when the broker reached does not know one of
        them (its outcome is then unknown).
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._connect_timeout
        futures: dict[str, asyncio.Future[Message]] = {}
        while True:
            try:
                for start in range(0, len(job_ids), REWATCH_BATCH):
                    futures.update(await self._watch(job_ids[start : start + REWATCH_BATCH]))
                return futures
            except BrokerUnavailable as exc:
                raise ConnectionLost(
                    f"connection to the broker lost while waiting for job {job_ids[0]!r}, "
                    f"and no broker could be reached within {self._connect_timeout:g}s"
                ) from exc
            except NotFound as exc:
                raise ConnectionLost(
                    f"connection to the broker lost while waiting for a job, and the broker "
                    f"at {self.address} no longer knows it ({exc.message}; a broker without "
                    "--data-dir restarted, or the result expired): its outcome is unknown"
                ) from exc
            except ConnectionLost:
                if loop.time() >= give_up:
                    raise
                # Dropped again before the watch was in place: once more.

    async def as_completed(self, jobs: Iterable[Job[ResultT]]) -> AsyncIterator[Job[ResultT]]:
        """Yield each job as it finishes, in finishing order.

        A lost connection is survived as in :meth:`Job.result`: the jobs not
        yet finished are watched again on the next connection.
        """
        jobs = list(jobs)
        # Jobs without a live outcome future are watched in one request (those
        # whose connection was lost, as Job.result watches them again).
        unwatched = [job.id for job in jobs if job._outcome is None]
        lost_before = [
            job.id
            for job in jobs
            if job._outcome is not None
            and job._outcome.done()
            and job._outcome.result()["op"] == LOST
        ]
        watched = await self._watch(unwatched) if unwatched else {}
        if lost_before:
            watched.update(await self._watch_again(lost_before))
        for job in jobs:
            future = watched.get(job.id)
            if future is not None:
                job._outcome = future
        waiting: dict[asyncio.Future[Message], Job[ResultT]] = {}
        for job in jobs:
            assert job._outcome is not None
            waiting[job._outcome] = job
        # Each future, once done, queues itself: O(1) per job however many wait
        # (asyncio.wait would walk every pending future at each wake-up).
        finished: deque[asyncio.Future[Message]] = deque()
        loop = asyncio.get_running_loop()
        wake: list[asyncio.Future[None]] = []

        def on_done(future: asyncio.Future[Message]) -> None:
            finished.append(future)
            if wake and not wake[0].done():
                wake[0].set_result(None)

        for future in waiting:
            future.add_done_callback(on_done)
        try:
            while waiting:
                if not finished:
                    wake[:] = [loop.create_future()]
                    await wake[0]
                    continue
                lost: list[Job[ResultT]] = []
                while finished:
                    future = finished.popleft()
                    job = waiting.pop(future)
                    outcome = future.result()
                    if outcome["op"] != LOST:
                        yield job
                    elif outcome["closed"]:
                        raise ConnectionLost("the client was closed while waiting for jobs")
                    else:
                        lost.append(job)
                if lost:
                    # The connection dropped: watch the unfinished jobs on the next one.
                    again = await self._watch_again([job.id for job in lost])
                    for job in lost:
                        future = job._outcome = again[job.id]
                        waiting[future] = job
                        future.add_done_callback(on_done)
        finally:
            for future in waiting:
                future.remove_done_callback(on_done)

    # -- asking -------------------------------------------------------------------

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job's state, attempts, errors and times (raises :class:`NotFound`)."""
        reply = await self._call({"op": Op.STATUS, "id": job_id})
        job: dict[str, Any] = reply["job"]
        progress = job.get("progress")
        if progress is not None and isinstance(progress.get("info"), bytes):
            progress["info"] = _progress(0, progress["info"]).info
        return job

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, delayed or running job; False if it had already finished."""
        reply = await self._call({"op": Op.CANCEL, "id": job_id})
        return bool(reply["cancelled"])

    async def stats(self) -> dict[str, Any]:
        reply = await self._call({"op": Op.STATS})
        stats: dict[str, Any] = reply["stats"]
        return stats

    async def failed(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The failed-job list, newest first."""
        message: Message = {"op": Op.FAILED}
        if limit is not None:
            message["limit"] = limit
        reply = await self._call(message)
        jobs: list[dict[str, Any]] = reply["jobs"]
        return jobs

    async def jobs(
        self, queue: str = "default", state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Jobs of ``queue`` (in ``state``), oldest first, at most ``limit`` (the broker's
        default: 100); each as ``failed()`` describes one."""
        message: Message = {"op": Op.LIST, "queue": queue}
        if state is not None:
            message["state"] = state
        if limit is not None:
            message["limit"] = limit
        reply = await self._call(message)
        jobs: list[dict[str, Any]] = reply["jobs"]
        return jobs

    async def retry(self, job_ids: Iterable[str] | None = None) -> int:
        """Put failed jobs (all of them when ``job_ids`` is None) back in their queues."""
        message: Message = {"op": Op.RETRY}
        if job_ids is None:
            message["all"] = True
        else:
            message["ids"] = list(job_ids)
        reply = await self._call(message)
        return int(reply["retried"])

    async def purge_failed(self) -> int:
        reply = await self._call({"op": Op.PURGE_FAILED})
        return int(reply["purged"])

    # -- workflows: chains and chords of jobs, on top of depends_on -----------------------

    async def chain(self, *steps: Mapping[str, Any]) -> list[Job]:
        """Celery's ``chain``: each step runs once the one before it has succeeded.

        Each step is a dict of ``submit``'s parameters (``task``, ``args``, ...).
        If a step fails for good or is cancelled, the steps after it are
        cancelled. Results are not passed along: a step that needs its
        parent's result reads it (``client.job(id).result()``). One round trip.
        """
        specs: list[dict[str, Any]] = []
        previous: str | None = None
        for step in steps:
            spec = with_job_id(step)
            if previous is not None:
                spec["depends_on"] = [*(parent_ids(spec.get("depends_on")) or ()), previous]
            previous = spec["job_id"]
            specs.append(spec)
        return await self.submit_many(specs)

    async def chord(
        self, header: Iterable[Mapping[str, Any]], body: Mapping[str, Any]
    ) -> tuple[list[Job], Job]:
        """Celery's ``chord``: the ``header`` jobs run in parallel (a ``group``), and
        ``body`` once every one of them has succeeded (fan-in). One round trip."""
        specs = [with_job_id(step) for step in header]
        final = with_job_id(body)
        final["depends_on"] = [
            *(parent_ids(final.get("depends_on")) or ()),
            *(spec["job_id"] for spec in specs),
        ]
        jobs = await self.submit_many([*specs, final])
        return jobs[:-1], jobs[-1]

    # -- periodic jobs ---------------------------------------------------------------------

    async def schedule(
        self,
        name: str,
        task: str,
        *,
        cron: str | None = None,
        every: float | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str = DEFAULT_QUEUE,
        timezone: str | None = None,
    ) -> dict[str, Any]:
        """Have the broker submit ``task`` at each tick of ``cron`` (in ``timezone``) or
        ``every`` seconds, each tick once, as job ``cron:{name}:{unix seconds}``.

        Replaces a schedule of that name. Returns ``{changed, next_run}``;
        a bad expression raises ``ValueError`` before anything is sent.
        """
        check_schedule(name, cron, every, timezone)
        message: Message = {
            "op": Op.SCHEDULE,
            "name": name,
            "task": task,
            "cron": cron,
            "every": every,
            "timezone": timezone,
            "payload": encode_payload(args, kwargs),
            "queue": queue,
        }
        reply = await self._call(message)
        return {"changed": reply["changed"], "next_run": reply["next_run"]}

    async def unschedule(self, name: str) -> bool:
        """Remove a schedule; False if there was none of that name."""
        reply = await self._call({"op": Op.UNSCHEDULE, "name": name})
        return bool(reply["removed"])

    async def schedules(self) -> list[dict[str, Any]]:
        """Every schedule: name, task, cron or every, timezone, queue, args, kwargs,
        last_run and next_run (unix seconds)."""
        reply = await self._call({"op": Op.SCHEDULES})
        described: list[dict[str, Any]] = []
        for schedule in reply["schedules"]:
            entry = dict(schedule)
            args, kwargs = msgpack.unpackb(entry.pop("payload"), raw=False)
            entry["args"], entry["kwargs"] = args, kwargs
            described.append(entry)
        return described

    async def pause(self, queue: str = DEFAULT_QUEUE) -> bool:
        """Start no more jobs from ``queue`` (it still accepts them, and running ones
        finish), until :meth:`resume`; survives a broker restart. False if already paused."""
        reply = await self._call({"op": Op.PAUSE, "queue": queue})
        return bool(reply["changed"])

    async def resume(self, queue: str = DEFAULT_QUEUE) -> bool:
        """Start jobs from a paused ``queue`` again; False if it was not paused."""
        reply = await self._call({"op": Op.RESUME, "queue": queue})
        return bool(reply["changed"])

    async def set_limits(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        max_running: int | None = None,
        rate: str | None = None,
    ) -> dict[str, Any] | None:
        """Set the global limits of one queue or one task, replacing its earlier ones.

        ``max_running``: at most that many of its jobs running at once across
        every worker; ``rate``: at most that many starts per period, such as
        ``"100/s"``, ``"10/min"`` or ``"500/5m"``. None for both removes the
        limits. Returns ``{max_running, rate}`` as now set, or None.
        """
        if (queue is None) == (task is None):
            raise ValueError("set_limits() needs exactly one of queue= and task=")
        if rate is not None:
            parse_rate(rate)  # a bad rate fails here, before it is sent
        message: Message = {"op": Op.SET_LIMITS, "max_running": max_running, "rate": rate}
        if queue is not None:
            message["queue"] = queue
        else:
            message["task"] = task
        reply = await self._call(message)
        limits: dict[str, Any] | None = reply.get("limits")
        return limits

    async def ping(self) -> None:
        await self._call({"op": Op.PING})


__all__ = [
    "BrokerUnavailable",
    "Client",
    "ConnectionLost",
    "Job",
    "JobCancelled",
    "JobFailed",
    "Progress",
    "RemoteError",
]
