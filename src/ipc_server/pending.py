"""Requests in flight on the asyncio ends: ``Pending`` and the table of them.

A request is sent when ``request()`` is called, and what it returns is a
``Pending``: an ``asyncio.Future`` that is also a coroutine. As a future,
``await``, ``asyncio.gather``, ``wait_for``, ``shield`` and ``asyncio.timeout``
take it as it is, so a ``gather`` of many requests creates no Task per
request; as a coroutine, ``create_task``, ``TaskGroup.create_task`` and
``run_coroutine_threadsafe`` take it too. Cancelling it (directly, or the
task awaiting it) drops its entry from the table; a late answer is then
ignored.

``RequestTable`` is the mixin of ``endpoint.Endpoint`` that keeps them, by
nonce: one shared sweep timer for the deadlines that come in order, a timer
of its own only for a request whose deadline is earlier than the one before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Iterator
from time import perf_counter
from typing import Any

from .codecs import PacketCodec
from .errors import ConnectionClosedError, RequestTimeoutError
from .options import check_timeout
from .packets import PING, REQUEST, read_error

__all__ = ["Pending", "RequestTable"]


class Pending(asyncio.Future[Any], Coroutine[Any, Any, Any]):
    """A request (or ping) in flight: a future of its answer, and a coroutine that awaits it.

    ``asyncio.wait`` refuses it (it refuses every coroutine): wrap it in a task
    there, ``asyncio.wait([asyncio.create_task(client.request(x))])``.
    """

    __slots__ = (
        "_data",
        "_deadline",
        "_nonce",
        "_seconds",
        "_started",
        "_steps",
        "_table",
        "_timer",
    )

    def __init__(self, table: RequestTable, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._table = table
        self._nonce = ""
        self._deadline: float | None = None
        self._started = 0.0  # perf_counter() when a PING left; 0.0 for a request
        self._seconds = 0.0  # the timeout, for the error that tells it ran out
        self._timer: asyncio.TimerHandle | None = None  # its own, or None: the shared sweep
        self._data: Any = None  # the request, to send it again after an END that allows it
        self._steps: Generator[Any, None, Any] | None = None

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the request: its answer, if one comes, is dropped."""
        if not super().cancel(msg):
            return False
        self._table._forget(self)
        return True

    # The coroutine protocol, for create_task and the like: await the future.

    def _iterate(self) -> Generator[Any, None, Any]:
        steps = self._steps
        if steps is None:
            steps = self._steps = asyncio.Future.__await__(self)
        return steps

    def send(self, value: Any) -> Any:
        return self._iterate().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # The task that runs it is cancelled (before its first step, say): so is the request.
        error = typ if val is None else val
        if isinstance(error, asyncio.CancelledError) or (
            isinstance(error, type) and issubclass(error, asyncio.CancelledError)
        ):
            self.cancel()
        if val is None and tb is None:
            return self._iterate().throw(typ)
        return self._iterate().throw(typ, val, tb)

    def close(self) -> None:
        if not self.done():
            self.cancel()


