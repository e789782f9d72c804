"""What both ends share: one ``asyncio.BufferedProtocol`` that owns one stream.

``Endpoint`` holds the request table (nonce -> future + timer), ping,
send, graceful close and destroy, write coalescing and backpressure. The
server's ``ipc_server.server.IPCConnection`` and the client's private
protocol subclass it and add the preamble and the CONNECTION exchange.

Data flow: the loop reads into ``FrameDecoder.get_buffer()`` (a buffer
shared by the thread's connections, or straight into the final buffer of a
big body); ``buffer_updated`` -> ``ipc_server.protocol.FrameDecoder``
-> ``ipc_server.codecs.PacketCodec`` -> ``Endpoint._dispatch``
(the response table, or the owner's events). Writes made while a chunk is
being dispatched, or several in one loop iteration, leave in one
``transport.write``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, cast

from mypy_extensions import mypyc_attr

from .codecs import DEFAULT_MAX_PACKET_OBJECTS, PacketCodec
from .errors import ConnectionClosedError, IPCError, MessageTooLargeError, ProtocolError
from .events import Tasks, all_done, shorten
from .extensions import Extensions
from .options import DEFAULT_CLOSE_TIMEOUT, DEFAULT_MAX_QUEUED, DEFAULT_TIMEOUT, check_timeout
from .packets import (
    MESSAGE,
    PING,
    PONG,
    REQUEST,
    RESPONSE,
    STATS,
    PacketDispatcher,
    end,
    loss,
)
from .pending import Pending, RequestTable, Unanswered
from .protocol import DEFAULT_MAX_MESSAGE_SIZE, Body, FrameDecoder
from .streams import StreamReader
from .transport import release_lost
from .writes import Responder, Writes

__all__ = ["Endpoint", "Responder"]

logger = logging.getLogger("ipc_server.endpoint")


@mypyc_attr(allow_interpreted_subclasses=True)
class Endpoint(Writes, RequestTable, Extensions, PacketDispatcher, asyncio.BufferedProtocol):
    """One end of one connection. Subclasses add the preamble and CONNECTION exchange.

    Subclass hooks: ``_on_preamble`` (bytes before packets),
    ``_on_connection_packet``, ``_on_message``, ``_on_request``,
    ``_on_lost``, ``_report``.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_packet_objects: int = DEFAULT_MAX_PACKET_OBJECTS,
        max_queued: int = DEFAULT_MAX_QUEUED,
        nonces: Iterator[int] | None = None,
        max_concurrent: int | None = None,
        hold_while_paused: bool = False,
        cancel_on_lost: bool = False,
        write_deadline: float | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        """The event loop this connection runs on."""
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(max_message_size)
        self._codec = PacketCodec(max_message_size, max_packet_objects)
        self._init_requests(nonces if nonces is not None else itertools.count(1))
        self._init_writes(max_queued, hold_while_paused, write_deadline)
        self._cancel_on_lost = cancel_on_lost
        # A client's end: after an END that allows it, its unanswered requests are kept, to be
        # sent again on its next connection (a server's connection has none: they fail).
        self._resends = False
        self._handshaken = False
        self._closing = False
        self._aborted = False
        self._eof_sent = False  # close() sent END and FIN: nothing more may be written
        self._destroyed = False
        self._close_reason: Any = None
        self._peer_end: dict[str, Any] | None = None
        self._lost_exc: BaseException | None = None
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._tasks = Tasks(max_concurrent, self._busy)
        # Reading stops while any reason holds it (hold_reading); packets already
        # read wait in _held, in order, and are dispatched before reading resumes.
        self._holds: set[str] = set()
        self._reads = 0  # reads so far: how check_liveness tells a peer was heard
        self._bytes_in = 0
        self._packets_in = 0
        self._ticked_reads = 0  # _reads at the last check_liveness
        self._quiet = 0.0  # seconds without a read, counted by check_liveness
        self._probes = 0  # keepalive pings sent since the peer was last heard
        self._halted = False  # held or aborted: dispatch no further packet
        self._held: list[Body] = []
        self._skip: set[str] = set()  # held requests a held cancel notice names: never run
        self._scanned = 0  # how many of the packets held first were looked at for cancel notices
        self.remote_errors = False
        """Whether the peer announced the ``errors`` extension."""
        self.features: frozenset[str] = frozenset()
        """The extensions both ends announced (``packets.FEATURES``)."""
        self._running: dict[str, Responder] = {}
        """Handlers of the peer's requests that suspended (and streams being sent), by
        nonce, while the peer can cancel them (``cancel``) or grant credit (``streams``)."""
        self._streams: dict[str, StreamReader] = {}
        """Streams this end asked for and is reading, by nonce (``streams.StreamReader``)."""
        self.unanswered: list[Unanswered] = []
        """Once lost after an END that allows a reconnect from a ``retry`` peer: the
        requests it did not run, to send again on the next connection (``resend``)."""

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._reads += 1
        self._bytes_in += nbytes
        decoder = self._decoder
        if not self._handshaken and not decoder.receiving_body:
            self.data_received(decoder.take(nbytes))  # the preamble, then the CONNECTION exchange
            return
        self._burst = False
        try:
            bodies = decoder.advance(nbytes)
        except ProtocolError as exc:
            self._fatal(exc)
            return
        if bodies:
            self._packets_in += len(bodies)
            if self._halted:
                self._keep(bodies)  # read before pause_reading took effect
            else:
                self._read_bodies(bodies)

    def data_received(self, data: bytes) -> None:
        # The loops call buffer_updated; this is the entry for bytes read before
        # the CONNECTION exchange is over (and for tests that feed bytes).
        self._reads += 1
        self._burst = False
        if not self._handshaken:
            rest = self._on_preamble(data)
            if rest is None:
                return
            data = rest
        try:
            bodies = self._decoder.feed(data)
        except ProtocolError as exc:
            self._fatal(exc)
            return
        if bodies:
            self._packets_in += len(bodies)
            if self._halted:
                self._keep(bodies)  # read before pause_reading took effect
            else:
                self._read_bodies(bodies)

    def _read_bodies(self, bodies: list[Body]) -> None:
        """Dispatch the bodies of one read, in order, until a hold halts it (callers check
        ``_halted`` first: a read that came while halted goes to ``_held``)."""
        self._dispatching = True
        rest = iter(bodies)
        try:
            if self._handshaken and not self._codec.compress:
                self._read_packets(rest)
            else:
                for body in rest:
                    if self._halted:
                        self._held.append(body)
                        break
                    if not self._read_packet(body):
                        break
        finally:
            self._dispatching = False
            if self._wbuf:
                self._flush()
        if self._halted:
            if not self._aborted:
                self._held.extend(rest)  # dispatched once every hold is released
            return
        first = bodies[0]
        if first.__class__ is memoryview:
            # A big body (only ever the first) was decoded into new objects: its buffer can serve again.
            self._decoder.recycle(first)

    def _read_packets(self, bodies: Iterator[Body]) -> None:
        """The hot path: the packets of an admitted connection without compression.

        Well-formed MESSAGE, REQUEST and RESPONSE packets are handled here,
        other well-formed packets go to ``_dispatch``; a body that is not a
        packet goes through ``_read_packet``, which reports what is wrong, and
        so does one longer than the codec's ``plain_size`` (its objects are
        counted). (Type codes are compared by identity: the
        decoders return the interpreter's shared small ints, and anything
        else, ``True`` included, falls through to the careful path.)
        """
        loads = self._codec.loads
        plain = self._codec.plain_size  # longer bodies may hold too many objects: decode counts
        skip = self._skip
        implied = self._peer_implied  # a plain request's deadline, in seconds from now
        deadline: Any = None  # then in loop time: one clock read for all of this read
        for body in bodies:
            if self._halted:
                self._held.append(body)  # this one and the rest wait (see _read_bodies)
                return
            try:
                packet = loads(body) if len(body) <= plain else None
            except Exception:
                packet = None
            if packet.__class__ is dict:
                t = packet.get("t")
                try:
                    if t is MESSAGE:
                        if len(packet) > 2 and self._on_message_extension(packet):
                            continue
                        self._on_message(packet.get("d"))
                        continue
                    n = packet.get("n")
                    if n.__class__ is str:
                        if t is RESPONSE:
                            self._on_response(n, packet)
                            continue
                        if t is REQUEST:  # _on_request_packet, inlined
                            if self._closing or n in skip:
                                continue  # after END (or on its way), or cancelled: not run
                            respond = Responder(self, n)
                            if len(packet) > 3:
                                if self._on_extension(packet, n, respond):
                                    continue
                            elif implied is not None:
                                if deadline is None:
                                    deadline = self.loop.time() + implied
                                respond.deadline = deadline
                            try:
                                self._on_request(packet.get("d"), respond)
                            except Exception as exc:
                                self._report(exc)
                                respond.fail(exc)  # the requester gets an error, never a hang
                            continue
                    if t.__class__ is int and 0 <= t <= 6:
                        self._dispatch(
                            t, packet.get("d"), n, packet
                        )  # PING, END, ...: once decoded
                        continue
                except Exception as exc:
                    self._report(exc)
                    continue
            if not self._read_packet(body):
                return

    def _read_packet(self, body: Body) -> bool:
        """Decode and dispatch one body; False when the connection must stop reading."""
        try:
            t, d, n, packet = self._codec.decode(body)
        except MessageTooLargeError as exc:
            self._fatal(exc)
            return False
        except ProtocolError as exc:
            if self._codec.compress or not self._handshaken:
                self._fatal(exc)  # the stream cannot be trusted any more
                return False
            self._report(exc)  # drop this packet, keep the connection
            return True
        try:
            if self._handshaken:
                self._dispatch(t, d, n, packet)
            else:
                self._on_connection_packet(t, d, n)
        except Exception as exc:
            # A packet we cannot act on (say, a PING whose data is too deep
            # to echo) is reported; it must not kill the connection.
            self._report(exc)
        return True

    def eof_received(self) -> bool:
        # The peer finished writing (net-ipc ends with END then FIN). Returning
        # False lets the transport flush what we still queued, then close
        # (True keeps it open while our backlog still goes out).
        return self._output_at_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            release_lost(self._transport)
        self._transport = None
        self._aborted = True
        self._halted = True  # packets still held (hold_reading) are never dispatched now
        self._held.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._drop_output()
        end = self._peer_end
        reason, error = loss(end, self._close_reason, exc, self._destroyed, self.features)
        keep = self._resends and end is not None and bool(end.get("a")) and "retry" in self.features
        self.unanswered = self._fail_all(error, keep)
        if self._cancel_on_lost:
            for task in list(self._tasks):
                task.cancel()  # nobody is left to answer; their respond() does nothing now
        if not self._lost.done():
            self._lost.set_result(None)
        self._on_lost(reason, exc)

    def _fail_all(self, error: ConnectionClosedError, keep: bool = False) -> list[Unanswered]:
        """The connection is gone (or going): every pending request and writer gets ``error``.

        With ``keep``, requests (not pings) are kept instead, and returned: their
        peer did not run them and they may be sent again.
        """
        if self._lost_exc is None:
            self._lost_exc = error
        kept = self._fail_pending(error, keep)
        self._wake_writers(error)
        for reader in list(self._streams.values()):
            reader.fail(error)
        self._running.clear()
        return kept

    # ------------------------------------------------------------------ dispatch

    def _on_ping(self, d: Any, n: str) -> None:
        self._write(self._codec.encode_parts(PONG, d, n))

    def _on_end(self, d: dict[str, Any]) -> None:
        self._peer_end = d

    def _on_bad_packet(self, exc: ProtocolError) -> None:
        self._report(exc)

    def _on_request_packet(self, d: Any, n: str, packet: dict[str, Any]) -> None:
        if self._closing or n in self._skip:
            return  # after END (or on its way) no request is run (packets.FEATURES: retry)
        respond = Responder(self, n)
        if len(packet) > 3:
            if self._on_extension(packet, n, respond):
                return
        elif self._peer_implied is not None:
            respond.deadline = self.loop.time() + self._peer_implied
        try:
            self._on_request(d, respond)
        except Exception as exc:  # e.g. a published message too deep to encode
            self._report(exc)
            respond.fail(exc)  # the requester gets an error, never a hang

    # ------------------------------------------------------------------ public operations

    def _current_transport(self) -> asyncio.Transport | None:
        # A call, not an attribute read: the transport may be gone after an await.
        return self._transport

    def _check_open(self) -> None:
        if self._lost_exc is not None:
            raise self._lost_exc
        if self._closing or self._transport is None:
            raise ConnectionClosedError(
                "connection is closing" if self._closing else "not connected"
            )

    async def send(self, data: Any, *, timeout: float | None = None) -> None:
        """Send a one-way message (the peer's ``message`` event).

        Waits only while the connection is over its write high-water mark, at
        most ``timeout`` seconds (0/None: as long as it takes).

        Raises:
            RequestTimeoutError: Still over the high-water mark after ``timeout``.
            ConnectionClosedError: The connection is closed or closing.
        """
        if self.send_nowait(data):
            await self.drain(timeout=timeout)

    def send_nowait(self, data: Any) -> bool:
        """Queue a one-way message without waiting (from a plain function, say).

        Returns True when the connection is over its write high-water mark:
        a sender that can wait should then ``await drain()``.

        Raises:
            ConnectionClosedError: The connection is closed or closing.
        """
        if self._transport is None or self._closing:
            self._check_open()
        self._write(self._codec.encode_parts(MESSAGE, data))
        return self._write_paused

    def request(
        self, data: Any, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Coroutine[Any, Any, Any]:
        """Send a request; ``await`` the result for the peer's answer (a ``pending.Pending``).

        The request is sent when ``request`` is called. What it returns is a
        future that is also a coroutine: ``await`` it, ``gather`` it (no task
        per request), or hand it to ``create_task``.

        Raises (when awaited):
            RequestTimeoutError: No answer within ``timeout`` seconds (0/None: wait forever).
            ConnectionClosedError: The connection closed before the answer came.
            RemoteError: The peer's handler raised (peers with the ``errors`` extension).
        """
        pending = self._ask(REQUEST, data, timeout)
        if self._write_paused and not pending.done():
            return self._after_drain(pending)
        return pending

    def server_stats(self, connections: bool, timeout: float | None) -> Coroutine[Any, Any, Any]:
        """Ask the peer, a server of this library, for its ``stats()`` (``packets.STATS``)."""
        return self._ask(REQUEST, connections, timeout, fields={"x": STATS})

    async def _after_drain(self, pending: Pending) -> Any:
        # Over the high-water mark: the requester waits for the writes to drain first.
        await self._drain()
        return await pending

    def ping(
        self, data: Any = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Coroutine[Any, Any, float]:
        """Round trip of a PING (the peer echoes ``data``): ``await`` it for the seconds it took."""
        return self._ask(PING, data, timeout)

    async def close(
        self,
        reason: Any = None,
        allow_reconnect: bool = False,
        *,
        timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    ) -> bool:
        """Close gracefully: answers to pending requests first, then END, then the socket.

        Waits at most ``timeout`` seconds for pending requests and for the peer
        to hang up, then aborts. Returns False if already closing or closed.
        """
        if self._closing or self._transport is None:
            if self._transport is not None:
                # Another close() is under way: wait for it, within this one's bound.
                await asyncio.wait([self._lost], timeout=check_timeout(timeout))
            return False
        self._closing = True
        self._close_reason = reason
        seconds = check_timeout(timeout)
        loop = self.loop
        deadline = None if seconds is None else loop.time() + seconds
        waits: list[Any] = self._waiting()
        waits.extend(self._tasks)
        if waits:
            # Until every answer is in, or the connection is lost (a destroy() ends the wait).
            answered = all_done(waits, loop)
            await asyncio.wait(
                [answered, self._lost], timeout=seconds, return_when="FIRST_COMPLETED"
            )
        transport = self._current_transport()
        if transport is None or self._aborted:
            return True  # lost or destroyed meanwhile
        if any(not task.done() for task in self._tasks):
            # Handlers still run: an END would say they did not. Drop the connection instead.
            self._abort()
            return True
        # After everything queued; then half-close (the peer reads it all, then hangs up).
        self._finish(end(self._codec if self._handshaken else None, reason, allow_reconnect))
        # Requests that still arrive are not run (_closing); read on, to see the peer hang up.
        self._eof_sent = True
        for hold in list(self._holds):
            self.release_reading(hold)
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), remaining)
        except (asyncio.TimeoutError, TimeoutError):
            self._abort()
        return True

    def destroy(self, reason: Any = None) -> bool:
        """Close at once: queued writes dropped, pending requests fail with ConnectionDestroyedError."""
        if self._transport is None or self._destroyed:
            return False
        self._destroyed = True
        if self._close_reason is None:
            self._close_reason = reason
        self._abort()
        # Waiters learn it now, not when the loop reports the loss.
        self._fail_all(loss(self._peer_end, self._close_reason, None, True)[1])
        return True

    def _abort(self) -> None:
        transport = self._transport
        self._aborted = True
        self._halted = True
        self._held.clear()
        self._drop_output()
        if transport is not None:
            transport.abort()

    def pause(self) -> None:
        """Stop reading from this connection (the peer's writes back up)."""
        self.hold_reading("paused")

    def resume(self) -> None:
        """Start reading again after ``pause`` (unless a bound still holds it)."""
        self.release_reading("paused")

    # ------------------------------------------------------------------ holding the reads

    def hold_reading(self, reason: str) -> None:
        """Stop reading this connection for ``reason``; packets already read wait.

        Reasons: ``"paused"`` (``pause()``), ``"busy"`` (``max_concurrent_requests``
        handlers running), ``"writes"`` (the peer does not read what we send),
        ``"events"`` (a client's ``max_pending_events``), ``"auth"`` (admission
        under way). Reading resumes once every reason is released.
        """
        holds = self._holds
        if reason in holds:
            return
        holds.add(reason)
        self._halted = True
        transport = self._transport
        if len(holds) == 1 and transport is not None and not self._aborted:
            transport.pause_reading()

    def release_reading(self, reason: str) -> None:
        """``reason`` no longer holds the reads: packets held are dispatched, then reading resumes."""
        holds = self._holds
        if reason not in holds:
            return
        holds.discard(reason)
        if holds or self._aborted:
            return
        self._halted = False
        if self._held:
            self.loop.call_soon(self._resume_held)
        elif self._transport is not None:
            self._transport.resume_reading()

    @property
    def reading_held(self) -> frozenset[str]:
        """Why reading is held now (empty: it is not)."""
        return frozenset(self._holds)

    def _keep(self, bodies: list[Body]) -> None:
        if not self._aborted:
            self._held.extend(bodies)

    def _resume_held(self) -> None:
        held, transport = self._held, self._transport
        # Not once the socket went (connection_lost comes next): a handler would not run.
        if self._halted or not held or transport is None or transport.is_closing():
            return
        self._held = []
        if self._cancel:
            self._drop_cancelled(held, self._scanned)
        self._read_bodies(held)
        # What is held again was scanned (reads that come while halted are appended behind it).
        self._scanned = len(self._held)
        if not self._halted:
            self._skip.clear()
        if not self._halted and not self._held and self._transport is not None:
            self._transport.resume_reading()

    def _busy(self, full: bool) -> None:
        """``max_concurrent`` handlers run (``Tasks``): read no more requests until one ends."""
        if full:
            self.hold_reading("busy")
        else:
            self.release_reading("busy")

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        return self._lost.done()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        await asyncio.shield(self._lost)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """What this connection has carried and holds now (cheap: counters kept always).

        ``packets_in``/``packets_out``, ``bytes_in``/``bytes_out`` (bytes as on
        the wire), ``queued`` (bytes written but not yet handed to the OS),
        ``handlers`` (request handlers running), ``pending`` (requests and
        pings waiting for the peer's answer), ``reading_held`` (why reading is
        held, if it is).
        """
        return {
            "packets_in": self._packets_in,
            "packets_out": self._packets_out,
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
            "queued": self.queued,
            "handlers": len(self._tasks),
            "pending": len(self._pending),
            "reading_held": sorted(self._holds),
        }

    # ------------------------------------------------------------------ liveness

    def check_liveness(
        self, period: float, keepalive: float | None, read_timeout: float | None
    ) -> None:
        """A tick of the owner's timer, ``period`` seconds after the last one.

        A peer not heard from for ``keepalive`` seconds is pinged; two pings
        unanswered close the connection with END "keepalive timeout". A
        partial packet with no byte for ``read_timeout`` seconds closes it too.
        While reading is held we cannot hear the peer: it is only pinged, so
        that a peer gone away is noticed (the write fails).
        """
        if self._transport is None or self._aborted:
            return
        if self._reads != self._ticked_reads:
            self._ticked_reads = self._reads
            self._quiet = 0.0
            self._probes = 0
            return
        self._quiet += period
        quiet = self._quiet
        if read_timeout is not None and quiet >= read_timeout and self._decoder.buffered:
            self._fatal(
                IPCError(
                    f"read timeout: no byte of a partial packet for read_timeout={read_timeout:g} s",
                    option="read_timeout",
                )
            )
            return
        if self._holds:
            # Not reading it, we cannot hear it: a ping only shows whether it is still there
            # (writing to a peer that is gone fails, and the connection is dropped).
            self._probe()
            return
        if keepalive is not None and quiet >= keepalive * (self._probes + 1):
            if self._probes >= 2:
                self._fatal(
                    IPCError(
                        f"keepalive timeout: two pings unanswered (keepalive_interval={keepalive:g} s)",
                        option="keepalive_interval",
                    )
                )
            else:
                self._probe()
                self._probes += 1

    def _probe(self) -> None:
        # No request table entry: the PONG only counts as being heard.
        self._write(self._codec.encode(PING, None, "keepalive"))

    # ------------------------------------------------------------------ failures

    def _fatal(self, exc: BaseException) -> None:
        """The stream is broken: report it and drop this connection."""
        self._report(exc)
        # Kept as the reason, its traceback (frames holding this read's bytes, and
        # self) would be a cycle that keeps a dropped peer's memory until a full gc.
        exc.__traceback__ = None
        if self._close_reason is None:
            self._close_reason = exc
        transport = self._transport
        # Tell a peer that speaks our framing why (best effort: END, then abort).
        if (
            transport is not None
            and not (self._aborted or self._eof_sent)
            and getattr(self, "_preamble", None) is None  # it speaks our framing
        ):
            transport.write(end(self._codec if self._handshaken else None, str(exc)))
        self._abort()

    # ------------------------------------------------------------------ hooks for subclasses

    def _on_preamble(self, data: bytes) -> bytes | None:
        """Bytes before the CONNECTION exchange; return the packet bytes after the preamble."""
        return data

    def _on_connection_packet(self, t: int, d: Any, n: Any) -> None:
        raise NotImplementedError

    def _on_message(self, data: Any) -> None:
        raise NotImplementedError

    def _on_request(self, data: Any, respond: Responder) -> None:
        raise NotImplementedError

    def _on_lost(self, reason: Any, exc: BaseException | None) -> None:
        """The connection is gone (after pending requests were failed)."""

    def _report(self, exc: BaseException) -> None:
        """Report a problem on the owner's ``error`` event."""
        logger.warning("%s: %s", type(exc).__name__, shorten(exc, 500))
