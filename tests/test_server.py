"""IPCServer over real Unix and TCP sockets (docs/guide.md and 5)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers import POSIX_ONLY, eventually
from ipc_server import (
    STOP,
    AddressInUseError,
    IPCClient,
    IPCConnection,
    IPCServer,
    ProtocolError,
    RemoteError,
)
from ipc_server.errors import HandshakeError


async def connected(path: str, payload: Any = None, **options: Any) -> IPCClient:
    client = IPCClient(path=path, **options)
    await client.connect(payload)
    return client


@POSIX_ONLY
async def test_start_emits_ready_and_creates_private_socket(path: str) -> None:
    """start() emits ready(address) and the socket file is created 0o600."""
    srv = IPCServer(path=path)
    seen: list[str] = []
    srv.on("ready", seen.append)
    assert await srv.start() is srv
    try:
        assert seen == [path]
        assert srv.is_ready
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        await srv.close()
    assert not Path(path).exists()  # noqa: ASYNC240 - a stat, not I/O worth a thread
    assert not srv.is_ready


async def test_connect_payload_and_connection_order(server: IPCServer, path: str) -> None:
    """connect(connection, payload) carries the client's payload; connections keep connect order."""
    seen: list[tuple[IPCConnection, Any]] = []
    server.on("connect", lambda c, p: seen.append((c, p)))
    a = await connected(path, {"token": "a"})
    b = await connected(path, ["b"])
    await eventually(lambda: len(seen) == 2)
    assert [p for _, p in seen] == [{"token": "a"}, ["b"]]
    assert server.connections == [c for c, _ in seen]
    assert [c.id for c in server.connections] == [a.id, b.id]
    conn = server.connections[0]
    assert conn.peer is not None
    assert conn.peer.pid == os.getpid()
    assert conn.connected_at is not None
    assert conn.server is server
    await a.close()
    await b.close()


async def test_disconnect_reason_and_registry(server: IPCServer, path: str) -> None:
    """A client's close reason reaches disconnect, and the connection leaves the registry."""
    reasons: list[Any] = []
    server.on("disconnect", lambda c, r: reasons.append(r))
    client = await connected(path)
    await client.close("bye now")
    await eventually(lambda: reasons == ["bye now"])
    assert server.connections == []


async def test_message_event(server: IPCServer, path: str) -> None:
    """send() arrives as message(message, connection), in order, falsy values included."""
    got: list[Any] = []
    server.on("message", lambda m, c: got.append(m))
    client = await connected(path)
    for item in ("a", 0, "", None, False, {"k": [1, 2]}):
        await client.send(item)
    await eventually(lambda: len(got) == 6)
    assert got == ["a", 0, "", None, False, {"k": [1, 2]}]
    await client.close()


async def test_request_chain_order_and_stop(server: IPCServer, path: str) -> None:
    """Listeners run in order; the chain ends at the first respond or at STOP."""
    calls: list[str] = []

    def first(request: Any, respond: Any, conn: IPCConnection) -> Any:
        calls.append("first")
        if request == "stop":
            return STOP
        return None

    async def second(request: Any, respond: Any, conn: IPCConnection) -> None:
        calls.append("second")
        await respond(f"second:{request}")

    def third(request: Any, respond: Any, conn: IPCConnection) -> None:
        calls.append("third")

    server.on("request", first)
    server.on("request", second)
    server.on("request", third)
    client = await connected(path)
    assert await client.request("x") == "second:x"
    assert calls == ["first", "second"]
    calls.clear()
    assert await client.request("stop") is None
    assert calls == ["first"]
    await client.close()


async def test_request_without_listeners_answers_none(server: IPCServer, path: str) -> None:
    """With no request listener, or none that responds, the requester gets None, never a hang."""
    client = await connected(path)
    assert await client.request("anyone?", timeout=5) is None
    server.on("request", lambda r, respond, c: None)
    assert await client.request("still nobody", timeout=5) is None
    await client.close()