class RequestTable:
    """The pending requests and pings of one connection (a mixin of ``endpoint.Endpoint``)."""

    # Set by the protocol that inherits this (endpoint.Endpoint).
    loop: asyncio.AbstractEventLoop
    _codec: PacketCodec
    _transport: asyncio.Transport | None
    _closing: bool

    def _init_requests(self, nonces: Iterator[int]) -> None:
        self._nonces = nonces
        self._pending: dict[str, Pending] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._last_deadline = 0.0

    def _write(self, data: bytes | list[bytes]) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    def _ask(
        self, t: int, data: Any, timeout: float | None, pending: Pending | None = None
    ) -> Pending:
        """Send a REQUEST or PING; the ``Pending`` its answer resolves.

        What goes wrong at once (the connection is closed, ``data`` cannot be
        encoded) is in the returned future, as it would be in a coroutine's result.
        """
        loop = self.loop
        if pending is None:
            pending = Pending(self, loop)
        try:
            if self._transport is None or self._closing:
                self._check_open()
            seconds = (
                timeout if timeout.__class__ is float and timeout > 0 else check_timeout(timeout)
            )
            nonce = str(next(self._nonces))
            packet = self._codec.encode_parts(t, data, nonce)
        except Exception as exc:
            pending.set_exception(exc)
            return pending
        pending._table = self
        pending._nonce = nonce
        pending._data = data
        if t == PING:
            pending._started = perf_counter()  # not loop.time(): uvloop's clock ticks in ms
        if seconds is not None:
            deadline = loop.time() + seconds
            pending._deadline = deadline
            pending._seconds = seconds
            if deadline >= self._last_deadline:
                self._last_deadline = deadline
                if self._sweep_handle is None:
                    self._sweep_handle = loop.call_at(deadline, self._sweep)
            else:
                pending._timer = loop.call_at(deadline, self._expire, pending)
        self._pending[nonce] = pending
        self._write(packet)
        return pending

    def resend(self, pending: Pending) -> None:
        """Send again a request another connection of the same client left unanswered
        (``unanswered``), within what is left of its timeout; its answer resolves it."""
        deadline = pending._deadline
        if deadline is None:
            self._ask(REQUEST, pending._data, None, pending)
            return
        left = deadline - self.loop.time()
        if left <= 0:
            pending.set_exception(RequestTimeoutError(pending._seconds))
            return
        seconds = pending._seconds
        pending._deadline = None
        self._ask(REQUEST, pending._data, left, pending)
        pending._seconds = seconds  # the caller's own timeout, for the error

    def _sweep(self) -> None:
        """Expire overdue requests, oldest first, and re-arm for the next deadline."""
        self._sweep_handle = None
        now = self.loop.time()
        overdue = []
        for pending in self._pending.values():
            deadline = pending._deadline
            if deadline is None or pending._timer is not None:
                continue  # no timeout, or a timer of its own
            if deadline > now:
                self._sweep_handle = self.loop.call_at(deadline, self._sweep)
                break
            overdue.append(pending)
        for pending in overdue:
            self._expire(pending)

    def _expire(self, pending: Pending) -> None:
        if self._pending.pop(pending._nonce, None) is None:
            return
        if pending._timer is not None:
            pending._timer.cancel()
        if not pending.done():
            what = "ping" if pending._started else "request"
            pending.set_exception(RequestTimeoutError(pending._seconds, what))

    def _forget(self, pending: Pending) -> None:
        if self._pending.get(pending._nonce) is pending:
            del self._pending[pending._nonce]
        if pending._timer is not None:
            pending._timer.cancel()

    def _on_response(self, n: str, packet: dict[str, Any]) -> None:
        pending = self._pending.pop(n, None)
        if pending is None:
            return  # late answer to a timed-out or cancelled request: drop it
        if pending._timer is not None:
            pending._timer.cancel()
        if pending.done():
            return
        error = read_error(packet) if "e" in packet else None
        if error is not None:
            pending.set_exception(error)
        else:
            pending.set_result(packet.get("d"))

    def _on_pong(self, n: str) -> None:
        pending = self._pending.pop(n, None)
        if pending is None:
            return
        if pending._timer is not None:
            pending._timer.cancel()
        if not pending.done():
            pending.set_result(perf_counter() - pending._started)

    def _fail_pending(self, error: ConnectionClosedError, keep: bool = False) -> list[Pending]:
        """Every pending request and ping fails with ``error``; with ``keep``, requests
        (not pings) are kept instead and returned: their peer did not run them."""
        pending = self._pending
        self._pending = {}
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        kept = []
        for waiting in pending.values():
            if waiting._timer is not None:
                waiting._timer.cancel()
                waiting._timer = None
            if waiting.done():
                continue
            if keep and not waiting._started:
                kept.append(waiting)
            else:
                waiting.set_exception(error)
        return kept

    def _waiting(self) -> list[Pending]:
        """What ``close()`` waits for."""
        return list(self._pending.values())
