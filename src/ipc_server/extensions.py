"""The pattern extensions on one connection (docs/protocol.md, sections 10 to 13): a mixin of
``endpoint.Endpoint``.

What a REQUEST or MESSAGE of a peer of this library may carry beyond ``t``,
``d``, ``n``: a deadline (``"dl"``), a stream request (``"x": "stream"``), a
cancel notice and a credit (MESSAGE ``"x": "cancel"``/``"credit"``), and the
requests an owner answers itself (``_on_request_extension``: the server's
``stats``, ``serve``, ``call``...). The plain fast path of ``Endpoint`` stays
as it is: only a packet with more keys than a Node peer sends comes here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

from mypy_extensions import mypyc_attr, trait

from .codecs import Encoded, PacketCodec
from .packets import (
    CANCEL,
    CREDIT,
    MESSAGE,
    REQUEST,
    STREAM,
    STREAMS,
    read_deadline,
    read_window,
)
from .pending import Pending
from .streams import StreamReader
from .writes import Responder

__all__ = ["Extensions"]


@trait
@mypyc_attr(allow_interpreted_subclasses=True)
class Extensions:
    """Deadlines, cancel notices, credit and stream requests of one connection (a mixin)."""

    # Set by the protocol that inherits this (endpoint.Endpoint).
    loop: asyncio.AbstractEventLoop
    features: frozenset[str]
    remote_errors: bool
    _cancel: bool
    _implied: Any
    _peer_implied: Any
    _codec: PacketCodec
    _transport: asyncio.Transport | None
    _aborted: bool
    _closing: bool
    _eof_sent: bool
    _nonces: Iterator[int]
    _running: dict[str, Responder]
    _streams: dict[str, StreamReader]
    _skip: set[str]

    # Methods of the other mixins (writes.Writes, pending.RequestTable) and of Endpoint,
    # which come before this one in Endpoint's bases, so these never run.
    def _write(self, data: Encoded) -> None:
        raise NotImplementedError

    def _notify(self, packet: dict[str, Any]) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    def _ask(
        self,
        t: int,
        data: Any,
        timeout: float | None,
        pending: Pending | None = None,
        fields: dict[str, Any] | None = None,
    ) -> Pending:
        raise NotImplementedError

    def _on_extension(self, packet: dict[str, Any], n: str, respond: Responder) -> bool:
        """A REQUEST with more than ``t``, ``d``, ``n``: True if an extension took it.

        ``"dl"`` sets ``respond.deadline``; ``"x": "stream"`` (``streams``) makes
        ``respond.stream()`` send items; any other ``"x"`` goes to
        ``_on_request_extension``.
        """
        features = self.features
        if not features:
            return False  # a Node peer: its extra keys mean nothing
        seconds = packet.get("dl")
        if seconds is not None:
            if self._cancel and seconds.__class__ is float and 0.0 < seconds < 1e12:
                respond.deadline = self.loop.time() + seconds  # the common case, inlined
            elif self._cancel:
                seconds = read_deadline(packet)
                if seconds is not None:
                    respond.deadline = self.loop.time() + seconds
            if len(packet) == 4:
                return False  # t, d, n and dl: a plain request with a deadline
        x = packet.get("x")
        if x is None:
            return False
        if x == STREAM and STREAMS in features:
            respond.window = read_window(packet)
            return False  # the handlers answer it, through respond.stream()
        return self._on_request_extension(x, packet, n, respond)

    def _on_request_extension(
        self, x: Any, packet: dict[str, Any], n: str, respond: Responder
    ) -> bool:
        """A REQUEST with ``"x"``: True if taken (the server answers ``stats``, ``serve``, ...)."""
        return False

    def _on_message_extension(self, packet: dict[str, Any]) -> bool:
        """A MESSAGE with more than ``t``, ``d``: a cancel notice or a credit (True), or not."""
        x = packet.get("x")
        if x is None or not self.features:
            return False
        n = packet.get("n")
        if x == CANCEL:
            responder = self._running.pop(n, None) if n.__class__ is str else None
            if responder is not None:
                responder.cancel_by_peer()
        elif x == CREDIT:
            responder = self._running.get(n) if n.__class__ is str else None
            count = packet.get("d")
            if responder is not None and count.__class__ is int and count > 0:
                responder.grant(count)
        return True  # an extension message is never the message event

    def _drop_cancelled(self, held: list[Any], scanned: int) -> None:
        """Packets read but held (``hold_reading``) are about to run: the requests among
        them that a cancel notice also held names are never started (``_skip``). The first
        ``scanned`` were looked at before (each packet is looked at once)."""
        codec = self._codec
        compressed = codec.compress
        for body in held[scanned:] if scanned else held:
            # A cancel notice is small and names itself: skip the rest unread.
            if not compressed and (body.__class__ is memoryview or b"cancel" not in body):
                continue
            try:
                t, _, n, packet = codec.decode(body)
            except Exception:
                continue  # reported when it is dispatched
            if t == MESSAGE and n.__class__ is str and packet.get("x") == CANCEL:
                self._skip.add(n)

    def _agreed(
        self,
        features: frozenset[str],
        timeouts: tuple[float | None, float | None] | None = None,
    ) -> None:
        """The CONNECTION exchange is over: the extensions both ends announced, and
        ``timeouts``, how long requests without ``"dl"`` wait: this end's, the peer's
        (None: not said, every timeout travels)."""
        self.features = features
        self.remote_errors = "errors" in features
        self._cancel = cancel = CANCEL in features
        if cancel and timeouts is not None:
            self._implied, self._peer_implied = timeouts

    def extended_request(
        self, data: Any, fields: dict[str, Any], timeout: float | None
    ) -> Coroutine[Any, Any, Any]:
        """Send a REQUEST with extension ``fields`` (``packets.call_fields``, a ``serve``...);
        ``await`` the result for the answer, as with ``request``."""
        return self._ask(REQUEST, data, timeout, fields=fields)

    def open_stream(self, data: Any, window: int) -> StreamReader:
        """Send a stream request (``streams.py``); its items arrive in the returned reader.

        A peer without the ``streams`` extension gets a plain request, whose
        answer is the whole stream.

        Raises:
            ConnectionClosedError: The connection is closed or closing.
            TypeError: ``data`` cannot be encoded.
        """
        if self._transport is None or self._closing:
            self._check_open()
        if STREAMS not in self.features:
            pending = self._ask(REQUEST, data, None)
            reader = StreamReader(self, pending.nonce or "", 0)
            reader.plain = pending
            pending.add_done_callback(reader.answered)
            return reader
        nonce = str(next(self._nonces))
        packet = self._codec.encode_parts(REQUEST, data, nonce, {"x": STREAM, "w": window})
        reader = self._streams[nonce] = StreamReader(self, nonce, window)
        self._write(packet)
        return reader

    def _forget_stream(self, nonce: str) -> None:
        self._streams.pop(nonce, None)
