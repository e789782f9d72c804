"""Packet body codecs: JSON, msgpack and the shared raw-deflate stream (docs/protocol.md, 6.4)."""

from __future__ import annotations

import logging
import random
import string
import sys
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipc_server import IPCServer
from ipc_server.codecs import MSGPACK_KEYS_IMMORTAL, PacketCodec, json_dumps
from ipc_server.errors import MessageTooLargeError, ProtocolError
from ipc_server.protocol import FrameDecoder

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.text(max_size=20)
JSON_VALUES = st.recursive(
    SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
MSGPACK_VALUES = st.recursive(
    SCALARS | st.floats(allow_nan=False) | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
NONCES = st.none() | st.text(min_size=1, max_size=12)


def codec(
    *, messagepack: bool = False, compress: bool = False, max_size: int = 1 << 20
) -> PacketCodec:
    """A PacketCodec configured as after a CONNECTION exchange that agreed on these."""
    c = PacketCodec(max_size)
    c.configure(messagepack=messagepack, compress=compress)
    return c


def bodies(data: bytes) -> list[bytes]:
    """The bodies of the framed packets in ``data``."""
    return [bytes(b) for b in FrameDecoder().feed(data)]


def round_trip(sender: PacketCodec, receiver: PacketCodec, t: int, d: Any, n: str | None) -> Any:
    """Send one packet from ``sender`` to ``receiver`` and return what was decoded."""
    (body,) = bodies(sender.encode(t, d, n))
    return receiver.decode(body)


# --------------------------------------------------------------------------- JSON


@given(JSON_VALUES, NONCES, st.integers(min_value=0, max_value=6))
def test_json_round_trip(value: Any, nonce: str | None, t: int) -> None:
    """Any JSON-able value comes back equal and of the same types, with its type and nonce."""
    got_t, d, n, packet = round_trip(PacketCodec(), PacketCodec(), t, value, nonce)
    assert (got_t, n) == (t, nonce)
    assert repr(d) == repr(value)
    assert ("n" in packet) == (nonce is not None)


def test_json_packet_shape() -> None:
    """A JSON packet is {"t","d","n"} in UTF-8, with n only when there is a nonce."""
    assert bodies(PacketCodec().encode(2, {"a": "é"}, "x1")) == [
        '{"t":2,"d":{"a":"é"},"n":"x1"}'.encode()
    ]
    assert bodies(PacketCodec().encode(1, None)) == [b'{"t":1,"d":null}']


@pytest.mark.parametrize(
    "blob", [b"\x00\xffab", bytearray(b"\x00\xffab"), memoryview(b"\x00\xffab")]
)
def test_json_bytes_are_node_buffer_shape(blob: bytes | bytearray | memoryview) -> None:
    """Bytes in JSON become Node's Buffer JSON {type: "Buffer", data: [...]}."""
    assert json_dumps(blob) == b'{"type":"Buffer","data":[0,255,97,98]}'
    _, d, _, _ = round_trip(PacketCodec(), PacketCodec(), 1, {"b": blob}, None)
    assert d == {"b": {"type": "Buffer", "data": [0, 255, 97, 98]}}


def test_json_non_str_keys_and_sets() -> None:
    """Int keys become strings and sets become lists in JSON, as JSON.stringify would."""
    _, d, _, _ = round_trip(PacketCodec(), PacketCodec(), 1, {1: {7}}, None)
    assert d == {"1": [7]}


# --------------------------------------------------------------------------- msgpack


@given(MSGPACK_VALUES, NONCES)
def test_msgpack_round_trip(value: Any, nonce: str | None) -> None:
    """Any msgpack-able value comes back equal, bytes staying bytes."""
    _, d, n, _ = round_trip(codec(messagepack=True), codec(messagepack=True), 3, value, nonce)
    assert n == nonce
    assert repr(d) == repr(value)


def test_msgpack_bytes_stay_bytes() -> None:
    """Bytes travel as msgpack bin and come back as bytes, not str or a list."""
    packed = codec(messagepack=True).encode(1, b"\x00\xff")
    assert b"\xc4\x02\x00\xff" in packed  # bin 8 of two bytes
    _, d, _, _ = round_trip(codec(messagepack=True), codec(messagepack=True), 1, b"\x00\xff", None)
    assert d == b"\x00\xff"
    assert type(d) is bytes


def test_msgpack_undefined_decodes_to_none() -> None:
    """msgpackr's JavaScript undefined (fixext 1, type 0, data 0: d4 00 00) decodes to None."""
    undefined = b"\xd4\x00\x00"
    body = b"\x82\xa1t\x01\xa1d\x92" + undefined + b"\x05"  # {"t": 1, "d": [undefined, 5]}
    t, d, n, _ = codec(messagepack=True).decode(body)
    assert (t, d, n) == (1, [None, 5], None)
    t, d, _, _ = codec(messagepack=True).decode(b"\x82\xa1t\x01\xa1d" + undefined)
    assert (t, d) == (1, None)


def test_msgpack_other_ext_kept() -> None:
    """Other msgpack extension types arrive as msgpack.ExtType, not silently dropped."""
    body = msgpack.packb({"t": 1, "d": msgpack.ExtType(5, b"xyz")})
    _, d, _, _ = codec(messagepack=True).decode(body)
    assert d == msgpack.ExtType(5, b"xyz")


# --------------------------------------------------------------------------- compression


@pytest.mark.parametrize("messagepack", [False, True])
def test_compressed_codecs_talk_over_many_packets(messagepack: bool) -> None:
    """Two compressing codecs exchange many packets in both directions over one stream each."""
    a = codec(messagepack=messagepack, compress=True)
    b = codec(messagepack=messagepack, compress=True)
    for i in range(300):
        d = {"i": i, "text": "hello " * (i % 17), "list": list(range(i % 9))}
        assert round_trip(a, b, 2, d, str(i))[1:3] == (d, str(i))
        assert round_trip(b, a, 3, [i, d], str(i))[1:3] == ([i, d], str(i))


def test_compression_shares_one_context_per_direction() -> None:
    """A repeated packet compresses far smaller the second time: the deflate context is shared."""
    a = codec(compress=True)
    d = {"payload": "".join(random.Random(1).choices(string.ascii_letters, k=2000))}
    first, second = bodies(a.encode(1, d)), bodies(a.encode(1, d))
    assert len(second[0]) * 5 < len(first[0])


def test_compressed_stream_is_raw_deflate_with_sync_flush() -> None:
    """Each body is a sync-flushed chunk of one raw-deflate stream, as fast-zlib reads it."""
    a = codec(compress=True)
    inflate = zlib.decompressobj(-15)
    for i in range(50):
        d = {"i": i, "s": "abc" * i}
        (body,) = bodies(a.encode(1, d, f"n{i}"))
        assert body.endswith(b"\x00\x00\xff\xff")
        assert inflate.decompress(body) == json_dumps({"t": 1, "d": d, "n": f"n{i}"})


def test_compressed_decoder_reads_a_raw_zlib_stream() -> None:
    """Bodies from a plain zlib raw-deflate stream (sync flush) decode in order."""
    deflate = zlib.compressobj(wbits=-15)
    b = codec(compress=True)
    for i in range(50):
        raw = json_dumps({"t": 1, "d": ["x" * i, i]})
        body = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
        assert b.decode(body)[:2] == (1, ["x" * i, i])


def test_inflated_size_limit() -> None:
    """A small compressed body that inflates past max_size raises MessageTooLargeError."""
    (body,) = bodies(codec(compress=True).encode(1, "a" * 1_000_000))
    assert len(body) < 5000
    with pytest.raises(MessageTooLargeError) as info:
        codec(compress=True, max_size=100_000).decode(body)
    assert info.value.limit == 100_000
    assert info.value.size > 100_000


def test_inflated_size_limit_boundary() -> None:
    """An inflated body of exactly max_size is accepted; one byte less of limit refuses it."""
    raw_size = len(json_dumps({"t": 1, "d": "q" * 5000}))
    (body,) = bodies(codec(compress=True).encode(1, "q" * 5000))
    assert codec(compress=True, max_size=raw_size).decode(body)[1] == "q" * 5000
    with pytest.raises(MessageTooLargeError):
        codec(compress=True, max_size=raw_size - 1).decode(body)


def test_failed_encode_leaves_stream_intact() -> None:
    """An unencodable packet raises TypeError and does not corrupt the shared deflate stream."""
    a, b = codec(compress=True), codec(compress=True)
    assert round_trip(a, b, 1, "before", None)[1] == "before"
    with pytest.raises(TypeError):
        a.encode(1, {"bad": object()})
    assert round_trip(a, b, 1, "after", None)[1] == "after"


def test_key_says_when_packets_can_be_shared() -> None:
    """Encoded packets are shareable between connections only without compression."""
    assert codec().key == "json"
    assert codec(messagepack=True).key == "msgpack"
    assert codec(compress=True).key is None


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b"42",
        b'{"d": 1}',
        b'{"t": 7, "d": 1}',
        b'{"t": -1}',
        b'{"t": "1"}',
        b'{"t": true}',
        b'{"t": 1.0}',
        b'{"t": null}',
    ],
)
def test_invalid_json_body_is_protocol_error(body: bytes) -> None:
    """A body that is not a JSON packet object with a valid t raises ProtocolError."""
    with pytest.raises(ProtocolError):
        PacketCodec().decode(body)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",
        b"",
        msgpack.packb([1, 2]),
        msgpack.packb({"t": 9}),
        msgpack.packb({"t": "2"}),
        msgpack.packb({"t": 1}) + b"\x00",  # trailing bytes
    ],
)
def test_invalid_msgpack_body_is_protocol_error(body: bytes) -> None:
    """A body that is not a msgpack packet map with a valid t raises ProtocolError."""
    with pytest.raises(ProtocolError):
        codec(messagepack=True).decode(body)


