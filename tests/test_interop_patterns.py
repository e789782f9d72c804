"""The pattern extensions against the real Node.js ``net-ipc`` package (docs/protocol.md, 10 to 13).

A Node peer announces no extension, so it must see exactly the protocol it
knows: its subscriptions on our server are matched as patterns (the MESSAGE
names the concrete topic), an invalid pattern or a publish to a pattern is
answered false, and a group-shaped request is an ordinary request. Our
client refuses patterns, groups and services before sending them to a Node
server, reads a stream's plain answer as its items, and never sends it a
deadline, a cancel notice or a credit. A relay between the two ends
(``Tap``) records the frames, so the tests assert on the bytes the Node
side received, in every wire mode.

Fixtures and helpers are those of ``tests/test_interop.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import within
from ipc_server import IPCClient, IPCConnection, IPCError, RequestTimeoutError
from ipc_server.codecs import PacketCodec
from ipc_server.protocol import FrameDecoder
from node_peer import NodePeers
from test_interop import (  # noqa: F401  (mode, node, sock_path, py_side, node_side: fixtures)
    DEADLINE,
    Mode,
    NodeServerSide,
    PyServerSide,
    Recorder,
    mode,
    node,
    node_side,
    py_side,
    sock_path,
)

PLAIN_KEYS = frozenset({"t", "d", "n"})


# --------------------------------------------------------------------------- a relay that records


class Tap:
    """A Unix socket relay in front of ``target`` that keeps every byte of each connection,
    both ways, and decodes them into packet dicts afterwards (any wire mode)."""

    def __init__(self, listen: str, target: str) -> None:
        self.path = listen
        self.target = target
        self.sessions: list[tuple[bytearray, bytearray]] = []  # (to the target, from it)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Tap:
        self._server = await asyncio.start_unix_server(self._relay, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up, down = bytearray(), bytearray()
        self.sessions.append((up, down))
        target_reader, target_writer = await asyncio.open_unix_connection(self.target)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, kept: bytearray
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await source.read(65536):
                    kept += chunk
                    sink.write(chunk)
                    await sink.drain()
                if sink.can_write_eof():
                    sink.write_eof()

        pumps = [
            asyncio.ensure_future(pump(reader, target_writer, up)),
            asyncio.ensure_future(pump(target_reader, writer, down)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps)
        except asyncio.CancelledError:
            pass  # the relay is closing (__aexit__): this connection ends here
        finally:
            writer.close()
            target_writer.close()

    def packets(self, index: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The packets of session ``index``: (those sent to the target, those it sent), each
        list starting with the CONNECTION packet."""
        up, down = (bytes(b) for b in self.sessions[index])
        if up.startswith(b"GET "):  # the HTTP upgrade: its request and its answer
            up = up[up.index(b"\r\n\r\n") + 4 :]
            down = down[down.index(b"\r\n\r\n") + 4 :]
        else:
            assert up.startswith(b"IPC")
            up = up[3:]
        up_bodies = [bytes(b) for b in FrameDecoder().feed(up)]
        down_bodies = [bytes(b) for b in FrameDecoder().feed(down)]
        hello, answer = json.loads(up_bodies[0]), json.loads(down_bodies[0])
        agreed = answer["d"]
        decoded = []
        for bodies, first in ((up_bodies, hello), (down_bodies, answer)):
            codec = PacketCodec()
            codec.configure(
                messagepack=bool(agreed["messagepack"]), compress=bool(agreed["compress"])
            )
            decoded.append([first, *(codec.decode(body)[3] for body in bodies[1:])])
        return decoded[0], decoded[1]


@pytest.fixture
async def tap_path(sock_path: str) -> str:  # noqa: F811
    """Where the relay listens: beside the real socket."""
    return os.path.join(os.path.dirname(sock_path), "tap")


