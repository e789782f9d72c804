"""Bytes-only tests of the sans-I/O wire core (docs/protocol.md and 6.2)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc_server import protocol
from ipc_server.errors import MessageTooLargeError, ProtocolError
from ipc_server.protocol import (
    ACCEPTED_UPGRADE_TOKENS,
    BIG_BODY,
    MAX_PREAMBLE_SIZE,
    ClientPreamble,
    FrameDecoder,
    PreambleResult,
    ServerPreamble,
    encode_tag,
    frame,
    upgrade_request,
    upgrade_response,
)

# --------------------------------------------------------------------------- helpers


def net_ipc_tag(size: int) -> bytes:
    """net-ipc 2.2.2's ``_tag`` (src/interfaces.js), ported line by line."""
    tag = [(size & 127) + 128]
    size >>= 7
    while size:
        tag.append(size & 127)
        size >>= 7
    return bytes(reversed(tag))


def read_tag(data: bytes) -> tuple[int, int]:
    """Decode a tag the way net-ipc's ``_untag`` does: ``(tag length, body length)``."""
    num = 0
    for i, byte in enumerate(data):
        num *= 128
        if byte > 127:
            return i + 1, num + (byte & 127)
        num += byte
    raise AssertionError("incomplete tag")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    chunks = []
    start = 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


def decode_in_chunks(chunks: list[bytes], max_size: int = 1 << 20) -> list[bytes]:
    """Bodies a fresh decoder gives for ``chunks`` fed one after another."""
    decoder = FrameDecoder(max_size)
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(bytes(body) for body in decoder.feed(chunk))
    assert decoder.buffered == 0
    return out


def outcome(verdict: PreambleResult) -> tuple[bool, int, bytes, str | None]:
    """A verdict without its human-readable error text."""
    return verdict.accepted, verdict.consumed, verdict.reply, verdict.token


def server_verdict(chunks: list[bytes]) -> tuple[PreambleResult, bytes]:
    """Feed ``chunks`` until a verdict; return it and the bytes after the preamble."""
    preamble = ServerPreamble()
    for chunk in chunks:
        verdict = preamble.feed(chunk)
        if verdict is not None:
            return verdict, bytes(preamble.data[verdict.consumed :])
    raise AssertionError("no verdict")


bodies_strategy = st.lists(st.binary(max_size=300), max_size=20)

# --------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("length", "tag"),
    [
        (0, b"\x80"),
        (5, b"\x85"),
        (127, b"\xff"),
        (128, b"\x01\x80"),
        (300, b"\x02\xac"),
        (16383, b"\x7f\xff"),
        (16384, b"\x01\x00\x80"),
        (2**21 - 1, b"\x7f\x7f\xff"),
        (2**21, b"\x01\x00\x00\x80"),
        (64 * 1024 * 1024, b"\x20\x00\x00\x80"),
        (2**35 + 1, b"\x01\x00\x00\x00\x00\x81"),
    ],
)
def test_encode_tag_known_values(length: int, tag: bytes) -> None:
    """The tag is base-128 digits, most significant first, high bit set on the last only."""
    assert encode_tag(length) == tag