def test_bad_compressed_body_is_protocol_error() -> None:
    """Bytes that are not raw deflate raise ProtocolError when compression was agreed."""
    with pytest.raises(ProtocolError):
        codec(compress=True).decode(b"\xff\xff\xff\xff garbage")


@pytest.mark.parametrize("messagepack", [False, True])
@pytest.mark.parametrize("value", [object(), {"k": object()}, [1, {2, object()}], 1j])
def test_unencodable_value_raises_type_error(messagepack: bool, value: Any) -> None:
    """A value the codec cannot encode raises TypeError from encode()."""
    with pytest.raises(TypeError):
        codec(messagepack=messagepack).encode(1, value)


def test_codec_starts_as_plain_json() -> None:
    """A fresh codec speaks uncompressed JSON (the CONNECTION exchange always does)."""
    c = PacketCodec()
    assert (c.messagepack, c.compress) == (False, False)
    assert bodies(c.encode(0, {"id": None})) == [b'{"t":0,"d":{"id":null}}']


def test_msgpack_keys_immortal_says_what_this_python_does() -> None:
    """The flag is true exactly where a key msgpack decodes is immortal (CPython
    3.12.0-3.12.5: an immortal object's reference count reads 2**32 - 1)."""
    key = "k" + "".join(random.choices(string.ascii_letters, k=16))
    (decoded,) = msgpack.unpackb(msgpack.packb({key: 1})).keys()
    assert (sys.getrefcount(decoded) > 2**30) == MSGPACK_KEYS_IMMORTAL


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_a_server_that_agrees_to_msgpack_warns_where_keys_are_kept(
    sock_path: str, codec: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On such a Python, a server that agrees to msgpack says at start that peers can grow
    its memory, and what to do; elsewhere, or declining msgpack, it says nothing."""
    caplog.set_level(logging.WARNING, logger="ipc_server")
    server = IPCServer(path=sock_path, codec=codec)  # type: ignore[arg-type]
    await server.start()
    await server.close()
    said = [r.getMessage() for r in caplog.records if "gh-113993" in r.getMessage()]
    if MSGPACK_KEYS_IMMORTAL and codec == "msgpack":
        assert len(said) == 1
        assert 'codec="json"' in said[0]
    else:
        assert said == []
