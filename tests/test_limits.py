"""Every limit crossed on purpose (SPEC section 3, DESIGN "Reliability principles").

Each test crosses one limit over a real Unix socket and checks three things:
the server reports it on its ``error`` event as ``(error, connection)`` naming
the offending connection, that connection (only) is dropped or its packet
refused, and a bystander client connected all along keeps getting answers.
The fuzzers in ``fuzz/`` run here in short versions (a few seconds each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest

from helpers import rss_mib_of, wait_until, within
from ipc_server import (
    ConnectionClosedError,
    IPCClient,
    IPCClientStatus,
    IPCConnection,
    IPCError,
    IPCServer,
    ProtocolError,
)
from ipc_server.codecs import PacketCodec, json_dumps
from ipc_server.errors import HandshakeError, MessageTooLargeError
from ipc_server.protocol import FrameDecoder, encode_tag, frame

DEADLINE = 10.0
ROOT = Path(__file__).resolve().parent.parent
HERE = os.path.abspath(__file__)

CONNECTION, MESSAGE, REQUEST, RESPONSE, PING, PONG, END = range(7)


class Errors:
    """Records the server's ``error`` events as ``(error, connection)`` pairs."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, IPCConnection | None]] = []

    def __call__(self, error: BaseException, connection: IPCConnection | None) -> None:
        self.calls.append((error, connection))

    async def first(self, kind: type[BaseException]) -> tuple[BaseException, IPCConnection]:
        """The first recorded error of ``kind`` (waits for it, with a deadline)."""
        await wait_until(lambda: self.of(kind), f"an error event with {kind.__name__}")
        error, conn = self.of(kind)[0]
        assert isinstance(conn, IPCConnection), "the error event must name the connection"
        return error, conn

    def of(self, kind: type[BaseException]) -> list[tuple[BaseException, IPCConnection | None]]:
        """Recorded errors of ``kind``."""
        return [(e, c) for e, c in self.calls if isinstance(e, kind)]


async def echo(request: Any, respond: Any, connection: IPCConnection) -> None:
    """Request handler: answer ``{"echo": request}``."""
    await respond({"echo": request})


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[IPCServer, Errors, IPCClient]]:
    """A started server (echoing requests), its error recorder, and a connected bystander."""
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    server = IPCServer(path=os.path.join(folder, "s"), **options)
    errors = Errors()
    server.on("error", errors)
    server.on("request", echo)
    await within(server.start())
    bystander = IPCClient(path=server.address.path, reconnect=False)
    try:
        await within(bystander.connect("bystander"))
        yield server, errors, bystander
    finally:
        # Raw peers left open by a failing test must not hold up the server's close.
        while RawPeer.opened:
            await RawPeer.opened.pop().close()
        await within(bystander.close())
        await within(server.close())
        shutil.rmtree(folder, ignore_errors=True)


async def assert_bystander_fine(server: IPCServer, errors: Errors, bystander: IPCClient) -> None:
    """The bystander still gets answers, and no error event ever named its connection."""
    assert await within(bystander.request({"still": "here"})) == {"echo": {"still": "here"}}
    mine = [c for c in server.connections if c.payload == "bystander"]
    assert len(mine) == 1
    assert all(conn is not mine[0] for _, conn in errors.calls)