async def test_async_listener_that_suspends(server: IPCServer, path: str) -> None:
    """An async listener may await before responding; later listeners wait for it."""
    order: list[str] = []

    async def slow(request: Any, respond: Any, conn: IPCConnection) -> None:
        await asyncio.sleep(0.01)
        order.append("slow")

    async def answer(request: Any, respond: Any, conn: IPCConnection) -> None:
        order.append("answer")
        await respond(request * 2)

    server.on("request", slow)
    server.on("request", answer)
    client = await connected(path)
    results = await asyncio.gather(*(client.request(i) for i in range(20)))
    assert results == [i * 2 for i in range(20)]
    assert order[:2] == ["slow", "answer"]
    await client.close()


async def test_handler_exception_is_remote_error(server: IPCServer, path: str) -> None:
    """A raising handler gives the requester RemoteError and the server an error event; the connection lives."""
    errors: list[tuple[BaseException, Any]] = []
    server.on("error", lambda e, c: errors.append((e, c)))

    @server.on("request")
    def boom(request: Any, respond: Any, conn: IPCConnection) -> None:
        if request == "boom":
            raise KeyError("missing")
        respond("fine")

    client = await connected(path)
    with pytest.raises(RemoteError) as info:
        await client.request("boom")
    assert info.value.type == "KeyError"
    assert "missing" in info.value.message
    assert isinstance(errors[0][0], KeyError)
    assert errors[0][1] is server.connections[0]
    assert await client.request("ok") == "fine"
    await client.close()


async def test_survey_ping_broadcast(server: IPCServer, path: str) -> None:
    """survey/ping reach every client with per-client results; broadcast reaches everyone."""
    clients = [await connected(path) for _ in range(3)]
    got: list[Any] = []
    for i, client in enumerate(clients):
        client.on("request", lambda r, respond, i=i: respond([i, r]))
        client.on("message", got.append)
    results = await server.survey("q", timeout=5)
    assert [reply for _, reply in results] == [[0, "q"], [1, "q"], [2, "q"]]
    latencies = await server.ping("data", timeout=5)
    assert len(latencies) == 3
    assert all(isinstance(s, float) and s >= 0 for _, s in latencies)
    assert await server.broadcast({"all": True}) == 3
    await eventually(lambda: len(got) == 3)
    assert got == [{"all": True}] * 3
    for client in clients:
        await client.close()


async def test_publish_reaches_subscribers_only(server: IPCServer, path: str) -> None:
    """publish goes to subscribers of the topic only, falsy messages included; unsubscribe stops it."""
    sub, other = await connected(path), await connected(path)
    got: list[Any] = []
    noise: list[Any] = []
    sub.on("news", got.append)
    other.on("news", noise.append)
    other.on("message", noise.append)
    assert await sub.subscribe("news") is True
    for message in (0, "", None, False, "x"):
        await server.publish("news", message)
    assert await other.publish("news", "from other") is True
    await eventually(lambda: len(got) == 6)
    assert got == [0, "", None, False, "x", "from other"]
    assert noise == []
    assert await sub.unsubscribe("news") is True
    assert await sub.unsubscribe("news") is False
    assert await server.publish("news", "gone") == 0
    await sub.close()
    await other.close()


async def test_topic_registry_forgets_closed_connection(server: IPCServer, path: str) -> None:
    """When a subscriber leaves, the topic registry forgets it."""
    client = await connected(path)
    assert await client.subscribe(["a", "b"]) is True
    assert set(server.topics) == {"a", "b"}
    client.destroy()
    await eventually(lambda: server.topics == {})


@POSIX_ONLY
async def test_address_in_use_and_stale_socket(path: str) -> None:
    """A live server's socket is never taken; a stale socket file is replaced."""
    first = IPCServer(path=path)
    await first.start()
    try:
        with pytest.raises(AddressInUseError):
            await IPCServer(path=path).start()
        client = await connected(path)  # the first server still works
        assert await client.ping() >= 0
        await client.close()
    finally:
        await first.close()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # leaves the file, nobody listening
    second = IPCServer(path=path)
    await second.start()
    client = await connected(path)
    assert await client.request(1) is None
    await client.close()
    await second.close()


