"""Requests in flight on the asyncio ends: ``Pending`` and the table of them.

A request is sent when ``request()`` is called, and what it returns is a
``Pending`` (``future.py``): an ``asyncio.Future`` that is also a coroutine,
so that a ``gather`` of many requests creates no Task per request.
Cancelling it drops its entry from the table; a late answer is then ignored.

``RequestTable`` is the mixin of ``endpoint.Endpoint`` that keeps them, by
nonce: one shared sweep timer for the deadlines that come in order, a timer
of its own only for a request whose deadline is earlier than the one before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from time import perf_counter
from typing import Any, NamedTuple

from mypy_extensions import mypyc_attr, trait

from .codecs import Encoded, PacketCodec
from .errors import ConnectionClosedError, RequestTimeoutError
from .future import Pending
from .options import check_timeout
from .packets import NO_DEADLINE, PING, REQUEST, cancel_notice, read_error
from .streams import StreamReader

__all__ = ["Entry", "Extended", "Pending", "RequestTable", "Unanswered"]


class Extended(NamedTuple):
    """The data of a request sent with extension fields (``"x"``, ``"s"``), as its entry keeps it."""

    data: Any
    fields: dict[str, Any]


# An entry of the table, by nonce, a plain tuple (the hot path makes one per request):
# (the Pending, deadline or None, started (perf_counter, pings only; else 0.0), timeout,
#  its own timer or None, the request's data: kept to send it again after an END that allows it).
Entry = tuple[Pending, "float | None", float, float, "asyncio.TimerHandle | None", Any]

Unanswered = tuple[Pending, "float | None", Any, float]
"""A request a connection's END left unanswered: (the Pending, deadline, data, timeout)."""


