"""Decode bounds: ``max_handshake_size`` before admission, ``max_packet_objects`` per packet.

The server tests cross each bound from a raw peer against ``BoundServer`` (a
server in its own process) while a ``Bystander`` pings it: the offender gets
END naming the option, the server's ``error`` event names the connection and
the option, the bystander is answered within 1 s, and the server's peak
memory and task count stay within the bound stated in each test. Blocking
socket work runs in a thread, so the bystander's loop is never held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boundkit import BoundServer, Bystander
from helpers import short_socket_path, wait_until, within
from ipc_server import ConnectionClosedError, IPCClient, IPCClientStatus, IPCServer, codecs
from ipc_server import sync as ipc_sync
from ipc_server.codecs import CodecName, PacketCodec
from ipc_server.errors import MessageTooLargeError
from ipc_server.packets import CONNECTION, END, MESSAGE, hello
from ipc_server.protocol import FrameDecoder, encode_tag, frame, upgrade_request

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets and /proc")

MiB = 1 << 20
HANDSHAKE_SIZE = 64 * 1024  # the default max_handshake_size

# ---------------------------------------------------------------------- raw peers


@dataclass
class Peer:
    """A raw socket admitted as a peer of our own, speaking the codec it asked for."""

    sock: socket.socket
    id: str
    reader: PacketCodec
    decoder: FrameDecoder
    deflate: Any  # zlib.compressobj of the stream we send, or None

    def send_body(self, body: bytes) -> None:
        """Send one packet body (deflated into our stream when compressed)."""
        if self.deflate is not None:
            body = self.deflate.compress(body) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(frame(body))  # dropped while sending: read_end tells why

    def read_end(self, timeout: float = 10.0) -> Any:
        """The reason of the END the server sends (None: closed without one)."""
        return read_end(self.sock, self.decoder, self.reader, timeout)


def read_end(
    sock: socket.socket, decoder: FrameDecoder, reader: PacketCodec, timeout: float
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        for body in decoder.feed(data):
            t, d, _, _ = reader.decode(body)
            if t == END:
                return d["m"] if isinstance(d, dict) else d


def open_peer(path: str, codec: CodecName, compress: bool) -> Peer:
    """Connect, send the preamble and a CONNECTION asking for ``codec`` and ``compress``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(b"IPC" + hello(None, None, compress=compress, codec=codec))
    decoder, reader = FrameDecoder(), PacketCodec()
    bodies: list[Any] = []
    while not bodies:
        bodies = decoder.feed(sock.recv(65536))
    t, d, _, _ = reader.decode(bodies[0])
    assert t == CONNECTION
    assert d["compress"] is compress
    assert d["messagepack"] is (codec == "msgpack")
    reader.configure(messagepack=codec == "msgpack", compress=compress)
    deflate = zlib.compressobj(wbits=-15) if compress else None
    return Peer(sock, d["id"], reader, decoder, deflate)


def empty_maps(codec: CodecName, size: int) -> bytes:
    """A MESSAGE body of about ``size`` bytes whose data is a list of empty dicts."""
    if codec == "msgpack":
        n = size - 16
        return b"\x82\xa1t\x01\xa1d\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    n = size // 3
    return b'{"t":1,"d":[' + b"{}," * (n - 1) + b"{}]}"