def extended(packets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The packets after the CONNECTION exchange that hold more than ``t``, ``d``, ``n``."""
    return [packet for packet in packets[1:] if not PLAIN_KEYS.issuperset(packet)]


# --------------------------------------------------------------------------- Node client -> our server


async def test_node_client_pattern_subscription_gets_the_concrete_topic(
    py_side: PyServerSide,  # noqa: F811
) -> None:
    """A net-ipc client subscribed to ``orders.*`` and ``sensors.>`` gets what matches, each
    MESSAGE naming the topic it was published to, once however many of its patterns match."""
    subscriber, _ = await py_side.node_client({"name": "subscriber"})
    publisher, _ = await py_side.node_client({"name": "publisher"})
    assert await subscriber.request({"sub": "orders.*"}) == {"result": True}
    assert await subscriber.request({"sub": ["sensors.>", "sensors.hall.*"]}) == {"result": True}
    assert set(py_side.server.topics) == {"orders.*", "sensors.>", "sensors.hall.*"}

    for topic in ("orders.eu.new", "orders", "orders.new", "sensors", "sensors.hall.t"):
        assert await publisher.request({"pub": topic, "message": topic.upper()}) == {"result": True}
    assert await within(py_side.server.publish("sensors.kitchen", 21.5)) == 1
    await within(py_side.server.broadcast("sentinel"))
    events = await subscriber.wait_events("message", 4)
    assert [event["data"] for event in events] == [
        {"pub": "orders.new", "message": "ORDERS.NEW"},
        {"pub": "sensors.hall.t", "message": "SENSORS.HALL.T"},  # two patterns: once
        {"pub": "sensors.kitchen", "message": 21.5},
        "sentinel",
    ]
    assert await subscriber.request({"unsub": "orders.*"}) == {"result": True}
    assert set(py_side.server.topics) == {"sensors.>", "sensors.hall.*"}


async def test_node_client_invalid_pattern_is_answered_false(py_side: PyServerSide) -> None:  # noqa: F811
    """``a.>.b``, ``a..b`` and ``*x`` are answered ``{"result": false}`` (the whole list with
    them), nothing is subscribed, and our server reports each on ``error``."""
    peer, connection = await py_side.node_client()
    for topics in ("a.>.b", "a..b", "*x", ["ok", "a.b*"]):
        assert await peer.request({"sub": topics}) == {"result": False}
    errors = await py_side.errors.wait(4)
    assert all(isinstance(error, IPCError) for error, _ in errors)
    assert all("subscription refused" in str(error) for error, _ in errors)
    assert all(conn is connection for _, conn in errors)
    py_side.errors.calls.clear()
    assert py_side.server.topics == {}
    assert await peer.request({"sub": "a.*.b"}) == {"result": True}  # the connection lives on


async def test_node_client_publish_to_a_pattern_is_answered_false(py_side: PyServerSide) -> None:  # noqa: F811
    """A publish to ``orders.*``, ``orders.>`` or ``>`` is answered false and reaches nobody."""
    subscriber, _ = await py_side.node_client({"name": "subscriber"})
    publisher, _ = await py_side.node_client({"name": "publisher"})
    assert await subscriber.request({"sub": ">"}) == {"result": True}
    for topic in ("orders.*", "orders.>", ">", "a..b"):
        assert await publisher.request({"pub": topic, "message": 1}) == {"result": False}
    assert await publisher.request({"pub": "orders.new", "message": 2}) == {"result": True}
    event = await subscriber.wait_event("message")
    assert event["data"] == {"pub": "orders.new", "message": 2}  # the first: nothing before it


async def test_node_client_group_shaped_subscribe_is_an_ordinary_request(
    py_side: PyServerSide,  # noqa: F811
) -> None:
    """From a peer that did not announce ``groups``, ``{"sub": t, "group": g}`` is no
    subscription: it reaches the request handlers, and no group is joined."""
    seen: list[Any] = []

    def on_request(request: Any, respond: Any, connection: IPCConnection) -> None:
        seen.append(request)
        respond({"handled": request})

    peer, _ = await py_side.node_client()
    assert await peer.request({"sub": "jobs", "group": "g"}) is None  # no handler yet
    py_side.server.on("request", on_request)
    request = {"unsub": "jobs", "group": "g"}
    assert await peer.request(request) == {"handled": request}
    assert seen == [request]
    assert py_side.server.topics == {}
    assert await within(py_side.server.publish("jobs", 1)) == 0


async def test_node_request_answered_by_a_stream_gets_one_list(py_side: PyServerSide) -> None:  # noqa: F811
    """``respond.stream()`` answers a Node request (which asked for no stream) with one list;
    a producer that raises gives the error answer a Node peer can read; no deadline."""
    deadlines: list[float | None] = []

    async def items(count: int) -> AsyncIterator[int]:
        for n in range(count):
            yield n
        if count == 0:
            raise LookupError("nothing here")

    async def on_request(request: Any, respond: Any, connection: IPCConnection) -> None:
        deadlines.append(respond.deadline)
        await respond.stream(items(request))

    py_side.server.on("request", on_request)
    peer, _ = await py_side.node_client()
    assert await peer.request(3, timeout=5.0) == [0, 1, 2]
    assert await peer.request(0) == {"error": {"type": "LookupError", "message": "nothing here"}}
    assert deadlines == [None, None]  # net-ipc's timeout stays on its side
    await py_side.errors.one()  # the producer's exception, reported
    py_side.errors.calls.clear()


async def test_our_server_sends_a_node_client_only_t_d_n(
    py_side: PyServerSide,  # noqa: F811
    tap_path: str,
) -> None:
    """Through a relay: our server's requests with a timeout (one given up on), a stream
    answered as a list and the deliveries of a pattern reach the net-ipc client as packets
    of ``t``, ``d`` and ``n`` alone; the client sees no MESSAGE but the deliveries."""

    async def on_request(request: Any, respond: Any, connection: IPCConnection) -> None:
        await respond.stream(iter(range(request)))

    py_side.server.on("request", on_request)
    async with Tap(tap_path, py_side.path) as tap:
        peer = await py_side.peers.client({"path": tap_path, **py_side.mode.node_options})
        py_side.nodes.append(peer)
        (connection, _) = await py_side.connects.one()
        assert await peer.request(4) == [0, 1, 2, 3]
        assert await peer.request({"sub": "orders.*"}) == {"result": True}
        assert await within(py_side.server.publish("orders.new", 1)) == 1
        assert await within(connection.request("to node", timeout=DEADLINE)) == {"echo": "to node"}
        await peer.set_requests("silent")
        with pytest.raises(RequestTimeoutError):
            await within(connection.request("never answered", timeout=0.2))
        waiting = asyncio.ensure_future(connection.request("cancelled", timeout=DEADLINE))
        await peer.wait_event("request", where=lambda event: event["data"] == "cancelled")
        waiting.cancel()
        await within(connection.send("sentinel"))
        messages = await peer.wait_events("message", 2)
        assert [event["data"] for event in messages] == [
            {"pub": "orders.new", "message": 1},
            "sentinel",  # no cancel notice before it
        ]
        sent_by_node, sent_to_node = tap.packets()
    assert "features" not in sent_by_node[0]["d"]  # net-ipc announces nothing
    assert "features" not in sent_to_node[0]["d"]  # so the answer names none
    assert extended(sent_to_node) == []
    assert extended(sent_by_node) == []
    requests = [packet["d"] for packet in sent_to_node if packet["t"] == 2]
    assert requests == ["to node", "never answered", "cancelled"]
    assert [packet["t"] for packet in sent_to_node].count(1) == 2  # the two MESSAGEs above


# --------------------------------------------------------------------------- our client -> Node server


async def test_py_client_refuses_what_a_node_server_did_not_announce(
    node_side: NodeServerSide,  # noqa: F811
) -> None:
    """Against net-ipc, a pattern subscription, a group, serve and call raise IPCError before
    anything is sent; exact topics work as before."""
    client, _ = await node_side.py_client("c1")

    async def handler(request: Any, respond: Any) -> None:
        await respond(request)  # pragma: no cover - never called

    with pytest.raises(IPCError, match="wildcard"):
        await within(client.subscribe("orders.*"))
    with pytest.raises(IPCError, match="wildcard"):
        await within(client.subscribe(["news", "sensors.>"]))
    with pytest.raises(IPCError, match="wildcard"):
        async with client.subscription("orders.>"):
            pass  # pragma: no cover - never entered
    with pytest.raises(IPCError, match="worker groups"):
        await within(client.subscribe("jobs", group="workers"))
    with pytest.raises(IPCError, match="services"):
        await within(client.serve("resize", handler))
    with pytest.raises(IPCError, match="services"):
        await within(client.call("resize", {"w": 640}))
    with pytest.raises(IPCError, match="services"):
        await within(client.unserve("resize"))
    assert node_side.node.events_named("request") == []  # nothing reached the Node server
    assert await within(client.subscribe("news")) is True
    event = await node_side.node.wait_event("request")
    assert event["data"] == {"sub": "news"}


async def test_py_client_stream_from_a_node_server_is_its_plain_answer(
    node_side: NodeServerSide,  # noqa: F811
) -> None:
    """``client.stream()`` sends net-ipc a plain request and yields the items of its one
    answer: a dict is one item, an undefined answer none."""
    client, _ = await node_side.py_client("c1")
    items = [item async for item in client.stream({"cmd": "echo", "rows": [1, 2]}, timeout=5)]
    assert items == [{"cmd": "echo", "rows": [1, 2]}]
    event = await node_side.node.wait_event("request")
    assert event["data"] == {"cmd": "echo", "rows": [1, 2]}
    await node_side.node.set_requests("unhandled")
    assert [item async for item in client.stream("anything", window=4)] == []


async def test_py_client_sends_a_node_server_only_t_d_n(
    mode: Mode,  # noqa: F811
    sock_path: str,  # noqa: F811
    tap_path: str,
    node: NodePeers,  # noqa: F811
) -> None:
    """Through a relay: requests with a timeout (one that times out, one cancelled), pub/sub
    with a timeout, a stream and a ping reach net-ipc as packets of ``t``, ``d`` and ``n``
    alone: no ``dl``, no ``x``, and no MESSAGE at all (no cancel notice, no credit)."""
    server = await node.server({"path": sock_path})
    async with Tap(tap_path, sock_path) as tap:
        client = IPCClient(path=tap_path, reconnect=False, **mode.client_kwargs)
        try:
            await within(client.connect({"name": "tapped"}))
            assert await within(client.request({"cmd": "echo"}, timeout=5)) == {"cmd": "echo"}
            assert await within(client.subscribe("news", timeout=5)) is True
            assert await within(client.publish("news", 1, timeout=5)) is True
            items = [item async for item in client.stream({"cmd": "echo", "n": 2}, window=2)]
            assert items == [{"cmd": "echo", "n": 2}]
            await within(client.ping(timeout=5))
            await server.set_requests("silent")
            with pytest.raises(RequestTimeoutError):
                await within(client.request("times out", timeout=0.2))
            waiting = asyncio.ensure_future(client.request("cancelled", timeout=DEADLINE))
            await server.wait_event("request", where=lambda event: event["data"] == "cancelled")
            waiting.cancel()
            await server.set_requests("echo")
            assert await within(client.request({"cmd": "echo"})) == {"cmd": "echo"}
            sent_to_node, _ = tap.packets()
        finally:
            await within(client.close("done"))
    assert server.events_named("message") == []  # no cancel notice, no credit
    assert server.events_named("error") == []
    hello = sent_to_node[0]
    assert hello["t"] == 0
    assert "cancel" in hello["d"]["features"]  # announced, not agreed
    assert extended(sent_to_node) == []
    kinds = [packet["t"] for packet in sent_to_node[1:]]
    assert 1 not in kinds  # no MESSAGE was sent
    assert kinds.count(2) == 7  # the seven requests, each once
