"""jobwire's broker, its state core, and the async client producers embed."""

from broker.client import Client, Job, JobCancelled, JobFailed
from broker.config import BrokerConfig
from broker.jobs import JobState
from broker.manager import JobManager, ManagerConfig
from broker.server import Broker
from protocol.errors import ConnectionLost, JobwireError, NotFound, QueueFull, RemoteError
from protocol.stream import install_uvloop

__all__ = [
    "Broker",
    "BrokerConfig",
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
    "QueueFull",
    "RemoteError",
    "install_uvloop",
]