@given(st.integers(min_value=0, max_value=2**49))
def test_encode_tag_matches_net_ipc(length: int) -> None:
    """Every length is tagged exactly as net-ipc tags it, and decodes back."""
    tag = encode_tag(length)
    assert tag == net_ipc_tag(length)
    assert read_tag(tag) == (len(tag), length)
    assert all(b < 0x80 for b in tag[:-1])
    assert tag[-1] >= 0x80
    assert len(tag) == 1 or tag[0] != 0  # no padding digits


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16383, 16384, 16385, 70000])
def test_frame_is_tag_then_body(length: int) -> None:
    """frame() puts the tag of the body's length before the body, on both sides of its tag cache."""
    body = bytes(range(256)) * (length // 256) + bytes(length % 256)
    assert frame(body) == encode_tag(length) + body


# --------------------------------------------------------------------------- FrameDecoder


@given(bodies_strategy)
def test_decoder_byte_by_byte_equals_all_at_once(bodies: list[bytes]) -> None:
    """One byte at a time and everything at once give the same bodies, in order."""
    stream = b"".join(frame(b) for b in bodies)
    assert decode_in_chunks([stream]) == bodies
    assert decode_in_chunks([stream[i : i + 1] for i in range(len(stream))]) == bodies


@given(bodies_strategy, st.lists(st.integers(min_value=0, max_value=7000), max_size=30))
def test_decoder_any_chunking_gives_the_same_bodies(bodies: list[bytes], cuts: list[int]) -> None:
    """However the stream is cut into chunks, the same bodies come out."""
    stream = b"".join(frame(b) for b in bodies)
    assert decode_in_chunks(split_at(stream, cuts)) == bodies


@given(bodies_strategy, st.lists(st.integers(min_value=0, max_value=7000), max_size=10))
def test_decoder_accepts_bytearray_and_memoryview(bodies: list[bytes], cuts: list[int]) -> None:
    """Chunks given as bytearray or memoryview decode like bytes (the caller may reuse them)."""
    stream = b"".join(frame(b) for b in bodies)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i, chunk in enumerate(split_at(stream, cuts)):
        buffer = bytearray(chunk)
        view = buffer if i % 2 else memoryview(buffer)
        out.extend(bytes(body) for body in decoder.feed(view))
        buffer[:] = b"\xee" * len(buffer)  # the caller reuses its buffer
    assert out == bodies


def test_decoder_keeps_trailing_partial_packet() -> None:
    """A partial packet at the end of a chunk stays buffered until the rest arrives."""
    whole = frame(b"first") + frame(b"second")
    last = frame(b"x" * 300)  # two-byte tag
    for cut in range(len(last)):
        decoder = FrameDecoder()
        assert [bytes(b) for b in decoder.feed(whole + last[:cut])] == [b"first", b"second"]
        assert decoder.buffered == cut
        assert [bytes(b) for b in decoder.feed(last[cut:])] == [b"x" * 300]
        assert decoder.buffered == 0


def test_decoder_empty_body() -> None:
    """A zero-length body is the single tag byte 0x80 and decodes to b''."""
    assert frame(b"") == b"\x80"
    assert [bytes(b) for b in FrameDecoder().feed(b"\x80\x80" + frame(b"a"))] == [b"", b"", b"a"]


def test_decoder_accepts_body_of_exactly_max_size() -> None:
    """A body of exactly max_size bytes is allowed."""
    assert [bytes(b) for b in FrameDecoder(1000).feed(frame(b"z" * 1000))] == [b"z" * 1000]


def test_decoder_refuses_oversize_tag_before_the_body() -> None:
    """A tag announcing more than max_size raises from the tag bytes alone, with size and limit."""
    decoder = FrameDecoder(1000)
    with pytest.raises(MessageTooLargeError) as info:
        decoder.feed(encode_tag(1001))  # no body byte was ever sent
    assert (info.value.size, info.value.limit) == (1001, 1000)
    assert decoder.buffered == 0


def test_decoder_refuses_oversize_tag_after_earlier_packets() -> None:
    """An oversize tag after valid packets in the same chunk still raises."""
    with pytest.raises(MessageTooLargeError):
        FrameDecoder(1000).feed(frame(b"ok") + encode_tag(5000))


@pytest.mark.parametrize("announced", [2000, 2**30, 2**48])
def test_decoder_refuses_huge_tag_on_its_first_byte(announced: int) -> None:
    """Once the tag's leading digits exceed the limit it raises without waiting for the rest."""
    tag = encode_tag(announced)
    decoder = FrameDecoder(1000)

    def feed_all_but_last_byte() -> None:
        for i in range(len(tag) - 1):
            decoder.feed(tag[i : i + 1])

    with pytest.raises(MessageTooLargeError) as info:
        feed_all_but_last_byte()
    assert info.value.size > info.value.limit == 1000
    assert decoder.buffered < len(tag)


def test_decoder_huge_tag_allocates_nothing() -> None:
    """A 64 GiB announcement fed as bare tag bytes raises at once under the default limit."""
    decoder = FrameDecoder()
    with pytest.raises(MessageTooLargeError) as info:
        decoder.feed(encode_tag(64 * 2**30))
    assert info.value.size > 64 * 2**20
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "tag", [b"\x00" * 9 + b"\x85", b"\x00" * 20, b"\x01" + b"\x00" * 8 + b"\x80"]
)
def test_decoder_refuses_overlong_tag(tag: bytes) -> None:
    """A tag longer than 8 bytes is a protocol error even when the limit is astronomically high."""
    with pytest.raises(ProtocolError, match="tag"):
        FrameDecoder(2**80).feed(tag)


