"""Fixtures of the backplane tests: a real broker, backplanes in this process, backplanes in others.

Everything runs against a real ``nats-server`` started here (the ``test``
extra installs it); without nats-py or the binary these tests are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .broker import Broker, nats_server_binary
from .peer import FakeHost

collect_ignore = ["peer.py", "host.py"]

if sys.platform == "win32":  # signals to the broker and its peers are POSIX
    collect_ignore_glob = ["test_*.py"]

try:
    import nats  # noqa: F401
except ImportError:  # pragma: no cover
    collect_ignore_glob = ["test_*.py"]

if nats_server_binary() is None:  # pragma: no cover
    collect_ignore_glob = ["test_*.py"]

from ipc_server.backplane import NatsBackplane  # noqa: E402

PEER = Path(__file__).with_name("peer.py")
HOST = Path(__file__).with_name("host.py")

FAST: dict[str, Any] = {
    "ping_interval": 0.5,
    "heartbeat": 0.2,
    "reconnect_max": 0.5,
    "connect_timeout": 2.0,
}
"""Options that keep the tests quick: liveness, membership and backoff in fractions of a second."""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A started ``nats-server`` on a free port; stopped after the test."""
    made = Broker(tmp_path)
    made.start()
    try:
        yield made
    finally:
        made.stop()


Start = Callable[..., Awaitable[tuple[NatsBackplane, FakeHost]]]


@pytest.fixture
async def backplanes(broker: Broker) -> AsyncIterator[Start]:
    """``await start(server_id, **options)``: a started backplane on ``broker`` and its host.

    Options default to ``FAST`` and namespace ``"test"``; ``url`` replaces the
    broker's. Every backplane is closed after the test.
    """
    made: list[NatsBackplane] = []

    async def start(server_id: str, **options: Any) -> tuple[NatsBackplane, FakeHost]:
        url = options.pop("url", broker.url)
        backplane = NatsBackplane(
            servers=[url], namespace=options.pop("namespace", "test"), **{**FAST, **options}
        )
        host = FakeHost(server_id)
        made.append(backplane)
        await backplane.start(host)
        return backplane, host

    try:
        yield start
    finally:
        for backplane in made:
            await backplane.close()


class Peer:
    """A backplane in a process of its own (``peer.py``), driven by JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        self.path = ""
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._event = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if message.get("event") == "ready":
                self.ready = message
            if "event" in message:
                self.events.append(message)
                self._event.set()
                continue
            future = self._waiting.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(message["result"])
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(f"peer {self.name} exited"))

    async def event(self, name: str, timeout: float = 10.0) -> None:
        """Wait until the peer has printed event ``name``."""

        async def seen() -> None:
            while not any(e["event"] == name for e in self.events):
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(seen(), timeout)

    async def ask(self, op: str, timeout: float = 30.0, **arguments: Any) -> Any:
        """Send one command and wait for its answer."""
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": number, "op": op, **arguments}).encode() + b"\n")
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, timeout)

    @property
    def server_id(self) -> str:
        """The server's id in the cluster (a host process's), once ready."""
        return str(self.ready["server_id"])

    def kill(self) -> None:
        """SIGKILL: no goodbye, no close."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"op": "quit"}\n')
                await self.process.stdin.drain()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except asyncio.TimeoutError:
                self.kill()
                await self.process.wait()
        else:
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


Spawn = Callable[..., Awaitable[Peer]]


async def launch(
    script: Path, name: str, broker: Broker, options: dict[str, Any], **config: Any
) -> Peer:
    """``script`` (``peer.py`` or ``host.py``) in a process of its own, on ``broker``
    (``options``: the backplane's, ``url`` and ``namespace`` among them), once ready."""
    config = {
        **config,
        "url": options.pop("url", broker.url),
        "namespace": options.pop("namespace", "test"),
        "options": {**FAST, **options},
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    peer = Peer(process, name)
    try:
        await peer.event("ready", timeout=15)
    except BaseException:
        await peer.stop()
        raise
    return peer


@pytest.fixture
async def peers(broker: Broker) -> AsyncIterator[Spawn]:
    """``await spawn(server_id, **options)``: a backplane in its own process, ready."""
    made: list[Peer] = []

    async def spawn(server_id: str, **options: Any) -> Peer:
        peer = await launch(PEER, server_id, broker, options, server_id=server_id)
        made.append(peer)
        return peer

    try:
        yield spawn
    finally:
        await asyncio.gather(*(peer.stop() for peer in made))


@pytest.fixture
async def hosts(broker: Broker) -> AsyncIterator[Spawn]:
    """``await spawn(name, **options)``: an IPCServer with a backplane in its own
    process (``host.py``), listening on ``peer.path``, ready."""
    made: list[Peer] = []
    folder = tempfile.mkdtemp(prefix="bp", dir="/tmp")  # short: a socket path has ~100 bytes

    async def spawn(name: str, **options: Any) -> Peer:
        path = os.path.join(folder, name)
        peer = await launch(HOST, name, broker, options, path=path)
        peer.path = path
        made.append(peer)
        return peer

    try:
        yield spawn
    finally:
        await asyncio.gather(*(peer.stop() for peer in made))
        shutil.rmtree(folder, ignore_errors=True)
