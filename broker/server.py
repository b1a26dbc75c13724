"""The asyncio server: owns the listener, the journal, the timer and the shared state.

:class:`Broker` builds the :class:`~broker.state.BrokerState` that every
:class:`~broker.session.Session` is given (no globals, and no session ever
sees the server). It can run inside any asyncio program::

    broker = Broker(BrokerConfig(port=0))
    await broker.start()
    ...  # broker.port is the real port
    await broker.stop()

Storage failures reach it as a state, not an exception: while the journal
cannot take records :attr:`Broker.storage_failure` is set, the sessions
refuse new work with ``STORAGE_FAILED``, the manager hands out no new jobs,
and all of it undoes itself when the journal recovers. An embedding app
reads the property (or ``stats()["storage"]``) and decides what to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from broker.config import BrokerConfig
from broker.durability import StorageFailure
from broker.http import HttpServer
from broker.journal import Journal, JournalBackend
from broker.manager import JobManager
from broker.session import Session
from broker.state import BrokerState
from protocol.framing import encode_frame
from protocol.messages import Op
from protocol.security import is_loopback

log = logging.getLogger("broker")

# The timer firing this much later than asked means the loop itself was
# stalled (a GC pause, SIGSTOP, a frozen VM): that time is not the workers'.
STALL_THRESHOLD = 0.25
STALL_WORTH_A_WARNING = 1.0
# A due lease expires this long after the timer found it due, so that the
# loop has polled its sockets once: heartbeats and results that waited there
# during a stall are read before any worker is blamed.
LEASE_EXPIRY_POLL = 0.05


class ExposureRefused(ValueError):
    """The configuration would expose an unauthenticated broker to the network."""


class Broker:
    def __init__(
        self, config: BrokerConfig | None = None, *, storage: JournalBackend | None = None
    ) -> None:
        """``storage``: the journal backend to use instead of the file journal that
        ``config.journal`` would describe (the cluster's, ``broker.cluster``)."""
        self.config = config = config or BrokerConfig()
        self._storage = storage
        self.manager = JobManager(config.manager)
        self.state = BrokerState(config, self.manager, arm_timer=self.arm_timer)
        self.manager.on_finished = self.state.job_finished
        self.journal: JournalBackend | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        # When (on the loop's clock) the timer should fire, to measure a stall.
        self._timer_due: float = 0.0
        self._lease_check: asyncio.TimerHandle | None = None
        self._lease_check_at: float | None = None
        # Set when storage fails for good (another writer took over): stop serving.
        self.fatal_failure: StorageFailure | None = None
        self._fatal = asyncio.Event()
        self.http: HttpServer | None = None

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

    @property
    def sessions(self) -> set[Session]:
        return self.state.sessions

    @property
    def shutting_down(self) -> bool:
        return self.state.shutting_down

    @property
    def storage_failure(self) -> StorageFailure | None:
        """Why storage cannot take records now, or None while it works."""
        return self.state.gate.failure

    def check_exposure(self) -> None:
        """Refuse to listen beyond this machine with no token, unless told it is on purpose."""
        config = self.config
        if not is_loopback(config.host) and config.token is None and not config.insecure:
            raise ExposureRefused(
                f"refusing to listen on {config.host} without a token: anyone who can reach "
                "the port could submit jobs and read results. Set --token (or BROKER_TOKEN, "
                "or --token-file), or pass --insecure if this network is trusted."
            )
        if config.http is not None:
            self._http_server().check_exposure()

    def _http_server(self) -> HttpServer:
        if self.http is None:
            assert self.config.http is not None
            self.http = HttpServer(
                self.config.http,
                self.state,
                ssl_context=self.config.ssl,
                fsync_histogram=lambda: getattr(self.journal, "fsync_seconds", None),
            )
        return self.http

    @property
    def http_port(self) -> int | None:
        """The HTTP port actually bound, or None without HTTP."""
        return None if self.http is None or not self.http.serving else self.http.port

    async def _open_journal(self) -> None:
        """Recover the state the journal holds, then record every change from now on."""
        if self._storage is not None:
            journal = self._storage
        else:
            assert self.config.journal is not None
            journal = Journal(self.config.journal)
        # Reading the files is blocking work: a thread, so an embedding app's loop runs on.
        recovered = await self.loop.run_in_executor(None, journal.open)
        try:
            journal.start(lambda: self.manager.jobs, self.manager.settings_view)
            self.manager.restore_settings(journal.recovered_settings(), time.time())
            self.manager.journal = journal
            self.manager.restore(recovered.values(), time.time())
        except BaseException:
            journal.abandon()
            raise
        self.journal = journal
        self.state.gate = journal
        self.state.storage_stats = journal.stats
        journal.add_failure_listener(self._storage_changed)
        journal.compact_soon()
        stats = self.manager.stats()
        log.info(
            "restored %d unfinished and %d finished jobs (%d failed)",
            stats["unfinished"],
            stats["jobs"] - stats["unfinished"],
            stats["failed_list"],
        )

    def _storage_changed(self, failure: StorageFailure | None) -> None:
        """The journal's listener: pause or resume handing out jobs; stop if fenced out."""
        if failure is None:
            self.manager.resume_dispatch(time.time())
            self.arm_timer()
        elif failure.fatal:
            self.fatal_failure = failure
            log.critical("%s: this broker stops serving", failure.describe())
            self._abort_everything()
            self._fatal.set()
        else:
            self.manager.pause_dispatch()

    def adopt_running_loop(self) -> None:
        """Use the running loop without listening: for driving sessions by hand (fuzzing)."""
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        self.check_exposure()
        self._loop = asyncio.get_running_loop()
        if self._storage is not None or self.config.journal is not None:
            await self._open_journal()
        try:
            self._server = await self._loop.create_server(
                lambda: Session(self.state),
                self.config.host,
                self.config.port,
                reuse_address=True,
                backlog=1024,
                ssl=self.config.ssl,
            )
            if self.config.http is not None:
                await self._http_server().start()
        except BaseException:
            # Nothing was served: give back the listener and the data directory.
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            if self.journal is not None:
                await self.journal.close()
                self.journal = None
            raise
        self.arm_timer()
        log.info(
            "security: tls %s, token %s",
            "on" if self.config.ssl else "off",
            "required" if self.config.token else "not required",
        )
        log.info("listening on %s:%d", self.config.host, self.port)

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or storage fails for good), then stop."""
        await self.start()
        try:
            stopping = asyncio.ensure_future(stop.wait())
            fatal = asyncio.ensure_future(self._fatal.wait())
            try:
                await asyncio.wait({stopping, fatal}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (stopping, fatal):
                    waiter.cancel()
                await asyncio.gather(stopping, fatal, return_exceptions=True)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop accepting, tell everyone, flush, and close within ``shutdown_grace``."""
        if self._server is None:
            return
        state = self.state
        state.shutting_down = True
        self._server.close()
        goodbye = encode_frame({"op": Op.SHUTDOWN})
        for session in list(state.sessions):
            session.send_frame(goodbye)
            session.close()
        if state.sessions:
            gone = asyncio.Event()
            state.when_no_sessions(gone.set)
            try:
                async with asyncio.timeout(self.config.shutdown_grace):
                    await gone.wait()
            except TimeoutError:
                log.warning("%d connections did not close in time; aborting", len(state.sessions))
                for session in list(state.sessions):
                    session.abort()
            finally:
                state.when_no_sessions(None)
        if self.http is not None:
            # Last, so that /readyz says "shutting down" while the connections drain.
            await self.http.stop(self.config.shutdown_grace)
        await self._server.wait_closed()
        for timer in (self._timer, self._lease_check):
            if timer is not None:
                timer.cancel()
        if self.journal is not None:
            await self.journal.close()
        self._server = None
        log.info("stopped")

    def _abort_everything(self) -> None:
        """Fenced out: say nothing more to anyone (another broker owns the jobs now)."""
        self.state.shutting_down = True
        if self._server is not None:
            self._server.close()
        for session in list(self.state.sessions):
            session.abort()

    # -- time -----------------------------------------------------------------

    def arm_timer(self) -> None:
        """Make sure the timer fires by the manager's next deadline."""
        deadline = self.manager.next_deadline()
        if deadline is None:
            return
        if self._lease_check_at is not None:
            # Leases are due and their expiry is already scheduled: no earlier wake-up.
            deadline = max(deadline, self._lease_check_at)
        if self._timer is not None:
            if self._timer_deadline is not None and self._timer_deadline <= deadline:
                return
            self._timer.cancel()
        self._timer_deadline = deadline
        delay = max(0.0, deadline - time.time())
        self._timer_due = self.loop.time() + delay
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        try:
            stalled = self.loop.time() - self._timer_due
            if stalled > STALL_THRESHOLD:
                log.log(
                    logging.WARNING if stalled > STALL_WORTH_A_WARNING else logging.DEBUG,
                    "the broker's event loop was stalled for %.2fs: every lease is extended "
                    "by that much",
                    stalled,
                )
                self.manager.extend_leases(stalled)
            now = time.time()
            self.manager.tick(now)
            lease_deadline = self.manager.next_lease_deadline()
            if lease_deadline is not None and lease_deadline <= now and self._lease_check is None:
                self._lease_check_at = now + LEASE_EXPIRY_POLL
                self._lease_check = self.loop.call_later(LEASE_EXPIRY_POLL, self._expire_leases)
        finally:
            self.arm_timer()

    def _expire_leases(self) -> None:
        self._lease_check = None
        self._lease_check_at = None
        try:
            self.manager.expire_leases(time.time())
        finally:
            self.arm_timer()

    # -- questions ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self.state.stats()