# --------------------------------------------------------------------------- ServerPreamble


def test_server_preamble_binary() -> None:
    """The three bytes IPC are accepted with no reply; what follows is packet data."""
    verdict, rest = server_verdict([b"IPC" + frame(b"{}")])
    assert verdict == PreambleResult(True, 3)
    assert rest == frame(b"{}")


def test_server_preamble_binary_byte_by_byte() -> None:
    """IPC fed one byte at a time needs all three bytes, then is accepted."""
    preamble = ServerPreamble()
    assert preamble.feed(b"I") is None
    assert preamble.feed(b"P") is None
    assert preamble.feed(b"C") == PreambleResult(True, 3)


@pytest.mark.parametrize("token", ["net-ipc", "isdk-ipc"])
def test_server_preamble_upgrade(token: str) -> None:
    """An HTTP upgrade with an accepted token gets a 101 echoing the token, byte for byte."""
    request = upgrade_request("localhost", token)
    verdict, rest = server_verdict([request + frame(b"packet")])
    assert verdict.accepted
    assert verdict.token == token
    assert verdict.consumed == len(request)
    assert verdict.reply == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
        + token.encode()
        + b"\r\n\r\n"
    )
    assert rest == frame(b"packet")


def test_server_accepts_both_node_tokens() -> None:
    """The accepted tokens are exactly net-ipc's and @isdk/ipc-server's."""
    assert set(ACCEPTED_UPGRADE_TOKENS) == {"net-ipc", "isdk-ipc"}


def test_server_preamble_upgrade_headers_any_case() -> None:
    """Header names are case-insensitive and Connection may list several tokens."""
    request = (
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\nupgrade: net-ipc\r\n\r\n"
    )
    verdict, _ = server_verdict([request])
    assert verdict.accepted
    assert verdict.reply == upgrade_response("net-ipc")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: net-ipc\r\n\r\n",  # no Connection: Upgrade
    ],
)
def test_server_preamble_get_without_accepted_upgrade_gets_404(request_bytes: bytes) -> None:
    """A GET without an accepted upgrade is refused with an HTTP 404 reply."""
    verdict, _ = server_verdict([request_bytes])
    assert not verdict.accepted
    assert verdict.reply.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert verdict.reply.endswith(b"\r\n\r\n")
    assert verdict.consumed == len(request_bytes)
    assert verdict.error


@pytest.mark.parametrize(
    "garbage",
    [
        b"X",
        b"GX",
        b"IX",
        b"IPX",
        b"POST / HTTP/1.1\r\n\r\n",
        frame(b'{"t":0,"d":{}}'),
        b"\x16\x03\x01",
    ],
)
def test_server_preamble_garbage_refused(garbage: bytes) -> None:
    """Anything but IPC or GET is refused with no reply, as soon as it is recognisable."""
    verdict, _ = server_verdict([garbage[i : i + 1] for i in range(len(garbage))])
    assert not verdict.accepted
    assert verdict.reply == b""
    assert verdict.error


