"""The storage interface the broker depends on: :class:`JournalBackend`.

A backend is three things at once:

- the manager's sink (:class:`broker.manager.JournalSink`): told every change,
  synchronously, in order; appending must be cheap (it runs per job change)
  and must never raise, storage failures included;
- a durability gate (:class:`broker.durability.DurabilityGate`): appends
  become durable asynchronously; ``appended`` is the mark of everything so
  far, ``is_durable``/``when_durable`` say when a mark is as durable as
  promised, ``failure`` says storage cannot take records now and the
  failure listeners hear of every change of it;
- a lifecycle. ``open()`` (blocking: call it in a thread) takes the
  exclusive writer role and recovers the jobs (and the broker settings:
  ``recovered_settings()``). Exactly one writer at a time,
  fenced: the file journal holds an ``flock`` on DIR/LOCK and refuses a
  second broker; a replicated backend would fence by the stream sequence it
  expects to append at, and report being fenced out as a ``fatal``
  :class:`~broker.durability.StorageFailure`. ``start(jobs_view)`` begins
  appending from the running loop; ``jobs_view`` returns the manager's live
  jobs by id, which compaction and the recovery from a failure snapshot,
  with ``settings_view`` (the manager's settings, few and small).
  ``compact_soon()`` asks for a snapshot in the background; ``close()``
  makes everything durable that can be and releases the writer role;
  ``abandon()`` releases it after a failed start, writing nothing more.
  ``stats()`` is a dict for the broker's ``stats``: at least
  ``generation``, ``journal_bytes``, ``snapshot_bytes``, ``compactions``,
  ``fsync`` and ``failure`` (None, or operation, cause and since).

:class:`broker.journal.Journal` (files in a directory) is one backend;
:class:`broker.cluster.stream_journal.StreamJournal` (a NATS JetStream
stream, ``--cluster``) the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from broker.durability import DurabilityGate
from broker.jobs import Job
from broker.manager import JournalSink


class JournalBackend(JournalSink, DurabilityGate, Protocol):
    def open(self) -> dict[str, Job]:
        """Take the writer role and recover: the jobs by id (blocking)."""
        ...

    def recovered_settings(self) -> dict[str, Any]:
        """The broker settings (paused queues, limits) that ``open()`` recovered, by key."""
        ...

    def start(
        self,
        jobs_view: Callable[[], dict[str, Job]],
        settings_view: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Begin appending from the running loop; snapshots hold both views."""
        ...

    def compact_soon(self) -> None:
        """Snapshot the live state in the background."""
        ...

    async def close(self) -> None:
        """Make durable what can be, stop background work, release the writer role."""
        ...

    def abandon(self) -> None:
        """Release the writer role after a failed start, writing nothing more."""
        ...

    def stats(self) -> dict[str, Any]:
        """generation, journal_bytes, snapshot_bytes, compactions, fsync, failure, ..."""
        ...
