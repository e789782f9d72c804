"""Packet body codecs: JSON (orjson), msgpack, and the raw-deflate stream.

A ``PacketCodec`` belongs to one connection. It starts in plain JSON
(the CONNECTION exchange is always JSON, uncompressed) and is switched with
``PacketCodec.configure`` once both ends agreed on msgpack and/or
compression (docs/protocol.md). Compression keeps one deflate context per
direction for the life of the connection, as net-ipc's ``fast-zlib`` stream
does: every packet is a sync-flushed chunk of one raw-deflate stream.

A big body (``DEFLATE_OFF_LOOP`` bytes or more) is compressed apart from the
stream, by a ``Deflation`` meant to run off the loop thread; it starts from an
empty history, so its bytes are right on any connection's stream, and a
fan-out compresses it once for every compressed subscriber
(``PacketCodec.encode_shared``). The connection's own stream goes on from the
body's last 32 KiB as its dictionary: what the peer's inflater holds as its
window once it has read the body.

Decoding is bounded twice: a body inflates to at most ``max_size`` bytes,
and holds at most ``max_objects`` containers (dicts and lists), counted
before they are built (JSON) or as they are built, the build stopped at the
bound (msgpack). Every container takes at least one byte (two in JSON), so
only a body longer than ``plain_size`` can cross the bound: shorter ones,
nearly all traffic, are decoded as they are.
"""

from __future__ import annotations

import platform
import re
import sys
import zlib
from typing import Any, Literal

import msgpack
import orjson

from .errors import MessageTooLargeError, ProtocolError
from .protocol import _SMALL_TAGS, BIG_BODY, DEFAULT_MAX_MESSAGE_SIZE, encode_tag

__all__ = [
    "CODECS",
    "DEFAULT_MAX_PACKET_OBJECTS",
    "DEFLATE_OFF_LOOP",
    "MSGPACK_KEYS_IMMORTAL",
    "CodecName",
    "Deflation",
    "Encoded",
    "PacketCodec",
    "json_containers",
    "json_dumps",
    "msgpack_keys_warning",
    "msgpack_packer",
]

CodecName = Literal["json", "msgpack"]
CODECS: tuple[CodecName, ...] = ("json", "msgpack")

DEFAULT_MAX_PACKET_OBJECTS = 1_000_000
"""Default bound on the containers (dicts and lists) one packet may hold."""

MSGPACK_KEYS_IMMORTAL = (3, 12, 0) <= sys.version_info[:3] < (3, 12, 6)
"""Whether this Python keeps every str map key msgpack decodes, for ever: msgpack interns
them, and CPython 3.12.0 to 3.12.5 made interned strings immortal (CPython gh-113993,
mortal again in 3.12.6; msgpack-python#612). There, a peer that speaks msgpack grows
the process's memory by every new key it sends, without bound."""


def msgpack_keys_warning(codec: str) -> str | None:
    """What a server that agrees to ``codec`` should log at start on such a Python."""
    if codec != "msgpack" or not MSGPACK_KEYS_IMMORTAL:
        return None
    return (
        f"Python {platform.python_version()} keeps every map key a msgpack peer sends, for "
        "ever (CPython gh-113993, fixed in 3.12.6): a peer can grow this server's memory "
        'without bound; use Python 3.12.6 or later, or codec="json"'
    )


DEFLATE_OFF_LOOP = 64 * 1024
"""Bodies at least this long are compressed by a ``Deflation`` (off the loop thread)."""

_WINDOW = 32 * 1024  # raw deflate with wbits=15: the farthest a match reaches back


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        # The shape Node's JSON.stringify gives a Buffer, so a Node peer can
        # rebuild it with Buffer.from(value.data). Use the msgpack codec to
        # get bytes back as bytes.
        return {"type": "Buffer", "data": list(bytes(obj))}
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def json_dumps(obj: Any) -> bytes:
    """Encode ``obj`` as JSON bytes (bytes become Node's Buffer JSON shape).

    Non-str dict keys are written as strings, as JavaScript would.
    """
    try:
        return orjson.dumps(obj)  # the fast path: plain JSON types only
    except TypeError:
        return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, memoryview):
        return bytes(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _msgpack_ext(code: int, data: bytes) -> Any:
    # msgpackr (net-ipc's msgpack) writes JavaScript `undefined` as fixext 1,
    # type 0, data 0: read it as None, like JSON.stringify dropping it.
    if code == 0 and data == b"\x00":
        return None
    return msgpack.ExtType(code, data)


def msgpack_packer() -> msgpack.Packer:
    """A msgpack packer with the options this library uses (bytes as bin)."""
    return msgpack.Packer(use_bin_type=True, datetime=True, default=_msgpack_default)


def _msgpack_loads(body: bytes | bytearray | memoryview) -> Any:
    return msgpack.unpackb(
        body, raw=False, strict_map_key=False, timestamp=3, ext_hook=_msgpack_ext
    )


def _too_many(limit: int) -> MessageTooLargeError:
    return MessageTooLargeError(
        limit + 1,
        limit,
        option="max_packet_objects",
        unit="or more containers (dicts and lists)",
    )


class _Crossed(Exception):
    """Raised by the msgpack hooks at the bound: the build stops there."""


def _msgpack_loads_counted(body: bytes | bytearray | memoryview, limit: int) -> Any:
    """``_msgpack_loads`` that stops building after ``limit`` containers.

    Raises:
        MessageTooLargeError: The body holds more than ``limit`` containers.
    """
    left = limit

    def count(obj: Any) -> Any:
        # Called once per map and per array, as each is complete.
        nonlocal left
        left -= 1
        if left < 0:
            raise _Crossed
        return obj

    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=False,
            timestamp=3,
            ext_hook=_msgpack_ext,
            object_hook=count,
            list_hook=count,
        )
    except _Crossed:
        raise _too_many(limit) from None