@given(
    st.sampled_from(
        [
            b"IPC",
            upgrade_request("h", "net-ipc"),
            upgrade_request("h", "isdk-ipc"),
            upgrade_request("h", "other"),
            b"GET /x HTTP/1.1\r\n\r\n",
            b"PUT / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_PREAMBLE_SIZE + b"\r\n\r\n",
        ]
    ),
    st.binary(max_size=40),
    st.lists(st.integers(min_value=0, max_value=MAX_PREAMBLE_SIZE + 100), max_size=8),
)
def test_server_preamble_verdict_independent_of_chunking(
    head: bytes, tail: bytes, cuts: list[int]
) -> None:
    """Byte by byte, in random chunks or all at once, the server reaches the same verdict."""
    whole, whole_rest = server_verdict([head + tail])
    chunked, _ = server_verdict(split_at(head + tail, cuts))
    assert outcome(chunked) == outcome(whole)
    if whole.accepted:
        assert whole_rest == tail
    single = [(head + tail)[i : i + 1] for i in range(min(len(head) + len(tail), 300))]
    if len(head) < 300:
        assert outcome(server_verdict(single)[0]) == outcome(whole)


def test_server_preamble_oversize_request_refused() -> None:
    """An upgrade request that never ends within MAX_PREAMBLE_SIZE bytes is refused."""
    preamble = ServerPreamble()
    assert preamble.feed(b"GET / HTTP/1.1\r\n") is None
    verdict = None
    for _ in range(MAX_PREAMBLE_SIZE // 1000 + 2):
        verdict = preamble.feed(b"X-Pad: " + b"a" * 993)
        if verdict is not None:
            break
    assert verdict is not None
    assert not verdict.accepted
    assert "too long" in (verdict.error or "")


def test_server_preamble_size_boundary() -> None:
    """A request of exactly MAX_PREAMBLE_SIZE bytes is accepted, one byte more is refused."""
    base = upgrade_request("h", "net-ipc")
    pad = MAX_PREAMBLE_SIZE - len(base) - len("X: \r\n")
    fits = base[:-2] + b"X: " + b"a" * pad + b"\r\n\r\n"
    assert len(fits) == MAX_PREAMBLE_SIZE
    assert server_verdict([fits])[0].accepted
    assert server_verdict([fits[i : i + 1] for i in range(len(fits))])[0].accepted
    over = fits[:-4] + b"a\r\n\r\n"
    assert not server_verdict([over])[0].accepted
    assert not server_verdict([over[i : i + 1] for i in range(len(over))])[0].accepted


def test_server_preamble_bytes_after_upgrade_preserved() -> None:
    """Packets sent right behind the upgrade request, in the same chunk, are kept intact."""
    packets = frame(b'{"t":0,"d":{}}') + frame(b"x" * 500)
    _, rest = server_verdict([upgrade_request("h", "isdk-ipc") + packets])
    assert decode_in_chunks([rest]) == [b'{"t":0,"d":{}}', b"x" * 500]


# --------------------------------------------------------------------------- ClientPreamble


def test_upgrade_request_exact_bytes() -> None:
    """The client's upgrade request is byte for byte the one net-ipc sends."""
    assert upgrade_request("localhost", "net-ipc") == (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: net-ipc\r\n\r\n"
    )


def test_client_preamble_accepts_101_with_trailing_packets() -> None:
    """A 101 answer is accepted; packet bytes in the same chunk follow ``consumed``."""
    response = upgrade_response("isdk-ipc")
    packet = frame(b'{"t":0,"d":{"id":"a"}}')
    preamble = ClientPreamble()
    consumed = preamble.feed(response + packet)
    assert consumed == len(response)
    assert bytes(preamble.data[consumed:]) == packet


def test_client_preamble_byte_by_byte() -> None:
    """Fed one byte at a time, the 101 answer completes exactly on its last byte."""
    response = upgrade_response("net-ipc")
    preamble = ClientPreamble()
    for i in range(len(response) - 1):
        assert preamble.feed(response[i : i + 1]) is None
    assert preamble.feed(response[-1:]) == len(response)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 1010 Nope\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
)
def test_client_preamble_non_101_raises(answer: bytes) -> None:
    """Any answer but 101 Switching Protocols is a ProtocolError naming the status."""
    with pytest.raises(ProtocolError, match="refused"):
        ClientPreamble().feed(answer)