@POSIX_ONLY
async def test_regular_file_is_not_removed(path: str) -> None:
    """A regular file at the path is refused, never deleted."""
    Path(path).write_text("keep me")  # noqa: ASYNC240
    with pytest.raises(AddressInUseError):
        await IPCServer(path=path).start()
    assert Path(path).read_text() == "keep me"  # noqa: ASYNC240


async def test_close_for_good_and_allow_reconnect(path: str) -> None:
    """After close() clients close for good; after close(allow_reconnect=True) they come back by themselves."""
    srv = IPCServer(path=path)
    await srv.start()
    client = await connected(path, "p")
    closed: list[Any] = []
    client.on("close", closed.append)
    got: list[Any] = []
    client.on("t", got.append)
    await client.subscribe("t")
    old_id = client.id
    await srv.close(allow_reconnect=True)
    srv2 = IPCServer(path=path)
    await srv2.start()
    await eventually(lambda: client.is_ready and srv2.topics.get("t"), timeout=10)
    assert client.id == old_id
    assert srv2.connections[0].id == old_id
    await srv2.publish("t", "again")
    await eventually(lambda: got == ["again"])
    await srv2.close()
    await eventually(lambda: closed == ["server closed"])
    assert not client.is_ready


@POSIX_ONLY
async def test_handshake_timeout_drops_silent_peer(path: str) -> None:
    """A peer that never finishes the CONNECTION exchange is dropped after handshake_timeout."""
    srv = IPCServer(path=path, handshake_timeout=0.2)
    errors: list[BaseException] = []
    srv.on("error", lambda e, c: errors.append(e))
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"IP")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert isinstance(errors[0], HandshakeError)
    writer.close()
    client = await connected(path)  # others still served
    assert await client.ping() >= 0
    await client.close()
    await srv.close()


@POSIX_ONLY
async def test_bad_preamble_and_early_packet(server: IPCServer, path: str) -> None:
    """Garbage preambles and packets before CONNECTION close only that connection, reported on error."""
    errors: list[BaseException] = []
    server.on("error", lambda e, c: errors.append(e))
    good = await connected(path)
    for raw in (b"XYZ hello", b"IPC\x8a" + b'{"t":1,"d":1}'[:10]):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(raw)
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
    await eventually(lambda: len(errors) == 2)
    assert all(isinstance(e, ProtocolError) for e in errors)
    assert await good.request("still here") is None
    await good.close()


@POSIX_ONLY
async def test_http_upgrade_tokens(server: IPCServer, path: str) -> None:
    """The HTTP upgrade works with both accepted tokens; a plain GET gets 404."""
    for token in ("isdk-ipc", "net-ipc"):
        client = await connected(path, handshake=True, upgrade_token=token)
        assert await client.ping() >= 0
        await client.close()
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 404 Not Found")
    writer.close()


@pytest.mark.parametrize(
    ("codec", "compress"), [("json", False), ("msgpack", False), ("json", True), ("msgpack", True)]
)
async def test_codecs_round_trip(server: IPCServer, path: str, codec: Any, compress: bool) -> None:
    """Every codec/compression combination agreed in the handshake carries requests and bytes."""

    @server.on("request")
    def echo(request: Any, respond: Any, conn: IPCConnection) -> None:
        respond(request)

    client = await connected(path, codec=codec, compress=compress)
    assert client.info["messagepack"] == (codec == "msgpack")
    assert client.info["compress"] == compress
    payload = {"text": "héllo" * 100, "n": [1, 2.5, None, True]}
    for _ in range(50):
        assert await client.request(payload) == payload
    if codec == "msgpack":
        assert await client.request(b"\x00\xffbytes") == b"\x00\xffbytes"
    await client.close()


