"""Packet body codecs: JSON (orjson), msgpack, and the raw-deflate stream.

A :class:`PacketCodec` belongs to one connection. It starts in plain JSON
(the CONNECTION exchange is always JSON, uncompressed) and is switched with
:meth:`PacketCodec.configure` once both ends agreed on msgpack and/or
compression (SPEC section 6.4). Compression keeps one deflate context per
direction for the life of the connection, as net-ipc's ``fast-zlib`` stream
does: every packet is a sync-flushed chunk of one raw-deflate stream.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

import msgpack
import orjson

from .errors import MessageTooLargeError, ProtocolError
from .protocol import DEFAULT_MAX_MESSAGE_SIZE, frame

__all__ = ["CODECS", "CodecName", "PacketCodec", "json_dumps", "msgpack_packer"]

CodecName = Literal["json", "msgpack"]
CODECS: tuple[CodecName, ...] = ("json", "msgpack")

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


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
    """Encode ``obj`` as JSON bytes (bytes become Node's Buffer JSON shape)."""
    return orjson.dumps(obj, default=_json_default, option=_JSON_OPTIONS)


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


def _msgpack_loads(body: bytes | bytearray) -> Any:
    return msgpack.unpackb(
        body, raw=False, strict_map_key=False, timestamp=3, ext_hook=_msgpack_ext
    )


class PacketCodec:
    """Encodes and decodes the packets of one connection.

    Attributes:
        messagepack: Whether bodies are msgpack (else JSON).
        compress: Whether bodies go through the shared raw-deflate stream.
        max_size: Limit for a body after inflating, in bytes.
    """

    __slots__ = ("_deflate", "_inflate", "_loads", "_pack", "compress", "max_size", "messagepack")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self.messagepack = False
        self.compress = False
        self._pack = json_dumps
        self._loads: Any = orjson.loads
        self._deflate: Any = None
        self._inflate: Any = None

    def configure(self, *, messagepack: bool, compress: bool) -> None:
        """Switch to what the CONNECTION exchange agreed on."""
        self.messagepack = messagepack
        self.compress = compress
        if messagepack:
            self._pack = msgpack_packer().pack
            self._loads = _msgpack_loads
        else:
            self._pack = json_dumps
            self._loads = orjson.loads
        if compress:
            self._deflate = zlib.compressobj(wbits=-15)
            self._inflate = zlib.decompressobj(wbits=-15)
        else:
            self._deflate = self._inflate = None

    @property
    def key(self) -> str | None:
        """Connections with the same key can share encoded packets (None: never)."""
        if self.compress:
            return None
        return "msgpack" if self.messagepack else "json"

    def encode_body(self, packet: dict[str, Any]) -> bytes:
        """Encode one packet dict to its body (without the tag)."""
        body: bytes = self._pack(packet)
        if self._deflate is not None:
            body = self._deflate.compress(body) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        return body

    def encode(self, t: int, d: Any, n: str | None = None) -> bytes:
        """Encode a packet ``{t, d, n}`` to framed bytes, ready to write.

        Raises:
            TypeError: ``d`` holds something the codec cannot encode.
        """
        packet = {"t": t, "d": d} if n is None else {"t": t, "d": d, "n": n}
        return frame(self.encode_body(packet))

    def decode(self, body: bytes | bytearray) -> tuple[int, Any, Any, dict[str, Any]]:
        """Decode one body to ``(t, d, n, packet)``.

        Raises:
            ProtocolError: The body is not a packet in the agreed codec.
            MessageTooLargeError: Inflating it would exceed ``max_size``.
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
            packet = self._loads(body)
        except Exception as exc:
            kind = "msgpack" if self.messagepack else "JSON"
            raise ProtocolError(f"packet is not valid {kind}: {exc}") from exc
        if type(packet) is not dict:
            raise ProtocolError(f"packet is not an object: {type(packet).__name__}")
        t = packet.get("t")
        if type(t) is not int or not 0 <= t <= 6:
            raise ProtocolError(f"packet has no valid type: t={t!r}")
        return t, packet.get("d"), packet.get("n"), packet