def test_client_preamble_oversize_answer_raises() -> None:
    """An answer that does not end within MAX_PREAMBLE_SIZE bytes is a ProtocolError."""
    preamble = ClientPreamble()
    for _ in range(MAX_PREAMBLE_SIZE // 1000):
        assert preamble.feed(b"a" * 1000) is None
    with pytest.raises(ProtocolError, match="too long"):
        preamble.feed(b"a" * 1000)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 127, 128, BIG_BODY - 1, BIG_BODY, 3 * BIG_BODY + 7]), max_size=6
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=2 * BIG_BODY), min_size=1, max_size=20),
)
def test_big_bodies_survive_any_chunking(sizes: list[int], cuts: list[int]) -> None:
    """Bodies past BIG_BODY come out whole and in order, however the stream is cut."""
    bodies = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = b"".join(frame(b) for b in bodies)
    decoder = FrameDecoder()
    out: list[bytes] = []
    pos = 0
    for cut in itertools.cycle(cuts):
        if pos >= len(stream):
            break
        out += [bytes(b) for b in decoder.feed(stream[pos : pos + cut])]
        pos += cut
    assert out == bodies
    assert decoder.buffered == 0


# --------------------------------------------------------------------------- reading into the decoder


def read_into(
    decoder: FrameDecoder, stream: bytes, cuts: list[int], recycle: bool = False
) -> list[bytes]:
    """Bodies from ``stream`` read the way a loop drives a BufferedProtocol.

    Each read fills at most ``cut`` bytes of ``get_buffer()`` and then calls
    ``advance``; the shared buffer is scribbled over after every read, as the
    next connection's read would.
    """
    out: list[bytes] = []
    pos = 0
    for cut in itertools.cycle(cuts):
        if pos >= len(stream):
            break
        room = decoder.get_buffer()
        n = min(cut, len(room), len(stream) - pos)
        room[:n] = stream[pos : pos + n]
        bodies = decoder.advance(n)
        out += [bytes(b) for b in bodies]
        if recycle and bodies:
            decoder.recycle(bodies[0])
        if not decoder.receiving_body:
            scratch = decoder.get_buffer()
            scratch[:] = b"\xee" * len(scratch)
        pos += n
    return out


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 127, 128, 300, BIG_BODY - 1, BIG_BODY, 3 * BIG_BODY + 7]),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=2 * BIG_BODY), min_size=1, max_size=20),
    recycle=st.booleans(),
)
def test_reading_into_the_decoder_equals_feeding_it(
    sizes: list[int], cuts: list[int], recycle: bool
) -> None:
    """get_buffer/advance give the same bodies as feed, however the reads fall, recycled or not."""
    bodies = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = b"".join(frame(b) for b in bodies)
    decoder = FrameDecoder()
    assert read_into(decoder, stream, cuts, recycle) == bodies
    assert decoder.buffered == 0
    assert decode_in_chunks(split_at(stream, cuts), max_size=1 << 22) == bodies


def test_a_read_into_a_slice_of_the_buffer_lands_in_it() -> None:
    """get_buffer() is a view: asyncio's TLS transport reads the rest of a record into buf[offset:]."""
    data = frame(b"hello") + frame(b"world")
    for decoder in (FrameDecoder(), FrameDecoder()):
        room = decoder.get_buffer()
        room[:3] = data[:3]
        rest = room[3:]
        rest[: len(data) - 3] = data[3:]
        assert [bytes(b) for b in decoder.advance(len(data))] == [b"hello", b"world"]