async def test_json_server_declines_msgpack(path: str) -> None:
    """codec='json' on the server declines a client's msgpack; both go on in JSON."""
    srv = IPCServer(path=path, codec="json", compress=False)
    await srv.start()
    client = await connected(path, codec="msgpack", compress=True)
    assert client.info["messagepack"] is False
    assert client.info["compress"] is False
    assert await client.request([1]) is None
    await client.close()
    await srv.close()


async def test_id_factory(path: str) -> None:
    """id_factory names new connections."""
    names = iter(["one", "two"])
    srv = IPCServer(path=path, id_factory=lambda: next(names))
    await srv.start()
    a, b = await connected(path), await connected(path)
    assert (a.id, b.id) == ("one", "two")
    await a.close()
    await b.close()
    await srv.close()


async def test_max_connections(path: str) -> None:
    """Clients over max_connections are refused with a reason; the admitted ones keep working."""
    srv = IPCServer(path=path, max_connections=2)
    await srv.start()
    a, b = await connected(path), await connected(path)
    with pytest.raises(HandshakeError, match="max_connections=2"):
        await connected(path)
    assert await a.ping() >= 0
    await a.close()
    await eventually(lambda: len(srv.connections) == 1)
    c = await connected(path)
    await b.close()
    await c.close()
    await srv.close()


async def test_pause_and_resume(server: IPCServer, path: str) -> None:
    """pause() stops reading from clients until resume()."""
    got: list[Any] = []
    server.on("message", lambda m, c: got.append(m))
    client = await connected(path)
    await eventually(lambda: len(server.connections) == 1)
    server.pause()
    await client.send("held")
    await asyncio.sleep(0.05)  # give a paused server the chance to (wrongly) read
    assert got == []
    server.resume()
    await eventually(lambda: got == ["held"])
    await client.close()


async def test_tcp_port_zero() -> None:
    """TCP on 127.0.0.1 with port=0 picks a free port, reported by server.port."""
    srv = IPCServer(host="127.0.0.1", port=0)
    await srv.start()
    assert srv.port
    client = IPCClient(host="127.0.0.1", port=srv.port)
    await client.connect()
    assert await client.ping() >= 0
    assert srv.connections[0].peer is None
    await client.close()
    await srv.close()


async def test_tls() -> None:
    """TLS with a certificate made at test time; a client with the wrong CA is refused."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    srv = IPCServer(host="127.0.0.1", port=0, ssl=server_ctx)
    srv.on("error", lambda e, c: None)
    await srv.start()
    client = IPCClient(host="127.0.0.1", port=srv.port, ssl=client_ctx)
    await client.connect("secure")
    assert await client.request("x") is None
    await client.close()
    wrong = ssl.create_default_context()
    trustme.CA().configure_trust(wrong)
    with pytest.raises(ssl.SSLError):
        await IPCClient(host="127.0.0.1", port=srv.port, ssl=wrong).connect()
    await srv.close()


async def test_close_waits_for_handlers_in_progress(path: str) -> None:
    """server.close() lets request handlers already running answer before END goes out."""
    srv = IPCServer(path=path)
    started = asyncio.Event()

    @srv.on("request")
    async def slow(request: Any, respond: Any, conn: IPCConnection) -> None:
        started.set()
        await asyncio.sleep(0.1)
        await respond("late but answered")

    await srv.start()
    client = await connected(path)
    pending = asyncio.ensure_future(client.request("x", timeout=5))
    await asyncio.wait_for(started.wait(), 5)
    await srv.close()
    assert await pending == "late but answered"


def test_server_on_uvloop_reports_its_port() -> None:
    """On uvloop too, port=0 reports the real port and close() waits for the listener."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        srv = IPCServer(host="127.0.0.1", port=0)
        ready: list[str] = []
        srv.on("ready", ready.append)
        await srv.start()
        assert srv.port
        assert ready == [f"127.0.0.1:{srv.port}"]
        client = IPCClient(host="127.0.0.1", port=srv.port)
        await client.connect()
        assert await client.ping() >= 0
        await client.close()
        await srv.close()

    uvloop.run(main())


