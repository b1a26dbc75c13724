"""jobwire's broker, its state core, and the async client producers embed.

Names are loaded on first use (PEP 562), so that a producer's
``from broker import Client`` loads the client and ``protocol`` only, not
the server, the journal or ``fcntl``. ``TYPE_CHECKING`` imports let type
checkers see every name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.client import Client, Job, JobCancelled, JobFailed
    from broker.config import BrokerConfig
    from broker.handles import TaskRef, task_ref
    from broker.manager import JobManager, ManagerConfig
    from broker.server import Broker
    from protocol.errors import (
        BrokerUnavailable,
        ConnectionLost,
        JobwireError,
        NotFound,
        NotLeader,
        QueueFull,
        RemoteError,
        StorageFailed,
    )
    from protocol.states import JobState
    from protocol.stream import install_uvloop

# Each exported name -> the module that defines it.
_HOMES = {
    "Broker": "broker.server",
    "BrokerConfig": "broker.config",
    "BrokerUnavailable": "protocol.errors",
    "Client": "broker.client",
    "ConnectionLost": "protocol.errors",
    "Job": "broker.client",
    "JobCancelled": "broker.client",
    "JobFailed": "broker.client",
    "JobManager": "broker.manager",
    "JobState": "protocol.states",
    "JobwireError": "protocol.errors",
    "ManagerConfig": "broker.manager",
    "NotFound": "protocol.errors",
    "NotLeader": "protocol.errors",
    "QueueFull": "protocol.errors",
    "RemoteError": "protocol.errors",
    "StorageFailed": "protocol.errors",
    "TaskRef": "broker.handles",
    "install_uvloop": "protocol.stream",
    "task_ref": "broker.handles",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "Broker",
    "BrokerConfig",
    "BrokerUnavailable",
    "Client",
    "ConnectionLost",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobManager",
    "JobState",
    "JobwireError",
    "ManagerConfig",
    "NotFound",
    "NotLeader",
    "QueueFull",
    "RemoteError",
    "StorageFailed",
    "TaskRef",
    "install_uvloop",
    "task_ref",
]