_KEEP_OPENERS = bytes(sorted(set(range(256)) - set(b"{[")))  # translate() deletes the rest
_KEEP_MARKS = bytes(sorted(set(range(256)) - set(b'"{[')))
_STRING = re.compile(rb'"[^"]*"')


def json_containers(body: bytes | bytearray, stop: int) -> int:
    """How many dicts and lists the JSON ``body`` holds, counted without decoding it.

    Exact for valid JSON; for any body, never fewer than a JSON parser
    builds before it meets an error (both read the same strings up to
    there). Once past ``stop`` it may stop counting: the result is then some
    number over ``stop``. Linear in the body, in C but for one Python step
    per string that holds an opener or follows one outside strings (at most
    ``stop`` + 2 steps).
    """
    if b"\\" in body:
        # Escapes out of the way (only strings hold them): a pair of
        # backslashes is one character, then a backslash-quote is a quote
        # inside a string. Every quote left opens or closes a string.
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _KEEP_MARKS)  # quotes and openers, in order
    if b'"' not in marks:
        return len(marks)
    # Two quotes side by side are an empty string, or the end of one string and
    # the start of the next: without them every opener stays inside or outside.
    marks = marks.replace(b'""', b"")
    outside = 0
    last = 0
    for string in _STRING.finditer(marks):
        outside += string.start() - last
        if outside > stop:
            return outside
        last = string.end()
    return outside + len(marks) - last


def _json_loads_counted(body: bytes | bytearray | memoryview, limit: int) -> Any:
    """``orjson.loads`` of a body that is first shown to hold at most ``limit`` containers.

    Raises:
        MessageTooLargeError: The body holds more than ``limit`` containers.
    """
    data = body if body.__class__ is bytes or body.__class__ is bytearray else bytes(body)
    # Openers counted with those inside strings: an upper bound that is enough
    # nearly always; the exact count only when it is not.
    if len(data.translate(None, _KEEP_OPENERS)) > limit and json_containers(data, limit) > limit:
        raise _too_many(limit)
    return orjson.loads(data)


_MSGPACK_MAP2 = b"\x82"
_MSGPACK_MAP3 = b"\x83"
_MSGPACK_T = b"\xa1t"
_MSGPACK_D = b"\xa1d"
_MSGPACK_N = b"\xa1n"


def _msgpack_int(value: int) -> bytes:
    return bytes((value,)) if 0 <= value < 0x80 else bytes(msgpack.packb(value))


def _msgpack_bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


class Deflation:
    """A big body to compress apart from the connection's stream (see the module docstring).

    ``run()`` does the work and may run on any thread (zlib releases the GIL
    while it compresses); the driver keeps the packet's place in its output
    until then. One ``Deflation`` can go to many connections (a fan-out).

    Attributes:
        size: Length of the body before compressing.
        tail: The body's last 32 KiB, the dictionary of the stream after it.
        job: Free for the driver (the asyncio one keeps its future here).
    """

    __slots__ = ("_body", "job", "size", "tail")

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body
        self.size = len(body)
        self.tail = body[-_WINDOW:]
        self.job: Any = None

    def run(self) -> list[bytes]:
        """Compress the body; returns the framed packet as ``[tag, compressed body]``."""
        body = self._body
        if body is None:
            raise RuntimeError("this Deflation already ran")
        self._body = None  # the body is not needed any more: free it as soon as possible
        deflate = zlib.compressobj(wbits=-15)
        compressed = deflate.compress(body) + deflate.flush(zlib.Z_SYNC_FLUSH)
        return [encode_tag(len(compressed)), compressed]


Encoded = bytes | list[bytes] | Deflation
"""What ``PacketCodec.encode_parts`` gives: framed bytes, framed parts, or a body to compress."""


