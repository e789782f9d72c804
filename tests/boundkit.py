"""What the bound tests share: a server in its own process that tells what it holds,
raw peers that misbehave, and a bystander that measures how the others fare.

``BoundServer`` runs ``tests/bound_server.py``; ``stats()`` (blocking) and
``astats()`` (asyncio) ask it for its memory, tasks, connections and the
errors it reported. ``raw_peer`` opens a socket and sends the preamble and
a CONNECTION packet as a peer of our own would, then lets the test send
whatever it likes. ``Bystander`` keeps pinging from an honest client and
records the slowest answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from ipc_server import IPCClient
from ipc_server.packets import hello
from ipc_server.protocol import frame
from ipc_server.sync import IPCClient as SyncIPCClient

SCRIPT = Path(__file__).with_name("bound_server.py")


class BoundServer:
    """``tests/bound_server.py`` in a subprocess, on a fresh socket path."""

    def __init__(
        self,
        options: dict[str, Any] | None = None,
        *,
        handler: str = "echo",
        loop: str = "uvloop",
        sleep: float = 3600.0,
        env: dict[str, str] | None = None,
        preexec: Any = None,
        stderr: Any = None,
        backplane: dict[str, Any] | None = None,
    ) -> None:
        if not os.path.exists("/proc/self/statm"):
            # macOS: the server tells its memory from /proc, which only Linux has.
            pytest.skip("the bound tests read the server's memory and CPU from /proc (Linux)")
        self.folder = tempfile.mkdtemp(prefix="ipcb", dir="/tmp")
        os.chmod(self.folder, 0o755)
        self.path = os.path.join(self.folder, "s.sock")
        self.control = os.path.join(self.folder, "c.sock")
        self.config = {
            "path": self.path,
            "control": self.control,
            "options": options or {},
            "handler": handler,
            "loop": loop,
            "sleep": sleep,
            "backplane": backplane,
        }
        self.env = env
        self.preexec = preexec
        self.stderr = stderr  # where the server's stderr goes (a file, say); None: inherited
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> BoundServer:
        environ = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), json.dumps(self.config)],
            stdout=subprocess.PIPE,
            text=True,
            env=environ,
            preexec_fn=self.preexec,
            stderr=self.stderr,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # READY, or nothing if it died
        if line.strip() != "READY":
            self.__exit__(None, None, None)
            raise RuntimeError(f"bound server did not start: {line!r}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """What the server holds now (blocking)."""
        with SyncIPCClient(path=self.control, connect_timeout=timeout) as client:
            result: dict[str, Any] = client.request("stats", timeout=timeout)
            return result

    async def astats(self, timeout: float = 10.0) -> dict[str, Any]:
        """What the server holds now (asyncio)."""
        async with IPCClient(path=self.control, connect_timeout=timeout) as client:
            result: dict[str, Any] = await client.request("stats", timeout=timeout)
            return result

    def gc(self) -> None:
        with SyncIPCClient(path=self.control) as client:
            client.request("gc")


def raw_peer(
    path: str, payload: Any = None, *, client_id: str | None = None, admitted: bool = True
) -> socket.socket:
    """A socket to ``path`` that has sent ``IPC`` and a CONNECTION packet (JSON codec).

    With ``admitted``, it also read the server's answer (so the test starts
    from an admitted connection); otherwise nothing is read.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(b"IPC" + hello(payload, client_id, compress=False, codec="json"))
    if admitted:
        first = sock.recv(65536)
        assert first, "the server closed the connection instead of answering"
    return sock


def raw_packet(t: int, d: Any, n: str | None = None) -> bytes:
    """One JSON packet, framed."""
    packet: dict[str, Any] = {"t": t, "d": d}
    if n is not None:
        packet["n"] = n
    return frame(json.dumps(packet).encode())


class Bystander:
    """An honest client that pings the server while a test misbehaves elsewhere.

    ``async with Bystander(path) as b: ...`` then ``b.worst`` is the slowest
    round trip seen (seconds), ``b.failures`` the pings that failed.
    """

    def __init__(self, path: str, interval: float = 0.02, timeout: float = 5.0) -> None:
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.worst = 0.0
        self.count = 0
        self.failures: list[BaseException] = []
        self._task: asyncio.Task[None] | None = None
        self._client: IPCClient | None = None

    async def __aenter__(self) -> Bystander:
        self._client = await IPCClient(path=self.path).connect()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._client is not None
        while True:
            started = time.perf_counter()
            try:
                await self._client.ping(timeout=self.timeout)
            except Exception as exc:
                self.failures.append(exc)
            self.worst = max(self.worst, time.perf_counter() - started)
            self.count += 1
            await asyncio.sleep(self.interval)

    async def check(self) -> float:
        """One ping now; its round trip in seconds."""
        assert self._client is not None
        started = time.perf_counter()
        await self._client.ping(timeout=self.timeout)
        return time.perf_counter() - started

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            self._client.destroy()


def flood(sock: socket.socket, chunk: bytes, seconds: float, stalled: float = 0.3) -> int:
    """Write ``chunk`` again and again for at most ``seconds``, or until ``sock`` accepts no
    byte for ``stalled`` seconds (the peer stopped reading). Returns whole chunks sent."""
    import select

    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    view = memoryview(chunk)
    offset = 0
    count = 0
    try:
        while time.monotonic() < deadline:
            try:
                offset += sock.send(view[offset:])
            except BlockingIOError:
                if not select.select([], [sock], [], stalled)[1]:
                    break
                continue
            if offset == len(chunk):
                offset = 0
                count += 1
    finally:
        sock.setblocking(True)
    return count


def wait_for(predicate: Any, what: str, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate()`` until it returns something true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        time.sleep(interval)
