"""Drive the real Node.js ``net-ipc`` package from the tests.

``tests/node/peer.js`` is a net-ipc Server or Client controlled over stdin/stdout
with JSON lines. :class:`NodePeer` spawns it, sends commands and awaits their
replies, and records every event the peer reports so a test can wait for one::

    async with NodePeers() as peers:
        node = await peers.client({"path": path, "messagepack": True}, payload={"hi": 1})
        assert await node.request({"cmd": "say"}) == "hello"
        event = await node.wait_event("message", timeout=10)

Every wait has a deadline; nothing here sleeps to wait for something.

Values cross the JSON lines with two escapes: ``bytes`` travel as
``{"$bytes": "<base64>"}`` (a Buffer / msgpack ``bin`` on the Node side) and
JavaScript ``undefined`` arrives as ``{"$undefined": true}``, which is decoded to
``None`` here. Durations given to this module are seconds; peer.js takes
milliseconds (net-ipc wants integer timeouts).

The Node side needs ``node`` on ``PATH`` and ``npm ci`` run at the repository
root. When either is missing, :func:`require_node` fails the test with a message
saying so: interop tests never skip silently.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

__all__ = [
    "NODE_MODULES",
    "PEER_JS",
    "REPO_ROOT",
    "NodePeer",
    "NodePeerError",
    "NodePeers",
    "decode_value",
    "encode_value",
    "node_available",
    "node_missing_reason",
    "node_peers",
    "require_node",
    "short_socket_dir",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER_JS = REPO_ROOT / "tests" / "node" / "peer.js"
NODE_MODULES = REPO_ROOT / "node_modules"

#: The packages peer.js needs, with the versions package.json pins.
REQUIRED_PACKAGES: Mapping[str, str] = {
    "net-ipc": "2.2.2",
    "msgpackr": "1.11.5",
    "fast-zlib": "2.0.1",
}

DEFAULT_TIMEOUT = 10.0
#: Extra time granted to the peer to answer a command, on top of the command's own timeout.
REPLY_MARGIN = 5.0

Role = Literal["server", "client"]
Event = dict[str, Any]
EventPredicate = Callable[[Event], bool]


class NodePeerError(Exception):
    """A command failed in peer.js, or the peer process misbehaved."""


# --------------------------------------------------------------------------- availability


def node_executable() -> str | None:
    """Path of the ``node`` executable, or ``None``."""
    return shutil.which("node")


def node_missing_reason() -> str | None:
    """Why the Node peers cannot run, or ``None`` when they can."""
    if node_executable() is None:
        return (
            "Node.js interop tests need `node` (v16+) on PATH, then `npm ci` "
            f"at the repository root ({REPO_ROOT})."
        )
    for name, version in REQUIRED_PACKAGES.items():
        manifest = NODE_MODULES / name / "package.json"
        if not manifest.is_file():
            return (
                f"Node.js interop tests need the npm package {name}@{version} in "
                f"{NODE_MODULES}: run `npm ci` at the repository root ({REPO_ROOT})."
            )
        try:
            found = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError) as exc:
            return f"cannot read {manifest} ({exc}): run `npm ci` at the repository root."
        if found != version:
            return (
                f"{manifest} is version {found}, the tests pin {version}: "
                f"run `npm ci` at the repository root ({REPO_ROOT})."
            )
    if not PEER_JS.is_file():
        return f"{PEER_JS} is missing."
    return None


def node_available() -> bool:
    """True when ``node`` and the pinned npm packages are installed."""
    return node_missing_reason() is None


def require_node() -> None:
    """Fail (not skip) the calling test when the Node peers cannot run."""
    reason = node_missing_reason()
    if reason is not None:
        pytest.fail(reason, pytrace=False)


# --------------------------------------------------------------------------- value escapes


def encode_value(value: Any) -> Any:
    """Turn a Python value into what peer.js decodes (``bytes`` -> ``{"$bytes": b64}``)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(key): encode_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_value(item) for item in value]
    return value


