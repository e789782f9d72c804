"""The sans-I/O core of the wire protocol (docs/protocol.md).

Nothing here awaits, reads a clock or touches a socket: it turns bytes into
packet bodies and preamble verdicts, and packets into bytes. ``endpoint.py``
drives it from ``data_received``; the blocking client drives it from a socket.

Framing: every packet is a length tag followed by the body. The tag is the
body length in base-128 digits, most significant first; every byte but the
last has the high bit clear, the last has it set (5 is ``0x85``, 300 is
``0x02 0xAC``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .errors import MessageTooLargeError, ProtocolError

__all__ = [
    "ACCEPTED_UPGRADE_TOKENS",
    "BINARY_PREAMBLE",
    "DEFAULT_MAX_HANDSHAKE_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_PREAMBLE_SIZE",
    "Body",
    "ClientPreamble",
    "FrameDecoder",
    "ServerPreamble",
    "encode_tag",
    "frame",
    "upgrade_request",
]

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Default limit for one packet body (and for its inflated size), in bytes."""

DEFAULT_MAX_HANDSHAKE_SIZE = 64 * 1024
"""Default limit for a packet body before the CONNECTION exchange is over, in bytes."""

BINARY_PREAMBLE = b"IPC"
"""The three bytes a client sends first when it does not use the HTTP upgrade."""

ACCEPTED_UPGRADE_TOKENS = ("net-ipc", "isdk-ipc")
"""``Upgrade:`` tokens the server accepts; it answers with the same token."""

MAX_PREAMBLE_SIZE = 8192
"""The longest HTTP upgrade request or response we buffer before giving up."""

_MAX_TAG_BYTES = 8  # 7 * 8 = 56 bits: far above any sane limit

RECV_SIZE = 256 * 1024
"""Size of the receive buffer each thread shares between its connections."""

FRESH_READ_SIZE = 64 * 1024
"""The most one read asks for where each read allocates its buffer afresh.

Below glibc's 128 KiB threshold for mapping memory of its own, so the buffer
comes from the heap: a larger one maps, touches and unmaps a region per read.
"""

BIG_BODY = 64 * 1024
"""Bodies at least this long are received into a buffer of their final size."""


def encode_tag(length: int) -> bytes:
    """The length tag for a body of ``length`` bytes."""
    if length < 0x80:
        return bytes((length | 0x80,))
    digits = [(length & 0x7F) | 0x80]
    length >>= 7
    while length:
        digits.append(length & 0x7F)
        length >>= 7
    digits.reverse()
    return bytes(digits)


_SMALL_TAGS = [encode_tag(n) for n in range(0x4000)]


def frame(body: bytes) -> bytes:
    """``body`` with its length tag in front: one packet, ready to write."""
    n = len(body)
    if n < 0x4000:
        return _SMALL_TAGS[n] + body
    return encode_tag(n) + body


def _read_tag(
    source: bytes | bytearray | memoryview, pos: int, size: int, max_size: int, option: str
) -> tuple[int, int] | None:
    """``(length, end of tag)`` of the tag at ``pos``; None if it is not complete yet.

    Raises:
        ProtocolError: The tag is longer than any body could need.
        MessageTooLargeError: The tag already announces more than ``max_size`` (set by ``option``).
    """
    length = 0
    i = pos
    while i < size:
        byte = source[i]
        i += 1
        if byte & 0x80:
            return (length << 7) | (byte & 0x7F), i
        length = (length << 7) | byte
        if i - pos >= _MAX_TAG_BYTES:
            raise ProtocolError(f"length tag longer than {_MAX_TAG_BYTES} bytes")
        # The final length is at least this times 128: refuse early.
        if (length << 7) > max_size:
            raise MessageTooLargeError(length << 7, max_size, option=option)
    return None


Body = bytes | bytearray | memoryview
"""A packet body as the decoder returns it (a big one is a view of its buffer)."""