@trait
@mypyc_attr(allow_interpreted_subclasses=True)
class RequestTable:
    """The pending requests and pings of one connection (a mixin of ``endpoint.Endpoint``)."""

    # Set by the protocol that inherits this (endpoint.Endpoint).
    loop: asyncio.AbstractEventLoop
    _codec: PacketCodec
    _transport: asyncio.Transport | None
    _closing: bool
    _streams: dict[str, StreamReader]

    def _init_requests(self, nonces: Iterator[int]) -> None:
        self._nonces = nonces
        self._pending: dict[str, Entry] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._last_deadline: Any = 0.0  # a float (mypyc cannot set a float attribute in a trait)
        # The peer announced ``cancel``: requests carry their timeout ("dl"), and one given
        # up on (cancelled, timed out) is followed by a cancel notice.
        self._cancel = False
        # How long a request without "dl" waits (the CONNECTION exchange says; floats or
        # None, typed Any as _last_deadline is): ours, as the peer takes them, and the peer's.
        self._implied: Any = None
        self._peer_implied: Any = None

    # Methods of writes.Writes, which comes before this one in Endpoint's bases, so these
    # never run (a stub, not an annotation: a compiled trait would make that an attribute).
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
        """Send a REQUEST or PING; the ``Pending`` its answer resolves.

        ``fields`` are extension fields of the REQUEST (``"x"``, ``"s"``:
        ``packets.request_fields``); to a peer that announced ``cancel`` it
        also carries its timeout, ``"dl"``. What goes wrong at once (the
        connection is closed, ``data`` cannot be encoded) is in the returned
        future, as it would be in a coroutine's result.
        """
        loop = self.loop
        if pending is None:
            pending = Pending(loop=loop)
        try:
            if self._transport is None or self._closing:
                self._check_open()
            seconds = (
                timeout if timeout.__class__ is float and timeout > 0 else check_timeout(timeout)
            )
            nonce = str(next(self._nonces))
            if fields is not None:
                data = Extended(data, fields)  # so that a resend sends it as it was
                if self._cancel and seconds is not None:
                    fields = {**fields, "dl": seconds}
                packet = self._codec.encode_parts(t, data.data, nonce, fields)
            elif self._cancel and t == REQUEST and seconds != self._implied:
                # Not the timeout the peer takes a request without "dl" to have.
                if seconds is None:
                    packet = self._codec.encode_parts(t, data, nonce, NO_DEADLINE)
                else:
                    packet = self._codec.encode_parts(t, data, nonce, None, seconds)
            else:
                packet = self._codec.encode_parts(t, data, nonce)
        except Exception as exc:
            pending.set_exception(exc)
            return pending
        pending._table = self
        pending._nonce = nonce
        started = perf_counter() if t == PING else 0.0  # not loop.time(): uvloop ticks in ms
        if seconds is None:
            self._pending[nonce] = (pending, None, started, 0.0, None, data)
        else:
            deadline = loop.time() + seconds
            if deadline >= self._last_deadline:
                self._last_deadline = deadline
                self._pending[nonce] = (pending, deadline, started, seconds, None, data)
                if self._sweep_handle is None:
                    self._sweep_handle = loop.call_at(deadline, self._sweep)
            else:
                timer = loop.call_at(deadline, self._expire, nonce)
                self._pending[nonce] = (pending, deadline, started, seconds, timer, data)
        self._write(packet)
        return pending

    def resend(self, unanswered: Unanswered) -> None:
        """Send again a request another connection of the same client left unanswered
        (``unanswered``), within what is left of its timeout; its answer resolves it."""
        pending, deadline, data, seconds = unanswered
        fields = None
        if data.__class__ is Extended:
            data, fields = data.data, {k: v for k, v in data.fields.items() if k != "dl"}
        if deadline is None:
            self._ask(REQUEST, data, None, pending, fields or None)
            return
        left = deadline - self.loop.time()
        if left <= 0:
            pending.set_exception(RequestTimeoutError(seconds))
            return
        self._ask(REQUEST, data, left, pending, fields or None)

    def _sweep(self) -> None:
        """Expire overdue requests, oldest first, and re-arm for the next deadline."""
        self._sweep_handle = None
        now = self.loop.time()
        overdue = []
        for nonce, (_, deadline, _, _, timer, _) in self._pending.items():
            if deadline is None or timer is not None:
                continue  # no timeout, or a timer of its own
            if deadline > now:
                self._sweep_handle = self.loop.call_at(deadline, self._sweep)
                break
            overdue.append(nonce)
        for nonce in overdue:
            self._expire(nonce)

    def _expire(self, nonce: str) -> None:
        entry = self._pending.pop(nonce, None)
        if entry is None:
            return
        pending, _, started, seconds, timer, _ = entry
        if timer is not None:
            timer.cancel()
        if self._cancel and not started:
            self._notify(cancel_notice(nonce))  # its handler need not run on for nobody
        if not pending.done():
            pending.set_exception(RequestTimeoutError(seconds, "ping" if started else "request"))

    def _forget(self, nonce: str) -> None:
        """The request was cancelled: no answer is awaited, and a ``cancel`` peer is told."""
        entry = self._pending.pop(nonce, None)
        if entry is None:
            return
        if entry[4] is not None:
            entry[4].cancel()
        if self._cancel and not entry[2]:
            self._notify(cancel_notice(nonce))

    def _on_response(self, n: str, packet: dict[str, Any]) -> None:
        entry = self._pending.pop(n, None)
        if entry is None:
            streams = self._streams
            if streams:
                reader = streams.get(n)
                if reader is not None:
                    reader.arrive(packet)  # an item of a stream, or its end
            return  # else a late answer to a timed-out or cancelled request: drop it
        if entry[4] is not None:
            entry[4].cancel()
        pending = entry[0]
        if pending.done():
            return
        error = read_error(packet) if "e" in packet else None
        if error is not None:
            pending.set_exception(error)
        else:
            pending.set_result(packet.get("d"))

    def _on_pong(self, n: str) -> None:
        entry = self._pending.pop(n, None)
        if entry is None:
            return
        if entry[4] is not None:
            entry[4].cancel()
        if not entry[0].done():
            entry[0].set_result(perf_counter() - entry[2])

    def _fail_pending(self, error: ConnectionClosedError, keep: bool = False) -> list[Unanswered]:
        """Every pending request and ping fails with ``error``; with ``keep``, requests
        (not pings) are kept instead and returned: their peer did not run them."""
        pending = self._pending
        self._pending = {}
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        kept: list[Unanswered] = []
        for waiting, deadline, started, seconds, timer, data in pending.values():
            if timer is not None:
                timer.cancel()
            if waiting.done():
                continue
            if keep and not started:
                kept.append((waiting, deadline, data, seconds))
            else:
                waiting.set_exception(error)
        return kept

    def _waiting(self) -> list[Pending]:
        """What ``close()`` waits for."""
        return [entry[0] for entry in self._pending.values()]
