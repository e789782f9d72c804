"""Cancel notices and deadlines as the server reads them from a raw peer of this library.

The client side (a cancelled task, a timeout) is in tests/contract; here the
test controls exactly what the server reads and when.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import sys
import warnings
from typing import Any

import pytest

from boundkit import raw_packet, raw_peer
from helpers import eventually, within
from ipc_server import IPCClient, IPCConnection, IPCServer, RequestTimeoutError
from ipc_server.protocol import FrameDecoder, frame


def cancel_notice(n: str) -> bytes:
    return frame(json.dumps({"t": 1, "n": n, "x": "cancel"}).encode())


def packets_read(sock: socket.socket, t: int, count: int) -> list[dict[str, Any]]:
    """Read until ``count`` packets of type ``t`` came: those packets."""
    decoder = FrameDecoder()
    got: list[dict[str, Any]] = []
    while len(got) < count:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        for body in decoder.feed(chunk):
            packet = json.loads(bytes(body))
            if packet["t"] == t:
                got.append(packet)
    return got


def answers(sock: socket.socket, count: int) -> dict[str, Any]:
    """Read ``count`` RESPONSE packets: nonce -> data."""
    return {packet["n"]: packet["d"] for packet in packets_read(sock, 3, count)}


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


async def test_compressed_connections_carry_credit_and_cancel_notices(sock_path: str) -> None:
    """With compress=True every packet takes the careful path: a stream longer than its
    window still flows (credit), and a caller's timeout still cancels the handler."""
    server = IPCServer(path=sock_path)
    cancelled = asyncio.Event()

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        if request == "count":
            await respond.stream(range(100))
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server.on("request", handler)
    await within(server.start())
    client = IPCClient(path=sock_path, compress=True)
    messages: list[Any] = []
    server.on("message", lambda message, conn: messages.append(message))
    try:
        await within(client.connect())
        items = [item async for item in client.stream("count", window=4, timeout=5)]
        assert items == list(range(100))
        with pytest.raises(RequestTimeoutError):
            await within(client.request("wait", timeout=0.2))
        await within(cancelled.wait())
        assert messages == []  # credit and cancel notices are never message events
    finally:
        await within(client.close())
        await within(server.close())