def decode_value(value: Any) -> Any:
    """Turn what peer.js printed back into Python values (``{"$bytes": b64}`` -> ``bytes``)."""
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            if isinstance(value.get("$bytes"), str):
                return base64.b64decode(value["$bytes"])
            if value.get("$undefined") is True:
                return None
        return {key: decode_value(item) for key, item in value.items()}
    return value


def _milliseconds(seconds: float | None) -> int:
    """net-ipc timeouts: integer milliseconds, 0 meaning none."""
    if not seconds:
        return 0
    return max(1, round(seconds * 1000))


# --------------------------------------------------------------------------- the peer


class NodePeer:
    """One ``node tests/node/peer.js`` process acting as a net-ipc Server or Client."""

    def __init__(self, role: Role, options: Mapping[str, Any]) -> None:
        self.role: Role = role
        self.options: dict[str, Any] = dict(options)
        #: Every event reported so far, decoded, in arrival order.
        self.events: list[Event] = []
        #: stdout lines that were not JSON (should stay empty).
        self.noise: list[str] = []
        self._stderr: list[str] = []
        self._consumed: set[int] = set()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._changed = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._eof = False
        #: Client: the result of :meth:`connect` (``{"id": ..., "extras": ...}``).
        self.connected: dict[str, Any] | None = None

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        return f"<NodePeer {self.role} pid={pid} options={self.options!r}>"

    # ------------------------------------------------------------------ process

    async def spawn(self, timeout: float = DEFAULT_TIMEOUT) -> NodePeer:
        """Start the node process and wait until it reports itself."""
        require_node()
        node = node_executable()
        assert node is not None
        self._process = await asyncio.create_subprocess_exec(
            node,
            str(PEER_JS),
            self.role,
            json.dumps(self.options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            limit=64 * 1024 * 1024,
        )
        process = self._process
        if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE given
            raise NodePeerError("node peer spawned without pipes")
        self._tasks = [
            asyncio.create_task(
                self._read_stdout(process.stdout), name=f"node-stdout-{process.pid}"
            ),
            asyncio.create_task(
                self._read_stderr(process.stderr), name=f"node-stderr-{process.pid}"
            ),
        ]
        await self.wait_event("spawned", timeout=timeout)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def stderr(self) -> str:
        """What the node process wrote to stderr so far."""
        return "".join(self._stderr)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None and not self._eof

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await stream.readline()
                if not line:
                    break
                self._dispatch(line.decode("utf-8", errors="replace"))
        finally:
            self._eof = True
            error = NodePeerError(f"{self!r} exited before replying{self._stderr_tail()}")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()
            self._changed.set()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            self._stderr.append(chunk.decode("utf-8", errors="replace"))

    def _dispatch(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        try:
            message = json.loads(text)
        except ValueError:
            self.noise.append(text)
            return
        if not isinstance(message, dict):
            self.noise.append(text)
        elif "reply" in message:
            future = self._pending.pop(message["reply"], None)
            if future is not None and not future.done():
                if message.get("ok"):
                    future.set_result(decode_value(message.get("result")))
                else:
                    future.set_exception(NodePeerError(str(message.get("error"))))
        elif "event" in message:
            self.events.append(decode_value(message))
            self._changed.set()
        else:
            self.noise.append(text)

    def _stderr_tail(self) -> str:
        text = self.stderr.strip()
        return f"\nnode stderr:\n{text[-4000:]}" if text else ""

    # ------------------------------------------------------------------ commands

    async def command(
        self,
        cmd: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """Send one command and return its result; raise :class:`NodePeerError` if it failed.

        ``args`` are the command's arguments (encoded with :func:`encode_value`);
        ``timeout`` bounds the wait for the reply (seconds).
        """
        if self._process is None or self._process.stdin is None:
            raise NodePeerError(f"{self!r} was not spawned")
        if not self.running:
            raise NodePeerError(f"{self!r} is not running{self._stderr_tail()}")
        self._next_id += 1
        command_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        line = json.dumps({**encode_value(args or {}), "id": command_id, "cmd": cmd}) + "\n"
        try:
            self._process.stdin.write(line.encode("utf-8"))
            await self._process.stdin.drain()
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise NodePeerError(
                f"{self!r}: no reply to {cmd} within {timeout} s{self._stderr_tail()}"
            ) from None
        finally:
            self._pending.pop(command_id, None)

    async def _timed(self, cmd: str, timeout: float, **args: Any) -> Any:
        """A command carrying a net-ipc timeout (ms); its reply may take that long."""
        reply_timeout = (timeout or DEFAULT_TIMEOUT) + REPLY_MARGIN
        return await self.command(
            cmd, {**args, "timeout": _milliseconds(timeout)}, timeout=reply_timeout
        )

    async def start(self) -> str:
        """Server: listen; returns the address net-ipc reports."""
        address = await self.command("start")
        return str(address)

    async def connect(self, payload: Any = None) -> dict[str, Any]:
        """Client: connect with ``payload``; returns ``{"id": ..., "extras": <server CONNECTION d>}``."""
        result = await self.command("connect", {"payload": payload})
        assert isinstance(result, dict)
        self.connected = result
        return result

    @property
    def id(self) -> str:
        """Client: the id the server assigned (after :meth:`connect`)."""
        if self.connected is None:
            raise NodePeerError(f"{self!r} is not connected")
        return str(self.connected["id"])

    async def send(self, data: Any, *, to: str | None = None) -> None:
        """Send a MESSAGE (server: to connection ``to``, default the only one)."""
        await self.command("send", {"data": data, "to": to})

    async def request(
        self, data: Any, *, timeout: float = DEFAULT_TIMEOUT, to: str | None = None
    ) -> Any:
        """Send a REQUEST and return the RESPONSE data (``undefined`` -> ``None``)."""
        return await self._timed("request", timeout, data=data, to=to)

    async def ping(
        self, data: Any = None, *, timeout: float = DEFAULT_TIMEOUT, to: str | None = None
    ) -> float:
        """PING; returns net-ipc's latency in milliseconds."""
        result = await self._timed("ping", timeout, data=data, to=to)
        assert isinstance(result, (int, float))
        return float(result)

    async def ping_all(self, data: Any = None, *, timeout: float = DEFAULT_TIMEOUT) -> list[Event]:
        """Server: ``server.ping()``; one ``{"id", "status", "value"|"reason"}`` per connection."""
        result = await self._timed("ping_all", timeout, data=data)
        assert isinstance(result, list)
        return result

    async def survey(self, data: Any, *, timeout: float = DEFAULT_TIMEOUT) -> list[Event]:
        """Server: ``server.survey()``; one ``{"id", "status", "value"|"reason"}`` per connection."""
        result = await self._timed("survey", timeout, data=data)
        assert isinstance(result, list)
        return result

    async def broadcast(self, data: Any) -> list[str]:
        """Server: ``server.broadcast()``; returns the connection ids at the time."""
        result = await self.command("broadcast", {"data": data})
        assert isinstance(result, list)
        return result

    async def publish(self, topic: str, message: Any) -> int:
        """Server: send MESSAGE ``{"pub": topic, "message": message}`` to the topic's subscribers."""
        result = await self.command("publish", {"topic": topic, "message": message})
        assert isinstance(result, int)
        return result

    async def subscriptions(self) -> dict[str, list[str]]:
        """Server: the topics each connection subscribed to."""
        result = await self.command("subscriptions")
        assert isinstance(result, dict)
        return result

    async def connections(self) -> list[Event]:
        """Server: ``[{"id", "connectedAt", "compress", "messagepack"}]`` in net-ipc's order."""
        result = await self.command("connections")
        assert isinstance(result, list)
        return result

    async def close(
        self, reason: Any = None, *, allow_reconnect: bool = False, to: str | None = None
    ) -> Any:
        """Graceful close (END then FIN). A server without ``to`` closes itself and all connections."""
        return await self.command(
            "close", {"reason": reason, "allowReconnect": allow_reconnect, "to": to}
        )

    async def destroy(self, reason: str | None = None, *, to: str | None = None) -> Any:
        """Abrupt close, no END."""
        return await self.command("destroy", {"reason": reason, "to": to})

    async def set_requests(self, mode: Literal["echo", "silent", "unhandled"]) -> None:
        """How incoming requests are answered: echo (default), silent (never), unhandled
        (no listener: net-ipc itself answers ``undefined``)."""
        await self.command("set", {"requests": mode})

    # ------------------------------------------------------------------ events

    def events_named(self, name: str) -> list[Event]:
        """All events called ``name`` so far (consumed or not)."""
        return [event for event in self.events if event["event"] == name]

    def _find(self, name: str, where: EventPredicate | None) -> int | None:
        for index, event in enumerate(self.events):
            if index in self._consumed or event["event"] != name:
                continue
            if where is None or where(event):
                return index
        return None

    async def wait_event(
        self,
        name: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        where: EventPredicate | None = None,
    ) -> Event:
        """The first not-yet-returned event ``name`` (matching ``where``), waiting up to ``timeout``.

        Successive calls for the same name return successive events.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            index = self._find(name, where)
            if index is not None:
                self._consumed.add(index)
                return self.events[index]
            if self._eof:
                raise NodePeerError(
                    f"{self!r} exited without event {name!r}; events: {self.events!r}"
                    f"{self._stderr_tail()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NodePeerError(
                    f"{self!r}: no event {name!r} within {timeout} s; events: {self.events!r}"
                    f"{self._stderr_tail()}"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_events(
        self,
        name: str,
        count: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        where: EventPredicate | None = None,
    ) -> list[Event]:
        """``count`` successive events ``name``, all within one deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        found: list[Event] = []
        for _ in range(count):
            remaining = max(0.0, deadline - loop.time())
            found.append(await self.wait_event(name, timeout=remaining, where=where))
        return found

    # ------------------------------------------------------------------ shutdown

    async def aclose(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Ask the peer to exit (closing stdin), kill it if it does not, reap it."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await process.stdin.wait_closed()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
            for task in self._tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []

    async def __aenter__(self) -> NodePeer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class NodePeers:
    """Factory for Node peers that reaps every peer it made (an async context manager)."""

    def __init__(self) -> None:
        self.peers: list[NodePeer] = []

    async def spawn(self, role: Role, options: Mapping[str, Any]) -> NodePeer:
        peer = NodePeer(role, options)
        self.peers.append(peer)
        await peer.spawn()
        return peer

    async def server(self, options: Mapping[str, Any]) -> NodePeer:
        """A started net-ipc Server (``options`` go to its constructor: path or port, ...)."""
        peer = await self.spawn("server", options)
        await peer.start()
        await peer.wait_event("ready")
        return peer

    async def client(
        self, options: Mapping[str, Any], *, payload: Any = None, connect: bool = True
    ) -> NodePeer:
        """A net-ipc Client (``reconnect`` defaults to false), connected with ``payload``."""
        peer = await self.spawn("client", options)
        if connect:
            await peer.connect(payload)
        return peer

    async def aclose(self) -> None:
        peers, self.peers = self.peers, []
        await asyncio.gather(*(peer.aclose() for peer in peers))

    async def __aenter__(self) -> NodePeers:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@pytest.fixture
async def node_peers() -> AsyncIterator[NodePeers]:
    """A :class:`NodePeers` factory; fails the test when Node or ``npm ci`` is missing."""
    require_node()
    async with NodePeers() as peers:
        yield peers


def short_socket_dir() -> str:
    """A fresh directory whose socket paths fit in ``sun_path`` (``/tmp/ipcXXXXXXXX``)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="ipc", dir=base)
