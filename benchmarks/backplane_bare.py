"""The cross-host round trip with nothing but nats-py and a bare framed socket.

The ``bare`` line of ``python -m benchmarks.backplane --only rtt``: the same
four processes and the same hops as ours, each doing the least a design of
that shape can do. Client A (in the main process, beside relay A) writes a
frame (a 4-byte length, then the orjson body of the payload) to relay A;
relay A publishes the body on ``bare.ping`` with nats-py; relay B (a process)
hands it to client B (a process) as a frame; client B decodes it and writes
it back encoded; relay B publishes it on ``bare.pong``; relay A hands it to
client A, which decodes it. Each relay answers each frame a client sends with
a one-byte frame, as a server answers a publish (in ours and in the ``local``
line alike), and the clients read and drop those. No packet types, no nonces,
no topics, no sequence numbers, no outbox: a lower bound for any library that
keeps this layout (a server per host, its clients in processes of their own),
answers a publish and uses nats-py as nats-py is meant to be used (each
message it reads handed to a subscription's task, each publish to its writer
task), measured on the same machine in the same run. Ours skips those two
task hops while nothing waits ahead of a message (``ipc_server.backplane.link``),
so it is not bound by this line; applied to the raw ping-pong, the same two
cut about a tenth (docs/backplane.md, "Figures").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import orjson

__all__ = ["BareRelay", "bare_round_trip", "connect", "serve_child"]

_LENGTH = 4
ANSWER = b"1"
"""A relay's answer to a frame its client sent (a publish's answer)."""


class _Framed(asyncio.Protocol):
    """Length-prefixed frames over a stream: each whole body to ``on_body``."""

    def __init__(self, on_body: Callable[[bytes], None]) -> None:
        self.on_body = on_body
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _LENGTH:
            size = int.from_bytes(buffer[:_LENGTH], "big")
            if len(buffer) < _LENGTH + size:
                break
            body = bytes(buffer[_LENGTH : _LENGTH + size])
            del buffer[: _LENGTH + size]
            self.on_body(body)

    def send(self, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(len(body).to_bytes(_LENGTH, "big") + body)


async def _finish(coro: Coroutine[Any, Any, None], paused: Any) -> None:
    """Go on with ``coro``, paused on future ``paused``, until it returns."""
    while True:
        if paused is None:
            await asyncio.sleep(0)
        else:
            await asyncio.wait((paused,))
        try:
            paused = coro.send(None)
        except StopIteration:
            return


class BareRelay:
    """A unix socket server for one local client, relayed to and from NATS subjects."""

    def __init__(self, url: str, path: str, inbound: str, outbound: str) -> None:
        self.url, self.path = url, path
        self.inbound, self.outbound = inbound, outbound
        self.client: _Framed | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        import nats

        self.nc = nc = await nats.connect(self.url)
        loop = asyncio.get_running_loop()

        async def from_broker(msg: Any) -> None:
            if self.client is not None:
                self.client.send(msg.data)

        def from_client(body: bytes) -> None:
            # nats-py's publish is a coroutine that only queues the bytes for its
            # writer task: begun here, it ends at once (no task per message); if it
            # ever waits (its buffer full), a task finishes it
            publish = nc.publish(self.outbound, body)
            try:
                paused = publish.send(None)
            except StopIteration:
                pass
            else:
                task = loop.create_task(_finish(publish, paused))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self.client is not None:
                self.client.send(ANSWER)  # the publish is answered

        def accept() -> _Framed:
            self.client = _Framed(from_client)
            return self.client

        await nc.subscribe(self.inbound, cb=from_broker)
        await nc.flush()
        self.server = await loop.create_unix_server(accept, self.path)

    async def close(self) -> None:
        self.server.close()
        await self.nc.close()


async def connect(path: str, on_body: Callable[[bytes], None]) -> _Framed:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_unix_connection(lambda: _Framed(on_body), path)
    return protocol


async def serve_child(role: str, url: str, path: str, say: Callable[..., None]) -> None:
    """The far side: ``relay-bare`` (relay B) or ``echo-bare`` (client B)."""
    if role == "relay-bare":
        relay = BareRelay(url, path, "bare.ping", "bare.pong")
        await relay.start()
        say("ready")
    else:
        echo: list[_Framed] = []

        def on_body(body: bytes) -> None:
            if body != ANSWER:
                echo[0].send(orjson.dumps(orjson.loads(body)))

        echo.append(await connect(path, on_body))
        say("ready")
    await asyncio.sleep(3600)


@contextlib.asynccontextmanager
async def bare_round_trip(
    url: str, folder: str, payload: Any, child: Any
) -> AsyncIterator[tuple[dict[str, int], Callable[[], Awaitable[float]]]]:
    """Client A and relay A here; relay B and client B in processes of their own
    (``child(role, url, path)``: an async context manager giving the process).
    Gives the processes by role and ``one()``, a timed round trip."""
    far = os.path.join(folder, "bare-b")
    async with child("relay-bare", url, far) as relay_b, child("echo-bare", url, far) as echo:
        relay = BareRelay(url, os.path.join(folder, "bare-a"), "bare.pong", "bare.ping")
        await relay.start()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] | None = None

        def on_body(body: bytes) -> None:
            if body != ANSWER and waiter is not None and not waiter.done():
                waiter.set_result(orjson.loads(body))

        client = await connect(relay.path, on_body)

        async def one() -> float:
            nonlocal waiter
            waiter = loop.create_future()
            began = time.perf_counter()
            client.send(orjson.dumps(payload))
            await asyncio.wait_for(waiter, 10)
            return time.perf_counter() - began

        pids = {"relay A and client A": os.getpid(), "relay B": relay_b.pid, "client B": echo.pid}
        try:
            yield pids, one
        finally:
            await relay.close()