def raw_client(path: str, hello: dict[str, Any]) -> tuple[socket.socket, dict[str, Any]]:
    """A socket to ``path`` that sent ``IPC`` and the CONNECTION ``hello`` (its ``d``), and
    read the answer; the answer's ``d``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(b"IPC" + frame(json.dumps({"t": 0, "d": hello}).encode()))
    decoder = FrameDecoder()
    while True:
        bodies = decoder.feed(sock.recv(65536))
        if bodies:
            return sock, json.loads(bytes(bodies[0]))["d"]


def requests_read(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    """Read ``count`` REQUEST packets and answer each with ``None``: the packets."""
    got = packets_read(sock, 2, count)
    for packet in got:
        sock.sendall(frame(json.dumps({"t": 3, "d": None, "n": packet["n"]}).encode()))
    return got


@pytest.mark.parametrize("said", [True, False], ids=["said", "silent"])
async def test_how_long_requests_without_a_deadline_wait(sock_path: str, said: bool) -> None:
    """ "dl" (seconds) becomes respond.deadline on the server's loop clock. A client that
    says, in its CONNECTION packet, how long its requests without "dl" wait gets them that
    deadline; the server says its own, and leaves "dl" out of its requests with that
    timeout. To a peer that said nothing, every timeout travels (and none is implied)."""
    server = IPCServer(path=sock_path)
    deadlines: dict[str, float | None] = {}

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        deadlines[request] = respond.deadline
        await respond(None)

    server.on("request", handler)
    await within(server.start())
    hello: dict[str, Any] = {"id": None, "features": ["cancel"]}
    if said:
        hello["dl"] = 7.0
    sock, agreed = await asyncio.to_thread(raw_client, sock_path, hello)
    try:
        assert agreed.get("dl") == ([7.0, 10.0] if said else None)
        before = asyncio.get_running_loop().time()
        sock.sendall(
            raw_packet(2, "plain", "1")
            + frame(json.dumps({"t": 2, "d": "forever", "n": "2", "dl": None}).encode())
            + frame(json.dumps({"t": 2, "d": "timed", "n": "3", "dl": 2.0}).encode())
        )
        await within(asyncio.to_thread(answers, sock, 3))
        after = asyncio.get_running_loop().time()
        plain, timed = deadlines["plain"], deadlines["timed"]
        if said:
            assert plain is not None
            assert before + 7.0 <= plain <= after + 7.0
        else:
            assert plain is None
        assert deadlines["forever"] is None
        assert timed is not None
        assert before + 2.0 <= timed <= after + 2.0
        (conn,) = server.connections
        asked = asyncio.gather(conn.request("usual"), conn.request("short", 3.0))
        forever = conn.request("forever", None)
        got = await within(asyncio.to_thread(requests_read, sock, 3))
        await within(asked)
        await within(forever)
        by_data = {packet["d"]: packet for packet in got}
        assert ("dl" in by_data["usual"]) is not said
        assert by_data["short"]["dl"] == 3.0
        if said:
            assert "dl" in by_data["forever"]
            assert by_data["forever"]["dl"] is None
        else:
            assert "dl" not in by_data["forever"]
    finally:
        sock.close()
        await within(server.close())


async def test_a_credit_for_a_request_that_streams_nothing_is_ignored(sock_path: str) -> None:
    """A credit notice naming a running request whose handler has not begun a stream (a
    plain request, or a stream request not yet answered) changes nothing: no error, the
    plain request is answered, and the stream starts with its window, then goes on with
    the credit given once items came."""
    server = IPCServer(path=sock_path)
    errors: list[BaseException] = []
    release = asyncio.Event()

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        await release.wait()
        if respond.window:
            await respond.stream(range(3))
        else:
            await respond(request)

    server.on("request", handler)
    server.on("error", lambda error, conn: errors.append(error))
    await within(server.start())
    sock, _ = await asyncio.to_thread(raw_client, sock_path, {"features": ["cancel", "streams"]})
    try:
        stream = {"t": 2, "d": "items", "n": "2", "x": "stream", "w": 2}
        sock.sendall(raw_packet(2, "plain", "1") + frame(json.dumps(stream).encode()))
        (conn,) = server.connections
        await eventually(lambda: conn.stats()["handlers"] == 2, what="both running")
        credits = [{"t": 1, "d": 5, "n": n, "x": "credit"} for n in ("1", "2")]
        sock.sendall(b"".join(frame(json.dumps(credit).encode()) for credit in credits))
        await eventually(lambda: conn.stats()["packets_in"] >= 5, what="the credits read")
        release.set()
        got = await within(asyncio.to_thread(packets_read, sock, 3, 3))
        assert sorted((packet["n"], packet["d"]) for packet in got) == [
            ("1", "plain"),
            ("2", 0),
            ("2", 1),
        ]
        sock.sendall(frame(json.dumps({"t": 1, "d": 2, "n": "2", "x": "credit"}).encode()))
        rest = await within(asyncio.to_thread(packets_read, sock, 3, 2))
        assert [(packet["d"], packet.get("x")) for packet in rest] == [(2, "item"), (None, "end")]
        assert errors == []
    finally:
        sock.close()
        await within(server.close())


@pytest.mark.parametrize("when", ["with the request", "while streaming", "while collecting"])
async def test_a_stream_the_requester_cancels_cancels_its_handler(
    sock_path: str, when: str
) -> None:
    """A handler that awaits its stream, whose requester sends a cancel notice, is
    cancelled as any handler is: at its await, whether the notice came in the same
    read as the request (the stream's producer had not started), while items flow,
    or while the items are collected for a requester that asked for one answer;
    nothing is reported on ``error``, nothing runs after the await, the items'
    iterator is closed, and the connection's next stream is answered."""
    server = IPCServer(path=sock_path)
    errors: list[BaseException] = []
    ended: list[str] = []
    closed: list[bool] = []

    async def items() -> Any:
        try:
            yield 0
            yield 1
            await asyncio.Event().wait()  # the requester has what it wants by now
        finally:
            closed.append(True)

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        if request == "after":
            await respond.stream(range(3))
            return
        try:
            await respond.stream(items())
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        ended.append("went on")

    server.on("request", handler)
    server.on("error", lambda error, conn: errors.append(error))
    await within(server.start())
    sock, _ = await asyncio.to_thread(raw_client, sock_path, {"features": ["cancel", "streams"]})
    try:
        stream = frame(json.dumps({"t": 2, "d": "items", "n": "1", "x": "stream", "w": 2}).encode())
        (conn,) = server.connections
        if when == "with the request":
            sock.sendall(stream + cancel_notice("1"))  # one write: one read on the server
        elif when == "while streaming":
            sock.sendall(stream)
            await within(asyncio.to_thread(packets_read, sock, 3, 2))  # the window's items
            sock.sendall(cancel_notice("1"))
        else:
            sock.sendall(raw_packet(2, "items", "1"))
            await eventually(lambda: conn.stats()["handlers"] == 2, what="handler and producer")
            sock.sendall(cancel_notice("1"))
        await eventually(lambda: conn.stats()["packets_in"] >= 2, what="the notice read")
        await eventually(lambda: conn.stats()["handlers"] == 0, what="nothing running")
        if when == "with the request" and sys.version_info < (3, 12):
            assert ended == []  # its task had not started: it never ran
        else:  # 3.12+ starts a handler's task at once: it began the stream
            assert ended == ["cancelled"]
        # An iteration that began is closed (with the request, none began).
        assert closed == ([] if when == "with the request" else [True])
        # The next stream of the connection runs as any (in the compiled core, the
        # cancellation once came back in it).
        sock.sendall(raw_packet(2, "after", "9"))
        assert await within(asyncio.to_thread(answers, sock, 1)) == {"9": [0, 1, 2]}
        assert errors == []
    finally:
        sock.close()
        await within(server.close())


@pytest.mark.parametrize("features", [[], ["cancel", "streams"]], ids=["plain", "cancel"])
async def test_held_requests_of_a_connection_going_away_never_start(
    sock_path: str, features: list[str]
) -> None:
    """Reading is held (every handler slot taken) with requests read; a slot frees and
    the socket is lost in the same turn of the loop: the held requests are not
    handed to listeners (before, their handlers' tasks were made and then cancelled
    before they started, each leaving a "coroutine was never awaited" warning)."""
    server = IPCServer(path=sock_path, max_concurrent_requests=1)
    ran: list[Any] = []
    release = asyncio.Event()

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        ran.append(request)
        if request == "a":
            await release.wait()
            # After the slot frees (the task's first done callback), in the same turn,
            # the socket goes (as when a write finds the peer gone).
            task = asyncio.current_task()
            assert task is not None
            transport = conn._transport
            assert transport is not None
            task.add_done_callback(lambda _: transport.abort())
        await respond(request)

    server.on("request", handler)
    await within(server.start())
    sock, _ = await asyncio.to_thread(raw_client, sock_path, {"features": features})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = b"".join(raw_packet(2, n, n) for n in ["a", *map(str, range(20))])
            sock.sendall(batch)
            (conn,) = server.connections
            await eventually(lambda: conn.reading_held == {"busy"}, what="reading held")
            await eventually(lambda: conn.stats()["packets_in"] >= 21, what="all read")
            release.set()
            await eventually(lambda: not server.connections, what="the connection gone")
            for _ in range(5):
                await asyncio.sleep(0)
            gc.collect()
        never = [str(w.message) for w in caught if "never awaited" in str(w.message)]
        assert never == []
        assert ran == ["a"]
    finally:
        sock.close()
        await within(server.close())
