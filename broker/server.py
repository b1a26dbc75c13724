"""The asyncio server: owns the listener, the sessions, the journal and the timer.

:class:`Broker` is the state that every :class:`~broker.session.Session`
shares, passed to each one (no globals). It can run inside any asyncio
program::

    broker = Broker(BrokerConfig(port=0))
    await broker.start()
    ...  # broker.port is the real port
    await broker.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from broker.config import BrokerConfig
from broker.jobs import Job
from broker.journal import Journal, JournalConfig
from broker.manager import JobManager
from broker.session import Session, done_message
from protocol.framing import encode_frame
from protocol.messages import Op, Role
from protocol.security import is_loopback

log = logging.getLogger("broker")


class ExposureRefused(ValueError):
    """The configuration would expose an unauthenticated broker to the network."""


class Broker:
    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.manager = JobManager(self.config.manager, on_finished=self._job_finished)
        self.sessions: set[Session] = set()
        self.burst_sessions: set[Session] = set()
        self.shutting_down = False
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._sessions_gone: asyncio.Event | None = None
        self.journal: Journal | None = None
        self.started_at = time.time()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the broker is not started"
        return self._loop

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        assert self._server is not None, "the broker is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def check_exposure(self) -> None:
        """Refuse to listen beyond this machine with no token, unless told it is on purpose."""
        config = self.config
        if not is_loopback(config.host) and config.token is None and not config.insecure:
            raise ExposureRefused(
                f"refusing to listen on {config.host} without a token: anyone who can reach "
                "the port could submit jobs and read results. Set --token (or BROKER_TOKEN, "
                "or --token-file), or pass --insecure if this network is trusted."
            )

    async def _open_journal(self, config: JournalConfig) -> None:
        """Recover the state the journal holds, then record every change from now on."""
        journal = Journal(config)
        # Reading the files is blocking work: a thread, so an embedding app's loop runs on.
        recovered = await self.loop.run_in_executor(None, journal.open)
        try:
            journal.start(lambda: self.manager.jobs)
            self.manager.journal = journal
            self.manager.restore(recovered.values(), time.time())
        except BaseException:
            journal.abandon()
            raise
        self.journal = journal
        journal.compact_soon()
        stats = self.manager.stats()
        log.info(
            "restored %d unfinished and %d finished jobs (%d failed)",
            stats["unfinished"],
            stats["jobs"] - stats["unfinished"],
            stats["failed_list"],
        )

    def adopt_running_loop(self) -> None:
        """Use the running loop without listening: for driving sessions by hand (fuzzing)."""
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        self.check_exposure()
        self._loop = asyncio.get_running_loop()
        if self.config.journal is not None:
            await self._open_journal(self.config.journal)
        self._server = await self._loop.create_server(
            lambda: Session(self),
            self.config.host,
            self.config.port,
            reuse_address=True,
            backlog=1024,
            ssl=self.config.ssl,
        )
        self.arm_timer()
        log.info(
            "security: tls %s, token %s",
            "on" if self.config.ssl else "off",
            "required" if self.config.token else "not required",
        )
        log.info("listening on %s:%d", self.config.host, self.port)

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop accepting, tell everyone, flush, and close within ``shutdown_grace``."""
        if self._server is None:
            return
        self.shutting_down = True
        self._server.close()
        goodbye = encode_frame({"op": Op.SHUTDOWN})
        for session in list(self.sessions):
            session.send_frame(goodbye)
            session.close()
        if self.sessions:
            self._sessions_gone = asyncio.Event()
            try:
                async with asyncio.timeout(self.config.shutdown_grace):
                    await self._sessions_gone.wait()
            except TimeoutError:
                log.warning("%d connections did not close in time; aborting", len(self.sessions))
                for session in list(self.sessions):
                    session.abort()
        await self._server.wait_closed()
        if self._timer is not None:
            self._timer.cancel()
        if self.journal is not None:
            await self.journal.close()
        self._server = None
        log.info("stopped")

    def session_closed(self, session: Session) -> None:
        if self._sessions_gone is not None and not self.sessions:
            self._sessions_gone.set()

    def _job_finished(self, job: Job) -> None:
        watchers: list[Session] = job.take_watchers()
        if watchers:
            frame = encode_frame(done_message(job))
            for session in watchers:
                session.push_outcome(frame)
        if self.burst_sessions:
            for session in list(self.burst_sessions):
                session.check_burst_empty()

    # -- time -----------------------------------------------------------------

    def arm_timer(self) -> None:
        """Make sure the timer fires by the manager's next deadline."""
        deadline = self.manager.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_deadline is not None and self._timer_deadline <= deadline:
                return
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self.loop.call_later(max(0.0, deadline - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        try:
            now = time.time()
            self.manager.tick(now)
            self.manager.expire_leases(now)
        finally:
            self.arm_timer()

    # -- questions ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        stats = self.manager.stats()
        stats["workers"] = sum(1 for s in self.sessions if s.role == Role.WORKER)
        stats["clients"] = sum(1 for s in self.sessions if s.role == Role.CLIENT)
        stats["connections"] = len(self.sessions)
        stats["uptime"] = time.time() - self.started_at
        if self.journal is not None:
            stats["journal"] = {
                "generation": self.journal.generation,
                "journal_bytes": self.journal.journal_bytes,
                "snapshot_bytes": self.journal.snapshot_bytes,
                "compactions": self.journal.compactions,
                "fsync": self.journal.config.fsync.value,
            }
        return stats