@pytest.mark.parametrize("handler", ["lambda", "coroutine"])
async def test_a_handler_returning_respond_costs_no_task(
    server: IPCServer, path: str, handler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lambda r, respond, c: respond(r)`` returns what respond returns: it must not start a task.

    A coroutine handler does need one (on Python < 3.12 every call starts a
    task; from 3.12 it starts eagerly and is over at once): the count shows
    the probe works. Tasks are counted as asyncio makes them (the loop's task
    factory, and ``asyncio.Task`` for the eager ones), not in the library.
    """
    started: list[object] = []

    class CountingTask(asyncio.Task):  # type: ignore[type-arg]
        def __init__(self, coro: Any, **kwargs: Any) -> None:
            started.append(coro)
            super().__init__(coro, **kwargs)

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return CountingTask(coro, loop=loop, **kwargs)

    monkeypatch.setattr(asyncio, "Task", CountingTask)
    asyncio.get_running_loop().set_task_factory(factory)
    if handler == "lambda":
        server.on("request", lambda request, respond, conn: respond(request))
    else:

        async def answer(request: Any, respond: Any, conn: IPCConnection) -> None:
            await respond(request)

        server.on("request", answer)
    client = await IPCClient(path=path).connect()
    started.clear()  # only the requests' own count
    for i in range(20):
        assert await client.request(i) == i
    assert len(started) == (0 if handler == "lambda" else 20)
    await client.close()


async def test_message_listeners_changed_between_messages(server: IPCServer, path: str) -> None:
    """Adding, removing and once-listeners take effect for the next message (one listener or several)."""
    seen: list[tuple[str, Any]] = []

    def first(message: Any, conn: IPCConnection) -> None:
        seen.append(("first", message))

    def second(message: Any, conn: IPCConnection) -> None:
        seen.append(("second", message))

    server.on("message", first)
    client = await IPCClient(path=path).connect()

    async def send_and_settle(message: int) -> None:
        await client.send(message)
        assert await client.request("sync") is None  # the server read the message before this

    await send_and_settle(1)
    server.on("message", second)
    await send_and_settle(2)
    server.off("message", first)
    await send_and_settle(3)
    server.off("message", second)
    await send_and_settle(4)
    server.once("message", first)
    await send_and_settle(5)
    await send_and_settle(6)
    server.on("message", second)
    await send_and_settle(7)
    assert seen == [
        ("first", 1),
        ("first", 2),
        ("second", 2),
        ("second", 3),
        ("first", 5),
        ("second", 7),
    ]
    await client.close()


async def test_only_the_exact_pubsub_shapes_are_taken_over(server: IPCServer, path: str) -> None:
    """A request that merely has a "sub", "unsub" or "pub" key reaches the handler."""
    seen: list[Any] = []

    def handler(request: Any, respond: Any, connection: IPCConnection) -> None:
        seen.append(request)
        respond(None)

    server.on("request", handler)
    client = await IPCClient(path=path).connect()
    try:
        for request in (
            {"user": "ann", "sub": "premium"},
            {"unsub": "x", "why": 1},
            {"pub": "t", "message": 1, "extra": True},
            {"pub": 5, "sub": 6},
        ):
            assert await client.request(request) is None
        assert seen == [
            {"user": "ann", "sub": "premium"},
            {"unsub": "x", "why": 1},
            {"pub": "t", "message": 1, "extra": True},
            {"pub": 5, "sub": 6},
        ]
        assert server.topics == {}
        assert await client.request({"sub": "exact"}) == {"result": True}
        assert await client.request({"pub": "exact"}) == {"result": True}  # a Node peer's shape
        assert seen == seen[:4]
    finally:
        await client.close()