class RawPeer:
    """A hand-driven client socket: exact bytes out, decoded packets in."""

    opened: ClassVar[list[RawPeer]] = []
    """Peers not closed yet (``serving`` closes them)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 30)
        self.codec = PacketCodec(1 << 30)
        self.packets: list[tuple[int, Any, Any]] = []
        self.handshaken = False

    @classmethod
    async def open(cls, path: str) -> RawPeer:
        """Connect to the server at ``path`` without sending anything."""
        reader, writer = await within(asyncio.open_unix_connection(path))
        peer = cls(reader, writer)
        cls.opened.append(peer)
        return peer

    def write(self, data: bytes) -> None:
        """Send exactly these bytes."""
        self.writer.write(data)

    def send(self, t: int, d: Any, n: str | None = None) -> None:
        """Send one packet in the agreed codec."""
        self.write(self.codec.encode(t, d, n))

    async def hello(self, *, pid: str = "raw", messagepack: bool = False) -> dict[str, Any]:
        """Preamble and CONNECTION exchange; returns the server's answer."""
        d = {"id": pid, "extras": "raw", "compress": False, "messagepack": messagepack}
        self.write(b"IPC" + frame(json_dumps({"t": CONNECTION, "d": d})))
        t, answer, _ = await self.next_packet()
        assert t == CONNECTION
        assert isinstance(answer, dict)
        self.codec.configure(messagepack=bool(answer["messagepack"]), compress=False)
        self.handshaken = True
        return answer

    async def next_packet(self, timeout: float = DEADLINE) -> tuple[int, Any, Any]:
        """The next packet from the server; fails at EOF."""
        packet = await self._read(timeout)
        assert packet is not None, "the server closed the connection"
        return packet

    async def _read(self, timeout: float) -> tuple[int, Any, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.packets:
                return self.packets.pop(0)
            try:
                chunk = await within(self.reader.read(65536), max(0.0, deadline - loop.time()))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            for body in self.decoder.feed(chunk):
                codec = self.codec if self.handshaken else PacketCodec()
                t, d, n, _ = codec.decode(body)
                self.packets.append((t, d, n))

    async def until_closed(self, timeout: float = DEADLINE) -> list[tuple[int, Any, Any]]:
        """Every packet up to the server hanging up (fails if it does not within ``timeout``)."""
        seen: list[tuple[int, Any, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (packet := await self._read(max(0.0, deadline - loop.time()))) is not None:
            seen.append(packet)
        return seen

    async def close(self) -> None:
        """Close the socket."""
        if self in RawPeer.opened:
            RawPeer.opened.remove(self)
        self.writer.close()
        with contextlib.suppress(OSError):
            await within(self.writer.wait_closed())


def end_reason(packets: list[tuple[int, Any, Any]]) -> str:
    """The reason of the END packet among ``packets`` (fails if there is none)."""
    ends = [d for t, d, _ in packets if t == END]
    assert ends, f"expected an END packet with the reason, got {packets}"
    return str(ends[-1]["m"])


def nested_json(depth: int) -> bytes:
    """``[[[...]]]`` nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth


# ---------------------------------------------------------------------- max_message_size


async def test_tag_over_max_message_size_drops_only_that_connection() -> None:
    """A length tag over max_message_size: MessageTooLargeError on error, that peer gets END and is closed."""
    async with serving(max_message_size=1024) as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        await raw.hello(pid="big-tag")
        raw.write(encode_tag(1025))  # the body never follows: the tag alone is refused
        packets = await raw.until_closed()
        assert "max_message_size=1024" in end_reason(packets)
        error, conn = await errors.first(MessageTooLargeError)
        assert isinstance(error, MessageTooLargeError)
        assert (error.size, error.limit, conn.id) == (1025, 1024, "big-tag")
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


async def test_huge_tag_is_refused_before_allocating() -> None:
    """A tag announcing 2**49 bytes is refused from its first digits, never allocated."""
    async with serving(max_message_size=1024) as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        await raw.hello(pid="huge-tag")
        raw.write(encode_tag(1 << 49)[:2])  # only the first two digits of the tag
        await raw.until_closed()
        error, conn = await errors.first(MessageTooLargeError)
        assert conn.id == "huge-tag"
        assert isinstance(error, MessageTooLargeError)
        assert error.size > 1024
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


async def test_client_request_over_limit_fails_fast_with_the_reason() -> None:
    """An IPCClient whose request is over the server's limit gets ConnectionClosedError naming the limit."""
    async with serving(max_message_size=1024) as (server, errors, bystander):
        client = IPCClient(path=server.address.path, reconnect=False)
        await within(client.connect("big"))
        with pytest.raises(ConnectionClosedError, match="max_message_size=1024"):
            await within(client.request("x" * 2000, timeout=30), timeout=5)
        _, conn = await errors.first(MessageTooLargeError)
        assert conn.payload == "big"
        await assert_bystander_fine(server, errors, bystander)
        await within(client.close())


async def test_compressed_body_inflating_past_limit() -> None:
    """A small compressed body that inflates past max_message_size is refused (never inflated whole)."""
    async with serving(max_message_size=64 * 1024) as (server, errors, bystander):
        client = IPCClient(path=server.address.path, compress=True, reconnect=False)
        await within(client.connect("bomb"))
        assert client.info["compress"] is True
        with pytest.raises(ConnectionClosedError, match="inflated packet"):
            await within(client.request("0" * 5_000_000, timeout=30), timeout=5)
        error, conn = await errors.first(MessageTooLargeError)
        assert conn.payload == "bomb"
        assert isinstance(error, MessageTooLargeError)
        assert error.limit == 64 * 1024
        # Only up to the limit (+1 byte) was inflated, not the 5 MB.
        assert error.size <= 64 * 1024 + 1
        await assert_bystander_fine(server, errors, bystander)
        await within(client.close())


async def test_raw_zip_bomb_tag_under_limit() -> None:
    """A raw deflate bomb (tag far under the limit, 50 MB inflated) is a MessageTooLargeError."""
    async with serving(max_message_size=64 * 1024) as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        d = {"id": "zip", "extras": None, "compress": True, "messagepack": False}
        raw.write(b"IPC" + frame(json_dumps({"t": CONNECTION, "d": d})))
        t, answer, _ = await raw.next_packet()
        assert t == CONNECTION
        assert answer["compress"] is True
        raw.codec.configure(messagepack=False, compress=True)
        raw.handshaken = True
        deflate = zlib.compressobj(wbits=-15)
        body = b'{"t":1,"d":"' + b"0" * 50_000_000 + b'"}'
        bomb = deflate.compress(body) + deflate.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 64 * 1024
        raw.write(frame(bomb))
        await raw.until_closed()
        _, conn = await errors.first(MessageTooLargeError)
        assert conn.id == "zip"
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


async def test_announced_size_is_not_allocated_before_it_arrives() -> None:
    """Tags announcing 32 MiB bodies that never come cost the server only what really arrived."""
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    path = os.path.join(folder, "s")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        HERE,
        "server",
        path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    peers: list[RawPeer] = []
    client = IPCClient(path=path, reconnect=False)
    try:
        assert proc.stdout is not None
        assert (await within(proc.stdout.readline())).strip() == b"READY"
        await within(client.connect())
        before = rss_mib_of(proc.pid)
        for i in range(16):  # 16 x 32 MiB = 512 MiB if allocated on the tag
            peer = await RawPeer.open(path)
            if i % 2:
                await peer.hello(pid=f"admitted-{i}")
            else:
                peer.write(b"IPC")  # not even admitted yet
            peer.write(encode_tag(32 << 20) + b"x" * 1000)
            peers.append(peer)
        for _ in range(3):  # round trips: the server has read everything sent before them
            assert await within(client.request("sync")) is None
        grown = rss_mib_of(proc.pid) - before
        assert grown < 64, f"the server grew by {grown:.0f} MiB for 16 KB received"
    finally:
        for peer in peers:
            await peer.close()
        await within(client.close())
        if proc.stdin is not None:
            proc.stdin.close()
        await within(proc.wait())
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------- max_connections


async def test_max_connections_refuses_the_extra_client_only() -> None:
    """Past max_connections a client gets HandshakeError with the reason; no connect event; slots free up."""
    async with serving(max_connections=2) as (server, errors, bystander):
        connects: list[Any] = []
        server.on("connect", lambda conn, payload: connects.append(payload))
        second = IPCClient(path=server.address.path, reconnect=False)
        await within(second.connect("second"))
        third = IPCClient(path=server.address.path, reconnect=True, retries=5)
        with pytest.raises(HandshakeError, match="max_connections=2") as info:
            await within(third.connect("third"))
        assert "max_connections=2" in str(info.value.reason)
        assert connects == ["second"]
        error, conn = await errors.first(HandshakeError)
        assert "max_connections=2" in str(error)
        assert conn not in server.connections
        assert third.status is IPCClientStatus.IDLE  # refused, not reconnecting
        await assert_bystander_fine(server, errors, bystander)
        assert await within(second.request(1)) == {"echo": 1}
        await within(second.close())
        await wait_until(lambda: len(server.connections) == 1, "the second client to leave")
        fourth = IPCClient(path=server.address.path, reconnect=False)
        await within(fourth.connect("fourth"))
        assert await within(fourth.request(4)) == {"echo": 4}
        await within(fourth.close())


# ---------------------------------------------------------------------- handshake_timeout


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"IP",
        b"IPC",
        b"IPC" + frame(b'{"t":0,"d":{"id":null}}')[:9],
        b"GET / HTTP/1.1\r\nUpgrade: net-ipc\r\n",
    ],
    ids=["nothing", "part-of-preamble", "preamble-only", "part-of-connection", "part-of-upgrade"],
)
async def test_handshake_timeout_drops_a_silent_or_partial_client(sent: bytes) -> None:
    """A client that sends nothing or only part of the handshake is dropped at handshake_timeout."""
    async with serving(handshake_timeout=0.3) as (server, errors, bystander):
        loop = asyncio.get_running_loop()
        raw = await RawPeer.open(server.address.path or "")
        started = loop.time()
        raw.write(sent)
        await raw.until_closed(timeout=5)
        elapsed = loop.time() - started
        assert 0.25 <= elapsed < 3.0, elapsed
        error, conn = await errors.first(HandshakeError)
        assert "handshake_timeout=0.3" in str(error)
        assert conn not in server.connections
        assert conn.closed
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


# ---------------------------------------------------------------------- malformed input


async def test_garbage_preamble_is_closed() -> None:
    """Bytes that are neither ``IPC`` nor an HTTP upgrade: ProtocolError on error, socket closed."""
    async with serving() as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        raw.write(b"\x16\x03\x01\x02\x00garbage")  # e.g. a TLS hello to a plain server
        assert await raw.until_closed() == []
        error, conn = await errors.first(ProtocolError)
        assert "bad preamble" in str(error)
        assert conn not in server.connections
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


async def test_http_without_upgrade_gets_404() -> None:
    """A GET without an accepted Upgrade gets 404 and is closed (SPEC 6.1)."""
    async with serving() as (server, errors, bystander):
        reader, writer = await within(asyncio.open_unix_connection(server.address.path))
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        answer = await within(reader.read())
        assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
        error, _ = await errors.first(ProtocolError)
        assert "websocket" in str(error)
        await assert_bystander_fine(server, errors, bystander)
        writer.close()
        await within(writer.wait_closed())


async def test_packet_before_connection_is_a_protocol_error() -> None:
    """A REQUEST before the CONNECTION exchange: ProtocolError, END with the reason, closed."""
    async with serving() as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        raw.write(b"IPC" + frame(json_dumps({"t": REQUEST, "d": "hi", "n": "1"})))
        packets = await raw.until_closed()
        assert "before the CONNECTION exchange" in end_reason(packets)
        error, conn = await errors.first(ProtocolError)
        assert "packet of type 2" in str(error)
        assert conn not in server.connections
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


async def test_body_not_json_before_the_handshake_closes() -> None:
    """A first body that is not JSON: ProtocolError, closed (the stream cannot be trusted)."""
    async with serving() as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        raw.write(b"IPC" + frame(b"\xff\xfenot json at all"))
        await raw.until_closed()
        error, _ = await errors.first(ProtocolError)
        assert "not valid JSON" in str(error)
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


@pytest.mark.parametrize(
    "body",
    [b"not json", b'"a string"', b'{"t": 9, "d": 1}', b'{"t": "1"}', b"\x00" * 10],
    ids=["text", "not-an-object", "bad-type", "type-not-int", "zeros"],
)
async def test_bad_body_after_the_handshake_is_dropped(body: bytes) -> None:
    """After the handshake a body that is not a packet is reported and dropped; the connection lives on."""
    async with serving() as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        await raw.hello(pid="bad-body")
        raw.write(frame(body))
        raw.send(PING, "after", "p1")
        assert await raw.next_packet() == (PONG, "after", "p1")
        _, conn = await errors.first(ProtocolError)
        assert conn.id == "bad-body"
        assert conn in server.connections
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


@pytest.mark.parametrize("depth", [100_000, 2_000, 300])
@pytest.mark.parametrize("kind", ["request", "ping", "publish", "message"])
async def test_deeply_nested_json(kind: str, depth: int) -> None:
    """JSON nested 300 to 100,000 deep in any packet kind: reported or answered, never a crash."""
    async with serving() as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        await raw.hello(pid="deep")
        raw.send(REQUEST, {"sub": "deep"}, "s1")
        assert await raw.next_packet() == (RESPONSE, {"result": True}, "s1")
        deep = nested_json(depth)
        if kind == "request":
            raw.write(frame(b'{"t":2,"n":"r1","d":' + deep + b"}"))
        elif kind == "ping":
            raw.write(frame(b'{"t":4,"n":"p1","d":' + deep + b"}"))
        elif kind == "publish":
            raw.write(frame(b'{"t":2,"n":"r1","d":{"pub":"deep","message":' + deep + b"}}"))
        else:
            raw.write(frame(b'{"t":1,"d":' + deep + b"}"))
        raw.send(PING, "alive", "p2")
        answered = depth <= 1024 and kind in ("request", "publish")
        # Decoded but too deep to encode again (answer, echo, relay): the requester
        # is answered with an error it can read, never left to time out.
        wanted = {"p2", "r1"} if answered else {"p2"}
        seen: dict[str, tuple[int, Any]] = {}
        while set(seen) != wanted:
            t, d, n = await raw.next_packet()
            assert n in wanted, (t, n)
            assert n not in seen, (t, n)
            seen[n] = (t, d)
        assert seen["p2"] == (PONG, "alive")
        if answered:
            t, d = seen["r1"]
            assert t == RESPONSE
            assert d["error"]["type"] in ("TypeError", "JSONEncodeError")
        if depth > 1024:
            # Refused by the decoder (its depth limit): reported, the packet dropped.
            _error, conn = await errors.first(ProtocolError)
            assert conn.id == "deep"
        elif kind != "message":
            _, conn = await errors.first(Exception)
            assert conn.id == "deep"
        assert [c.id for c in server.connections if c.id == "deep"] == ["deep"]
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


async def test_deeply_nested_msgpack() -> None:
    """msgpack nested 100,000 deep is a ProtocolError for that packet; the connection lives on."""
    async with serving(codec="msgpack") as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        answer = await raw.hello(pid="deep-mp", messagepack=True)
        assert answer["messagepack"] is True
        deep = b"\x91" * 100_000 + b"\xc0"
        raw.write(frame(b"\x83\xa1t\x02\xa1n\xa2r1\xa1d" + deep))
        raw.send(PING, "alive", "p2")
        assert await raw.next_packet() == (PONG, "alive", "p2")
        error, conn = await errors.first(ProtocolError)
        assert "msgpack" in str(error)
        assert conn.id == "deep-mp"
        raw.write(frame(msgpack.packb({"t": PING, "d": [[[[1]]]], "n": "p3"})))
        assert await raw.next_packet() == (PONG, [[[[1]]]], "p3")
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


@pytest.mark.parametrize("nonce", [[1], {"a": 1}, 7, None], ids=["list", "dict", "int", "none"])
async def test_nonce_that_is_not_a_string(nonce: Any) -> None:
    """Paired packets need string nonces (SPEC 6.3): others are reported and dropped, nothing crashes."""
    async with serving() as (server, errors, bystander):
        raw = await RawPeer.open(server.address.path or "")
        await raw.hello(pid="nonce")
        # A request in flight from the server, so that its response table is not empty.
        conn = next(c for c in server.connections if c.id == "nonce")
        pending = asyncio.ensure_future(conn.request("question", timeout=30))
        t, d, n = await raw.next_packet()
        assert (t, d) == (REQUEST, "question")
        for t in (RESPONSE, PONG, REQUEST, PING):
            raw.write(frame(json_dumps({"t": t, "d": "x", "n": nonce})))
        raw.send(RESPONSE, "answer", n)
        assert await within(pending) == "answer"
        raw.send(PING, "alive", "p2")
        assert await raw.next_packet() == (PONG, "alive", "p2")
        assert conn in server.connections
        assert len(errors.of(ProtocolError)) == 4
        await assert_bystander_fine(server, errors, bystander)
        await raw.close()


# ---------------------------------------------------------------------- slow consumers


async def test_send_awaits_over_the_high_water_mark() -> None:
    """A producer faster than a paused peer waits in send(); the unsent bytes stay bounded."""
    async with serving() as (server, errors, bystander):
        client = IPCClient(path=server.address.path, reconnect=False)
        await within(client.connect("producer"))
        received: list[int] = []
        server.on("message", lambda message, conn: received.append(message[0]))
        conn = next(c for c in server.connections if c.payload == "producer")
        conn.pause()  # the server stops reading this client
        proto: Any = client._proto  # measuring the transport needs the private handle
        transport: asyncio.WriteTransport = proto._transport
        _, high = transport.get_write_buffer_limits()
        blob = "x" * 1000
        total = 20_000  # 20 MB: far more than the kernel and the high-water mark hold
        sent = 0
        largest = 0

        async def produce() -> None:
            nonlocal sent, largest
            for i in range(total):
                await client.send([i, blob])
                sent += 1
                queued = transport.get_write_buffer_size() + sum(map(len, proto._wbuf))
                largest = max(largest, queued)

        producer = asyncio.ensure_future(produce())
        await wait_until(lambda: proto._write_paused, "the client's transport to pause writing")
        assert sent < total
        assert not producer.done()
        conn.resume()
        await within(producer, timeout=30)
        await wait_until(lambda: len(received) == total, "every message to arrive")
        assert received == list(range(total))
        # Bounded by the high-water mark plus one coalesced flush, not by 20 MB.
        assert largest <= high + 512 * 1024, largest
        await assert_bystander_fine(server, errors, bystander)
        await within(client.close())


async def test_subscriber_that_never_reads_is_bounded_then_dropped() -> None:
    """A stalled subscriber slows nobody; its queue stays under max_queued, then it is dropped by name."""
    max_queued = 1 << 20
    async with serving(max_queued=max_queued) as (server, errors, bystander):
        path = server.address.path or ""
        stalled = await RawPeer.open(path)
        await stalled.hello(pid="stalled")
        stalled.send(REQUEST, {"sub": "feed"}, "s1")
        assert await stalled.next_packet() == (RESPONSE, {"result": True}, "s1")
        # From here on the stalled peer never reads again.
        fast = IPCClient(path=path, reconnect=False)
        await within(fast.connect("fast"))
        got: list[int] = []
        fast.on("feed", lambda message: got.append(message[0]))
        assert await within(fast.subscribe("feed"))
        publisher = IPCClient(path=path, reconnect=False)
        await within(publisher.connect("publisher"))
        stalled_conn = next(c for c in server.connections if c.id == "stalled")
        largest = 0
        blob = "y" * 4096
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(2_000):  # 8 MB for the stalled subscriber, 8x max_queued
            assert await within(publisher.publish("feed", [i, blob]))
            transport = stalled_conn._transport
            if transport is not None:
                largest = max(largest, transport.get_write_buffer_size())
        elapsed = loop.time() - started
        await wait_until(lambda: len(got) == 2_000, "the fast subscriber to get every message")
        assert got == list(range(2_000))
        error, conn = await errors.first(IPCError)
        assert conn is stalled_conn
        assert "max_queued" in str(error)
        assert stalled_conn.closed
        assert stalled_conn not in server.connections
        assert largest <= max_queued + 512 * 1024, largest
        assert "feed" in server.topics
        assert stalled_conn not in server.topics["feed"]
        assert elapsed < 10.0
        await assert_bystander_fine(server, errors, bystander)
        await within(publisher.close())
        await within(fast.close())
        await stalled.close()


# ---------------------------------------------------------------------- fuzzing (short runs)


def run_fuzzer(script: str, *args: str, timeout: float = 45.0) -> dict[str, Any]:
    """Run ``fuzz/<script>`` to completion and return its JSON summary (its last stdout line)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def test_fuzz_decoder_short() -> None:
    """The sans-I/O decoder fuzzed for ~1 s: only ProtocolError, same packets however split."""
    summary = run_fuzzer("fuzz_decoder.py", "--seconds", "1", "--seed", "7")
    assert summary["ok"]
    assert summary["cases"] > 100
    assert summary["unexpected"] == []


def test_fuzz_live_server_short() -> None:
    """A live server fuzzed for ~3 s: no crash, no hang, RSS bounded, a normal client still answered."""
    summary = run_fuzzer("fuzz_server.py", "--seconds", "3", "--seed", "7")
    assert summary["ok"], summary
    assert summary["frames"] > 10_000
    assert summary["loop_errors"] == []
    assert summary["server_exit"] == 0
    assert summary["final_probe"] == "ok"


# ---------------------------------------------------------------------- the child process


async def child_server(path: str) -> None:
    """Serve at ``path`` with the default limits until stdin closes."""
    server = IPCServer(path=path)
    await server.start()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    await reader.read()
    transport.close()
    await server.close(timeout=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        asyncio.run(child_server(sys.argv[2]))
