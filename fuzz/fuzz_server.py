"""Fuzz a live IPCServer over a real Unix socket (seeded mutation loop, no dependency).

The server runs in its own process (this script with ``--serve``); the fuzzer
throws at it, over many connections:

- long streams after a valid handshake (JSON or msgpack): valid packets,
  mutated bodies, hostile bodies (deep nesting, odd types and nonces, big
  sizes), with valid framing so that the connection survives the bad packets;
  half the sessions announce every extension (SPEC 8), and a third of the
  valid packets are the extensions' (serve, unserve, calls to a worker of the
  server's, streams, credits, cancel notices, deadlines, wildcards, worker
  groups), their number fields odd at times (NaN, infinity, huge, negative,
  wrong types);
- compressed streams that end in a broken or inflating-too-far packet;
- mutated, truncated and foreign preambles and CONNECTION packets;
- whole-stream mutations (tags included), and silent or half-open sockets
  that only the handshake timeout ends;
- attacks on the bounds (SPEC section 7), run with small bounds: slow
  requests pipelined and abandoned (``max_concurrent_requests``,
  ``cancel_on_disconnect``), subscription floods (``max_topics_per_connection``,
  ``max_topic_length``), packets of empty containers (``max_packet_objects``),
  oversized CONNECTION packets (``max_handshake_size``), half a packet and
  silence (``read_timeout``, checked to be dropped), claims of one id at once
  and of ids over 128 characters (checked: never two live connections with
  one id).

Checked throughout: the server process never dies, never logs an exception
from the event loop (``data_received`` failing, a callback raising) nor a
warning (a handler's coroutine that was never awaited, say), answers
a probe request within 5 s every second or so, drops silent sockets at its
handshake timeout, keeps its RSS under ``--rss-limit-mb``; at the end a
normal ``IPCClient`` gets answers (request, ping, publish to itself), and once
every socket is closed the server holds no connection, no topic and no service.

Usage::

    python fuzz/fuzz_server.py --frames 1000000 --seed 1     # the full run
    python fuzz/fuzz_server.py --seconds 3 --json            # the test-suite run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from corpus import (
    connection_packet,
    hostile_body,
    mutate,
    preamble,
    report,
    valid_packet,
)

from ipc_server import IPCClient, IPCConnection, IPCServer
from ipc_server.codecs import PacketCodec, json_dumps, msgpack_keys_warning
from ipc_server.protocol import FrameDecoder, encode_tag, frame, upgrade_request

MAX_MESSAGE_SIZE = 1 << 20
HANDSHAKE_TIMEOUT = 1.0
MAX_HANDSHAKE_SIZE = 16 << 10
MAX_PACKET_OBJECTS = 20_000
MAX_TOPICS = 200
MAX_TOPIC_LENGTH = 64
MAX_CONCURRENT = 32
READ_TIMEOUT = 1.0
MAX_QUEUED = 8 << 20
PROBE_EVERY = 1.0
PROBE_DEADLINE = 5.0

CONNECTION, MESSAGE, REQUEST, RESPONSE, PING, PONG, END = range(7)


# ---------------------------------------------------------------------- the server process


async def settle(predicate: Callable[[], object], timeout: float) -> None:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.01)


async def serve(path: str) -> int:
    """Run the fuzzed server until stdin closes; print its statistics as JSON."""
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}"[:400])

    loop.set_exception_handler(on_loop_error)

    # Said at start on CPython 3.12.0-3.12.5, where msgpack's map keys are kept for ever:
    # not a finding of this run (its RSS bound is what such a leak crosses).
    known = msgpack_keys_warning("msgpack")

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() != known:
                loop_errors.append(f"log {record.name}: {record.getMessage()}"[:400])

    logging.getLogger().addHandler(Capture(logging.WARNING))
    logging.captureWarnings(True)  # a warning is a finding too
    server = IPCServer(
        path=path,
        max_message_size=MAX_MESSAGE_SIZE,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        max_queued=MAX_QUEUED,
        codec="msgpack",
        compress=True,
        # The bounds, small enough that the attacks cross them quickly.
        max_handshake_size=MAX_HANDSHAKE_SIZE,
        max_packet_objects=MAX_PACKET_OBJECTS,
        max_topics_per_connection=MAX_TOPICS,
        max_topic_length=MAX_TOPIC_LENGTH,
        max_concurrent_requests=MAX_CONCURRENT,
        read_timeout=READ_TIMEOUT,
        keepalive_interval=2.0,
        write_deadline=2.0,
    )
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}
    counts: Counter[str] = Counter()

    def on_error(error: BaseException, connection: IPCConnection | None) -> None:
        name = type(error).__name__
        errors[name] += 1
        samples.setdefault(name, str(error)[:200])
        if connection is None:
            errors["without-connection"] += 1

    async def on_request(request: Any, respond: Any, connection: IPCConnection) -> None:
        counts["requests"] += 1
        if isinstance(request, dict) and request.get("slow"):
            await asyncio.sleep(0.5)  # handlers in flight: max_concurrent_requests holds the rest
        if respond.window:  # a stream request (the streams extension): items under credit
            counts["streams"] += 1
            # A fuzzing peer seldom gives credit: past a tenth of a second the producer is
            # cancelled, so that held streams free their handler slots.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(respond.stream(range(50)), 0.1)
            return
        await respond(request)

    server.on("error", on_error)
    server.on("request", on_request)
    server.on("message", lambda message, connection: counts.update(("messages",)))
    server.on("connect", lambda connection, payload: counts.update(("connects",)))
    server.on("disconnect", lambda connection, reason: counts.update(("disconnects",)))
    await server.start()
    # The worker of the services the fuzzer calls (corpus.CALLED), answering at once.
    worker = IPCClient(path=path)
    await worker.connect()

    def work(request: Any, respond: Any) -> Any:
        counts["calls"] += 1
        return respond(request)

    for name in ("svc", "svc.two"):
        await worker.serve(name, work)
    print("READY", flush=True)
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    await reader.read()  # the fuzzer closes our stdin when it is done
    transport.close()
    await worker.close()
    # Every fuzzing socket is closed by now: the registries must drain to empty.
    await settle(lambda: not (server.connections or server.topics or server.services), 5.0)
    leftover = {
        "connections": len(server.connections),
        "topics": sorted(server.topics),
        "services": server.services,
    }
    await server.close()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    stats = {
        "errors": dict(errors),
        "error_samples": samples,
        "counts": dict(counts),
        "leftover": leftover,
        "tasks_left": len(tasks),
        "loop_errors": loop_errors[:20],
    }
    print(json.dumps(stats), flush=True)
    return 0


# ---------------------------------------------------------------------- the fuzzer


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (Linux /proc; elsewhere ``ps``)."""
    if not os.path.exists(f"/proc/{pid}/status"):
        shown = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
        return int(shown.stdout.split()[0]) / 1024 if shown.stdout.split() else 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Peer:
    """One fuzzing connection: a blocking socket, drained without blocking."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(PROBE_DEADLINE)
        self.sock.connect(path)
        self.opened = time.monotonic()
        self.alive = True
        self.head = b""  # the first bytes the server sent

    def send(self, data: bytes) -> bool:
        """Send everything; False if the server has closed the connection."""
        if not self.alive:
            return False
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.alive = False
        except TimeoutError as exc:
            raise Hang(f"sendall blocked for {PROBE_DEADLINE} s") from exc
        return self.alive

    def drain(self) -> None:
        """Read whatever the server sent, without waiting."""
        self.sock.settimeout(0.0)  # a socket timeout would make recv wait for data
        try:
            while self.alive:
                try:
                    chunk = self.sock.recv(1 << 20)
                except BlockingIOError:
                    return
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    self.alive = False
                elif len(self.head) < 4096:
                    self.head += chunk[:4096]
        finally:
            self.sock.settimeout(PROBE_DEADLINE)

    def read_packets(self, codec: PacketCodec, want: int) -> list[tuple[int, Any, Any]]:
        """Block (bounded) until ``want`` packets arrived; fewer if the server closes."""
        decoder = FrameDecoder(1 << 30)
        out: list[tuple[int, Any, Any]] = []
        while len(out) < want:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError as exc:
                raise Hang(f"no answer within {PROBE_DEADLINE} s") from exc
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.alive = False
                break
            for body in decoder.feed(chunk):
                t, d, n, _ = codec.decode(body)
                out.append((t, d, n))
        return out

    @property
    def admitted(self) -> bool:
        """Whether the server answered with CONNECTION (the preamble happened to be valid)."""
        return b'{"t":0,' in self.head

    def closed_by_server(self) -> bool:
        """Whether the server has hung up (non-blocking check)."""
        self.drain()
        return not self.alive

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class Hang(Exception):
    """The server did not answer or read within the deadline."""


class Fuzzer:
    """The fuzzing loop and its counters."""

    def __init__(self, path: str, pid: int, seed: int) -> None:
        self.path = path
        self.pid = pid
        self.rng = random.Random(seed)
        self.frames = 0
        self.preambles = 0
        self.connections = 0
        self.scenarios: Counter[str] = Counter()
        self.probes = 0
        self.probe_worst = 0.0
        self.rss: list[float] = []
        self.idle: list[Peer] = []
        self.stalled: list[Peer] = []
        self.stalled_checked = 0
        self.idle_checked = 0
        self.idle_admitted = 0
        self.failures: list[str] = []
        self.nonce = 0

    def next_nonce(self) -> int:
        """A fresh nonce number."""
        self.nonce += 1
        return self.nonce

    # -- scenarios ------------------------------------------------------------------

    def open_session(self, *, messagepack: bool, compress: bool) -> tuple[Peer, PacketCodec]:
        """A connection past the handshake, in the asked mode (binary or HTTP preamble)."""
        peer = Peer(self.path)
        self.connections += 1
        hello = frame(connection_packet(self.rng, messagepack=messagepack, compress=compress))
        plain = PacketCodec(1 << 30)
        if self.rng.random() < 0.2:
            peer.send(upgrade_request("localhost", "isdk-ipc"))
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    chunk = peer.sock.recv(1)
                except TimeoutError as exc:
                    raise Hang("no answer to an HTTP upgrade") from exc
                if not chunk:
                    break
                head += chunk
            peer.send(hello)
        else:
            peer.send(b"IPC" + hello)
        self.preambles += 1
        answer = peer.read_packets(plain, 1)
        codec = PacketCodec(1 << 30)
        if answer and answer[0][0] == CONNECTION and isinstance(answer[0][1], dict):
            d = answer[0][1]
            codec.configure(
                messagepack=bool(d.get("messagepack")), compress=bool(d.get("compress"))
            )
        else:
            peer.alive = False  # refused (an odd id or feature list can do that)
        return peer, codec

    def long_stream(self) -> None:
        """Many batches of valid, mutated and hostile bodies with valid framing."""
        rng = self.rng
        peer, codec = self.open_session(messagepack=rng.random() < 0.4, compress=False)
        for _ in range(rng.randrange(1, 12)):
            if not peer.alive:
                break
            batch = []
            count = rng.randrange(100, 1500)
            for _ in range(count):
                r = rng.random()
                if r < 0.3:
                    body = codec.encode_body(valid_packet(rng, self.next_nonce()))
                elif r < 0.8:
                    body = mutate(codec.encode_body(valid_packet(rng, self.next_nonce())), rng)
                else:
                    body = hostile_body(rng, MAX_MESSAGE_SIZE)
                batch.append(frame(body))
            ending = rng.random()
            if ending < 0.01:
                batch.append(encode_tag(MAX_MESSAGE_SIZE + 1))  # ends the connection
            if peer.send(b"".join(batch)):
                self.frames += len(batch)
            peer.drain()
        self.finish(peer, codec)

    def compressed_stream(self) -> None:
        """A deflate stream: valid packets, then a corrupt or over-inflating one, or a clean end."""
        rng = self.rng
        peer, codec = self.open_session(messagepack=rng.random() < 0.5, compress=True)
        if not codec.compress:
            self.finish(peer, codec)
            return
        batch = [
            codec.encode(*self.triple(valid_packet(rng, self.next_nonce())))
            for _ in range(rng.randrange(10, 300))
        ]
        ending = rng.randrange(4)
        if ending == 0:
            batch.append(frame(mutate(codec.encode_body(valid_packet(rng, 1)), rng)))
        elif ending == 1:
            deflate = zlib.compressobj(wbits=-15)
            bomb = b'{"t":1,"d":"' + b"0" * (MAX_MESSAGE_SIZE * 4) + b'"}'
            batch.append(frame(deflate.compress(bomb) + deflate.flush(zlib.Z_SYNC_FLUSH)))
        elif ending == 2:
            batch.append(frame(rng.randbytes(rng.randrange(1, 200))))
        if peer.send(b"".join(batch)):
            self.frames += len(batch)
        self.finish(peer, codec)

    @staticmethod
    def triple(packet: dict[str, Any]) -> tuple[int, Any, str | None]:
        """``(t, d, n)`` of a packet dict (an odd nonce as a string: ``encode`` takes only
        str or None, and the compiled core checks)."""
        n = packet.get("n")
        return packet["t"], packet.get("d"), n if n is None or isinstance(n, str) else str(n)

    def bad_preamble(self) -> None:
        """A mutated, foreign or truncated opening, maybe followed by frames."""
        rng = self.rng
        peer = Peer(self.path)
        self.connections += 1
        data = preamble(rng)
        frames = [frame(hostile_body(rng, 4096)) for _ in range(rng.randrange(0, 4))]
        if peer.send(data + b"".join(frames)):
            self.preambles += 1
            self.frames += len(frames)
        if rng.random() < 0.1 and len(self.idle) < 64:
            self.idle.append(peer)  # may be waiting for the rest: the handshake timeout ends it
        else:
            peer.close()

    def stream_mutation(self) -> None:
        """A whole valid session mutated as one byte string (tags and preamble included)."""
        rng = self.rng
        codec = PacketCodec()
        hello = frame(connection_packet(rng, messagepack=False, compress=False))
        packets = [
            codec.encode(*self.triple(valid_packet(rng, self.next_nonce())))
            for _ in range(rng.randrange(1, 40))
        ]
        data = mutate(b"IPC" + hello + b"".join(packets), rng)
        peer = Peer(self.path)
        self.connections += 1
        if peer.send(data):
            self.preambles += 1
            self.frames += len(packets)
        if rng.random() < 0.1 and len(self.idle) < 64:
            self.idle.append(peer)
        else:
            peer.close()

    def silent(self) -> None:
        """A socket that sends nothing, or a byte, and waits: the handshake timeout must end it."""
        if len(self.idle) >= 64:
            return
        peer = Peer(self.path)
        self.connections += 1
        if self.rng.random() < 0.5:
            peer.send(self.rng.choice([b"I", b"IP", b"IPC", b"G", b"GET /"]))
            self.preambles += 1
        self.idle.append(peer)

    # -- attacks: each crosses one of the bounds of SPEC section 7 ------------------

    def request_flood(self) -> None:
        """Hundreds of slow requests pipelined, no answer read, then gone."""
        rng = self.rng
        peer, codec = self.open_session(messagepack=rng.random() < 0.5, compress=False)
        batch = [
            codec.encode(REQUEST, {"slow": True, "i": i}, f"f{self.next_nonce()}")
            for i in range(rng.randrange(100, 600))
        ]
        if peer.send(b"".join(batch)):
            self.frames += len(batch)
        peer.close()  # cancel_on_disconnect ends the handlers

    def topic_flood(self) -> None:
        """Subscriptions past max_topics_per_connection and max_topic_length."""
        rng = self.rng
        peer, codec = self.open_session(messagepack=False, compress=False)
        for _ in range(rng.randrange(1, 6)):
            length = rng.choice([8, MAX_TOPIC_LENGTH, MAX_TOPIC_LENGTH + 1, 1000])
            topics = [
                f"{self.next_nonce()}".ljust(length, "t") for _ in range(rng.randrange(1, 400))
            ]
            if not peer.send(codec.encode(REQUEST, {"sub": topics}, f"s{self.next_nonce()}")):
                break
            self.frames += 1
        self.finish(peer, codec)

    def object_bomb(self) -> None:
        """A packet of empty containers, just under or over max_packet_objects."""
        rng = self.rng
        messagepack = rng.random() < 0.5
        compress = rng.random() < 0.5
        peer, codec = self.open_session(messagepack=messagepack, compress=compress)
        count = MAX_PACKET_OBJECTS + rng.choice([-10, 10, 1000])
        data: Any = [{} if rng.random() < 0.5 else [] for _ in range(count)]
        if peer.send(codec.encode(MESSAGE, data)):
            self.frames += 1
        self.finish(peer, codec)

    def handshake_bomb(self) -> None:
        """A CONNECTION packet over max_handshake_size, announced or sent."""
        rng = self.rng
        peer = Peer(self.path)
        self.connections += 1
        if rng.random() < 0.5:
            data = b"IPC" + encode_tag(rng.randrange(MAX_HANDSHAKE_SIZE + 1, 64 << 20)) + b"{"
        else:
            d = {"extras": "x" * (MAX_HANDSHAKE_SIZE + 10), "id": None}
            data = b"IPC" + frame(json_dumps({"t": CONNECTION, "d": d}))
        if peer.send(data):
            self.preambles += 1
        peer.drain()
        peer.close()

    def stall(self) -> None:
        """Half a packet after the handshake, then silence: read_timeout must end it."""
        if len(self.stalled) >= 32:
            return
        peer, codec = self.open_session(messagepack=False, compress=False)
        packet = codec.encode(REQUEST, "x" * self.rng.randrange(100, 50_000), "stall")
        if peer.send(packet[: len(packet) // 2]):
            self.frames += 1
            peer.opened = time.monotonic()
            self.stalled.append(peer)
        else:
            peer.close()

    def claimed_ids(self) -> None:
        """Sessions claiming one id at once, or ids over 128 characters."""
        rng = self.rng
        peers: list[Peer] = []
        for _ in range(rng.randrange(2, 5)):
            peer = Peer(self.path)
            self.connections += 1
            claim = "fuzz-same" if rng.random() < 0.7 else "i" * rng.randrange(129, 5000)
            d = {"extras": None, "id": claim, "compress": False, "messagepack": False}
            peer.send(b"IPC" + frame(json_dumps({"t": CONNECTION, "d": d})))
            self.preambles += 1
            answer = peer.read_packets(PacketCodec(), 1)
            if answer and answer[0][0] == CONNECTION and isinstance(answer[0][1], dict):
                given = answer[0][1].get("id")
                if not isinstance(given, str) or len(given) > 128:
                    self.failures.append(f"a claimed id came back as {str(given)[:40]!r}")
                elif given == "fuzz-same" and any(p.head == b"fuzz-same" for p in peers):
                    self.failures.append("two live connections were given the same id")
                peer.head = given.encode() if isinstance(given, str) else b""
            peers.append(peer)
        for peer in peers:
            peer.close()

    def check_stalled(self, *, final: bool = False) -> None:
        """A stalled partial packet must be dropped soon after read_timeout."""
        now = time.monotonic()
        kept = []
        for peer in self.stalled:
            age = now - peer.opened
            if peer.closed_by_server():
                self.stalled_checked += 1
                peer.close()
            elif age > READ_TIMEOUT + 4.0:
                self.failures.append(f"a stalled partial packet was held after {age:.1f} s")
                peer.close()
            elif final:
                peer.close()
            else:
                kept.append(peer)
        self.stalled = kept

    def finish(self, peer: Peer, codec: PacketCodec) -> None:
        """Close a session: END then close, or just hang up."""
        if peer.alive and self.rng.random() < 0.5:
            with contextlib.suppress(Exception):
                peer.send(codec.encode(END, {"m": "fuzz done", "a": False}))
        peer.drain()
        peer.close()

    # -- checks ---------------------------------------------------------------------

    def check_idle(self, *, final: bool = False) -> None:
        """Silent sockets must be closed by the server soon after its handshake timeout."""
        now = time.monotonic()
        kept = []
        for peer in self.idle:
            age = now - peer.opened
            if peer.closed_by_server():
                self.idle_checked += 1
                peer.close()
            elif peer.admitted and (final or age > HANDSHAKE_TIMEOUT + 4.0):
                self.idle_admitted += 1  # a mutation that left the handshake valid
                peer.close()
            elif age > HANDSHAKE_TIMEOUT + 4.0:
                self.failures.append(
                    f"a socket that never finished the handshake was open after {age:.1f} s"
                )
                peer.close()
            elif final:
                peer.close()
            else:
                kept.append(peer)
        self.idle = kept

    def probe(self) -> None:
        """A plain request must be answered within PROBE_DEADLINE; sample the server's RSS."""
        started = time.monotonic()
        peer = Peer(self.path)
        try:
            codec = PacketCodec()
            d = {"id": None, "extras": "probe", "compress": False, "messagepack": False}
            peer.send(b"IPC" + frame(json_dumps({"t": CONNECTION, "d": d})))
            peer.send(codec.encode(REQUEST, {"probe": self.probes}, "p"))
            got = peer.read_packets(codec, 2)
            if len(got) != 2 or got[1] != (RESPONSE, {"probe": self.probes}, "p"):
                self.failures.append(f"probe got {got!r}")
        finally:
            peer.close()
        self.probes += 1
        self.probe_worst = max(self.probe_worst, time.monotonic() - started)
        self.rss.append(rss_mb(self.pid))

    def run(self, frames: int, seconds: float, server: subprocess.Popen[str]) -> None:
        """Fuzz until ``frames`` frames+preambles were sent or ``seconds`` passed."""
        scenarios = [
            (self.long_stream, 10),
            (self.compressed_stream, 2),
            (self.bad_preamble, 6),
            (self.stream_mutation, 4),
            (self.silent, 1),
            (self.request_flood, 1),
            (self.topic_flood, 1),
            (self.object_bomb, 1),
            (self.handshake_bomb, 1),
            (self.stall, 1),
            (self.claimed_ids, 1),
        ]
        functions = [f for f, _ in scenarios]
        weights = [w for _, w in scenarios]
        started = time.monotonic()
        next_probe = started
        self.probe()
        while True:
            now = time.monotonic()
            if frames and self.frames + self.preambles >= frames:
                break
            if not frames and now - started >= seconds:
                break
            if now >= next_probe:
                if server.poll() is not None:
                    raise Hang(f"the server process exited with {server.returncode}")
                self.probe()
                self.check_idle()
                self.check_stalled()
                next_probe = now + PROBE_EVERY
            scenario = self.rng.choices(functions, weights)[0]
            self.scenarios[scenario.__name__] += 1
            scenario()
        self.check_idle(final=True)
        deadline = time.monotonic() + READ_TIMEOUT + 4.0
        while self.stalled and time.monotonic() < deadline:
            self.check_stalled()
            time.sleep(0.1)
        self.check_stalled(final=True)


