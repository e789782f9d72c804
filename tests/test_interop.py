"""Interop with the real Node.js ``net-ipc`` 2.2.2 package (docs/protocol.md).

Both directions are covered: a Node net-ipc Client talking to our ``IPCServer``,
and our ``IPCClient`` talking to a Node net-ipc Server (whose pub/sub handling is
the ``@isdk/ipc-server`` convention implemented in ``tests/node/peer.js``).
Every test runs in each wire mode: plain JSON, msgpack bodies, raw-deflate
compression, the HTTP upgrade handshake, and all three at once.

The Node side needs ``node`` and ``npm ci`` at the repository root; without them
these tests fail (never skip) and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from helpers import within
from ipc_server import (
    IPCClient,
    IPCConnection,
    IPCError,
    IPCServer,
    RequestTimeoutError,
)
from node_peer import NodePeer, NodePeers, require_node, short_socket_dir

DEADLINE = 10.0
T = TypeVar("T")

#: What a publish must deliver unchanged, including the falsy messages.
PUBLISHED_MESSAGES: list[Any] = [{"a": 1, "text": "héllo ✓"}, 0, "", None, False, [1, "2"]]
BLOB = bytes(range(256)) + b"\x00\xff\x00"
BIG_TEXT = "0123456789abcdé✓" * 12_500  # 200 000 characters, ~225 kB of UTF-8


class Recorder:
    """An event handler that records its calls; waits for them with a deadline."""

    def __init__(self, name: str = "handler") -> None:
        self.name = name
        self.calls: list[tuple[Any, ...]] = []
        self._changed = asyncio.Event()

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)
        self._changed.set()

    async def wait(
        self,
        count: int = 1,
        *,
        timeout: float = DEADLINE,
        where: Callable[..., bool] | None = None,
    ) -> list[tuple[Any, ...]]:
        """The first ``count`` calls (matching ``where``), waiting up to ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            matching = [call for call in self.calls if where is None or where(*call)]
            if len(matching) >= count:
                return matching[:count]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: {len(matching)} of {count} expected calls within "
                    f"{timeout} s; calls: {self.calls!r}"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def one(
        self, *, timeout: float = DEADLINE, where: Callable[..., bool] | None = None
    ) -> tuple[Any, ...]:
        """The first call (matching ``where``)."""
        return (await self.wait(1, timeout=timeout, where=where))[0]


@dataclass(frozen=True)
class Mode:
    """One way of speaking the wire protocol, as each side spells it."""

    name: str
    messagepack: bool = False
    compress: bool = False
    handshake: bool = False

    @property
    def node_options(self) -> dict[str, Any]:
        """net-ipc Client options."""
        return {
            "messagepack": self.messagepack,
            "compress": self.compress,
            "handshake": self.handshake,
        }

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """``IPCClient`` keyword arguments."""
        kwargs: dict[str, Any] = {}
        if self.messagepack:
            kwargs["codec"] = "msgpack"
        if self.compress:
            kwargs["compress"] = True
        if self.handshake:
            kwargs["handshake"] = True
            kwargs["upgrade_token"] = "net-ipc"
        return kwargs


MODES = [
    Mode("plain"),
    Mode("msgpack", messagepack=True),
    Mode("compress", compress=True),
    Mode("handshake", handshake=True),
    Mode("all", messagepack=True, compress=True, handshake=True),
]
MSGPACK_MODES = [mode for mode in MODES if mode.messagepack]


def _mode_id(mode: Mode) -> str:
    return mode.name


