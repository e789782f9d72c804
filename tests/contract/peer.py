"""The server both fronts talk to: the blocking ``ipc_server.sync.IPCServer``, recording what it sees.

Its ``request`` handler answers every request with the request itself, except:

- ``{"cmd": "fail", "why": text}`` raises ``ValueError(text)``;
- ``{"cmd": "hold", "value": v}`` answers ``v`` only once ``release()`` is
  called (the request counts in ``held`` as soon as it arrived);
- ``{"cmd": name, ...}`` for a name a test put in ``commands``: that handler
  answers, called as ``handler(request, respond, connection)`` on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ipc_server import IPCConnection
from ipc_server.sync import IPCServer

from .polling import Recorder


class Peer:
    """A started ``ipc_server.sync.IPCServer`` at ``path``, its handlers, and what they saw.

    Attributes:
        connects: ``(connection id, payload)`` per ``connect`` event.
        disconnects: ``(connection id, reason)`` per ``disconnect`` event.
        messages: ``(message, connection id)`` per ``message`` event.
        held: Each ``hold`` request, once it reached the handler.
    """

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.options = options
        self.commands: dict[str, Callable[..., Any]] = {}
        self.connects: Recorder[tuple[str, Any]] = Recorder()
        self.disconnects: Recorder[tuple[str, Any]] = Recorder()
        self.messages: Recorder[tuple[Any, str]] = Recorder()
        self.held: Recorder[Any] = Recorder()
        self._gates: list[asyncio.Event] = []  # only touched on the server's loop
        self.server = self._start()

    def _start(self) -> IPCServer:
        server = IPCServer(path=self.path, **self.options)
        server.on("connect", lambda c, payload: self.connects((c.id, payload)))
        server.on("disconnect", lambda c, reason: self.disconnects((c.id, reason)))
        server.on("message", lambda message, c: self.messages((message, c.id)))
        server.on("request", self._on_request)
        return server.start()

    async def _on_request(self, request: Any, respond: Any, connection: IPCConnection) -> None:
        cmd = request.get("cmd") if isinstance(request, dict) else None
        handler = self.commands.get(cmd) if isinstance(cmd, str) else None
        if handler is not None:
            result = handler(request, respond, connection)
            if result is not None and hasattr(result, "__await__"):
                await result
            return
        if cmd == "fail":
            raise ValueError(request["why"])
        if cmd == "hold":
            gate = asyncio.Event()
            self._gates.append(gate)
            self.held(request)
            await gate.wait()
            await respond(request.get("value"))
            return
        await respond(request)

    # ------------------------------------------------------------------ from the test thread

    def release(self) -> None:
        """Answer every ``hold`` request so far (and the ones after it, until the server closes)."""

        async def open_gates() -> None:
            gates, self._gates = self._gates, []
            for gate in gates:
                gate.set()

        if self.server.is_ready:
            self.server.run(open_gates())

    @property
    def connection_count(self) -> int:
        """How many clients are connected now."""
        return len(self.server.connections)

    @property
    def connection_ids(self) -> list[str]:
        """The ids of the clients connected now, in connect order."""
        return [c.id for c in self.server.connections]

    @property
    def topics(self) -> set[str]:
        """Topics with at least one subscriber now."""
        return set(self.server.topics)

    def publish(self, topic: str, message: Any = None) -> int:
        """Publish from the server; returns how many subscribers got it."""
        return self.server.publish(topic, message)

    def broadcast(self, data: Any) -> int:
        """A message to every client; returns how many got it."""
        return self.server.broadcast(data)

    def request_client(self, data: Any, timeout: float | None = 5.0) -> Any:
        """Request the first connected client; its answer."""

        async def ask() -> Any:
            return await self.server.aio.connections[0].request(data, timeout)

        return self.server.run(ask())

    def call(self, name: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Call service ``name`` from the server; a worker's answer."""
        return self.server.call(name, data, timeout=timeout)

    def workers(self, name: str) -> list[str]:
        """The ids of the connections serving ``name``."""
        return [c.id for c in self.server.workers(name)]

    def pending(self, connection_id: str | None) -> int:
        """Requests the server sent the client ``connection_id`` and awaits the answer of
        (the calls a worker has in flight)."""

        async def count() -> int:
            for connection in self.server.aio.connections:
                if connection.id == connection_id:
                    pending: int = connection.stats()["pending"]
                    return pending
            return 0

        return self.server.run(count())

    def drop_connections(self) -> None:
        """Destroy every connection, without END: to the clients it looks like a crash."""

        async def drop() -> None:
            for connection in self.server.aio.connections:
                connection.destroy("crash")

        self.server.run(drop())

    def close(self, allow_reconnect: bool = False) -> None:
        """Close the server (held requests answered first); a no-op when closed."""
        self.release()
        self.server.close(allow_reconnect)

    def start(self) -> None:
        """Start a new server at the same path, after ``close``."""
        self._gates = []
        self.server = self._start()

    def restart(self, **options: Any) -> None:
        """Close with ``allow_reconnect=True``, then start a new server at the same path
        (with ``options``, if given)."""
        self.close(allow_reconnect=True)
        if options:
            self.options = options
        self._gates = []
        self.server = self._start()
