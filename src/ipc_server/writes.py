"""The output half of an ``endpoint.Endpoint``: coalesced writes, backpressure, fan-out.

``Writes`` is a mixin of the asyncio protocol both ends share. Writes made
while a read is being dispatched, or several in one loop iteration, leave
in one ``transport.write``; ``pause_writing`` / ``resume_writing`` make
senders wait (``_drain``); ``write_shared`` encodes a fan-out once per codec.
``Responder``, the asyncio ``respond`` callable, writes through it.

What the transport cannot take now waits in our own backlog, in order: the
transport gets a big packet in pieces of ``PIECE`` bytes while it is not
paused, and nothing while it is, so the loop never copies more than a piece
of it (asyncio's selector transport copies what it cannot send at once) and
a fan-out's recipients share one copy of the bytes. A compressed body too big
to deflate on the loop (``codecs.Deflation``) is compressed in the loop's
default executor and keeps its place in the backlog until then. A peer is
dropped when more than ``max_queued`` bytes wait for it, or when its
transport stays paused (over its high-water mark, not yet back below the
low-water mark) for ``write_deadline`` seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Coroutine, Iterable
from typing import Any

from mypy_extensions import mypyc_attr, trait

from .codecs import Deflation, Encoded, PacketCodec
from .errors import IPCError, MessageTooLargeError, RequestTimeoutError
from .events import DONE, Respond, Tasks, settle, start_task
from .options import check_timeout
from .packets import RESPONSE, error_answer, error_fields, stream_item, stream_last
from .protocol import frame

__all__ = ["DEFLATING_LIMIT", "FLUSH_SIZE", "PIECE", "Responder", "Writes"]

FLUSH_SIZE = 256 * 1024
"""Queued bytes that are written at once rather than at the end of the loop iteration."""

PIECE = 256 * 1024
"""The most the transport is handed at once from the backlog (a big packet goes in pieces)."""

DEFLATING_LIMIT = 64 * 1024 * 1024
"""Body bytes that may wait for the executor per loop; beyond, a big body is compressed inline."""

# Body bytes handed to each loop's executor and not compressed yet.
_deflating: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()


@trait
@mypyc_attr(allow_interpreted_subclasses=True)
class Writes:
    """Coalesced writes and backpressure for one connection (a mixin of ``Endpoint``)."""

    # Set by the protocol that inherits this (endpoint.Endpoint).
    remote_errors: bool
    loop: asyncio.AbstractEventLoop
    _cancel: bool
    _running: dict[str, Responder]
    _tasks: Tasks
    _transport: asyncio.Transport | None
    _codec: PacketCodec
    _aborted: bool
    _closing: bool
    _eof_sent: bool
    _lost_exc: BaseException | None

    def _init_writes(
        self, max_queued: int, hold_while_paused: bool, write_deadline: float | None = None
    ) -> None:
        self._wbuf: list[bytes] = []
        self._wbuf_size = 0
        self._burst = False  # a write went out since data last came in: gather the next ones
        self._flush_handle: asyncio.Handle | None = None
        self._dispatching = False
        # Writers wait (and the server reads no more) while _write_paused: the
        # transport is paused, or the backlog is not empty (it waits for the
        # transport, or for a Deflation at its front).
        self._write_paused = False
        self._transport_paused = False
        self._backlog: deque[Any] = deque()  # bytes, memoryview or Deflation, in wire order
        self._backlog_size = 0  # bytes in the backlog, not counting Deflations not run yet
        self._then_eof = False  # close(): half-close once the backlog is out
        self._then_close = False  # the peer half-closed: close once the backlog is out
        self._paused_at: Any = 0.0  # a float (mypyc cannot set a float attribute in a trait)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._max_queued = max_queued
        self._hold_while_paused = hold_while_paused
        self._write_deadline = write_deadline or None
        self._packets_out = 0
        self._bytes_out = 0  # handed to the transport (as on the wire)

    def _report(self, exc: BaseException) -> None:
        raise NotImplementedError

    def destroy(self, reason: Any = None) -> bool:
        raise NotImplementedError

    def hold_reading(self, reason: str) -> None:
        raise NotImplementedError

    def release_reading(self, reason: str) -> None:
        raise NotImplementedError

    @property
    def queued(self) -> int:
        """Bytes written but not handed to the OS yet (the transport's buffer and ours)."""
        transport = self._transport
        size = self._wbuf_size + self._backlog_size
        return size + (transport.get_write_buffer_size() if transport is not None else 0)

    @property
    def congested(self) -> bool:
        """Whether its output is backed up (over the transport's high-water mark, or a
        backlog of ours waits): senders wait, and worker groups pick another member."""
        return self._write_paused

    # ------------------------------------------------------------------ asyncio flow control

    def pause_writing(self) -> None:
        self._transport_paused = True
        loop = self.loop
        self._paused_at = loop.time()
        if self._write_deadline is not None and self._deadline_timer is None:
            self._deadline_timer = loop.call_at(
                self._paused_at + self._write_deadline, self._deadline_passed
            )
        self._update_paused()
        transport = self._transport
        if transport is not None:
            self._check_queued(transport)

    def resume_writing(self) -> None:
        self._transport_paused = False
        if self._backlog:
            self._pump()
        else:
            self._update_paused()

    def _update_paused(self) -> None:
        paused = self._transport_paused or bool(self._backlog)
        if paused is self._write_paused:
            return
        self._write_paused = paused
        if paused:
            if self._hold_while_paused:
                # A peer that does not read cannot make us park work for it: read no
                # more requests from it until it has read what we sent.
                self.hold_reading("writes")
            return
        self._wake_writers(None)
        if self._hold_while_paused:
            self.release_reading("writes")

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        if not self._transport_paused or self._aborted or self._transport is None:
            return
        deadline = self._write_deadline
        assert deadline is not None
        loop = self.loop
        due = self._paused_at + deadline
        if loop.time() < due:  # it drained and paused again since: wait for the new pause
            self._deadline_timer = loop.call_at(due, self._deadline_passed)
            return
        reason = (
            "peer is not reading: output not drained below the low-water mark "
            f"within write_deadline={deadline:g} s"
        )
        self._report(IPCError(reason, option="write_deadline"))
        self.destroy(reason)

    # ------------------------------------------------------------------ writing

    def _write(self, data: Encoded) -> None:
        """Send framed bytes, coalescing bursts into few ``transport.write`` calls.

        The first write after the peer was last heard from goes out at once
        (lowest latency for request/response); further writes gather and
        leave together at the end of the loop iteration, or as soon as
        ``FLUSH_SIZE`` bytes are waiting. A list (a big payload from
        ``PacketCodec.encode_parts``) or a ``Deflation`` goes out after what
        was gathered before it, without waiting for the end of the iteration.
        """
        self._packets_out += 1
        if data.__class__ is not bytes:
            if data.__class__ is list:
                self._write_parts(data)
            else:
                self._write_deflation(data)  # type: ignore[arg-type]
            return
        if self._dispatching or self._burst:
            size = len(data)
            if size <= PIECE:
                self._wbuf.append(data)
                size = self._wbuf_size = self._wbuf_size + size
                if size >= FLUSH_SIZE:
                    # A producer that never yields must still reach the transport,
                    # so that pause_writing (and with it send()'s wait) can happen.
                    self._flush()
                elif self._flush_handle is None and not self._dispatching:
                    self._flush_handle = self.loop.call_soon(self._flush_scheduled)
                return
            self._flush()  # a big packet is never copied into a batch: the batch goes first
        transport = self._transport
        if transport is None or self._aborted or self._eof_sent:
            return
        self._burst = True
        if self._write_paused or len(data) > PIECE:
            self._queue(data)
        else:
            self._bytes_out += len(data)
            transport.write(data)

    def _notify(self, packet: dict[str, Any]) -> None:
        """Write an extension packet of ours (a cancel notice, a credit), if the peer can
        still read one."""
        if self._transport is None or self._aborted or self._eof_sent:
            return
        self._write(frame(self._codec.encode_body(packet)))

    def _write_parts(self, parts: list[bytes]) -> None:
        self._flush()
        transport = self._transport
        if transport is None or self._aborted or self._eof_sent:
            return
        self._burst = True
        if self._write_paused or sum(map(len, parts)) > PIECE:
            self._backlog.extend(parts[:-1])
            self._backlog_size += sum(map(len, parts[:-1]))
            self._queue(parts[-1])
        else:
            self._bytes_out += sum(map(len, parts))
            transport.writelines(parts)

    def _write_deflation(self, deflation: Deflation) -> None:
        self._flush()
        transport = self._transport
        if transport is None or self._aborted or self._eof_sent:
            return
        self._burst = True
        job = deflation.job
        if job is None:
            job = deflation.job = self._deflate(deflation)
        self._backlog.append(deflation)
        if job.done():
            if not self._write_paused:
                self._pump()
        else:
            job.add_done_callback(self._deflated)
            self._update_paused()

    def _deflate(self, deflation: Deflation) -> asyncio.Future[list[bytes]]:
        """Run ``deflation`` in the loop's default executor (inline when it is flooded)."""
        loop = self.loop
        waiting = _deflating.get(loop, 0)
        if waiting and waiting + deflation.size > DEFLATING_LIMIT:
            # Bodies arrive faster than the executor compresses them: the loop
            # does it itself, which slows down the peers that send them.
            job: asyncio.Future[list[bytes]] = loop.create_future()
            job.set_result(deflation.run())
            return job
        _deflating[loop] = waiting + deflation.size
        job = loop.run_in_executor(None, deflation.run)
        job.add_done_callback(lambda done: _deflation_done(loop, deflation.size, done))
        return job

    def _deflated(self, job: asyncio.Future[list[bytes]]) -> None:
        # A Deflation of ours is done: the backlog moves on, unless the transport
        # is paused (then resume_writing moves it) or the connection is gone.
        if self._backlog and not self._transport_paused and not self._aborted:
            self._pump()

    def _queue(self, data: bytes | memoryview) -> None:
        """Append to the backlog; the transport gets it when it can."""
        self._backlog.append(data)
        self._backlog_size += len(data)
        if not self._write_paused:
            self._pump()
        elif self._transport_paused and self._transport is not None:
            self._check_queued(self._transport)

    def _pump(self) -> None:
        """Hand the backlog to the transport, a piece at a time, until it pauses."""
        backlog = self._backlog
        transport = self._transport
        if transport is None or self._aborted:
            self._drop_output()
            return
        while backlog and not self._transport_paused:
            item = backlog[0]
            if item.__class__ is Deflation:
                job = item.job
                if not job.done():
                    break  # _deflated pumps again
                backlog.popleft()
                exc = job.exception()
                if exc is not None:
                    self._report(exc)
                    self.destroy(f"compressing a packet failed: {exc}")
                    return
                parts = job.result()
                backlog.extendleft(reversed(parts))
                self._backlog_size += sum(map(len, parts))
                continue
            size = len(item)
            chunk: Any
            if size > PIECE:
                view = item if item.__class__ is memoryview else memoryview(item)
                chunk = view[:PIECE]
                backlog[0] = view[PIECE:]
                size = PIECE
            else:
                backlog.popleft()
                chunk = item
                if backlog:
                    gathered = None
                    while backlog:
                        more = backlog[0]
                        if more.__class__ is Deflation or size + len(more) > PIECE:
                            break
                        if gathered is None:
                            gathered = [chunk]
                        gathered.append(backlog.popleft())
                        size += len(more)
                    if gathered is not None:
                        chunk = b"".join(gathered)
            self._backlog_size -= size
            self._bytes_out += size
            transport.write(chunk)  # may call pause_writing, even destroy (max_queued)
        self._pumped(transport)

    def _pumped(self, transport: asyncio.Transport) -> None:
        if self._aborted:
            return
        if not self._backlog and (self._then_eof or self._then_close):
            self._end_transport(transport)
        self._update_paused()

    def _flush_scheduled(self) -> None:
        self._flush_handle = None
        self._flush()

    def _flush(self) -> None:
        buf = self._wbuf
        if not buf:
            return
        self._wbuf_size = 0
        transport = self._transport
        if transport is None or self._aborted or self._eof_sent:
            buf.clear()
            return
        data = buf[0] if len(buf) == 1 else b"".join(buf)  # at most FLUSH_SIZE + PIECE
        buf.clear()
        if self._write_paused:
            self._queue(data)
        else:
            self._bytes_out += len(data)
            transport.write(data)

    def _finish(self, data: bytes) -> None:
        """Write ``data`` (END) after everything queued, then half-close (or close)."""
        self._flush()
        transport = self._transport
        if transport is None or self._aborted:
            return
        self._packets_out += 1
        if self._backlog:
            self._then_eof = True
            self._queue(data)
            return
        self._bytes_out += len(data)
        transport.write(data)
        self._end_transport(transport)

    def _end_transport(self, transport: asyncio.Transport) -> None:
        self._then_eof = False
        if not self._then_close and transport.can_write_eof():
            # Half-close: the peer reads all we sent, then hangs up (as net-ipc does).
            transport.write_eof()
        else:
            transport.close()

    def _output_at_eof(self) -> bool:
        """The peer half-closed: flush, and whether to keep the transport open for the backlog."""
        self._flush()
        if self._backlog and not self._aborted:
            self._then_close = True  # _pump closes the transport once the backlog is out
            return True
        return False

    def _drop_output(self) -> None:
        """The connection is aborted or lost: nothing more goes out."""
        self._wbuf.clear()
        self._wbuf_size = 0
        self._backlog.clear()
        self._backlog_size = 0
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _drain(self) -> asyncio.Future[None]:
        """A future done when the connection is below its high-water mark again."""
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
        size = transport.get_write_buffer_size() + self._backlog_size
        if size > self._max_queued:
            self._overflow(size)

    def _overflow(self, size: int) -> None:
        reason = f"peer is not reading: {size} bytes queued, over max_queued={self._max_queued}"
        self._report(IPCError(reason, option="max_queued"))
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

    def write_shared(self, t: int, data: Any, cache: dict[str, Any]) -> bool:
        """Queue a packet encoded once per codec (fan-out); False if this connection is closing.

        The recipients share the encoded bytes kept in ``cache`` (start with an
        empty dict per packet; see ``PacketCodec.encode_shared``).
        """
        if self._closing or self._transport is None:
            return False
        self._write(self._codec.encode_shared(t, data, cache))
        return True


_GONE: Any = object()  # Responder._first once the requester gave up (cancel_by_peer)


class _Lost(Exception):
    """A stream's connection is gone: its producer stops."""


class Responder(Respond):
    """The ``respond`` callable of the asyncio ends (see ``ipc_server.Respond``).

    ``await respond(value)`` waits only when the connection is over its
    write high-water mark; a plain function listener may call it without
    ``await``. ``respond.stream(items)`` answers with many items.
    """

    __slots__ = (
        "_credit",
        "_endpoint",
        "_first",
        "_nonce",
        "_producer",
        "_size",
        "_task",
        "_waiter",
        "window",
    )

    def __init__(self, endpoint: Writes, nonce: Any) -> None:
        self.done = False
        self._endpoint = endpoint
        self._nonce = nonce
        self.deadline: float | None = None
        self.window = 0  # > 0: the requester asked for a stream, with this credit window

    def __call__(self, data: Any = None) -> Awaitable[None]:
        if self.done:
            if getattr(self, "_first", None) is _GONE:
                return DONE  # the requester gave up: a handler that answers anyway is not wrong
            raise RuntimeError("this request was already answered")
        endpoint = self._endpoint
        packet = endpoint._codec.encode_parts(RESPONSE, data, self._nonce)  # TypeError -> caller
        self.done = True
        if endpoint._running:
            self._untrack()
        if endpoint._transport is None or endpoint._aborted:
            return DONE  # the requester is gone; nothing to answer
        endpoint._write(packet)
        if endpoint._write_paused:
            return endpoint._drain()
        return DONE

    def fail(self, exc: BaseException, *, own: bool = False) -> None:
        if self.done:
            return
        self.done = True
        endpoint = self._endpoint
        if endpoint._running:
            self._untrack()
        if endpoint._transport is None or endpoint._aborted:
            return
        answer = error_answer(endpoint._codec, self._nonce, exc, endpoint.remote_errors, own=own)
        endpoint._write(answer)

    # ------------------------------------------------------------------ cancellation

    def _track(self, task: asyncio.Task[Any], first: Awaitable[Any] | None = None) -> None:
        """Its handler suspended in ``task``: a cancel notice from the peer cancels it (a
        handler that began a stream, too: it may wait for the stream to end)."""
        endpoint = self._endpoint
        if endpoint._cancel and (not self.done or getattr(self, "_producer", None) is not None):
            self._task = task
            self._first = first
            endpoint._running[self._nonce] = self

    def handle(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as the task that answers this request: counted with the connection's
        handlers (``max_concurrent_requests``), and cancelled when the requester gives up."""
        endpoint = self._endpoint
        task = start_task(coro, endpoint._tasks)
        if task is not None:
            self._track(task)

    def _untrack(self) -> None:
        running = self._endpoint._running
        if running.get(self._nonce) is self:
            del running[self._nonce]

    def cancel_by_peer(self) -> None:
        """The requester gave up (a cancel notice): the handler's task is cancelled, and
        its stream's producer, and nothing more is answered."""
        self.done = True
        producer: asyncio.Task[None] | None = getattr(self, "_producer", None)
        if producer is not None:
            producer.cancel()
        try:
            task = self._task
        except AttributeError:
            return  # it never suspended
        task.cancel()
        first: Any = getattr(self, "_first", None)
        if inspect.iscoroutine(first) and inspect.getcoroutinestate(first) == "CORO_CREATED":
            first.close()  # its task never started: the handler never ran (nor will it)
        self._first = _GONE

    # ------------------------------------------------------------------ streams

    def stream(self, items: Iterable[Any] | AsyncIterable[Any]) -> asyncio.Task[None]:
        """Answer with the items of ``items`` (a plain or async iterable), one by one.

        To a requester that asked for a stream (``IPCClient.stream``), each item
        goes out as it comes, at most ``window`` items ahead of what the
        requester consumed; if it leaves early, the iteration stops and
        ``items`` is closed. To any other requester, the items are collected
        into one list answer (bounded by ``max_message_size``). An exception
        raised by ``items`` reaches the requester after the items before it.

        Returns the producing task: ``await`` it to wait until the stream is
        over (a plain function handler need not).
        """
        if self.done:
            raise RuntimeError("this request was already answered")
        self.done = True
        endpoint = self._endpoint
        self._credit = self.window
        self._waiter: asyncio.Future[None] | None = None
        self._size = 0
        task = endpoint.loop.create_task(self._produce(items))
        endpoint._tasks.add(task)  # a handler: counted, and cancelled with its connection
        task.add_done_callback(endpoint._tasks.discard)
        self._producer = task
        if self.window or endpoint._cancel:
            endpoint._running[self._nonce] = self  # credit and cancel notices find it
        return task

    def grant(self, count: int) -> None:
        """The requester consumed ``count`` items: the producer may send as many more.
        A credit for a request whose stream has not begun (or that is no stream) is
        ignored: a stream begins with its whole window."""
        try:
            credit = self._credit
        except AttributeError:  # set by stream(): not on every request's hot path
            return
        self._credit = min(credit + count, self.window)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _produce(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        endpoint = self._endpoint
        collected: list[Any] | None = None if self.window else []
        error: BaseException | None = None
        stop: BaseException | None = None
        source: Any = None
        try:
            if isinstance(items, AsyncIterable):
                source = items.__aiter__()
                while True:
                    try:
                        item = await source.__anext__()
                    except StopAsyncIteration:
                        break
                    await self._give(item, collected)
            else:
                source = iter(items)
                for item in source:
                    await self._give(item, collected)
        except (_Lost, asyncio.CancelledError) as exc:
            stop = exc  # the connection is gone, or the producer was cancelled
        except Exception as exc:
            error = exc
            endpoint._report(exc)
        # Not in a finally: in the compiled core, awaiting there while a cancellation
        # passed left it to be raised again in a later producer of the connection.
        self._untrack()
        await _close(source)
        if stop is not None:
            # A cancellation (the requester gave up, the connection closed, a timeout
            # around the stream) ends the task cancelled: a handler that awaits it
            # sees CancelledError, as it was cancelled too.
            if isinstance(stop, asyncio.CancelledError):
                raise stop
            return  # lost: nobody reads on
        if endpoint._transport is None or endpoint._aborted:
            return
        if collected is not None:
            self.done = False
            if error is not None:
                self.fail(error)
            else:
                self(collected)
            return
        fields = None if error is None else error_fields(error)
        endpoint._write(frame(endpoint._codec.encode_body(stream_last(self._nonce, fields))))

    async def _give(self, item: Any, collected: list[Any] | None) -> None:
        endpoint = self._endpoint
        if collected is not None:
            self._size += endpoint._codec.size_of(item)
            limit = endpoint._codec.max_size
            if self._size > limit:
                raise MessageTooLargeError(self._size, limit, "answer collected from a stream")
            collected.append(item)
            return
        while self._credit <= 0:
            waiter = self._waiter = endpoint.loop.create_future()
            await waiter
        if endpoint._transport is None or endpoint._aborted:
            raise _Lost
        self._credit -= 1
        endpoint._write(frame(endpoint._codec.encode_body(stream_item(self._nonce, item))))
        if endpoint._write_paused:
            await endpoint._drain()


async def _close(source: Any) -> None:
    """Close an iterator a stream stopped reading (a generator's ``finally`` runs now)."""
    if source is None:
        return
    try:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(source, "close", None)
        if close is not None:
            close()
    except Exception:
        pass


def _deflation_done(loop: asyncio.AbstractEventLoop, size: int, job: asyncio.Future[Any]) -> None:
    """A Deflation ran in the executor: it no longer counts against ``DEFLATING_LIMIT``."""
    _deflating[loop] = _deflating.get(loop, 0) - size
    if not job.cancelled():
        job.exception()  # retrieved here, so that one whose connections are all gone logs nothing
