"""Cancel notices and deadlines as the server reads them from a raw peer of this library.

The client side (a cancelled task, a timeout) is in tests/contract; here the
test controls exactly what the server reads and when.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from boundkit import raw_packet, raw_peer
from helpers import eventually, within
from ipc_server import IPCConnection, IPCServer
from ipc_server.protocol import FrameDecoder, frame


def cancel_notice(n: str) -> bytes:
    return frame(json.dumps({"t": 1, "n": n, "x": "cancel"}).encode())


def answers(sock: socket.socket, count: int) -> dict[str, Any]:
    """Read ``count`` RESPONSE packets: nonce -> data."""
    decoder = FrameDecoder()
    got: dict[str, Any] = {}
    while len(got) < count:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        for body in decoder.feed(chunk):
            packet = json.loads(bytes(body))
            if packet["t"] == 3:
                got[packet["n"]] = packet["d"]
    return got


async def test_a_held_request_whose_cancel_notice_was_read_never_runs(sock_path: str) -> None:
    """Reading is held (every handler slot taken) with a request and its cancel notice
    read: once a slot frees, that request is dropped, and the ones around it run."""
    server = IPCServer(path=sock_path, max_concurrent_requests=1)
    seen: list[Any] = []
    release = asyncio.Event()

    def record(request: Any, respond: Any, conn: IPCConnection) -> None:
        seen.append(request)

    async def work(request: Any, respond: Any, conn: IPCConnection) -> None:
        if request == "a":
            await release.wait()
        await respond(request)

    server.on("request", record)
    server.on("request", work)
    await within(server.start())
    sock = await asyncio.to_thread(raw_peer, sock_path)
    try:
        batch = raw_packet(2, "a", "a") + raw_packet(2, "b", "b") + raw_packet(2, "c", "c")
        sock.sendall(batch + cancel_notice("b"))  # one write: one read on the server
        await eventually(lambda: seen == ["a"], what="the first request runs")
        (conn,) = server.connections
        assert conn.reading_held == frozenset({"busy"})
        release.set()
        got = await within(asyncio.to_thread(answers, sock, 2))
        assert got == {"a": "a", "c": "c"}
        assert seen == ["a", "c"]  # "b" never reached a listener
    finally:
        sock.close()
        await within(server.close())


async def test_the_deadline_travels_as_a_relative_time(sock_path: str) -> None:
    """ "dl" (seconds) becomes respond.deadline on the server's loop clock; a request
    without it, or from a peer that announced no features, has none."""
    server = IPCServer(path=sock_path)
    deadlines: dict[str, float | None] = {}

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        deadlines[request] = respond.deadline
        await respond(None)

    server.on("request", handler)
    await within(server.start())
    sock = await asyncio.to_thread(raw_peer, sock_path)
    try:
        before = asyncio.get_running_loop().time()
        timed = frame(json.dumps({"t": 2, "d": "timed", "n": "1", "dl": 5.0}).encode())
        sock.sendall(timed + raw_packet(2, "plain", "2"))
        await within(asyncio.to_thread(answers, sock, 2))
        after = asyncio.get_running_loop().time()
        timed_deadline = deadlines["timed"]
        assert timed_deadline is not None
        assert before + 5.0 <= timed_deadline <= after + 5.0
        assert deadlines["plain"] is None
    finally:
        sock.close()
        await within(server.close())
