"""Unique jobs: one job per ``unique_key`` at a time.

While the job holding a key is unfinished, or until ``unique_for`` seconds
after its submission, a submit with the same key returns that job instead
of a new one (as a submit with a known ``id`` does). ``_unique`` maps each
key to the job holding it; the job keeps ``(key, held_until)`` so that the
journal carries it and a restart restores the keys. A key is let go
lazily: a submit finds its holder finished and past its time, or the
holder is forgotten (``_release_unique`` from the retention paths), so the
table never holds more keys than the manager holds jobs.
"""

from __future__ import annotations

from broker.jobs import Job
from broker.manager.state import ManagerState


class Unique(ManagerState):
    __slots__ = ()

    def unique_holder(self, key: str, now: float) -> Job | None:
        """The job that holds ``key`` now, if any."""
        job = self._unique.get(key)
        if job is None:
            return None
        assert job.unique is not None
        if self.jobs.get(job.id) is not job or (job.state.finished and job.unique[1] <= now):
            del self._unique[key]
            return None
        return job

    def _hold_unique(self, job: Job, key: str, unique_for: float | None, now: float) -> None:
        job.unique = (key, now + (unique_for or 0.0))
        self._unique[key] = job

    def _release_unique(self, job: Job) -> None:
        """The job is forgotten: so is its key, if it still holds it."""
        unique = job.unique
        if unique is not None and self._unique.get(unique[0]) is job:
            del self._unique[unique[0]]

    def _restore_unique(self) -> None:
        """After a restart: each key back with the newest job that claims it."""
        for job in sorted(self.jobs.values(), key=lambda held: held.created_at):
            if job.unique is not None:
                self._unique[job.unique[0]] = job

    def unique_stats(self) -> int:
        return len(self._unique)