class FrameDecoder:
    """Splits a byte stream into packet bodies.

    Contract for the driver: call ``feed`` with every chunk as it arrives,
    or read each chunk into ``get_buffer()`` and call ``advance`` with its
    length; either returns the list of complete bodies (possibly empty) in
    order. A partial packet stays buffered until the rest arrives. If a tag
    announces a body over ``max_size``, they raise ``MessageTooLargeError``
    (naming ``option``, the setting the limit comes from) before a byte of it
    is buffered, and the decoder is then unusable (the stream cannot be
    resynchronised): close the connection.

    The limit can change between reads (``limit``): a server refuses bodies
    over ``max_handshake_size`` until it admits the peer. ``limit_first``
    gives the next body a limit of its own, and the bodies behind it in the
    same read the usual one: a client bounds the server's CONNECTION answer
    without refusing a big message the server sends right after it.

    Bodies are returned as ``bytes`` or ``bytearray`` (a whole chunk holding
    exactly whole packets is sliced without first being copied into the
    buffer). A body of ``BIG_BODY`` bytes or more is received into a buffer of
    its final size and returned as a ``memoryview`` of it; a driver that
    reads into ``get_buffer()`` has the stream read straight into that
    buffer. Once such a body is decoded, ``recycle`` lets its buffer serve
    the next big body.
    """

    __slots__ = ("_big", "_big_fill", "_buf", "_then", "max_size", "option")

    def __init__(
        self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE, option: str = "max_message_size"
    ) -> None:
        self.max_size = max_size
        self.option = option
        self._buf = bytearray()
        self._big: memoryview | None = None
        self._big_fill = 0
        self._then: tuple[int, str] | None = None  # the limit after the first body (limit_first)

    def limit(self, max_size: int, option: str = "max_message_size") -> None:
        """Refuse bodies over ``max_size`` from the next read on (the error names ``option``)."""
        self.max_size = max_size
        self.option = option
        self._then = None

    def limit_first(self, max_size: int, option: str) -> None:
        """Refuse a next body over ``max_size`` (naming ``option``); the bodies after it
        get the limit in force now. Call it between bodies (before the stream starts).
        """
        self._then = (self.max_size, self.option)
        self.max_size = max_size
        self.option = option

    @property
    def buffered(self) -> int:
        """Bytes held for a packet not yet complete."""
        return len(self._buf) + self._big_fill

    def feed(self, data: bytes | bytearray | memoryview) -> list[Body]:
        """Add ``data`` to the stream and return every body now complete."""
        if self._big is not None:
            return self._feed_big(data)
        if self._then is not None:
            return self._first(data)
        buf = self._buf
        if not buf and data.__class__ is bytes and data:
            # Fast path: a chunk that is exactly one small packet (request/response traffic).
            first = data[0]
            if first & 0x80:
                if len(data) == (first & 0x7F) + 1 and (first & 0x7F) <= self.max_size:
                    return [data[1:]]
            elif len(data) > 1 and data[1] & 0x80:
                length = (first << 7) | (data[1] & 0x7F)
                if len(data) == length + 2 and length <= self.max_size:
                    return [data[2:]]
        if buf:
            buf += data
            return self._split(buf, len(buf))
        source = data if isinstance(data, bytes) else bytes(data)
        return self._split(source, len(source))

    def get_buffer(self) -> memoryview:
        """Where the next read from the stream should go (``asyncio.BufferedProtocol``).

        The remaining room of a big body being received, so the read lands in
        its final place; otherwise a receive buffer shared by every decoder of
        this thread, which ``advance`` empties before the next read. Call
        ``advance`` with the number of bytes read before anything else.
        """
        big = self._big
        if big is not None:
            return big[self._big_fill :]
        return _scratch_view()

    def advance(self, nbytes: int) -> list[Body]:
        """``nbytes`` were read into ``get_buffer()``: return every body now complete."""
        big = self._big
        if big is not None:
            fill = self._big_fill + nbytes
            if fill < len(big):
                self._big_fill = fill
                return []
            self._big, self._big_fill = None, 0
            return [big]
        if self._then is not None:
            with memoryview(_scratch()) as view:
                return self._first(view[:nbytes])
        scratch = _scratch()
        buf = self._buf
        if buf:
            with memoryview(scratch) as view:
                buf += view[:nbytes]
            return self._split(buf, len(buf))
        return self._split(scratch, nbytes)

    @property
    def receiving_body(self) -> bool:
        """Whether reads go straight into a big body's buffer (see ``get_buffer``)."""
        return self._big is not None

    def take(self, nbytes: int) -> bytes:
        """The ``nbytes`` just read into ``get_buffer()``, copied out as bytes.

        For a driver that must look at the bytes before they are packets (a
        preamble); it passes the packet part on to ``feed``. Only while
        ``receiving_body`` is False: a read into a body's buffer goes to
        ``advance``.
        """
        if self._big is not None:
            raise RuntimeError("the read went into a body's buffer; call advance()")
        return bytes(_scratch()[:nbytes])

    @staticmethod
    def recycle(body: Body) -> None:
        """``body``, a big one, was decoded and is no longer used: its buffer may serve again.

        Each thread keeps one spare buffer, the last one recycled; it serves
        the next big body of a length between half its size and its size, so
        a burst of big messages costs no new memory and no page faults, and
        the spare follows the size of recent messages.
        """
        if body.__class__ is memoryview:
            _local.spare = body.obj

    def _split(self, source: bytes | bytearray, size: int) -> list[Body]:
        """The complete bodies in ``source[:size]``; keep what is left over.

        ``source`` is ``self._buf``, a chunk, or the shared receive buffer: a
        partial packet at its end is copied into ``self._buf`` (or into the
        body buffer of a big packet), so ``source`` may be reused afterwards.
        """
        buf = self._buf
        out: list[Body] = []
        append = out.append
        pos = 0
        max_size = self.max_size
        check_small = max_size < 0x3FFF  # else no one- or two-byte tag can exceed it
        last = size - 1
        while pos < size:
            # Tags of one and two bytes (bodies under 16 KiB) are read inline.
            byte = source[pos]
            if byte >= 0x80:
                i = pos + 1
                end = i + byte - 0x80
            elif pos < last and (low := source[pos + 1]) >= 0x80:
                i = pos + 2
                end = i + (byte << 7) + low - 0x80
            else:
                tag = _read_tag(source, pos, size, max_size, self.option)
                if tag is None:
                    # Incomplete tag: keep it and wait for the rest.
                    self._keep(source, pos, size)
                    return out
                length, i = tag
                if length > max_size:
                    raise MessageTooLargeError(length, max_size, option=self.option)
                end = i + length
            if check_small and end - i > max_size:
                raise MessageTooLargeError(end - i, max_size, option=self.option)
            if end > size:
                length = end - i
                # A big body gets a buffer of its final size: the thread's spare one,
                # or a new one once an eighth of it has arrived (a tag alone, say
                # 64 MiB from a peer not even admitted, must not cost more memory
                # than the peer really sent).
                if length >= BIG_BODY:
                    spare = _take_spare(length)
                    if spare is not None or (size - i) * 8 >= length:
                        body = memoryview(bytearray(length) if spare is None else spare)[:length]
                        with memoryview(source) as view:
                            body[: size - i] = view[i:size]
                        self._big, self._big_fill = body, size - i
                        if buf:
                            buf.clear()
                        return out
                self._keep(source, pos, size)
                return out
            append(source[i:end])
            pos = end
        if buf:
            buf.clear()
        return out

    def _first(self, data: bytes | bytearray | memoryview) -> list[Body]:
        """``feed`` or ``advance`` under ``limit_first``: cut the first body alone, with
        its own limit, then split what follows it as usual.

        Until the first body is complete it is kept in ``_buf`` (at most its
        limit and one read), never in a body buffer of its own; a read whose
        tag is refused is not copied at all.
        """
        buf = self._buf
        source: bytes | bytearray | memoryview = data
        if buf:
            buf += data
            source = buf
        size = len(source)
        max_size = self.max_size
        tag = _read_tag(source, 0, size, max_size, self.option)
        if tag is not None:
            length, i = tag
            if length > max_size:
                raise MessageTooLargeError(length, max_size, option=self.option)
            end = i + length
            if end <= size:
                assert self._then is not None
                self.max_size, self.option = self._then
                self._then = None
                body = bytes(source[i:end])
                rest = bytes(source[end:size])
                buf.clear()
                return [body, *self._split(rest, len(rest))] if rest else [body]
        if source is not buf:
            buf += data
        return []

    def _feed_big(self, data: bytes | bytearray | memoryview) -> list[Body]:
        body = self._big
        assert body is not None
        fill = self._big_fill
        need = len(body) - fill
        n = len(data)
        if n < need:
            body[fill : fill + n] = data
            self._big_fill = fill + n
            return []
        self._big, self._big_fill = None, 0
        if n == need:
            body[fill:] = data
            return [body]
        with memoryview(data) as view:
            body[fill:] = view[:need]
            rest = bytes(view[need:])
        return [body, *self.feed(rest)]

    def _keep(self, source: bytes | bytearray, pos: int, size: int) -> None:
        buf = self._buf
        if source is buf:
            if pos:
                del buf[:pos]
        else:
            with memoryview(source) as view:
                buf += view[pos:size]