async def final_probe(path: str) -> str:
    """A normal client: request, ping, and a publish it receives itself."""
    client = IPCClient(path=path, reconnect=False)
    await asyncio.wait_for(client.connect("final"), PROBE_DEADLINE)
    try:
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_final(message: Any) -> None:
            if not got.done():
                got.set_result(message)

        client.on("final", on_final)
        assert await client.request({"x": [1, "two"]}, timeout=PROBE_DEADLINE) == {"x": [1, "two"]}
        await client.ping("p", timeout=PROBE_DEADLINE)
        assert await client.subscribe("final")
        assert await client.publish("final", "hello")
        assert await asyncio.wait_for(got, PROBE_DEADLINE) == "hello"
    finally:
        await asyncio.wait_for(client.close(), PROBE_DEADLINE)
    return "ok"


def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server process, fuzz it, check it, and summarise."""
    folder = tempfile.mkdtemp(prefix="ipcfz", dir="/tmp")
    path = os.path.join(folder, "s")
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    fuzzer = Fuzzer(path, server.pid, args.seed)
    summary: dict[str, Any] = {"ok": False, "seed": args.seed}
    started = time.monotonic()
    try:
        line = server.stdout.readline()
        if line.strip() != "READY":
            raise Hang(f"the server did not start: {line!r}")
        fuzzer.run(args.frames, args.seconds, server)
        fuzzer.probe()
        summary["final_probe"] = asyncio.run(final_probe(path))
    except (Hang, AssertionError, OSError, TimeoutError) as exc:
        fuzzer.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        elapsed = time.monotonic() - started
        for peer in fuzzer.idle + fuzzer.stalled:
            peer.close()
        try:
            out, _ = server.communicate(timeout=30)  # closes its stdin: the stop signal
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
            fuzzer.failures.append("the server did not shut down within 30 s")
        shutil.rmtree(folder, ignore_errors=True)
    stats: dict[str, Any] = {}
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            stats = json.loads(line)
            break
    baseline = fuzzer.rss[0] if fuzzer.rss else 0.0
    summary.update(
        {
            "frames": fuzzer.frames,
            "preambles": fuzzer.preambles,
            "frames_and_preambles": fuzzer.frames + fuzzer.preambles,
            "connections": fuzzer.connections,
            "seconds": round(elapsed, 1),
            "scenarios": dict(fuzzer.scenarios),
            "probes": fuzzer.probes,
            "probe_worst_ms": round(fuzzer.probe_worst * 1000, 1),
            "half_open_sockets_dropped": fuzzer.idle_checked,
            "stalled_packets_dropped": fuzzer.stalled_checked,
            "half_open_sockets_admitted": fuzzer.idle_admitted,
            "rss_mb": {
                "first": round(baseline, 1),
                "max": round(max(fuzzer.rss, default=0.0), 1),
                "last": round(fuzzer.rss[-1] if fuzzer.rss else 0.0, 1),
            },
            "server_exit": server.returncode,
            "server_errors": stats.get("errors", {}),
            "error_samples": stats.get("error_samples", {}),
            "server_counts": stats.get("counts", {}),
            "leftover": stats.get("leftover"),
            "tasks_left": stats.get("tasks_left"),
            "loop_errors": stats.get("loop_errors", ["no statistics from the server"]),
            "failures": fuzzer.failures,
        }
    )
    if max(fuzzer.rss, default=0.0) > args.rss_limit_mb:
        fuzzer.failures.append(f"server RSS over {args.rss_limit_mb} MiB")
    if stats.get("leftover") != {"connections": 0, "topics": [], "services": {}}:
        fuzzer.failures.append(f"server kept state after everyone left: {stats.get('leftover')}")
    if stats.get("errors", {}).get("without-connection"):
        fuzzer.failures.append("an error event did not name its connection")
    summary["ok"] = (
        not fuzzer.failures
        and server.returncode == 0
        and not summary["loop_errors"]
        and summary.get("final_probe") == "ok"
        and stats.get("tasks_left") == 0
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 0 when the server survived everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames", type=int, default=0, help="stop after this many frames+preambles"
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="stop after this long (without --frames)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rss-limit-mb", type=float, default=256.0)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return asyncio.run(serve(args.serve))
    summary = fuzz(args)
    return report(summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
