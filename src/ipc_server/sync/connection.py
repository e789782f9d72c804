"""The blocking client's connection: one socket, its codec, its request table, its writes.

After ``handshake.handshake`` (the preamble and the CONNECTION exchange), a
``Connection`` drives the sans-I/O core over the
non-blocking socket: ``pump`` reads and dispatches (as the reader of
``reader.ReadRoles``), ``transmit`` writes, ``call`` makes a request and
waits for its answer, ``close_gracefully`` is the END exchange, and
``lose`` ends it. What the connection receives for its owner (messages,
requests, the loss) goes to the callbacks it was made with.

Everything but the socket writes (under ``wlock``) is changed with
``lock`` (the client's lock) held.
"""

from __future__ import annotations

import contextlib
import socket
import ssl as _ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from ..errors import (
    ConnectionClosedError,
    IPCError,
    MessageTooLargeError,
    ProtocolError,
    RequestTimeoutError,
)
from ..options import DEFAULT_TIMEOUT
from ..packets import (
    CALL,
    CANCEL,
    NO_DEADLINE,
    PING,
    PONG,
    REQUEST,
    SERVICES,
    STREAM,
    PacketDispatcher,
    cancel_notice,
    end,
    error_answer,
    extension_packet,
    loss,
    read_deadline,
    read_error,
)
from ..protocol import Body, frame
from ..streams import StreamItems
from .handshake import RECV_SIZE, Opened
from .reader import BG, ReadRoles, Waiter, poller

__all__ = [
    "GONE",
    "SEND_TIMEOUT",
    "Connection",
    "Outgoing",
    "SendTimeout",
    "Tracked",
]

SEND_TIMEOUT = DEFAULT_TIMEOUT
"""Bound on writing the client's own answers (PONG, RESPONSE) to a server that does not read."""

_monotonic = time.monotonic


class _Broken(Exception):
    """A write failed: the connection is gone (handled by the caller, outside the write lock)."""


class SendTimeout(Exception):
    """Nothing could be written before the deadline (the caller raises RequestTimeoutError)."""


GONE = object()
"""What ``Connection.call`` returns when the request must go on the next connection: this one
was gone before it was sent, or its server ended it without running it (``retry``)."""


class _Resend(Exception):
    """The marker a waiter gets for a request to send again (see ``Connection.lose``)."""


RESEND = _Resend()


class Tracked(Protocol):
    """A request of the server this connection runs (``respond.SyncRespond``): a cancel
    notice from the server reaches it."""

    def cancel_by_peer(self) -> None: ...


Outgoing = tuple[int, Any, Any] | Callable[[], bytes]
"""What waits in the outbox: ``(t, d, n)`` for a plain packet, or what encodes one."""


