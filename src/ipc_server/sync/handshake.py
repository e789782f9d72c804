"""The blocking client's handshake: the preamble and the CONNECTION exchange on a fresh socket.

``handshake`` blocks (nobody else uses the socket yet) and returns what a
``connection.Connection`` is then made with (``Opened``).
"""

from __future__ import annotations

import socket
import time
from typing import NamedTuple

from ..codecs import DEFAULT_MAX_PACKET_OBJECTS, PacketCodec
from ..errors import ConnectionClosedError, HandshakeError, ProtocolError
from ..packets import Agreement, read_answer
from ..protocol import (
    BINARY_PREAMBLE,
    DEFAULT_MAX_HANDSHAKE_SIZE,
    FRESH_READ_SIZE,
    Body,
    ClientPreamble,
    FrameDecoder,
    upgrade_request,
)

__all__ = ["RECV_SIZE", "Opened", "handshake"]

RECV_SIZE = FRESH_READ_SIZE  # each recv allocates its buffer afresh

_monotonic = time.monotonic


class Opened(NamedTuple):
    """A socket after the CONNECTION exchange."""

    agreement: Agreement
    codec: PacketCodec
    decoder: FrameDecoder
    early: list[Body]
    """Packets that came with the CONNECTION answer (dispatched once the connection is in place)."""


def handshake(
    sock: socket.socket,
    hello: bytes,
    deadline: float | None,
    *,
    upgrade: tuple[str, str] | None,
    max_message_size: int,
    max_packet_objects: int = DEFAULT_MAX_PACKET_OBJECTS,
) -> Opened:
    """The preamble and the CONNECTION exchange, blocking (nobody else uses ``sock`` yet).

    ``upgrade`` is ``(host, token)`` for the HTTP upgrade preamble, None for ``IPC``.

    Raises:
        HandshakeError: The server refused the client, or the upgrade.
        ProtocolError: The server answered with something else.
        TimeoutError: ``deadline`` passed.
        ConnectionClosedError: The server hung up.
    """

    def recv() -> bytes:
        if deadline is not None:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise TimeoutError("connect timed out during the handshake")
            sock.settimeout(remaining)
        chunk = sock.recv(RECV_SIZE)
        if not chunk:
            raise ConnectionClosedError("connection lost during the handshake")
        return chunk

    if deadline is not None:
        sock.settimeout(max(0.001, deadline - _monotonic()))
    rest = b""
    if upgrade is not None:
        sock.sendall(upgrade_request(*upgrade))
        preamble = ClientPreamble()
        consumed = None
        while consumed is None:
            try:
                consumed = preamble.feed(recv())
            except ProtocolError as exc:
                raise HandshakeError(str(exc)) from exc
        rest = bytes(preamble.data[consumed:])
        sock.sendall(hello)
    else:
        sock.sendall(BINARY_PREAMBLE + hello)
    decoder = FrameDecoder(max_message_size)
    # The server's CONNECTION answer is small; what it sends after may be big.
    if max_message_size > DEFAULT_MAX_HANDSHAKE_SIZE:
        decoder.limit_first(DEFAULT_MAX_HANDSHAKE_SIZE, "max_handshake_size")
    codec = PacketCodec(max_message_size, max_packet_objects)
    bodies = decoder.feed(rest) if rest else []
    while not bodies:
        bodies = decoder.feed(recv())
    t, d, _, _ = codec.decode(bodies[0])
    agreement = read_answer(t, d)
    codec.configure(messagepack=agreement.messagepack, compress=agreement.compress)
    sock.setblocking(False)
    return Opened(agreement, codec, decoder, bodies[1:])