def test_a_big_body_is_read_straight_into_its_buffer() -> None:
    """Once an eighth of a big body arrived, get_buffer() is exactly the room left in it."""
    body = bytes(range(256)) * (BIG_BODY // 64)  # 4 * BIG_BODY
    stream = frame(body)
    decoder = FrameDecoder()
    eighth = len(stream) - len(body) + len(body) // 8
    assert read_into(decoder, stream[:eighth], [eighth]) == []
    assert decoder.receiving_body
    room = decoder.get_buffer()
    assert len(room) == len(body) - len(body) // 8
    room[:] = body[len(body) // 8 :]
    (whole,) = decoder.advance(len(room))
    assert isinstance(whole, memoryview)
    assert whole == body
    assert decoder.buffered == 0
    assert not decoder.receiving_body  # last: mypy takes the property as still True


def receive_in_halves(body: bytes) -> bytes | bytearray | memoryview:
    """``body`` through a fresh decoder in two reads (a big one goes to its own buffer)."""
    stream = frame(body)
    decoder = FrameDecoder()
    assert decoder.feed(stream[: len(stream) // 2]) == []
    (out,) = decoder.feed(stream[len(stream) // 2 :])
    assert out == body
    return out


def leave_a_spare(size: int) -> object:
    """Receive and recycle a big body of ``size`` bytes; return its buffer, now the spare."""
    body = receive_in_halves(b"s" * size)
    assert isinstance(body, memoryview)
    FrameDecoder.recycle(body)
    return body.obj


@pytest.fixture
def no_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start without a spare body buffer (earlier tests of this thread may have left one)."""
    monkeypatch.setattr(protocol._local, "spare", None, raising=False)


@pytest.mark.usefixtures("no_spare")
def test_a_recycled_body_buffer_serves_the_next_body_of_a_like_size() -> None:
    """The spare buffer is reused for a body of half its size or more, and not for another."""
    size = 2 * BIG_BODY
    spare = leave_a_spare(size)
    assert leave_a_spare(size - 5) is spare
    assert leave_a_spare(BIG_BODY) is spare  # half the spare's size: still served by it
    huge = leave_a_spare(3 * size)  # the spare is too small
    assert huge is not spare
    assert leave_a_spare(size) is not huge  # a third of the spare's size: a buffer of its own


@pytest.mark.usefixtures("no_spare")
def test_a_spare_buffer_is_never_handed_out_twice() -> None:
    """Two bodies received at once on one thread never share a buffer."""
    size = 2 * BIG_BODY
    leave_a_spare(size)
    one, two = FrameDecoder(), FrameDecoder()
    stream_one, stream_two = frame(b"1" * size), frame(b"2" * size)
    assert one.feed(stream_one[: size // 2]) == []
    assert two.feed(stream_two[: size // 2]) == []
    (a,) = one.feed(stream_one[size // 2 :])
    (b,) = two.feed(stream_two[size // 2 :])
    assert isinstance(a, memoryview)
    assert isinstance(b, memoryview)
    assert a.obj is not b.obj
    assert (bytes(a), bytes(b)) == (b"1" * size, b"2" * size)


def test_each_thread_reads_into_a_buffer_of_its_own() -> None:
    """Loops in two threads (the blocking server's, the caller's) never share a receive buffer."""
    import threading

    here = FrameDecoder().get_buffer()
    there: list[object] = []
    thread = threading.Thread(target=lambda: there.append(FrameDecoder().get_buffer()))
    thread.start()
    thread.join()
    assert there
    assert there[0] is not here
    assert FrameDecoder().get_buffer() is here


def test_take_refuses_a_read_into_a_body_buffer() -> None:
    """take() is for reads into the shared buffer; a read into a body buffer must go to advance()."""
    decoder = FrameDecoder()
    body = b"x" * (2 * BIG_BODY)
    decoder.feed(frame(body)[: len(body) // 2])
    assert decoder.receiving_body
    with pytest.raises(RuntimeError, match="advance"):
        decoder.take(1)
