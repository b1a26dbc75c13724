"""Dependencies: a job submitted with ``depends_on`` waits (state ``waiting``) until
every parent has succeeded; a parent that fails for good or is cancelled cancels it.

Only jobs that have parents cost anything: ``_children`` maps an unfinished
parent's id to the jobs waiting for it, ``_parents_left`` a waiting job's id
to how many of its parents are unfinished. A parent finishing (``_finish``
in ``retention.py``) settles its children: each success counts one parent
down and releases a child whose count reaches zero to its queue (or to its
delay); a failure or a cancel cancels the waiting children with a reason
naming the parent, and so their own children, without recursion (a chain
of any length settles in a loop).

The manager only ever accepts parents it knows, so the graph it holds has no
cycle; a batch that would make one is refused before it gets here.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.jobs import Job, JobState
from broker.manager.state import ManagerState


class UnknownParentError(KeyError):
    """A ``depends_on`` id the manager does not know."""


class Dependencies(ManagerState):
    __slots__ = ()

    def check_parents(self, depends_on: Iterable[str]) -> None:
        """Raise :class:`UnknownParentError` for the first id the manager does not know."""
        for parent_id in depends_on:
            if parent_id not in self.jobs:
                raise UnknownParentError(parent_id)

    def _wait_for_parents(self, job: Job, now: float) -> bool:
        """Called by ``submit`` for a job with parents, after its ``S`` record.

        Returns True if it was settled here (it waits, or was cancelled
        because a parent already failed or was cancelled); False if every
        parent has already succeeded and it goes on as a job without parents.
        """
        assert job.depends_on
        pending: list[Job] = []
        for parent_id in job.depends_on:
            parent = self.jobs[parent_id]
            state = parent.state
            if state is JobState.SUCCEEDED:
                continue
            if state.finished:
                job.state = JobState.WAITING
                self._counts(job.queue).waiting += 1
                self._cancel_for_parent(job, parent, now)
                return True
            pending.append(parent)
        if not pending:
            return False
        job.state = JobState.WAITING
        self._counts(job.queue).waiting += 1
        self._parents_left[job.id] = len(pending)
        for parent in pending:
            self._children.setdefault(parent.id, []).append(job)
        return True

    def _settle_children(self, parent: Job, now: float) -> None:
        """The parent finished: release or cancel the jobs waiting for it (and theirs)."""
        self._settling.append(parent)
        if len(self._settling) > 1:
            return  # a loop further up the stack settles it
        try:
            index = 0
            while index < len(self._settling):
                finished = self._settling[index]
                index += 1
                children = self._children.pop(finished.id, None)
                if not children:
                    continue
                for child in children:
                    if child.state is not JobState.WAITING:
                        continue  # cancelled meanwhile
                    if finished.state is JobState.SUCCEEDED:
                        left = self._parents_left[child.id] - 1
                        if left:
                            self._parents_left[child.id] = left
                        else:
                            del self._parents_left[child.id]
                            self._release_child(child, now)
                    else:
                        self._cancel_for_parent(child, finished, now)
        finally:
            self._settling.clear()

    def _release_child(self, job: Job, now: float) -> None:
        """Every parent succeeded: the job goes to its queue (or waits out its delay)."""
        self.queues[job.queue].waiting -= 1
        # Like a new job: behind the others, or delayed until its run_at.
        self._requeue(job, now, max(0.0, job.run_at - now), front=False)

    def _cancel_for_parent(self, job: Job, parent: Job, now: float) -> None:
        """A waiting job's parent failed for good or was cancelled: cancel it, saying why."""
        self._parents_left.pop(job.id, None)
        self.queues[job.queue].waiting -= 1
        why = f"parent job {parent.id} {parent.state.value}"
        cause = parent.last_error
        if cause is not None and cause.get("type") == "ParentFailed":
            why += f" ({cause['message']})"  # the parent was cancelled for its own parent
        job.add_error(
            {"type": "ParentFailed", "message": why, "traceback": "", "attempt": 0, "at": now}
        )
        self._finish(job, JobState.CANCELLED, now)

    def _unwait(self, job: Job) -> None:
        """A waiting job is cancelled by a client: it waits for nothing any more."""
        self._parents_left.pop(job.id, None)
        self.queues[job.queue].waiting -= 1

    def _restore_waiting(self, waiting: list[Job], now: float) -> None:
        """After a restart: each waiting job waits for its unfinished parents again.

        A parent the broker no longer knows finished and was forgotten, which
        only a succeeded or cancelled job's result expiry does; a cancelled
        one cancelled its children in the same turn, so it counts as done.
        """
        for job in waiting:
            self._counts(job.queue).waiting += 1
        for job in waiting:
            if job.state is not JobState.WAITING:
                continue  # cancelled by a parent settled earlier in this loop
            pending: list[Job] = []
            dead: Job | None = None
            for parent_id in job.depends_on or ():
                parent = self.jobs.get(parent_id)
                if parent is None or parent.state is JobState.SUCCEEDED:
                    continue
                if parent.state.finished:
                    dead = parent
                    break
                pending.append(parent)
            if dead is not None:
                self._cancel_for_parent(job, dead, now)
            elif pending:
                self._parents_left[job.id] = len(pending)
                for parent in pending:
                    self._children.setdefault(parent.id, []).append(job)
            else:
                self._release_child(job, now)
