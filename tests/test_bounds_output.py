"""Output bounds crossed on purpose (docs/reliability.md, "Output: slow readers and fan-out").

``write_deadline`` drops a peer whose output stays over the high-water mark;
a fan-out to peers that do not read holds one copy of the packet, not one per
peer; a big publish to many compressed subscribers is compressed off the loop
thread, once. The servers run in their own process (``boundkit.BoundServer``)
so that their memory can be read; peers that must not read are raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from boundkit import BoundServer, Bystander, raw_packet, raw_peer
from helpers import rss_mib_of, short_socket_path, wait_until, within
from ipc_server import IPCClient, IPCServer
from ipc_server.codecs import DEFLATE_OFF_LOOP, Deflation, PacketCodec
from ipc_server.protocol import FrameDecoder

LOOPS = ["asyncio", "uvloop"]
MESSAGE, REQUEST, RESPONSE, END = 1, 2, 3, 6
SUBSCRIBERS = Path(__file__).with_name("bound_subscribers.py")
MIB = 1024 * 1024


def stalled_subscriber(path: str, topic: str, client_id: str) -> socket.socket:
    """A raw peer that subscribes to ``topic`` (and waits for the answer), then never reads."""
    sock = raw_peer(path, client_id=client_id)
    sock.sendall(raw_packet(REQUEST, {"sub": topic}, "s1"))
    decoder = FrameDecoder(MIB)
    while True:
        for body in decoder.feed(sock.recv(65536)):
            packet = json.loads(bytes(body))
            if packet.get("n") == "s1":
                assert packet["t"] == RESPONSE
                return sock


async def poll_stats(
    server: BoundServer, predicate: Callable[[dict[str, Any]], object], what: str
) -> dict[str, Any]:
    """Ask the server for its stats until ``predicate`` holds them; fail after 15 s."""
    deadline = time.monotonic() + 15.0
    while True:
        stats = await server.astats()
        if predicate(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within 15 s: {what}; last stats {stats}")
        await asyncio.sleep(0.05)


def read_to_the_end(sock: socket.socket) -> int:
    """Read what the server had sent until it hung up; how many bytes that was."""
    total = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    return total


@contextlib.contextmanager
def subscribers(path: str, count: int, expect: int) -> Iterator[subprocess.Popen[str]]:
    """``count`` compressed clients subscribed to "feed" in a child process (it prints what they got)."""
    config = {"path": path, "count": count, "topic": "feed", "compress": True, "expect": expect}
    proc = subprocess.Popen(
        [sys.executable, str(SUBSCRIBERS), json.dumps(config)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("loop", LOOPS)
async def test_write_deadline_drops_a_subscriber_that_stops_reading(loop: str) -> None:
    """A subscriber that stops reading is dropped at write_deadline, by name; nobody else waits."""
    with (
        BoundServer({"write_deadline": 1.0}, loop=loop) as server,
        contextlib.closing(stalled_subscriber(server.path, "feed", "stalled")) as stalled,
    ):
        got: list[int] = []
        fast = await within(IPCClient(path=server.path).connect())
        fast.on("feed", lambda message: got.append(message[0]))
        assert await within(fast.subscribe("feed"))
        publisher = await within(IPCClient(path=server.path).connect())
        base = await server.astats()
        blob = "y" * 32768
        slowest = 0.0
        async with Bystander(server.path) as bystander:
            started = time.monotonic()
            for i in range(200):  # 6.5 MB: the stalled peer's socket is full long before
                begun = time.perf_counter()
                assert await within(publisher.publish("feed", [i, blob]))
                slowest = max(slowest, time.perf_counter() - begun)
            stats = await poll_stats(
                server, lambda s: any("write_deadline" in e for e in s["errors"]), "the drop"
            )
            dropped_after = time.monotonic() - started
            for i in range(200, 220):
                assert await within(publisher.publish("feed", [i, blob]))
            await wait_until(lambda: len(got) == 220, "every message to reach the reader")
        assert got == list(range(220))
        [(error, named)] = [
            (e, c)
            for e, c in zip(stats["errors"], stats["error_connections"], strict=True)
            if "write_deadline" in e
        ]
        assert named == "stalled"
        assert stats["connections"] == base["connections"]  # the bystander came, it went
        assert "peer is not reading" in error
        assert 0.9 < dropped_after < 6.0, dropped_after
        assert slowest < 1.0, slowest
        assert bystander.worst < 1.0
        assert not bystander.failures
        assert stats["tasks"] <= base["tasks"] + 1  # the bystander's connection: no task
        assert stats["rss_mib"] < base["rss_mib"] + 40
        stalled.settimeout(10)
        assert 0 < read_to_the_end(stalled) < 6_500_000  # what got through, then the hang-up
        fast.destroy()
        publisher.destroy()


@pytest.mark.parametrize("loop", LOOPS)
async def test_fanout_to_subscribers_that_do_not_read_holds_one_copy(loop: str) -> None:
    """A 16 MiB publish to 40 subscribers that do not read costs a few copies, not 40."""
    size, count = 16 * MIB, 40
    with BoundServer({}, loop=loop) as server, contextlib.ExitStack() as sockets:
        for i in range(count):
            sockets.enter_context(stalled_subscriber(server.path, "feed", f"s{i}"))
        publisher = await within(IPCClient(path=server.path).connect())
        base = await server.astats()
        async with Bystander(server.path) as bystander:
            assert await within(publisher.publish("feed", "z" * size), 30)
            ping = await within(bystander.check())
            held = await server.astats()
        # The publish itself: the body as received, the decoded message, the packet
        # encoded once for all, and the encoder's working copy (4 copies). Each
        # subscriber that does not read: a piece (256 KiB) copied by the transport.
        budget = 4.5 * size + count * 512 * 1024
        assert held["peak_mib"] * MIB < base["rss_mib"] * MIB + budget, (held, base)
        assert held["rss_mib"] * MIB < base["rss_mib"] * MIB + budget, (held, base)
        assert held["connections"] == count + 2  # all still there (write_deadline is 10 s)
        assert held["tasks"] <= base["tasks"] + 1
        assert ping < 1.0
        assert bystander.worst < 1.0
        assert not bystander.failures
        publisher.destroy()


@pytest.mark.parametrize("loop", LOOPS)
async def test_big_publish_to_many_compressed_subscribers_does_not_stall_the_loop(
    loop: str,
) -> None:
    """A 4 MiB publish to 50 compressed subscribers: pings answered within 1 s, all delivered in order."""
    payload = os.urandom(2 * MIB).hex()  # 4 MiB that compress to about 57 %
    with BoundServer({}, loop=loop) as server, subscribers(server.path, 50, 3) as proc:
        publisher = await within(IPCClient(path=server.path).connect())
        base = await server.astats()
        async with Bystander(server.path) as bystander:
            begun = time.perf_counter()
            assert await within(publisher.publish("feed", 1))
            assert await within(publisher.publish("feed", payload), 30)
            assert await within(publisher.publish("feed", 2))
            published = time.perf_counter() - begun
            assert proc.stdout is not None
            line = await within(asyncio.to_thread(proc.stdout.readline), 60)
            ping = await within(bystander.check())
        stats = await server.astats()
        want = [1, [len(payload), zlib.crc32(payload.encode())], 2]
        got = json.loads(line)
        assert len(got) == 50
        assert all(messages == want for messages in got), got[0]
        assert published < 1.0, published
        assert ping < 1.0
        assert bystander.worst < 1.0, bystander.worst
        assert not bystander.failures
        # Compressed once for all 50 (it was 50 times, each its own copy).
        assert stats["peak_mib"] < base["rss_mib"] + 64, (stats, base)
        assert stats["tasks"] <= base["tasks"] + 1
        publisher.destroy()


def test_big_compressed_bodies_keep_every_stream_right() -> None:
    """Big bodies compressed apart (and shared by a fan-out) decode right on each stream, in order."""
    big = os.urandom(DEFLATE_OFF_LOOP).hex()
    ends = []
    for messagepack in (False, True):
        for history in ("a" * 50_000, os.urandom(40_000).hex(), ""):
            encoder, decoder = PacketCodec(), PacketCodec()
            encoder.configure(messagepack=messagepack, compress=True)
            decoder.configure(messagepack=messagepack, compress=True)
            ends.append((encoder, decoder, history))
    wire: list[bytearray] = [bytearray() for _ in ends]

    def put(index: int, packet: Any) -> None:
        if isinstance(packet, Deflation):
            packet = packet.run()
        wire[index] += b"".join(packet) if isinstance(packet, list) else packet

    sent: list[Any] = []
    for index, (encoder, _, history) in enumerate(ends):
        put(index, encoder.encode_parts(MESSAGE, history))
    for data in (big, "small", big + "x", [1, 2], "b" * (3 * DEFLATE_OFF_LOOP), "last"):
        sent.append(data)
        cache: dict[str, Any] = {}
        shared: dict[int, list[bytes]] = {}
        for index, (encoder, _, _) in enumerate(ends):
            packet = encoder.encode_shared(MESSAGE, data, cache)
            if isinstance(packet, Deflation):
                if id(packet) not in shared:
                    shared[id(packet)] = packet.run()
                packet = shared[id(packet)]
            put(index, packet)
        for index, (encoder, _, _) in enumerate(ends):
            put(index, encoder.encode_parts(MESSAGE, [data, "alone"]))
    for index, (_, decoder, history) in enumerate(ends):
        bodies = FrameDecoder(1 << 28).feed(bytes(wire[index]))
        got = [decoder.decode(body)[1] for body in bodies]
        assert got[0] == history
        assert got[1:] == [m for data in sent for m in (data, [data, "alone"])]


async def test_close_sends_end_after_a_big_backlog() -> None:
    """A graceful close writes END after everything queued (a big packet waiting in pieces)."""

    def read_packets(sock: socket.socket) -> list[dict[str, Any]]:
        decoder = FrameDecoder(16 * MIB)
        packets: list[dict[str, Any]] = []
        while chunk := sock.recv(1 << 20):
            packets.extend(json.loads(bytes(body)) for body in decoder.feed(chunk))
        sock.close()  # the server half-closed: hang up, as a peer does
        return packets

    with short_socket_path() as path:
        server = IPCServer(path=path)
        await server.start()
        try:
            sock = await asyncio.to_thread(raw_peer, path, client_id="reader")
            with contextlib.closing(sock):  # closed by read_packets unless the test fails
                conn = next(c for c in server.connections if c.id == "reader")
                big = "q" * (8 * MIB)
                conn.send_nowait(big)
                conn.send_nowait("after")
                assert conn.queued > 4 * MIB  # the peer has not read yet: most of it waits
                closing = asyncio.ensure_future(conn.close("bye"))
                packets = await within(asyncio.to_thread(read_packets, sock))
                assert [p["t"] for p in packets] == [MESSAGE, MESSAGE, END]
                assert packets[0]["d"] == big
                assert packets[1]["d"] == "after"
                assert packets[2]["d"]["m"] == "bye"
                assert await within(closing)
        finally:
            await within(server.close())


async def test_a_big_broadcast_right_after_a_small_one_is_not_copied_per_peer() -> None:
    """A big packet written behind a small one in the same loop iteration is shared, not joined."""
    size, count = 16 * MIB, 10
    with short_socket_path() as path, contextlib.ExitStack() as sockets:
        server = IPCServer(path=path)
        await server.start()
        try:
            for i in range(count):
                sockets.enter_context(await asyncio.to_thread(raw_peer, path, client_id=f"p{i}"))
            big = "b" * size
            before = rss_mib_of(os.getpid())
            assert await server.broadcast("small") == count
            assert await server.broadcast(big) == count  # no await in between: one iteration
            grown = rss_mib_of(os.getpid()) - before
            assert grown < 3 * size / MIB, grown  # the packet once, not once per peer
            assert all(c.queued > size // 2 for c in server.connections)
        finally:
            for conn in server.connections:
                conn.destroy()
            await within(server.close())