_local = threading.local()


def _take_spare(length: int) -> bytearray | None:
    """The thread's spare body buffer if it suits a body of ``length`` bytes (it is then taken)."""
    spare: bytearray | None = getattr(_local, "spare", None)
    if spare is not None and length <= len(spare) <= 2 * length:
        _local.spare = None
        return spare
    return None


def _scratch() -> bytearray:
    """This thread's receive buffer (a loop reads one stream at a time, then parses it)."""
    try:
        buf: bytearray = _local.scratch
    except AttributeError:
        buf = _local.scratch = bytearray(RECV_SIZE)
        _local.scratch_view = memoryview(buf)
    return buf


def _scratch_view() -> memoryview:
    """A view of ``_scratch()``: what a loop reads into.

    A view, not the bytearray: asyncio's TLS transport reads the rest of a
    record into ``buffer[offset:]``, which for a bytearray would be a copy.
    """
    try:
        view: memoryview = _local.scratch_view
    except AttributeError:
        _scratch()
        view = _local.scratch_view
    return view


@dataclass(frozen=True)
class PreambleResult:
    """What the server makes of a client's first bytes.

    Attributes:
        accepted: Whether the client may go on to the CONNECTION exchange.
        consumed: How many bytes the preamble took; the rest are packets.
        reply: Bytes to send back before anything else (the HTTP 101 or 404
            answer); empty for the binary preamble and for garbage.
        token: The upgrade token when the HTTP upgrade was used.
        error: Why the preamble was refused, when it was.
    """

    accepted: bool
    consumed: int
    reply: bytes = b""
    token: str | None = None
    error: str | None = None


