"""What every session shares: the host interface between the sessions and the server.

A session is given the config and a :class:`BrokerState`, never the server
(as uvicorn gives its protocols a ``ServerState``): the job manager, the
durability gate, whether the broker is shutting down, the live sessions,
and a way to ask for the manager's timer to be re-armed. The server builds
it, owns everything in it, and is the only one that changes
``shutting_down``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.config import BrokerConfig
from broker.durability import DurabilityGate, Volatile
from broker.jobs import Job
from broker.manager import JobManager
from broker.wire import done_message
from protocol.framing import encode_frame

if TYPE_CHECKING:
    from broker.handlers import WorkerHandlers
    from broker.output import Output
    from broker.session import Session


class BrokerState:
    def __init__(
        self,
        config: BrokerConfig,
        manager: JobManager,
        *,
        arm_timer: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.manager = manager
        self.gate: DurabilityGate = Volatile()
        self.shutting_down = False
        self.sessions: set[Session] = set()
        # Workers in burst mode, told EMPTY once their queues are idle.
        self.burst_workers: set[WorkerHandlers] = set()
        self.arm_timer = arm_timer
        self.started_at = time.time()
        self._on_last_session_gone: Callable[[], None] | None = None
        # The storage backend's own figures, for STATS (set by the server).
        self.storage_stats: Callable[[], dict[str, Any]] | None = None
        # Clients following a running job's progress (FOLLOW), by job id;
        # dropped when the job finishes, closed sessions skipped until then.
        self.followers: dict[str, set[Session]] = {}
        # Outputs with frames queued in this loop turn: written together at
        # the end of the read that queued them (or by a call_soon, whichever
        # comes first), so an idle broker answers without waiting a turn.
        self._unflushed: list[Output] = []
        # A session's data_received is running: it flushes every output at
        # its end, so an output queued meanwhile needs no call_soon.
        self.reading = False

    # -- output --

    def flush_later(self, output: Output) -> None:
        if not self._unflushed and not self.reading:
            asyncio.get_running_loop().call_soon(self.flush_outputs)
        self._unflushed.append(output)

    def flush_outputs(self) -> None:
        """Write what every output queued (in the order they queued it)."""
        unflushed = self._unflushed
        if unflushed:
            self._unflushed = []
            for output in unflushed:
                output.flush()

    # -- sessions --

    def register(self, session: Session) -> None:
        self.sessions.add(session)

    def unregister(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions and self._on_last_session_gone is not None:
            self._on_last_session_gone()

    def when_no_sessions(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once the last session is gone (for shutdown)."""
        self._on_last_session_gone = callback

    # -- the manager's outcome sink --

    def job_finished(self, job: Job) -> None:
        """Tell the job's watchers how it ended; tell idle burst workers so."""
        self.followers.pop(job.id, None)
        watchers: list[Session] = job.take_watchers()
        if watchers:
            frame = encode_frame(done_message(job))
            for session in watchers:
                session.push_outcome(frame)
        if self.burst_workers:
            for worker in list(self.burst_workers):
                worker.check_burst_empty()

    # -- questions --

    def stats(self) -> dict[str, Any]:
        stats = self.manager.stats(time.time())
        workers = sum(1 for session in self.sessions if session.is_worker)
        stats["workers"] = workers
        stats["clients"] = sum(1 for session in self.sessions if session.is_client)
        stats["connections"] = len(self.sessions)
        stats["uptime"] = time.time() - self.started_at
        failure = self.gate.failure
        stats["storage"] = {
            "ok": failure is None,
            "failure": None if failure is None else failure.describe(),
            "since": None if failure is None else failure.since,
        }
        if self.storage_stats is not None:
            stats["journal"] = self.storage_stats()
        return stats