class Connection(ReadRoles, PacketDispatcher):
    """One admitted connection of the blocking client.

    Args:
        sock: The socket, after ``handshake``.
        opened: What ``handshake`` returned.
        lock: The client's lock.
        on_message: ``fn(data)`` for a MESSAGE (lock held).
        on_request: ``fn(connection, data, nonce, deadline)`` for a REQUEST (lock held);
            ``deadline`` is when its requester gives up (``time.monotonic()``), or None.
        on_call: ``fn(connection, name, data, nonce, deadline)`` for a call of service
            ``name`` the server sends this worker (lock held).
        on_lost: ``fn(connection, reason)`` once the connection is gone (lock held).
        report: ``fn(error)`` for a problem worth the ``error`` event.
    """

    def __init__(
        self,
        sock: socket.socket,
        opened: Opened,
        lock: threading.Lock,
        *,
        on_message: Callable[[Any], None],
        on_request: Callable[[Connection, Any, str, float | None], None],
        on_call: Callable[[Connection, Any, Any, str, float | None], None],
        on_lost: Callable[[Connection, Any], None],
        report: Callable[[BaseException], None],
    ) -> None:
        super().__init__(sock, lock)
        self.codec = opened.codec
        self.decoder = opened.decoder
        self.remote_errors = opened.agreement.remote_errors
        self.features = opened.agreement.features
        self.on_message = on_message
        self.on_request = on_request
        self.on_call = on_call
        self.cancel = CANCEL in self.features  # requests carry "dl"; given up: a cancel notice
        # How long a request without "dl" waits: ours (as the server takes them), the server's.
        timeouts = opened.agreement.timeouts
        self.implied, self.peer_implied = timeouts if self.cancel and timeouts else (None, None)
        self.on_lost = on_lost
        self.report = report
        self.pending: dict[str, Waiter] = {}
        self.outbox: list[Outgoing] = []  # PONGs, answers, notices: written after unlocking
        self.streams: dict[str, StreamItems] = {}  # streams this client reads, by nonce
        self.running: dict[str, Tracked] = {}  # the server's requests not answered yet
        self.drain_waiters: list[Waiter] = []  # done when no request is pending
        self.lost_waiters: list[Waiter] = []  # done when the connection is gone
        self.wlock = threading.Lock()
        self.w_poll = poller(sock, True)
        self.closing = False
        self.destroyed = False
        self.close_reason: Any = None
        self.peer_end: dict[str, Any] | None = None
        self.lost_exc: ConnectionClosedError | None = None
        self.packets_in = self.packets_out = self.bytes_in = self.bytes_out = 0

    # ------------------------------------------------------------------ reading

    def pump(self) -> None:
        sock = self.sock
        try:
            if self.io_lock is None:
                data = sock.recv(RECV_SIZE)
            else:
                with self.io_lock:
                    data = sock.recv(RECV_SIZE)
                    while cast(_ssl.SSLSocket, sock).pending():
                        data += sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self.lose(exc)
            return
        if not data:
            self.lose(None)
            return
        self.bytes_in += len(data)
        try:
            bodies = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fatal(exc)
            return
        self.packets_in += len(bodies)
        for body in bodies:
            if self.dead:
                break
            self.dispatch_body(body)

    def dispatch_body(self, body: Body) -> None:
        """Decode one packet and hand it to whom it belongs (lock held)."""
        try:
            t, d, n, packet = self.codec.decode(body)
        except MessageTooLargeError as exc:
            self.fatal(exc)
            return
        except ProtocolError as exc:
            if self.codec.compress:
                self.fatal(exc)  # the shared inflate stream cannot be trusted any more
            else:
                self.report(exc)  # drop this packet, keep the connection
            return
        self._dispatch(t, d, n, packet)

    def _on_message_extension(self, packet: dict[str, Any]) -> bool:
        """A MESSAGE of an extension (True): a cancel notice for a request of the server (lock held).

        The handler of that request is not stopped (a plain function cannot be);
        its answer is dropped, and one not started yet never runs. A credit
        notice means nothing here: this client produces no streams.
        """
        if not self.features or "x" not in packet:
            return False  # a Node peer's extra keys mean nothing
        n = packet.get("n")
        if packet.get("x") == CANCEL and n.__class__ is str:
            tracked = self.running.pop(n, None)
            if tracked is not None:
                tracked.cancel_by_peer()
        return True

    def _on_response(self, n: str, packet: dict[str, Any]) -> None:
        w = self.pending.pop(n, None)
        if w is None:
            streams = self.streams
            if streams:
                items = streams.get(n)
                if items is not None:
                    items.arrive(packet)  # an item of a stream, or its end
            return  # else a late answer to a request that timed out: drop it
        error = read_error(packet) if "e" in packet else None
        if error is not None:
            w.error = error
        else:
            w.value = packet.get("d")
        w.done = True
        if w.parked:
            self.complete(w)
        if self.drain_waiters and not self.pending:
            self.drained()

    def _on_message(self, d: Any) -> None:
        self.on_message(d)

    def _on_request_packet(self, d: Any, n: str, packet: dict[str, Any]) -> None:
        deadline = None
        if len(packet) > 3 and self.features:
            if self.cancel:
                seconds = read_deadline(packet)
                if seconds is not None:
                    deadline = _monotonic() + seconds
            if packet.get("x") == CALL and SERVICES in self.features:
                self.on_call(self, packet.get("s"), d, n, deadline)
                return
        elif self.peer_implied is not None:
            deadline = _monotonic() + self.peer_implied
        self.on_request(self, d, n, deadline)

    def _on_ping(self, d: Any, n: str) -> None:
        self.outbox.append((PONG, d, n))

    def _on_pong(self, n: str) -> None:
        w = self.pending.pop(n, None)
        if w is not None:
            w.value = time.perf_counter() - w.started
            self.complete(w)

    def _on_end(self, d: dict[str, Any]) -> None:
        self.peer_end = d

    def _on_bad_packet(self, exc: ProtocolError) -> None:
        self.report(exc)

    def has_outbox(self) -> bool:
        return bool(self.outbox)

    def answer_later(self, t: int, d: Any, n: Any) -> None:
        """Queue a packet to write once the lock is released (lock held)."""
        self.outbox.append((t, d, n))

    def fail_later(self, nonce: str, exc: BaseException) -> None:
        """Queue the answer that request ``nonce`` failed with ``exc``, this library's own
        error (lock held)."""
        codec, remote = self.codec, self.remote_errors
        self.outbox.append(lambda: error_answer(codec, nonce, exc, remote, own=True))

    def _notify(self, packet: dict[str, Any]) -> None:
        """Queue an extension packet (a credit or cancel notice) to write once the lock is
        released (lock held; ``streams.StreamSink``)."""
        if not self.dead:
            self.outbox.append(lambda: frame(self.codec.encode_body(packet)))

    def _forget_stream(self, nonce: str) -> None:
        self.streams.pop(nonce, None)

    def flush_outbox(self) -> None:
        with self.lock:
            out = self.outbox
            self.outbox = []
        deadline = _monotonic() + SEND_TIMEOUT
        for item in out:
            try:
                if isinstance(item, tuple):
                    t, d, n = item
                    self.transmit(t, d, n, deadline)
                else:
                    self.transmit_with(item, deadline)
            except (IPCError, OSError, SendTimeout) as exc:
                if not self.dead:
                    self.report(
                        exc
                        if not isinstance(exc, SendTimeout)
                        else IPCError("could not answer the server: it does not read")
                    )
                return

    # ------------------------------------------------------------------ the end

    def fatal(self, exc: BaseException) -> None:
        """The stream is broken: report it and drop the connection (lock held)."""
        self.report(exc)
        if self.close_reason is None:
            self.close_reason = exc
        self.lose(exc)

    def lose(self, exc: BaseException | None) -> None:
        """The connection is gone: fail what waits on it, then tell the owner (lock held; idempotent)."""
        if self.dead:
            return
        self.dead = True
        end = self.peer_end
        reason, error = loss(end, self.close_reason, exc, self.destroyed, self.features)
        self.lost_exc = error
        # After an END that allows a reconnect, requests the server did not run are sent
        # again by their callers on the next connection (call() returns GONE for them).
        keep = end is not None and bool(end.get("a")) and "retry" in self.features
        pending = self.pending
        self.pending = {}
        for w in pending.values():
            w.error = RESEND if keep and not w.started else error
            self.complete(w)
        for w in self.drain_waiters + self.lost_waiters:
            self.complete(w)
        self.drain_waiters = []
        self.lost_waiters = []
        self.outbox = []
        self.running.clear()
        for items in list(self.streams.values()):
            items.fail(error)  # after the items already here
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes every thread polling it
        if self.reader is BG:
            self.reader = None
        self.release_sock()
        self.on_lost(self, reason)

    def drained(self) -> None:
        """No request is pending any more: wake ``close_gracefully`` (lock held)."""
        for w in self.drain_waiters:
            self.complete(w)
        self.drain_waiters = []

    def forget(self, nonce: str) -> None:
        """Drop a pending entry the caller gave up on (lock held)."""
        self.pending.pop(nonce, None)
        if not self.pending and self.drain_waiters:
            self.drained()

    # ------------------------------------------------------------------ writing

    def transmit(
        self,
        t: int,
        d: Any,
        n: Any,
        deadline: float | None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Encode and write one packet (with extension ``fields`` beside ``t``, ``d``, ``n``).

        Raises:
            TypeError: ``d`` cannot be encoded.
            ConnectionClosedError: The connection is gone.
            SendTimeout: Nothing could be written before ``deadline``.
        """
        codec = self.codec
        if codec.compress:
            # One deflate stream per direction: encode in the order of writing.
            if fields is None:
                self.transmit_with(lambda: codec.encode(t, d, n), deadline)
            else:
                packet = extension_packet(t, d, n, fields)
                self.transmit_with(lambda: frame(codec.encode_body(packet)), deadline)
            return
        if fields is None:
            data = codec.encode(t, d, n)
        else:  # a REQUEST of an extension: "x", "dl" (and more) beside t, d, n
            data = frame(codec.encode_body(extension_packet(t, d, n, fields)))
        self.packets_out += 1
        self.bytes_out += len(data)
        wlock = self.wlock
        if not wlock.acquire(False) and not wlock.acquire(True, _left(deadline)):
            raise SendTimeout
        try:
            if self.io_lock is None and not self.dead:
                # Inlined first attempt: a small packet nearly always leaves in one send().
                try:
                    sent = self.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    raise _Broken(exc) from exc
                if sent < len(data):
                    self._write(data, deadline, sent)
            else:
                self._write(data, deadline)
        except _Broken as broken:
            wlock.release()
            self._broken(broken)
        except BaseException:
            wlock.release()  # SendTimeout: nothing went out, the stream is intact
            raise
        else:
            wlock.release()

    def transmit_with(self, encode: Callable[[], bytes], deadline: float | None) -> None:
        """Write what ``encode()`` makes, encoding under the write lock."""
        wlock = self.wlock
        if not wlock.acquire(False) and not wlock.acquire(True, _left(deadline)):
            raise SendTimeout
        try:
            data = encode()
            self.packets_out += 1
            self.bytes_out += len(data)
            self._write(data, deadline)
        except _Broken as broken:
            wlock.release()
            self._broken(broken)
        except BaseException:
            wlock.release()  # TypeError from encode(), SendTimeout: nothing went out
            raise
        else:
            wlock.release()

    def _write(self, data: bytes, deadline: float | None, sent: int = 0) -> None:
        """Write ``data`` from byte ``sent`` on (write lock held). Raises _Broken, SendTimeout."""
        if self.dead:
            raise _Broken(None)
        sock = self.sock
        io = self.io_lock
        size = len(data)
        view = memoryview(data) if size > 0x10000 else data  # small: sliced at most once
        while True:
            try:
                if io is None:
                    sent += sock.send(view[sent:] if sent else data)
                else:
                    with io:
                        sent += sock.send(view[sent:] if sent else data)
            except (
                BlockingIOError,
                InterruptedError,
                _ssl.SSLWantWriteError,
                _ssl.SSLWantReadError,
            ):
                pass
            except OSError as exc:
                raise _Broken(exc) from exc
            if sent >= size:
                return
            if deadline is None:
                self.w_poll(None)
                continue
            remaining = deadline - _monotonic()
            if remaining <= 0:
                if sent:
                    # Part of a packet is on the wire: the stream cannot go on.
                    raise _Broken(IPCError("send timed out in the middle of a packet"))
                raise SendTimeout
            self.w_poll(remaining)

    def _broken(self, broken: _Broken) -> None:
        """A write failed: read what the server said last (its END), drop the connection, raise."""
        cause = broken.args[0] if broken.args else None
        with self.lock:
            if not self.dead:
                # The END that explains the failure, if it came. Safe whoever reads:
                # the connection is dropped next, which wakes a polling reader.
                self.pump()
            self.lose(cause if isinstance(cause, BaseException) else None)
        assert self.lost_exc is not None
        raise self.lost_exc from cause if isinstance(cause, BaseException) else None

    # ------------------------------------------------------------------ a request and its answer

    def call(
        self,
        t: int,
        data: Any,
        nonce: str,
        deadline: float | None,
        seconds: float | None,
        fields: dict[str, Any] | None = None,
    ) -> Any:
        """A REQUEST or PING and its answer; ``GONE`` if the connection was gone before sending.

        Raises:
            RequestTimeoutError: No answer (or no room to send) before ``deadline``.
            ConnectionClosedError: The connection closed meanwhile (or is closing).
            RemoteError: The server's handler raised.
        """
        w = Waiter()
        lock = self.lock
        with lock:
            if self.dead:
                return GONE
            if self.closing:
                raise ConnectionClosedError("connection is closing")
            self.pending[nonce] = w
            # Nobody else waits: this thread will read its own answer (no thread hop).
            # An idle connection is the background thread's, and is taken from it.
            lead = self.take_role(w)
        done = False
        notify = self.cancel and t == REQUEST  # a peer that takes "dl" and cancel notices
        if notify and fields is not None:
            if seconds is not None:
                fields = {**fields, "dl": seconds}
        elif notify and seconds != self.implied:  # not what a request without "dl" waits
            fields = NO_DEADLINE if seconds is None else {"dl": seconds}
        sent = False
        try:
            if t == PING:
                w.started = time.perf_counter()
            self.transmit(t, data, nonce, deadline, fields)
            sent = True
            if lead:
                done = self.lead(w, deadline)  # gives the role up again
        except BaseException as exc:
            with lock:
                if lead and self.reader is w:  # the send failed before lead took over
                    self.step_down()
                    self.release_sock()
                self.forget(nonce)
                given_up = sent and notify and not w.done and not self.dead
            if given_up:  # interrupted (KeyboardInterrupt, say): its handler need not run on
                self.give_up(nonce)
            if isinstance(exc, SendTimeout):
                raise RequestTimeoutError(seconds or 0.0, "send") from None
            raise
        if not done and not self.wait(w, deadline):
            with lock:
                if not w.done:
                    self.forget(nonce)
            if not w.done:
                if self.lost_exc is not None:  # the connection died under us
                    raise self.lost_exc
                if notify:
                    self.give_up(nonce)  # the server cancels its handler (or the call)
                raise RequestTimeoutError(seconds or 0.0, "ping" if t == PING else "request")
        if w.error is not None:
            if w.error is RESEND:
                return GONE
            raise w.error
        return w.value

    def give_up(self, nonce: str) -> None:
        """Tell the server that nobody waits for the answer to request ``nonce`` any more
        (a cancel notice; lock not held). Best effort: a connection that cannot take it
        is going anyway."""
        with contextlib.suppress(IPCError, OSError, SendTimeout):
            self.transmit_with(
                lambda: frame(self.codec.encode_body(cancel_notice(nonce))),
                _monotonic() + SEND_TIMEOUT,
            )

    def open_stream(
        self, items: StreamItems, data: Any, window: int, deadline: float | None
    ) -> bool:
        """Send the stream request of ``items`` (its nonce, ``window``); its items and end
        arrive in ``items``. False if the connection was gone before sending (as ``GONE``).

        Raises:
            ConnectionClosedError: The connection is closing (or closed meanwhile).
            SendTimeout: Nothing could be written before ``deadline``.
            TypeError: ``data`` cannot be encoded.
        """
        nonce = items.nonce
        with self.lock:
            if self.dead:
                return False
            if self.closing:
                raise ConnectionClosedError("connection is closing")
            self.streams[nonce] = items
        try:
            self.transmit(REQUEST, data, nonce, deadline, {"x": STREAM, "w": window})
        except BaseException:
            with self.lock:
                self.streams.pop(nonce, None)
            raise
        return True

    # ------------------------------------------------------------------ closing

    def stats(self) -> dict[str, Any]:
        """What this connection has carried and holds (the asyncio ``Endpoint.stats`` keys)."""
        return {
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "queued": 0,  # writes go straight to the socket
            "handlers": 0,
            "pending": len(self.pending),
            "reading_held": [],
        }

    def close_gracefully(self, reason: Any, deadline: float | None) -> None:
        """Answers to pending requests first, then END, then the socket (or drop it at ``deadline``)."""
        lock = self.lock
        drained = Waiter()
        with lock:
            if self.pending and not self.dead:
                self.drain_waiters.append(drained)
            else:
                drained.done = True
        if not drained.done:
            self.wait(drained, deadline)
        with contextlib.suppress(IPCError, OSError, SendTimeout):
            self.transmit_with(lambda: end(self.codec, reason), deadline)
        gone = Waiter()
        with lock:
            if self.dead:
                gone.done = True
            else:
                self.lost_waiters.append(gone)
        if not gone.done and self.io_lock is None:
            # Half-close: the server reads all we sent, then hangs up (as net-ipc does).
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            self.wait(gone, deadline)
        # TLS cannot half-close (asyncio closes such a transport after END too).
        if not gone.done:
            with lock:
                self.lose(None)


def _left(deadline: float | None) -> float:
    """Seconds to ``deadline`` for ``Lock.acquire`` (-1: no deadline)."""
    return -1.0 if deadline is None else max(0.0, deadline - _monotonic())