def _parse_headers(head: bytes) -> tuple[str, dict[str, str]]:
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def upgrade_request(host: str, token: str) -> bytes:
    """The HTTP upgrade request a client sends instead of ``IPC`` (``handshake=True``)."""
    return (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {token}\r\n\r\n"
    ).encode("latin-1")


def upgrade_response(token: str) -> bytes:
    """The server's answer to an accepted upgrade request."""
    return (
        f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {token}\r\n\r\n"
    ).encode("latin-1")


NOT_FOUND_RESPONSE = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class ServerPreamble:
    """Recognises the client's preamble on the server side.

    Contract: call ``feed`` with each chunk until it returns a
    ``PreambleResult`` (``None`` means: need more bytes). After that,
    bytes from ``consumed`` on in the data seen so far (``data``) are
    packet data for the ``FrameDecoder``.
    """

    __slots__ = ("data", "tokens")

    def __init__(self, tokens: tuple[str, ...] = ACCEPTED_UPGRADE_TOKENS) -> None:
        self.tokens = tokens
        self.data = bytearray()

    def feed(self, chunk: bytes) -> PreambleResult | None:
        """Add ``chunk``; return the verdict once there is one."""
        data = self.data
        data += chunk
        if len(data) < 3:
            if not (BINARY_PREAMBLE.startswith(data) or b"GET".startswith(data)):
                return PreambleResult(False, 0, error=f"bad preamble {bytes(data)!r}")
            return None
        head = bytes(data[:3])
        if head == BINARY_PREAMBLE:
            return PreambleResult(True, 3)
        if head != b"GET":
            return PreambleResult(False, 0, error=f"bad preamble {bytes(data[:16])!r}")
        end = data.find(b"\r\n\r\n")
        # The same verdict however the bytes were chunked: a request whose
        # head cannot end within MAX_PREAMBLE_SIZE bytes is refused.
        if (end < 0 and len(data) >= MAX_PREAMBLE_SIZE) or end + 4 > MAX_PREAMBLE_SIZE:
            return PreambleResult(False, 0, error="HTTP upgrade request too long")
        if end < 0:
            return None
        consumed = end + 4
        _, headers = _parse_headers(bytes(data[:end]))
        token = headers.get("upgrade", "")
        connection = headers.get("connection", "").lower()
        if "upgrade" in connection and token in self.tokens:
            return PreambleResult(True, consumed, upgrade_response(token), token)
        return PreambleResult(
            False,
            consumed,
            NOT_FOUND_RESPONSE,
            error=f"HTTP request without an accepted upgrade ({token or 'none'})",
        )


class ClientPreamble:
    """Reads the server's answer to an HTTP upgrade request on the client side.

    Contract: ``feed`` each chunk until it returns ``consumed`` (an int:
    accepted, bytes of ``data`` from ``consumed`` on are packets) or
    raises ``ProtocolError`` (refused); ``None`` means: need more.
    """

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def feed(self, chunk: bytes) -> int | None:
        """Add ``chunk``; return the preamble length once it is complete."""
        data = self.data
        data += chunk
        end = data.find(b"\r\n\r\n")
        if (end < 0 and len(data) >= MAX_PREAMBLE_SIZE) or end + 4 > MAX_PREAMBLE_SIZE:
            raise ProtocolError("HTTP upgrade response too long")
        if end < 0:
            return None
        status, _ = _parse_headers(bytes(data[:end]))
        if status.split(" ", 2)[:2] != ["HTTP/1.1", "101"]:
            raise ProtocolError(f"server refused the upgrade: {status}")
        return end + 4
