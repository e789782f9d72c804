"""The output half of an ``endpoint.Endpoint``: coalesced writes, backpressure, fan-out.

``Writes`` is a mixin of the asyncio protocol both ends share. Writes made
while a read is being dispatched, or several in one loop iteration, leave
in one ``transport.write``; ``pause_writing`` / ``resume_writing`` make
senders wait (``_drain``); a peer that lets more than ``max_queued`` bytes
pile up is dropped; ``write_shared`` encodes a fan-out once per codec.
``Responder``, the asyncio ``respond`` callable, writes through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from .codecs import PacketCodec
from .errors import IPCError, RequestTimeoutError
from .events import DONE, Respond, settle
from .options import check_timeout
from .packets import RESPONSE, error_answer

__all__ = ["FLUSH_SIZE", "Responder", "Writes"]

FLUSH_SIZE = 256 * 1024
"""Queued bytes that are written at once rather than at the end of the loop iteration."""


class Writes:
    """Coalesced writes and backpressure for one connection (a mixin of ``Endpoint``)."""

    # Set by the protocol that inherits this (endpoint.Endpoint).
    remote_errors: bool
    loop: asyncio.AbstractEventLoop
    _transport: asyncio.Transport | None
    _codec: PacketCodec
    _aborted: bool
    _closing: bool
    _eof_sent: bool
    _lost_exc: BaseException | None

    def _init_writes(self, max_queued: int, hold_while_paused: bool) -> None:
        self._wbuf: list[bytes] = []
        self._wbuf_size = 0
        self._burst = False  # a write went out since data last came in: gather the next ones
        self._flush_handle: asyncio.Handle | None = None
        self._dispatching = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._max_queued = max_queued
        self._hold_while_paused = hold_while_paused

    def _report(self, exc: BaseException) -> None:
        raise NotImplementedError

    def destroy(self, reason: Any = None) -> bool:
        raise NotImplementedError

    def hold_reading(self, reason: str) -> None:
        raise NotImplementedError

    def release_reading(self, reason: str) -> None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._hold_while_paused:
            # A peer that does not read cannot make us park work for it: read no
            # more requests from it until it has read what we sent.
            self.hold_reading("writes")
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > self._max_queued:
            self._overflow(transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers(None)
        if self._hold_while_paused:
            self.release_reading("writes")

    def _write(self, data: bytes | list[bytes]) -> None:
        """Send framed bytes, coalescing bursts into few ``transport.write`` calls.

        The first write after the peer was last heard from goes out at once
        (lowest latency for request/response); further writes gather and
        leave together at the end of the loop iteration, or as soon as
        ``FLUSH_SIZE`` bytes are waiting. A list (a big payload from
        ``PacketCodec.encode_parts``) goes out at once with ``writelines``,
        after what was gathered before it.
        """
        if isinstance(data, list):
            self._write_parts(data)
            return
        if self._dispatching or self._burst:
            self._wbuf.append(data)
            size = self._wbuf_size = self._wbuf_size + len(data)
            if size >= FLUSH_SIZE:
                # A producer that never yields must still reach the transport,
                # so that pause_writing (and with it send()'s wait) can happen.
                self._flush()
            elif self._flush_handle is None and not self._dispatching:
                self._flush_handle = self.loop.call_soon(self._flush_scheduled)
            return
        transport = self._transport
        if transport is None or self._aborted or self._eof_sent:
            return
        transport.write(data)
        self._burst = True
        if self._write_paused:
            self._check_queued(transport)

    def _write_parts(self, parts: list[bytes]) -> None:
        self._flush()
        transport = self._transport
        if transport is None or self._aborted or self._eof_sent:
            return
        transport.writelines(parts)
        self._burst = True
        if self._write_paused:
            self._check_queued(transport)

    def _flush_scheduled(self) -> None:
        self._flush_handle = None
        self._flush()

    def _flush(self) -> None:
        buf = self._wbuf
        if not buf:
            return
        self._wbuf_size = 0
        transport = self._transport
        if transport is None:
            buf.clear()
            return
        if self._aborted or self._eof_sent:
            buf.clear()
            return
        if len(buf) == 1:
            transport.write(buf[0])
        else:
            transport.write(b"".join(buf))
        buf.clear()
        if self._write_paused:
            self._check_queued(transport)

    def _drain(self) -> asyncio.Future[None]:
        """A future done when the transport is below its high-water mark again."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self._lost_exc is not None:
            waiter.set_exception(self._lost_exc)
        elif not self._write_paused:
            waiter.set_result(None)
        else:
            self._drain_waiters.append(waiter)
        return waiter

    def _wake_writers(self, exc: BaseException | None) -> None:
        waiters = self._drain_waiters
        self._drain_waiters = []
        settle(waiters, exc)

    def _check_queued(self, transport: asyncio.WriteTransport) -> None:
        # pause_writing fires once, when the high-water mark is crossed; a peer
        # that never reads is caught by checking again on every later write.
        size = transport.get_write_buffer_size()
        if size > self._max_queued:
            self._overflow(size)

    def _overflow(self, size: int) -> None:
        reason = f"peer is not reading: {size} bytes queued, over max_queued={self._max_queued}"
        self._report(IPCError(reason))
        self.destroy(reason)

    async def drain(self, *, timeout: float | None = None, what: str = "send") -> None:
        """Wait until the connection is below its write high-water mark again.

        Raises:
            RequestTimeoutError: Still over it after ``timeout`` seconds (0/None: no bound).
            ConnectionClosedError: The connection is gone.
        """
        limit = check_timeout(timeout)
        if limit is None:
            await self._drain()
            return
        try:
            await asyncio.wait_for(self._drain(), limit)
        except (asyncio.TimeoutError, TimeoutError):
            raise RequestTimeoutError(limit, what) from None

    def write_shared(self, t: int, data: Any, cache: dict[str | None, bytes | list[bytes]]) -> bool:
        """Queue a packet encoded once per codec (fan-out); False if this connection is closing.

        Connections whose codecs have the same ``PacketCodec.key`` share the
        encoded bytes kept in ``cache`` (start with an empty dict per packet).
        """
        if self._closing or self._transport is None:
            return False
        codec = self._codec
        key = codec.key
        packet = cache.get(key) if key is not None else None
        if packet is None:
            packet = codec.encode_parts(t, data)
            if key is not None:
                cache[key] = packet
        self._write(packet)
        return True


class Responder(Respond):
    """The ``respond`` callable of the asyncio ends (see ``ipc_server.Respond``).

    ``await respond(value)`` waits only when the connection is over its
    write high-water mark; a plain function listener may call it without
    ``await``.
    """

    __slots__ = ("_endpoint", "_nonce")

    def __init__(self, endpoint: Writes, nonce: Any) -> None:
        self.done = False
        self._endpoint = endpoint
        self._nonce = nonce

    def __call__(self, data: Any = None) -> Awaitable[None]:
        if self.done:
            raise RuntimeError("this request was already answered")
        endpoint = self._endpoint
        packet = endpoint._codec.encode_parts(RESPONSE, data, self._nonce)  # TypeError -> caller
        self.done = True
        if endpoint._transport is None or endpoint._aborted:
            return DONE  # the requester is gone; nothing to answer
        endpoint._write(packet)
        if endpoint._write_paused:
            return endpoint._drain()
        return DONE

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        endpoint = self._endpoint
        if endpoint._transport is None or endpoint._aborted:
            return
        endpoint._write(error_answer(endpoint._codec, self._nonce, exc, endpoint.remote_errors))
