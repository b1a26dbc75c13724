"""One job to submit, as one object from the producer's call to the broker's manager.

:class:`JobSpec` is what ``Client.submit`` builds, what a ``SUBMIT`` frame's
``jobs`` entries carry (:meth:`JobSpec.to_wire`, :meth:`JobSpec.from_wire`)
and what ``JobManager.submit`` takes. A new job option is one field here, one
entry in :data:`WIRE_NAMES` and one ``Field`` in ``protocol.messages.JOB_SPEC``
(a test holds the three to the same names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.framing import packb

DEFAULT_QUEUE: Final = "default"

# Attribute name -> key in a SUBMIT job entry, where the two differ.
WIRE_NAMES: Final = {
    "task": "task",
    "payload": "payload",
    "queue": "queue",
    "priority": "priority",
    "delay": "delay",
    "max_attempts": "max_attempts",
    "timeout": "timeout",
    "lease": "lease",
    "job_id": "id",
    "result_ttl": "result_ttl",
    "depends_on": "depends_on",
    "unique_key": "unique_key",
    "unique_for": "unique_for",
}


def encode_payload(args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> bytes:
    """A job's arguments as the msgpack bytes the worker decodes: ``[args, kwargs]``."""
    payload: bytes = packb([list(args), dict(kwargs) if kwargs else {}])
    return payload


@dataclass(slots=True)
class JobSpec:
    """A job to submit. ``payload`` is the msgpack encoding of ``[args, kwargs]``.

    ``None`` for ``max_attempts``, ``timeout`` or ``lease`` means: the task's
    announced default, else the broker's; for ``result_ttl`` (seconds the
    outcome is kept once the job ends; 0: only until it is pushed to the
    waiters), the broker's ``--result-ttl``.
    """

    task: str
    payload: bytes
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    delay: float = 0.0
    max_attempts: int | None = None
    timeout: float | None = None
    lease: float | None = None
    job_id: str | None = None
    result_ttl: float | None = None
    # Ids of the jobs that must succeed before this one may run.
    depends_on: tuple[str, ...] | None = None
    # While a job with this key is unfinished (or for ``unique_for`` seconds
    # from its submission), a submit with the same key returns that job.
    unique_key: str | None = None
    unique_for: float | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``SUBMIT`` entry: only the fields that differ from their defaults."""
        wire: dict[str, Any] = {"task": self.task, "payload": self.payload}
        if self.queue != DEFAULT_QUEUE:
            wire["queue"] = self.queue
        if self.priority:
            wire["priority"] = self.priority
        if self.delay:
            wire["delay"] = self.delay
        if self.max_attempts is not None:
            wire["max_attempts"] = self.max_attempts
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        if self.lease is not None:
            wire["lease"] = self.lease
        if self.job_id is not None:
            wire["id"] = self.job_id
        if self.result_ttl is not None:
            wire["result_ttl"] = self.result_ttl
        if self.depends_on:
            wire["depends_on"] = list(self.depends_on)
        if self.unique_key is not None:
            wire["unique_key"] = self.unique_key
        if self.unique_for:
            wire["unique_for"] = self.unique_for
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> JobSpec:
        """A ``SUBMIT`` entry that :func:`protocol.messages.validate_request` accepted."""
        if len(wire) == 2:  # task and payload only: most jobs, and the broker's hot path
            return cls(wire["task"], wire["payload"])
        get = wire.get
        return cls(
            wire["task"],
            wire["payload"],
            get("queue") or DEFAULT_QUEUE,
            get("priority") or 0,
            get("delay") or 0.0,
            get("max_attempts"),
            get("timeout"),
            get("lease"),
            get("id"),
            get("result_ttl"),
            tuple(get("depends_on") or ()) or None,
            get("unique_key"),
            get("unique_for") or None,
        )