def containers(value: Any) -> int:
    """The dicts and lists in ``value``, itself included."""
    if isinstance(value, dict):
        return 1 + sum(containers(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(containers(v) for v in value)
    return 0


async def errors_named(server: BoundServer, option: str, count: int = 1) -> dict[str, Any]:
    """The server's stats once its ``error`` event saw ``count`` errors naming ``option``."""
    deadline = time.monotonic() + 10
    while True:
        stats = await server.astats()
        named = [
            (e, c)
            for e, c in zip(stats["errors"], stats["error_connections"], strict=True)
            if option in e
        ]
        if len(named) >= count:
            return stats
        assert time.monotonic() < deadline, f"no {count} errors naming {option}: {stats['errors']}"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- max_handshake_size


def announce_big_connection(path: str, upgrade: bool, announced: int, sent: int) -> Any:
    """A peer that announces a CONNECTION of ``announced`` bytes and sends ``sent`` of them."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        if upgrade:
            sock.sendall(upgrade_request("localhost", "isdk-ipc"))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            assert head.startswith(b"HTTP/1.1 101")
        else:
            sock.sendall(b"IPC")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(encode_tag(announced) + b" " * sent)
        return read_end(sock, FrameDecoder(), PacketCodec(), 10)


@pytest.mark.parametrize("upgrade", [False, True], ids=["binary", "http-upgrade"])
async def test_connection_over_max_handshake_size_is_refused_from_its_tag(upgrade: bool) -> None:
    """A CONNECTION over max_handshake_size gets END naming it; error names the connection."""
    with BoundServer() as server:
        async with Bystander(server.path) as bystander:
            reason = await asyncio.to_thread(
                announce_big_connection, server.path, upgrade, HANDSHAKE_SIZE + 1, 1024
            )
            assert "max_handshake_size=65536" in str(reason)
            stats = await errors_named(server, "max_handshake_size")
            assert await bystander.check() < 1.0
        error, conn = next(
            (e, c)
            for e, c in zip(stats["errors"], stats["error_connections"], strict=True)
            if "handsh" in e
        )
        assert error.startswith("MessageTooLargeError")
        assert conn is not None
        assert bystander.worst < 1.0
        assert not bystander.failures


async def test_32_unadmitted_peers_announcing_60_mib_cost_no_memory() -> None:
    """32 peers announcing a 60 MiB CONNECTION and sending 1 MiB of it: refused, peak +8 MiB at most."""

    def attack() -> list[Any]:
        socks = []
        for _ in range(32):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(server.path)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"IPC" + encode_tag(60 * MiB) + b" " * MiB)
            socks.append(sock)
        try:
            # Every peer has sent its MiB (or was refused) before any answer is read.
            return [read_end(s, FrameDecoder(), PacketCodec(), 10) for s in socks]
        finally:
            for sock in socks:
                sock.close()

    with BoundServer() as server:
        before = await server.astats()
        async with Bystander(server.path) as bystander:
            reasons = await asyncio.to_thread(attack)
            after = await errors_named(server, "max_handshake_size", 32)
        assert all("max_handshake_size" in str(r) for r in reasons), reasons
        assert after["peak_mib"] - before["peak_mib"] < 8, (before, after)
        assert after["tasks"] <= before["tasks"]
        assert None not in after["error_connections"]
        assert bystander.worst < 1.0
        assert not bystander.failures


# ---------------------------------------------------------------------- max_packet_objects


@pytest.mark.parametrize(
    ("codec", "compress", "size", "peak"),
    [
        ("msgpack", False, 16 * MiB, 150),
        ("msgpack", True, 16 * MiB, 150),
        ("json", False, 16 * MiB, 100),
        ("json", True, 16 * MiB, 100),
    ],
    ids=["msgpack", "msgpack-compressed", "json", "json-compressed"],
)
async def test_packet_over_max_packet_objects_drops_only_its_connection(
    codec: CodecName, compress: bool, size: int, peak: int
) -> None:
    """A packet of millions of empty dicts: END naming max_packet_objects; peak memory bounded."""
    bomb = empty_maps(codec, size)
    with BoundServer() as server:
        before = await server.astats()
        async with Bystander(server.path) as bystander:
            peer = await asyncio.to_thread(open_peer, server.path, codec, compress)
            await asyncio.to_thread(peer.send_body, bomb)
            reason = await asyncio.to_thread(peer.read_end)
            peer.sock.close()
            after = await errors_named(server, "max_packet_objects")
            assert await bystander.check() < 1.0
        assert "exceeds max_packet_objects=1000000" in str(reason), reason
        named = [
            c
            for e, c in zip(after["errors"], after["error_connections"], strict=True)
            if "objects" in e
        ]
        assert named == [peer.id]
        assert after["peak_mib"] - before["peak_mib"] < peak, (before, after)
        assert after["tasks"] <= before["tasks"]
        assert bystander.worst < 1.0
        assert not bystander.failures


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
@pytest.mark.parametrize("extra", [0, 1], ids=["at-the-bound", "one-over"])
def test_a_packet_at_the_bound_passes_and_one_over_is_refused(
    codec: CodecName, compress: bool, extra: int
) -> None:
    """max_packet_objects=N: a packet holding N containers decodes, N + 1 is refused."""
    bound = 10_000
    data = [{"k": [i]} if i % 2 else {} for i in range(bound - 2 + extra)]  # + the list, the packet
    count = containers({"t": MESSAGE, "d": data})
    writer, reader = PacketCodec(), PacketCodec(max_objects=bound)
    for side in (writer, reader):
        side.configure(messagepack=codec == "msgpack", compress=compress)
    body = writer.encode_body({"t": MESSAGE, "d": data})
    assert len(body) > reader.plain_size or compress  # the counted path, not the plain one
    if count <= bound:
        assert reader.decode(body)[1] == data
    else:
        with pytest.raises(MessageTooLargeError) as info:
            reader.decode(body)
        assert info.value.option == "max_packet_objects"
        assert info.value.limit == bound
        assert "exceeds max_packet_objects=10000" in str(info.value)


# ---------------------------------------------------------------------- the exact count

JSON_TEXT = st.text(alphabet='{}[]"\\,:ab \n\t\x00\u00e9\u2028', max_size=12)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | JSON_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(JSON_TEXT, inner, max_size=5),
    max_leaves=30,
)


def openers_seen(text: bytes) -> int:
    """A reference scanner: ``{`` and ``[`` a JSON parser meets outside strings, left to right."""
    count, in_string, escaped = 0, False, False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"{[":
            count += 1
    return count


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_json_count_is_exact(value: Any) -> None:
    """json_containers counts exactly the dicts and lists of any JSON value."""
    packet = {"t": MESSAGE, "d": value}
    assert codecs.json_containers(orjson.dumps(packet), 10**9) == containers(packet)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.integers(0, 10**6))
def test_json_count_of_a_broken_body_is_never_less_than_a_parser_meets(
    value: Any, cut: int
) -> None:
    """For a truncated body, the count is at least the openers a parser meets before failing."""
    text = orjson.dumps({"t": MESSAGE, "d": value})
    prefix = text[: cut % (len(text) + 1)]
    assert codecs.json_containers(prefix, 10**9) >= openers_seen(prefix)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (rb'{"a":"{[\"{"}', 1),
        (rb'{"a":"\\","b":[{}]}', 3),
        (rb'{"a":"\\\"[","b":[]}', 2),
        (rb'{"a":"\u0022[","b":{}}', 2),
        (rb'["{","[",{},"x"]', 2),
        (rb'["","",[]]', 2),
        (b'[{"a":"' + b"{" * 100 + b'"}]', 2),
    ],
)
def test_json_count_of_tricky_strings(text: bytes, expected: int) -> None:
    """Escaped quotes, escaped backslashes and brackets inside strings are not counted."""
    orjson.loads(text)  # valid JSON, to start with
    assert codecs.json_containers(text, 10**9) == expected == openers_seen(text)


def test_json_count_stops_past_the_bound() -> None:
    """Counting a bomb stops once past the bound (a string after every opener)."""
    text = b"[" + b'{},"{",' * 100_000 + b"{}]"
    assert codecs.json_containers(text, 1000) > 1000
    assert codecs.json_containers(text, 10**9) == 100_002


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES | st.binary(max_size=20), st.sampled_from(["json", "msgpack"]), st.booleans())
def test_the_bound_sees_exactly_the_containers(
    value: Any, codec: CodecName, compress: bool
) -> None:
    """For random nested values, the bound refuses exactly when containers exceed it."""
    if codec == "json" and isinstance(value, bytes):
        value = list(value)
    packet = {"t": MESSAGE, "d": value}
    count = containers(packet)
    for bound, passes in ((count, True), (count - 1, False)):
        if bound < 1:
            continue
        writer, reader = PacketCodec(), PacketCodec(max_objects=bound)
        for side in (writer, reader):
            side.configure(messagepack=codec == "msgpack", compress=compress)
        body = writer.encode_body(packet)
        if passes:
            assert reader.decode(body)[1] == value
        else:
            with pytest.raises(MessageTooLargeError, match="max_packet_objects"):
                reader.decode(body)


def test_msgpack_bomb_stops_building_at_the_bound() -> None:
    """The msgpack count stops the build at the bound: the dicts past it are never made."""
    body = empty_maps("msgpack", MiB)  # a million empty maps: 64 MiB of dicts if built
    reader = PacketCodec(max_objects=1000)
    reader.configure(messagepack=True, compress=False)
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLargeError, match="max_packet_objects=1000"):
            reader.decode(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * MiB  # the list's million slots (8 MiB), and 1,000 dicts


# ---------------------------------------------------------------------- the frame decoder


def test_first_body_limit_refuses_from_the_tag_alone() -> None:
    """limit_first: a tag announcing more than the first body's limit is refused at once."""
    decoder = FrameDecoder()
    decoder.limit_first(1000, "max_handshake_size")
    with pytest.raises(MessageTooLargeError) as info:
        decoder.feed(encode_tag(60 * MiB)[:2])
    assert info.value.option == "max_handshake_size"
    assert "max_handshake_size=1000" in str(info.value)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 30], ids=["bytewise", "chunks", "at-once"])
def test_first_body_limit_lets_a_big_body_follow_in_the_same_read(chunk: int) -> None:
    """The bodies behind the first one get the usual limit, whatever the chunking."""
    first, big = b"a" * 500, b"b" * (200 * 1024)
    stream = frame(first) + frame(big) + frame(b"c")
    decoder = FrameDecoder()
    decoder.limit_first(1000, "max_handshake_size")
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out.extend(bytes(b) for b in decoder.feed(stream[i : i + chunk]))
    assert out == [first, big, b"c"]
    assert decoder.max_size == FrameDecoder().max_size
    assert decoder.option == "max_message_size"


def test_first_body_limit_through_get_buffer_and_advance() -> None:
    """limit_first holds for a driver that reads into get_buffer() too."""
    stream = frame(b"a" * 100) + frame(b"b" * 2000)
    decoder = FrameDecoder()
    decoder.limit_first(1000, "max_handshake_size")
    buf = decoder.get_buffer()
    buf[: len(stream)] = stream
    assert [bytes(b) for b in decoder.advance(len(stream))] == [b"a" * 100, b"b" * 2000]
    refusing = FrameDecoder()
    refusing.limit_first(1000, "max_handshake_size")
    tag = encode_tag(1001)
    refusing.get_buffer()[: len(tag)] = tag
    with pytest.raises(MessageTooLargeError, match="max_handshake_size"):
        refusing.advance(len(tag))


def test_limit_changes_from_the_next_read() -> None:
    """limit() sets the bound, and the option named when a tag crosses it."""
    decoder = FrameDecoder()
    decoder.limit(100, "max_handshake_size")
    assert decoder.feed(frame(b"x" * 100)) == [b"x" * 100]
    decoder.limit(1000)
    assert decoder.feed(frame(b"y" * 500)) == [b"y" * 500]
    with pytest.raises(MessageTooLargeError, match="max_message_size=1000"):
        decoder.feed(frame(b"z" * 1001))


# ---------------------------------------------------------------------- the clients


@pytest.fixture
def sock_path() -> Iterator[str]:
    with short_socket_path() as p:
        yield p


def bomb_server(path: str, codec: CodecName, compress: bool) -> IPCServer:
    """A server whose handler answers ``n`` with ``n`` empty dicts in a list."""
    server = IPCServer(path=path, codec=codec, compress=compress)
    server.on("request", lambda n, respond, conn: respond([{} for _ in range(n)]))
    return server


CLIENT_MODES = [("json", False), ("msgpack", False), ("json", True), ("msgpack", True)]


@pytest.mark.parametrize(("codec", "compress"), CLIENT_MODES)
async def test_asyncio_client_drops_a_connection_whose_packet_crosses_the_bound(
    sock_path: str, codec: CodecName, compress: bool
) -> None:
    """An asyncio client with max_packet_objects=1000: 1000 containers arrive, 1001 drop it."""
    errors: list[BaseException] = []
    async with bomb_server(sock_path, codec, compress):
        client = IPCClient(
            path=sock_path, codec=codec, compress=compress, max_packet_objects=1000, reconnect=False
        )
        client.on("error", errors.append)
        await client.connect()
        # The RESPONSE packet, its list and 998 dicts: exactly the bound.
        assert len(await within(client.request(998))) == 998
        with pytest.raises(ConnectionClosedError, match="max_packet_objects=1000"):
            await within(client.request(999))
        await wait_until(lambda: errors, "the client's error event")
        assert isinstance(errors[0], MessageTooLargeError)
        assert errors[0].option == "max_packet_objects"
        await wait_until(lambda: client.status == IPCClientStatus.IDLE, "closed for good")
        client.destroy()


@pytest.mark.parametrize(("codec", "compress"), CLIENT_MODES)
async def test_blocking_client_drops_a_connection_whose_packet_crosses_the_bound(
    sock_path: str, codec: CodecName, compress: bool
) -> None:
    """A blocking client with max_packet_objects=1000: 1000 containers arrive, 1001 drop it."""

    def run() -> list[BaseException]:
        errors: list[BaseException] = []
        got = threading.Event()

        def on_error(error: BaseException) -> None:
            errors.append(error)
            got.set()

        client = ipc_sync.IPCClient(
            path=sock_path, codec=codec, compress=compress, max_packet_objects=1000, reconnect=False
        )
        client.on("error", on_error)
        with client.connect():
            assert len(client.request(998, timeout=10)) == 998
            with pytest.raises(ConnectionClosedError, match="max_packet_objects=1000"):
                client.request(999, timeout=10)
            assert got.wait(10)
        return errors

    async with bomb_server(sock_path, codec, compress):
        errors = await asyncio.to_thread(run)
    assert isinstance(errors[0], MessageTooLargeError)
    assert errors[0].option == "max_packet_objects"


def oversized_answer_server(path: str, stop: threading.Event) -> None:
    """A fake server answering every hello with a CONNECTION answer over 64 KiB."""
    answer = frame(orjson.dumps({"t": CONNECTION, "d": {"id": "x" * (HANDSHAKE_SIZE + 1)}}))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                try:
                    conn.sendall(answer)
                    conn.recv(65536)  # until the client hangs up
                except OSError:
                    pass


@pytest.mark.parametrize("front", ["asyncio", "blocking"])
async def test_client_refuses_a_connection_answer_over_max_handshake_size(
    sock_path: str, front: str
) -> None:
    """A server whose CONNECTION answer is over 64 KiB: connect() fails naming max_handshake_size."""
    stop = threading.Event()
    fake = threading.Thread(target=oversized_answer_server, args=(sock_path, stop), daemon=True)
    fake.start()
    try:
        await wait_until(lambda: _listening(sock_path), "the fake server")
        if front == "asyncio":
            client = IPCClient(path=sock_path, reconnect=False, connect_timeout=5)
            with pytest.raises(ConnectionClosedError, match="max_handshake_size=65536"):
                await within(client.connect())
            client.destroy()
        else:
            sync_client = ipc_sync.IPCClient(path=sock_path, reconnect=False)
            with pytest.raises(MessageTooLargeError, match="max_handshake_size=65536"):
                await asyncio.to_thread(sync_client.connect, timeout=5)
    finally:
        stop.set()
        fake.join(5)


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


async def test_clients_take_a_big_message_right_behind_the_answer(sock_path: str) -> None:
    """A server that sends 1 MiB on connect: it arrives, though the answer's bound is 64 KiB."""
    server = IPCServer(path=sock_path)
    server.on("connect", lambda conn, payload: conn.send_nowait(b"m" * MiB))
    async with server:
        got: asyncio.Queue[Any] = asyncio.Queue()
        client = IPCClient(path=sock_path, codec="msgpack")
        client.on("message", got.put_nowait)
        async with client:
            assert await within(got.get()) == b"m" * MiB
        received: list[Any] = []
        arrived = threading.Event()

        def blocking() -> None:
            def on_message(message: Any) -> None:
                received.append(message)
                arrived.set()

            client = ipc_sync.IPCClient(path=sock_path, codec="msgpack")
            client.on("message", on_message)
            with client.connect():
                assert arrived.wait(10)

        await asyncio.to_thread(blocking)
        assert received == [b"m" * MiB]


def test_options_are_checked() -> None:
    """max_handshake_size and max_packet_objects must be positive ints."""
    with pytest.raises(ValueError, match="max_handshake_size"):
        IPCServer(path="/tmp/x.sock", max_handshake_size=0)
    with pytest.raises(ValueError, match="max_packet_objects"):
        IPCServer(path="/tmp/x.sock", max_packet_objects=-1)
    with pytest.raises(ValueError, match="max_packet_objects"):
        IPCClient(path="/tmp/x.sock", max_packet_objects=0)
    assert IPCServer(path="/tmp/x.sock").max_packet_objects == 1_000_000
