"""Streamed answers on the requester's side (docs/protocol.md, section 12): what ``stream()`` reads.

A stream is a REQUEST with ``"x": "stream"`` and a credit window ``"w"``; the
producer (``writes.Responder.stream``) answers with RESPONSE packets carrying
``"x": "item"``, one per item, then one with ``"x": "end"`` (and ``"e"`` if it
raised). The requester grants credit with MESSAGE ``"x": "credit"`` as it
consumes items, so that the producer is never more than ``window`` items
ahead of the consumer, and neither side holds more than that. Leaving early
sends a cancel notice, which stops the producer. A peer without the
``streams`` extension gets a plain request; its one answer is the whole
stream (``packets.stream_answer``).

``StreamReader`` is the per-connection state (kept in ``Endpoint._streams``);
``Stream`` is the async iterator ``IPCClient.stream()`` returns.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from .errors import IPCError, RequestTimeoutError
from .options import check_timeout
from .packets import ITEM, LAST, cancel_notice, credit_notice, read_error, stream_answer

__all__ = ["Stream", "StreamReader", "StreamSink"]


class StreamSink(Protocol):
    """What a ``StreamReader`` needs of its connection (``endpoint.Endpoint``)."""

    loop: asyncio.AbstractEventLoop

    def _notify(self, packet: dict[str, Any]) -> None: ...

    def _forget_stream(self, nonce: str) -> None: ...


class StreamReader:
    """The items of one stream this end asked for, as they arrive.

    Args:
        sink: The connection it came on.
        nonce: The stream request's nonce.
        window: The credit window the request asked for (0: a plain request to a
            peer without ``streams``; no credit is granted).
    """

    __slots__ = (
        "_ended",
        "_error",
        "_items",
        "_sink",
        "_unacked",
        "_waiter",
        "nonce",
        "plain",
        "window",
    )

    def __init__(self, sink: StreamSink, nonce: str, window: int) -> None:
        self._sink = sink
        self.plain: asyncio.Future[Any] | None = None
        """The plain request sent instead, to a peer without ``streams``."""
        self.nonce = nonce
        self.window = window
        self._items: deque[Any] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._unacked = 0  # items consumed since credit was last granted

    @property
    def buffered(self) -> int:
        """Items received and not consumed yet (never more than ``window``)."""
        return len(self._items)

    def arrive(self, packet: dict[str, Any]) -> None:
        """A RESPONSE for this stream: an item, its end, or a plain answer (the whole of it)."""
        if self._ended:
            return
        x = packet.get("x")
        if x == ITEM:
            self._items.append(packet.get("d"))
        elif x == LAST:
            self._end(read_error(packet) if "e" in packet else None)
        else:
            error = read_error(packet) if "e" in packet else None
            if error is None:
                self._items.extend(stream_answer(packet.get("d")))
            self._end(error)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The connection is gone (or the plain request failed): the stream ends with ``error``
        after the items already here."""
        if not self._ended:
            self._end(error)
            self._wake()

    def _end(self, error: BaseException | None) -> None:
        self._ended = True
        self._error = error
        self._sink._forget_stream(self.nonce)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float | None) -> tuple[bool, Any]:
        """``(True, item)``, or ``(False, None)`` at its end; waits at most ``timeout`` seconds.

        Raises:
            RequestTimeoutError: No item within ``timeout`` (the stream is then cancelled).
            RemoteError: The producer raised (after the items before it).
            ConnectionClosedError: The connection closed before the end.
        """
        while not self._items:
            if self._ended:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                return False, None
            waiter = self._waiter = self._sink.loop.create_future()
            try:
                await asyncio.wait_for(waiter, timeout)
            except (asyncio.TimeoutError, TimeoutError):
                self.cancel()
                raise RequestTimeoutError(timeout or 0.0, "stream item") from None
            finally:
                self._waiter = None
        item = self._items.popleft()
        if self.window and not self._ended:
            self._unacked += 1
            if self._unacked >= max(1, self.window // 2):
                self._sink._notify(credit_notice(self.nonce, self._unacked))
                self._unacked = 0
        return True, item

    def cancel(self) -> None:
        """The consumer left early: the producer is told to stop; what is buffered is dropped."""
        if self._ended:
            return
        self._ended = True
        self._items.clear()
        self._sink._forget_stream(self.nonce)
        if self.plain is not None:
            self.plain.cancel()  # its own cancel notice, if the peer takes one
        else:
            self._sink._notify(cancel_notice(self.nonce))
        self._wake()

    def answered(self, plain: asyncio.Future[Any]) -> None:
        """The plain request sent instead got its answer (a done callback)."""
        if plain.cancelled():
            return
        error = plain.exception()
        if error is not None:
            self.fail(error)
        else:
            self.arrive({"d": plain.result()})


class Stream:
    """The items a stream request answers, as an async iterator (``IPCClient.stream``).

    ``async for item in client.stream(data)`` sends the request when the loop
    starts. Leaving the loop early (``break``, an exception, a cancelled task)
    stops the producer: at once with ``async with client.stream(data) as
    items:`` or ``aclose()``, else when the iterator is dropped.

    Args:
        start: Sends the request; returns its ``StreamReader``.
        timeout: Seconds to wait for each item (None: forever).
    """

    def __init__(
        self, start: Callable[[], Coroutine[Any, Any, StreamReader]], timeout: float | None
    ) -> None:
        self._start: Callable[[], Coroutine[Any, Any, StreamReader]] | None = start
        self._timeout = check_timeout(timeout)
        self._reader: StreamReader | None = None
        self._done = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            reader = self._reader
            if reader is None:
                start, self._start = self._start, None
                if start is None:
                    raise IPCError("stream() iterated from two places at once")
                reader = self._reader = await start()
            more, item = await reader.next(self._timeout)
        except BaseException:
            await self.aclose()
            raise
        if not more:
            self._done = True
            raise StopAsyncIteration
        return item

    @property
    def buffered(self) -> int:
        """Items received and not consumed yet (at most the window)."""
        return 0 if self._reader is None else self._reader.buffered

    async def aclose(self) -> None:
        """Stop reading: the producer stops and closes its iterator."""
        self._done = True
        self._start = None
        if self._reader is not None:
            self._reader.cancel()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose (a ``break`` out of ``async for``): the producer must stop.
        reader = self._reader
        if reader is not None and not reader._ended:
            loop = reader._sink.loop
            if loop.is_closed():
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                reader.cancel()
            else:
                loop.call_soon_threadsafe(reader.cancel)