class PacketCodec:
    """Encodes and decodes the packets of one connection.

    Attributes:
        messagepack: Whether bodies are msgpack (else JSON).
        compress: Whether bodies go through the shared raw-deflate stream.
        max_size: Limit for a body after inflating, in bytes.
        max_objects: Limit for the containers (dicts and lists) of one packet.
        plain_size: Bodies of at most this many bytes cannot hold more than
            ``max_objects`` containers (one byte each in msgpack, two in JSON).
        key: Connections with the same key can share encoded packets (None: compressed;
            ``encode_shared`` shares what can be shared of those).
        loads: Decodes an uncompressed body of at most ``plain_size`` bytes to
            its packet (``decode`` without the checks: for a driver's fast path,
            which checks the result itself and hands longer bodies to ``decode``).
    """

    __slots__ = (
        "_bin_parts",
        "_counted",
        "_deflate",
        "_inflate",
        "_pack",
        "_pack_slow",
        "compress",
        "key",
        "loads",
        "max_objects",
        "max_size",
        "messagepack",
        "plain_size",
    )

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_objects: int = DEFAULT_MAX_PACKET_OBJECTS,
    ) -> None:
        self.max_size = max_size
        self.max_objects = max_objects
        self.plain_size = 2 * max_objects
        self._counted: Any = _json_loads_counted
        self.messagepack = False
        self.compress = False
        self._pack: Any = orjson.dumps
        self._pack_slow: Any = json_dumps
        self.loads: Any = orjson.loads
        self._deflate: Any = None
        self._inflate: Any = None
        self._bin_parts = False
        self.key: str | None = "json"

    def configure(self, *, messagepack: bool, compress: bool) -> None:
        """Switch to what the CONNECTION exchange agreed on."""
        self.messagepack = messagepack
        self.compress = compress
        if messagepack:
            self._pack = self._pack_slow = msgpack_packer().pack
            self.loads = _msgpack_loads
            self._counted = _msgpack_loads_counted
            self.plain_size = self.max_objects
        else:
            self._pack = orjson.dumps
            self._pack_slow = json_dumps
            self.loads = orjson.loads
            self._counted = _json_loads_counted
            self.plain_size = 2 * self.max_objects
        self._bin_parts = messagepack and not compress
        self.key = None if compress else "msgpack" if messagepack else "json"
        if compress:
            self._deflate = zlib.compressobj(wbits=-15)
            self._inflate = zlib.decompressobj(wbits=-15)
        else:
            self._deflate = self._inflate = None

    def _pack_packet(self, packet: dict[str, Any]) -> bytes:
        try:
            body: bytes = self._pack(packet)
        except TypeError:
            body = self._pack_slow(packet)
        return body

    def encode_body(self, packet: dict[str, Any]) -> bytes:
        """Encode one packet dict to its body (without the tag)."""
        body = self._pack_packet(packet)
        if self._deflate is not None:
            body = self._deflate.compress(body) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        return body

    def encode(self, t: int, d: Any, n: str | None = None) -> bytes:
        """Encode a packet ``{t, d, n}`` to framed bytes, ready to write (compressed here).

        Raises:
            TypeError: ``d`` holds something the codec cannot encode.
        """
        if d.__class__ is bytes and self._bin_parts and len(d) >= BIG_BODY:
            return b"".join(self._bin_packet(t, d, n))
        body = self.encode_body({"t": t, "d": d} if n is None else {"t": t, "d": d, "n": n})
        size = len(body)
        return (_SMALL_TAGS[size] if size < 0x4000 else encode_tag(size)) + body

    def size_of(self, value: Any) -> int:
        """The bytes ``value`` takes in a body of this codec (before compression).

        Raises:
            TypeError: The codec cannot encode ``value``.
        """
        try:
            return len(self._pack(value))
        except TypeError:
            return len(self._pack_slow(value))

    def encode_parts(
        self,
        t: int,
        d: Any,
        n: str | None = None,
        extra: dict[str, Any] | None = None,
        dl: float | None = None,
    ) -> Encoded:
        """Like ``encode``; a big payload may come back in parts, or still to compress.

        ``extra`` holds the extension fields of the packet (``packets.request_fields``);
        ``dl``, a plain request's deadline (``"dl"``, seconds), is the common one.

        With msgpack and no compression, a ``bytes`` ``d`` of ``BIG_BODY``
        bytes or more is not copied: the result is ``[tag + head, d, tail]``
        for ``transport.writelines``, where head and tail are the msgpack
        bytes around the payload (map header, ``t``, the bin header; ``n``).
        With compression, a body of ``DEFLATE_OFF_LOOP`` bytes or more comes
        back as a ``Deflation``: the driver runs it (off its loop thread) and
        writes its result in this packet's place, before anything encoded later.
        This is the hot path of every send, request and response.

        Raises:
            TypeError: ``d`` holds something the codec cannot encode.
        """
        if dl is not None:
            packet = {"t": t, "d": d, "n": n, "dl": dl}
        elif extra is not None:
            packet = {"t": t, "d": d, "n": n, **extra}
        elif d.__class__ is bytes and self._bin_parts and len(d) >= BIG_BODY:
            return self._bin_packet(t, d, n)
        else:
            packet = {"t": t, "d": d} if n is None else {"t": t, "d": d, "n": n}
        try:
            body: bytes = self._pack(packet)
        except TypeError:
            body = self._pack_slow(packet)
        deflate = self._deflate
        if deflate is not None:
            if len(body) >= DEFLATE_OFF_LOOP:
                return self._deflation(body)
            body = deflate.compress(body) + deflate.flush(zlib.Z_SYNC_FLUSH)
        size = len(body)
        return (_SMALL_TAGS[size] if size < 0x4000 else encode_tag(size)) + body

    def encode_shared(self, t: int, d: Any, cache: dict[str, Any]) -> Encoded:
        """Encode a packet sent to many connections, sharing the work through ``cache``.

        Start with an empty ``cache`` per packet and pass it to the codec of
        every recipient: connections of one codec (``key``) get the same bytes;
        compressed ones share the encoded body and, for a big body, one
        ``Deflation`` (compressed once for all of them).

        Raises:
            TypeError: ``d`` holds something the codec cannot encode.
        """
        key = self.key
        if key is not None:
            packet: Encoded | None = cache.get(key)
            if packet is None:
                packet = cache[key] = self.encode_parts(t, d)
            return packet
        kind = "msgpack" if self.messagepack else "json"
        shared: Deflation | None = cache.get(kind + "+deflate")
        if shared is not None:
            self._restart(shared.tail)
            return shared
        body: bytes | None = cache.get(kind + " body")
        if body is None:
            body = cache[kind + " body"] = self._pack_packet({"t": t, "d": d})
        if len(body) >= DEFLATE_OFF_LOOP:
            deflation = cache[kind + "+deflate"] = self._deflation(body)
            return deflation
        deflate = self._deflate
        body = deflate.compress(body) + deflate.flush(zlib.Z_SYNC_FLUSH)
        size = len(body)
        return (_SMALL_TAGS[size] if size < 0x4000 else encode_tag(size)) + body

    def _deflation(self, body: bytes) -> Deflation:
        deflation = Deflation(body)
        self._restart(deflation.tail)
        return deflation

    def _restart(self, tail: bytes) -> None:
        # The peer's inflater, once it has read the body, has the body's last
        # 32 KiB as its window: this stream goes on from there.
        self._deflate = zlib.compressobj(wbits=-15, zdict=tail)

    @staticmethod
    def _bin_packet(t: int, d: bytes, n: str | None) -> list[bytes]:
        head = _MSGPACK_MAP2 if n is None else _MSGPACK_MAP3
        head += _MSGPACK_T + _msgpack_int(t) + _MSGPACK_D + _msgpack_bin_header(len(d))
        tail = b"" if n is None else _MSGPACK_N + msgpack.packb(n)
        size = len(head) + len(d) + len(tail)
        parts = [encode_tag(size) + head, d]
        if tail:
            parts.append(tail)
        return parts

    def decode(self, body: bytes | bytearray | memoryview) -> tuple[int, Any, Any, dict[str, Any]]:
        """Decode one body to ``(t, d, n, packet)``.

        Raises:
            ProtocolError: The body is not a packet in the agreed codec.
            MessageTooLargeError: Inflating it would exceed ``max_size``, or it
                holds more than ``max_objects`` containers.
        """
        if self._inflate is not None:
            try:
                # Never inflate more than the limit (a zip bomb stops here).
                raw = self._inflate.decompress(body, self.max_size + 1)
            except zlib.error as exc:
                raise ProtocolError(f"bad compressed packet: {exc}") from exc
            if len(raw) > self.max_size:
                raise MessageTooLargeError(len(raw), self.max_size, "inflated packet")
            body = raw
        try:
            if len(body) <= self.plain_size:
                packet = self.loads(body)
            else:
                packet = self._counted(body, self.max_objects)
        except MessageTooLargeError:
            raise
        except Exception as exc:
            kind = "msgpack" if self.messagepack else "JSON"
            raise ProtocolError(f"packet is not valid {kind}: {exc}") from exc
        if type(packet) is not dict:
            raise ProtocolError(f"packet is not an object: {type(packet).__name__}")
        t = packet.get("t")
        if type(t) is not int or not 0 <= t <= 6:
            raise ProtocolError(f"packet has no valid type: t={t!r}")
        return t, packet.get("d"), packet.get("n"), packet