@pytest.fixture(params=MODES, ids=_mode_id)
def mode(request: pytest.FixtureRequest) -> Mode:
    """The wire mode under test."""
    value = request.param
    assert isinstance(value, Mode)
    return value


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A Unix socket path short enough for ``sun_path`` (not pytest's long tmp_path)."""
    directory = short_socket_dir()
    try:
        yield os.path.join(directory, "s")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def node() -> AsyncIterator[NodePeers]:
    """Node net-ipc peers, reaped after the test; fails when `npm ci` was not run."""
    require_node()
    async with NodePeers() as peers:
        yield peers


def free_tcp_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        assert isinstance(port, int)
        return port


def assert_no_node_errors(*peers: NodePeer) -> None:
    for peer in peers:
        assert peer.events_named("error") == [], f"{peer!r} reported errors"
        assert peer.noise == [], f"{peer!r} printed non-JSON lines"


# --------------------------------------------------------------------------- Node client -> our server


@dataclass
class PyServerSide:
    """Our IPCServer, with recorders on its events, and Node net-ipc clients for it."""

    server: IPCServer
    path: str
    mode: Mode
    peers: NodePeers
    connects: Recorder = field(default_factory=lambda: Recorder("server connect"))
    disconnects: Recorder = field(default_factory=lambda: Recorder("server disconnect"))
    messages: Recorder = field(default_factory=lambda: Recorder("server message"))
    errors: Recorder = field(default_factory=lambda: Recorder("server error"))
    nodes: list[NodePeer] = field(default_factory=list)

    async def node_client(
        self, payload: Any = None, **options: Any
    ) -> tuple[NodePeer, IPCConnection]:
        """A connected Node net-ipc client, and our server's connection for it."""
        peer = await self.peers.client(
            {"path": self.path, **self.mode.node_options, **options}, payload=payload
        )
        self.nodes.append(peer)
        (connection, _payload) = await self.connects.one(
            where=lambda connection, _payload: connection.id == peer.id
        )
        assert isinstance(connection, IPCConnection)
        return peer, connection


@pytest.fixture
async def py_side(mode: Mode, sock_path: str, node: NodePeers) -> AsyncIterator[PyServerSide]:
    """Our IPCServer listening on a short Unix socket path, ready for Node clients."""
    server = IPCServer(path=sock_path)
    side = PyServerSide(server=server, path=sock_path, mode=mode, peers=node)
    server.on("connect", side.connects)
    server.on("disconnect", side.disconnects)
    server.on("message", side.messages)
    server.on("error", side.errors)
    await within(server.start())
    try:
        yield side
        assert side.errors.calls == [], "our server reported errors"
        assert_no_node_errors(*side.nodes)
    finally:
        await within(server.close())


async def test_node_client_connect_payload_and_negotiation(py_side: PyServerSide) -> None:
    """A net-ipc client's connect payload reaches "connect" and the CONNECTION reply grants what it asked."""
    payload = {"token": "s3cret", "nested": {"list": [1, 2.5, None, True]}, "ü": "✓"}
    peer, connection = await py_side.node_client(payload)
    (_, received) = await py_side.connects.one(where=lambda c, _p: c is connection)
    assert received == payload
    assert peer.connected is not None
    extras = peer.connected["extras"]
    assert extras["id"] == connection.id
    assert extras["messagepack"] is py_side.mode.messagepack
    assert extras["compress"] is py_side.mode.compress
    assert connection in py_side.server.connections

    bare, bare_connection = await py_side.node_client()
    (_, bare_payload) = await py_side.connects.one(where=lambda c, _p: c is bare_connection)
    assert bare_payload is None  # net-ipc leaves "extras" out of the packet entirely
    assert bare.id != peer.id


async def test_node_client_ping(py_side: PyServerSide) -> None:
    """PING/PONG works both ways: net-ipc gets ms, our server.ping()/connection.ping() get seconds."""
    peer, connection = await py_side.node_client()
    latency_ms = await peer.ping({"some": "data"})
    assert 0 <= latency_ms < DEADLINE * 1000

    latency = await within(connection.ping(timeout=DEADLINE))
    assert isinstance(latency, float)
    assert 0 <= latency < DEADLINE

    results = await within(py_side.server.ping(timeout=DEADLINE))
    assert [conn for conn, _ in results] == [connection]
    assert isinstance(results[0][1], float)


async def test_node_client_send_reaches_server(py_side: PyServerSide) -> None:
    """A net-ipc client's send() arrives as our server's "message" event, in order, with its connection."""
    peer, connection = await py_side.node_client()
    sent: list[Any] = ["hello", {"n": 1, "ü": "✓"}, [1, None], 0, "", False, 3.25]
    for data in sent:
        await peer.send(data)
    calls = await py_side.messages.wait(len(sent))
    assert [message for message, _ in calls] == sent
    assert all(conn is connection for _, conn in calls)


async def test_server_send_reaches_node_client(py_side: PyServerSide) -> None:
    """connection.send() arrives as a MESSAGE at the net-ipc client."""
    peer, connection = await py_side.node_client()
    await within(connection.send({"from": "python", "ü": "✓"}))
    await within(connection.send("second"))
    events = await peer.wait_events("message", 2)
    assert [event["data"] for event in events] == [{"from": "python", "ü": "✓"}, "second"]


async def test_node_client_request_answered_by_server(py_side: PyServerSide) -> None:
    """A net-ipc client's request() resolves with what our async request handler responds."""

    async def on_request(
        request: Any, respond: Callable[[Any], Awaitable[None]], connection: IPCConnection
    ) -> None:
        await respond({"got": request, "from": connection.id})

    py_side.server.on("request", on_request)
    peer, connection = await py_side.node_client()
    for data in [{"cmd": "say"}, "text", 0, None, [1, {"x": "✓"}]]:
        reply = await peer.request(data)
        assert reply == {"got": data, "from": connection.id}


async def test_node_client_request_without_listener_gets_none(py_side: PyServerSide) -> None:
    """With no request listener, a net-ipc client's request() still resolves (empty RESPONSE), not times out."""
    peer, _connection = await py_side.node_client()
    assert await peer.request({"cmd": "nobody-listens"}, timeout=5.0) is None


async def test_node_client_request_handler_error_still_answers(py_side: PyServerSide) -> None:
    """A raising request handler reports "error" and the net-ipc requester still gets a response; the connection lives on."""

    def on_request(
        request: Any, respond: Callable[[Any], Awaitable[None]], connection: IPCConnection
    ) -> None:
        raise RuntimeError("boom")

    py_side.server.on("request", on_request)
    peer, _connection = await py_side.node_client()
    await peer.request({"cmd": "explode"}, timeout=5.0)  # answered: no NodePeerError
    await py_side.errors.one()
    py_side.errors.calls.clear()
    latency = await peer.ping()
    assert latency >= 0


async def test_server_request_to_node_client(py_side: PyServerSide) -> None:
    """connection.request() reaches the net-ipc client's "request" listener and resolves with its response."""
    peer, connection = await py_side.node_client()
    reply = await within(connection.request({"q": "ping?", "n": [1, 2]}, timeout=DEADLINE))
    assert reply == {"echo": {"q": "ping?", "n": [1, 2]}}
    event = await peer.wait_event("request")
    assert event["data"] == {"q": "ping?", "n": [1, 2]}


async def test_server_survey_over_node_clients(py_side: PyServerSide) -> None:
    """server.survey() asks every net-ipc client and pairs each reply with its connection."""
    _a, conn_a = await py_side.node_client({"name": "a"})
    _b, conn_b = await py_side.node_client({"name": "b"})
    results = await within(py_side.server.survey({"s": 1}, timeout=DEADLINE))
    assert len(results) == 2
    by_id = {conn.id: reply for conn, reply in results}
    assert by_id == {conn_a.id: {"echo": {"s": 1}}, conn_b.id: {"echo": {"s": 1}}}


async def test_server_broadcast_reaches_node_clients(py_side: PyServerSide) -> None:
    """server.broadcast() delivers one MESSAGE to every net-ipc client."""
    a, _ = await py_side.node_client({"name": "a"})
    b, _ = await py_side.node_client({"name": "b"})
    await within(py_side.server.broadcast({"all": True}))
    for peer in (a, b):
        event = await peer.wait_event("message")
        assert event["data"] == {"all": True}


async def test_node_client_pubsub_through_server(py_side: PyServerSide) -> None:
    """net-ipc clients use {sub}/{pub}/{unsub} requests against our server and get {pub, message} MESSAGEs, falsy ones included."""
    subscriber, _ = await py_side.node_client({"name": "subscriber"})
    publisher, _ = await py_side.node_client({"name": "publisher"})

    assert await subscriber.request({"sub": "news"}) == {"result": True}
    assert await subscriber.request({"sub": ["t1", "t2"]}) == {"result": True}

    for message in PUBLISHED_MESSAGES:
        assert await publisher.request({"pub": "news", "message": message}) == {"result": True}
        event = await subscriber.wait_event("message")
        assert event["data"] == {"pub": "news", "message": message}

    assert await publisher.request({"pub": "t2", "message": "on t2"}) == {"result": True}
    assert (await subscriber.wait_event("message"))["data"] == {"pub": "t2", "message": "on t2"}

    await within(py_side.server.publish("news", "from python"))
    assert (await subscriber.wait_event("message"))["data"] == {
        "pub": "news",
        "message": "from python",
    }

    assert await subscriber.request({"unsub": "news"}) == {"result": True}
    assert await subscriber.request({"unsub": "news"}) == {"result": False}
    assert await publisher.request({"pub": "news", "message": "nobody hears"}) == {"result": True}
    await within(py_side.server.broadcast("sentinel"))
    assert (await subscriber.wait_event("message"))["data"] == "sentinel"
    # the publisher never subscribed: it sees only the broadcast
    assert (await publisher.wait_event("message"))["data"] == "sentinel"
    assert len(publisher.events_named("message")) == 1


async def test_node_client_close_reason_reaches_server(py_side: PyServerSide) -> None:
    """A net-ipc client's close(reason) sends END: our server emits "disconnect" with that reason."""
    peer, connection = await py_side.node_client()
    assert await peer.close("bye from node") is True
    (_, reason) = await py_side.disconnects.one(where=lambda c, _r: c is connection)
    assert reason == "bye from node"
    await peer.wait_event("close")
    assert connection not in py_side.server.connections


async def test_server_connection_close_reason_reaches_node_client(py_side: PyServerSide) -> None:
    """connection.close(reason) sends END {m, a: false}: the net-ipc client closes with that reason and does not reconnect."""
    peer, connection = await py_side.node_client(reconnect=True)
    await within(connection.close("kicked by python"))
    event = await peer.wait_event("close")
    assert event["reason"] == "kicked by python"
    assert (await peer.command("status"))["status"] == 0  # IDLE, not RECONNECTING


async def test_server_close_reaches_node_client(py_side: PyServerSide) -> None:
    """server.close() ends every net-ipc client gracefully (END with a reason, no reconnect)."""
    peer, _connection = await py_side.node_client(reconnect=True)
    await within(py_side.server.close())
    event = await peer.wait_event("close")
    assert isinstance(event["reason"], str)
    assert event["reason"]
    assert (await peer.command("status"))["status"] == 0


async def test_large_payload_from_node_client(py_side: PyServerSide) -> None:
    """Bodies of hundreds of kB (multi-byte length tags, split reads, deflate) cross both ways intact."""

    async def on_request(
        request: Any, respond: Callable[[Any], Awaitable[None]], connection: IPCConnection
    ) -> None:
        await respond({"len": len(request["text"]), "text": request["text"][::-1]})

    py_side.server.on("request", on_request)
    peer, connection = await py_side.node_client()
    reply = await peer.request({"text": BIG_TEXT})
    assert reply == {"len": len(BIG_TEXT), "text": BIG_TEXT[::-1]}
    await within(connection.send(BIG_TEXT))
    assert (await peer.wait_event("message"))["data"] == BIG_TEXT
    # A big body is compressed apart from the stream; the stream goes on after it.
    await within(connection.send("after"))
    assert (await peer.wait_event("message"))["data"] == "after"


@pytest.mark.parametrize("mode", MSGPACK_MODES, ids=_mode_id)
async def test_msgpack_bytes_between_node_client_and_server(py_side: PyServerSide) -> None:
    """With msgpack, Buffers from net-ipc arrive as bytes and our bytes arrive as Buffers."""
    received: list[Any] = []

    async def on_request(
        request: Any, respond: Callable[[Any], Awaitable[None]], connection: IPCConnection
    ) -> None:
        received.append(request)
        await respond({"blob": request["blob"], "extra": b"\x01\x02"})

    py_side.server.on("request", on_request)
    peer, connection = await py_side.node_client()

    await peer.send(BLOB)
    (message, _) = await py_side.messages.one()
    assert type(message) is bytes
    assert message == BLOB

    reply = await peer.request({"blob": BLOB})
    assert received == [{"blob": BLOB}]
    assert type(received[0]["blob"]) is bytes
    assert reply == {"blob": BLOB, "extra": b"\x01\x02"}

    await within(connection.send({"nested": [b"", b"\xff"]}))
    assert (await peer.wait_event("message"))["data"] == {"nested": [b"", b"\xff"]}


async def test_node_client_over_tcp(mode: Mode, node: NodePeers) -> None:
    """A net-ipc client reaches our IPCServer over TCP (handshake Host header is the host there)."""
    port = free_tcp_port()
    server = IPCServer(host="127.0.0.1", port=port)
    connects = Recorder("server connect")
    server.on("connect", connects)
    await within(server.start())
    try:
        peer = await node.client(
            {"host": "127.0.0.1", "port": port, **mode.node_options}, payload={"via": "tcp"}
        )
        (_, payload) = await connects.one()
        assert payload == {"via": "tcp"}
        assert await peer.request({"x": 1}) is None
        await peer.close("done")
        await peer.wait_event("close")
    finally:
        await within(server.close())


# --------------------------------------------------------------------------- our client -> Node server


@dataclass
class NodeServerSide:
    """A Node net-ipc server peer, and our IPCClients for it."""

    node: NodePeer
    path: str
    mode: Mode
    clients: list[IPCClient] = field(default_factory=list)
    errors: Recorder = field(default_factory=lambda: Recorder("client error"))

    async def py_client(self, name: str, **kwargs: Any) -> tuple[IPCClient, str]:
        """One of our clients, connected with payload {"name": name}; and its id on the Node server."""
        options: dict[str, Any] = {"reconnect": False, **self.mode.client_kwargs, **kwargs}
        client = IPCClient(path=self.path, **options)
        client.on("error", self.errors)
        self.clients.append(client)
        await within(client.connect({"name": name}))
        event = await self.node.wait_event(
            "connect", where=lambda event: event["payload"] == {"name": name}
        )
        return client, str(event["id"])


@pytest.fixture
async def node_side(mode: Mode, sock_path: str, node: NodePeers) -> AsyncIterator[NodeServerSide]:
    """A Node net-ipc server listening on a short Unix socket path, ready for our clients."""
    server = await node.server({"path": sock_path})
    side = NodeServerSide(node=server, path=sock_path, mode=mode)
    try:
        yield side
        assert side.errors.calls == [], "our clients reported errors"
        assert_no_node_errors(server)
    finally:
        for client in side.clients:
            with contextlib.suppress(Exception):
                await within(client.close("test over"))


async def test_py_client_connect_payload_and_negotiation(node_side: NodeServerSide) -> None:
    """Our client's connect payload reaches net-ipc's "connect"; msgpack/compress are negotiated as asked."""
    payload = {"name": "c1", "nested": {"list": [1, 2.5, None, True]}, "ü": "✓"}
    client = IPCClient(path=node_side.path, reconnect=False, **node_side.mode.client_kwargs)
    node_side.clients.append(client)
    assert await within(client.connect(payload)) is client
    event = await node_side.node.wait_event("connect")
    assert event["payload"] == payload
    assert event["messagepack"] is node_side.mode.messagepack
    assert event["compress"] is node_side.mode.compress
    connections = await node_side.node.connections()
    assert [c["id"] for c in connections] == [event["id"]]


async def test_py_client_ping(node_side: NodeServerSide) -> None:
    """client.ping() returns seconds against net-ipc; net-ipc's ping of our client resolves too."""
    client, node_id = await node_side.py_client("c1")
    latency = await within(client.ping(timeout=DEADLINE))
    assert isinstance(latency, float)
    assert 0 <= latency < DEADLINE
    latency = await within(client.ping({"with": "data"}, timeout=DEADLINE))
    assert 0 <= latency < DEADLINE

    assert 0 <= await node_side.node.ping("x", to=node_id) < DEADLINE * 1000
    results = await node_side.node.ping_all()
    assert [(r["id"], r["status"]) for r in results] == [(node_id, "fulfilled")]


async def test_py_client_send_reaches_node_server(node_side: NodeServerSide) -> None:
    """client.send() arrives as net-ipc's "message" event, in order, from our connection."""
    client, node_id = await node_side.py_client("c1")
    sent: list[Any] = ["hello", {"n": 1, "ü": "✓"}, [1, None], 0, "", False, 3.25]
    for data in sent:
        await within(client.send(data))
    events = await node_side.node.wait_events("message", len(sent))
    assert [event["data"] for event in events] == sent
    assert {event["id"] for event in events} == {node_id}


async def test_node_server_send_reaches_py_client(node_side: NodeServerSide) -> None:
    """net-ipc's connection.send() arrives as our client's "message" event."""
    client, node_id = await node_side.py_client("c1")
    messages = Recorder("client message")
    client.on("message", messages)
    await node_side.node.send({"from": "node", "ü": "✓"}, to=node_id)
    await node_side.node.send(0, to=node_id)
    calls = await messages.wait(2)
    assert calls == [({"from": "node", "ü": "✓"},), (0,)]


async def test_py_client_request_answered_by_node_server(node_side: NodeServerSide) -> None:
    """client.request() resolves with the net-ipc server's response."""
    client, node_id = await node_side.py_client("c1")
    for data in [{"cmd": "echo", "v": [1, "✓", None]}, {"cmd": "echo"}]:
        assert await within(client.request(data, timeout=DEADLINE)) == data
    assert await within(client.request("plain", timeout=DEADLINE)) == {"echo": "plain"}
    event = await node_side.node.wait_event("request")
    assert event["id"] == node_id


async def test_py_client_request_unhandled_by_node_server_gets_none(
    node_side: NodeServerSide,
) -> None:
    """A net-ipc server without a request listener answers undefined: client.request() returns None."""
    client, _node_id = await node_side.py_client("c1")
    await node_side.node.set_requests("unhandled")
    assert await within(client.request({"cmd": "echo"}, timeout=DEADLINE)) is None


async def test_py_client_request_times_out(node_side: NodeServerSide) -> None:
    """A request the net-ipc server never answers raises RequestTimeoutError after the timeout."""
    client, _node_id = await node_side.py_client("c1")
    await node_side.node.set_requests("silent")
    with pytest.raises(RequestTimeoutError):
        await within(client.request({"cmd": "echo"}, timeout=0.3))
    await node_side.node.set_requests("echo")
    assert await within(client.request({"cmd": "echo"}, timeout=DEADLINE)) == {"cmd": "echo"}


async def test_node_server_request_to_py_client(node_side: NodeServerSide) -> None:
    """net-ipc's connection.request() reaches our client's "request" handler and resolves with its response."""
    client, node_id = await node_side.py_client("c1")

    async def on_request(request: Any, respond: Callable[[Any], Awaitable[None]]) -> None:
        await respond({"py": request})

    client.on("request", on_request)
    for data in [{"q": 1}, "text", 0, None, [1, "✓"]]:
        assert await node_side.node.request(data, to=node_id) == {"py": data}


async def test_node_server_request_to_py_client_without_listener(node_side: NodeServerSide) -> None:
    """With no "request" listener our client still answers (empty RESPONSE): net-ipc resolves, no timeout."""
    _client, node_id = await node_side.py_client("c1")
    assert await node_side.node.request({"q": 1}, to=node_id, timeout=5.0) is None


async def test_node_server_request_to_py_client_handler_error(node_side: NodeServerSide) -> None:
    """A raising client request handler reports "error" and net-ipc still gets a response; the connection lives on."""
    client, node_id = await node_side.py_client("c1")

    def on_request(request: Any, respond: Callable[[Any], Awaitable[None]]) -> None:
        raise RuntimeError("boom")

    client.on("request", on_request)
    await node_side.node.request({"q": 1}, to=node_id, timeout=5.0)  # answered: no NodePeerError
    await node_side.errors.one()
    node_side.errors.calls.clear()
    assert await within(client.request({"cmd": "echo"}, timeout=DEADLINE)) == {"cmd": "echo"}


async def test_node_server_survey_over_py_clients(node_side: NodeServerSide) -> None:
    """net-ipc's server.survey() gets a fulfilled reply from each of our clients."""
    ids: dict[str, str] = {}
    for name in ("c1", "c2"):
        client, node_id = await node_side.py_client(name)
        ids[node_id] = name

        async def on_request(
            request: Any, respond: Callable[[Any], Awaitable[None]], name: str = name
        ) -> None:
            await respond({"from": name, "got": request})

        client.on("request", on_request)
    results = await node_side.node.survey({"s": 1})
    assert len(results) == 2
    for result in results:
        assert result["status"] == "fulfilled", result
        assert result["value"] == {"from": ids[result["id"]], "got": {"s": 1}}


async def test_node_server_broadcast_reaches_py_clients(node_side: NodeServerSide) -> None:
    """net-ipc's server.broadcast() reaches every one of our clients as "message"."""
    recorders = []
    for name in ("c1", "c2"):
        client, _ = await node_side.py_client(name)
        recorder = Recorder(f"{name} message")
        client.on("message", recorder)
        recorders.append(recorder)
    await node_side.node.broadcast({"all": True})
    for recorder in recorders:
        assert await recorder.one() == ({"all": True},)


async def test_py_client_pubsub_against_node_server(node_side: NodeServerSide) -> None:
    """subscribe/publish/unsubscribe speak {sub}/{pub, message}/{unsub}; published messages, falsy too, are emitted under the topic."""
    subscriber, sub_id = await node_side.py_client("subscriber")
    publisher, _ = await node_side.py_client("publisher")
    news = Recorder("news")
    subscriber.on("news", news)

    assert await within(subscriber.subscribe("news")) is True
    assert await within(subscriber.subscribe(["t1", "t2"])) is True
    subscriptions = await node_side.node.subscriptions()
    assert set(subscriptions[sub_id]) == {"news", "t1", "t2"}

    for index, message in enumerate(PUBLISHED_MESSAGES):
        assert await within(publisher.publish("news", message)) is True
        calls = await news.wait(index + 1)
        assert calls[index] == (message,)
    # The Node peer reports its events over a pipe, which may lag the socket: wait for them.
    published = await node_side.node.wait_events(
        "request",
        len(PUBLISHED_MESSAGES),
        where=lambda event: isinstance(event["data"], dict) and "pub" in event["data"],
    )
    wire = [event["data"] for event in published]
    assert wire == [{"pub": "news", "message": m} for m in PUBLISHED_MESSAGES]

    t2 = Recorder("t2")
    subscriber.on("t2", t2)
    assert await node_side.node.publish("t2", 0) == 1
    assert await t2.one() == (0,)

    assert await within(subscriber.unsubscribe("news")) is True
    assert await within(subscriber.unsubscribe("news")) is False
    assert "news" not in (await node_side.node.subscriptions())[sub_id]


async def test_py_client_subscription_iterator_against_node_server(
    node_side: NodeServerSide,
) -> None:
    """client.subscription() subscribes on the net-ipc server, yields published messages, and unsubscribes on exit."""
    client, node_id = await node_side.py_client("c1")
    async with client.subscription("events") as sub:
        assert "events" in (await node_side.node.subscriptions())[node_id]
        assert await node_side.node.publish("events", "") == 1
        assert await within(sub.__anext__()) == ""
        assert await node_side.node.publish("events", {"k": "v"}) == 1
        assert await within(sub.__anext__()) == {"k": "v"}
    unsub = await node_side.node.wait_event(
        "request", where=lambda e: isinstance(e["data"], dict) and "unsub" in e["data"]
    )
    assert unsub["id"] == node_id
    assert "events" not in (await node_side.node.subscriptions()).get(node_id, [])


async def test_py_client_close_reason_reaches_node_server(node_side: NodeServerSide) -> None:
    """client.close(reason) sends END: net-ipc's "disconnect" carries that reason."""
    client, node_id = await node_side.py_client("c1")
    closes = Recorder("client close")
    client.on("close", closes)
    await within(client.close("bye from python"))
    event = await node_side.node.wait_event("disconnect")
    assert event == {"event": "disconnect", "id": node_id, "reason": "bye from python"}
    await closes.one()


async def test_node_server_connection_close_reason_reaches_py_client(
    node_side: NodeServerSide,
) -> None:
    """net-ipc's connection.close(reason) sends END {m, a: false}: our client emits close(reason) and stays closed."""
    client, node_id = await node_side.py_client("c1", reconnect=True)
    closes = Recorder("client close")
    client.on("close", closes)
    assert await node_side.node.close("kicked by node", to=node_id) is True
    assert await closes.one() == ("kicked by node",)
    await node_side.node.wait_event("disconnect")
    assert await node_side.node.connections() == []


async def test_node_server_close_reaches_py_client(node_side: NodeServerSide) -> None:
    """net-ipc's server.close() sends END "Server was shut down": our client emits close with it and does not reconnect."""
    client, _node_id = await node_side.py_client("c1", reconnect=True)
    closes = Recorder("client close")
    client.on("close", closes)
    await node_side.node.close()
    assert await closes.one() == ("Server was shut down",)
    await node_side.node.wait_event("close")


async def test_large_payload_to_node_server(node_side: NodeServerSide) -> None:
    """Bodies of hundreds of kB (multi-byte length tags, split reads, deflate) cross both ways intact."""
    client, node_id = await node_side.py_client("c1")
    data = {"cmd": "echo", "text": BIG_TEXT}
    assert await within(client.request(data, timeout=DEADLINE)) == data
    small = {"cmd": "echo", "text": "after"}  # the stream goes on after a big body
    assert await within(client.request(small, timeout=DEADLINE)) == small
    messages = Recorder("client message")
    client.on("message", messages)
    await node_side.node.send(BIG_TEXT, to=node_id)
    assert await messages.one() == (BIG_TEXT,)


@pytest.mark.parametrize("mode", MSGPACK_MODES, ids=_mode_id)
async def test_msgpack_bytes_between_py_client_and_node_server(node_side: NodeServerSide) -> None:
    """With msgpack, our bytes reach net-ipc as Buffers and its Buffers reach us as bytes."""
    client, node_id = await node_side.py_client("c1")
    messages = Recorder("client message")
    client.on("message", messages)

    await within(client.send(BLOB))
    assert (await node_side.node.wait_event("message"))["data"] == BLOB

    reply = await within(client.request({"cmd": "echo", "blob": BLOB}, timeout=DEADLINE))
    assert reply == {"cmd": "echo", "blob": BLOB}
    assert type(reply["blob"]) is bytes

    await node_side.node.send({"nested": [b"", b"\xff"]}, to=node_id)
    (message,) = await messages.one()
    assert message == {"nested": [b"", b"\xff"]}
    assert all(type(item) is bytes for item in message["nested"])


async def test_py_client_over_tcp(mode: Mode, node: NodePeers) -> None:
    """Our client reaches a net-ipc server over TCP in every mode."""
    port = free_tcp_port()
    server = await node.server({"port": port})
    client = IPCClient(host="127.0.0.1", port=port, reconnect=False, **mode.client_kwargs)
    try:
        await within(client.connect({"via": "tcp"}))
        event = await server.wait_event("connect")
        assert event["payload"] == {"via": "tcp"}
        assert await within(client.request({"cmd": "echo", "n": 1}, timeout=DEADLINE)) == {
            "cmd": "echo",
            "n": 1,
        }
        await within(client.close("done"))
        assert (await server.wait_event("disconnect"))["reason"] == "done"
    finally:
        with contextlib.suppress(Exception):
            await within(client.close())


async def test_py_client_wrong_upgrade_token_is_refused(sock_path: str, node: NodePeers) -> None:
    """net-ipc refuses an upgrade token other than "net-ipc" (HTTP 418): our connect() fails instead of hanging."""
    await node.server({"path": sock_path})
    client = IPCClient(path=sock_path, handshake=True, upgrade_token="isdk-ipc", reconnect=False)
    with pytest.raises((IPCError, OSError)):
        await within(client.connect())
    with contextlib.suppress(Exception):
        await within(client.close())
