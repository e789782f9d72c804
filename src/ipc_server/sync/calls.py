"""The blocking client's services and streams: ``serve``, ``unserve``, ``call``, ``stream``.

``BlockingCalls`` is a mixin of ``sync.client.IPCClient``, as ``calls.Calls``
is of the asyncio one; the rules they share (service names, what a server
without services is told, what to restore after a reconnect) are
``clientcore.ClientCore``'s, and a stream's items are ``streams.StreamItems``.
What is the blocking front's own: a worker's handlers run on the client's
listener thread, like ``request`` listeners (one at a time, in order), and
``stream()`` is an iterator whose ``next`` waits the way a request does
(``reader.ReadRoles``: the waiting thread reads the socket when nobody else
does).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, overload

from ..calls import check_window
from ..clientcore import ClientCore
from ..errors import IPCError, RequestTimeoutError
from ..options import DEFAULT, Default, check_timeout
from ..packets import REQUEST, SERVE, STREAMS, UNSERVE, call_fields, stream_answer
from ..streams import StreamItems
from .connection import Connection, SendTimeout
from .reader import Waiter

__all__ = ["BlockingCalls", "Stream"]

F = TypeVar("F", bound=Callable[..., Any])

_monotonic = time.monotonic


class _Items(StreamItems):
    """The items of one stream the blocking client reads (kept in ``Connection.streams``).

    The consumer waits on ``waiter``; what arrives completes it (lock held).
    """

    __slots__ = ("conn", "waiter")

    def __init__(self, conn: Connection, nonce: str, window: int) -> None:
        super().__init__(conn, nonce, window)
        self.conn = conn
        self.waiter: Waiter | None = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.conn.complete(waiter)

    def next(self, timeout: float | None) -> tuple[bool, Any]:
        """``(True, item)``, or ``(False, None)`` at its end; waits at most ``timeout`` seconds.

        Raises:
            RequestTimeoutError: No item within ``timeout`` (the stream is then cancelled).
            RemoteError: The producer raised (after the items before it).
            ConnectionClosedError: The connection closed before the end.
        """
        conn = self.conn
        lock = conn.lock
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            with lock:
                got = self.take()  # may queue a credit notice
                if got is None:
                    waiter = self.waiter = Waiter()
                    lead = conn.take_role(waiter)
            if got is not None:
                if conn.has_outbox():
                    conn.flush_outbox()
                return got
            try:
                # As for a request: read the socket when nobody else does, else sleep.
                done = conn.lead(waiter, deadline) if lead else conn.wait(waiter, deadline)
            finally:
                with lock:
                    self.waiter = None
            if not done:
                self.stop()
                raise RequestTimeoutError(timeout or 0.0, "stream item")

    def stop(self) -> None:
        """The consumer left: the producer is told (a cancel notice), unless it ended."""
        conn = self.conn
        with conn.lock:
            self.cancel()
        if conn.has_outbox():
            conn.flush_outbox()


class Stream:
    """The items a stream request answers, as a blocking iterator (``IPCClient.stream``).

    ``for item in client.stream(data)`` sends the request when the loop
    starts. Leaving the loop early (``break``, an exception) stops the
    producer: the iterator is closed once dropped, at once with ``with
    client.stream(data) as items:`` or ``close()``. One thread iterates it.

    Args:
        client: The client that sends the request.
        data: The request.
        timeout: Seconds to wait for each item (None: forever).
        window: The credit window.
    """

    def __init__(
        self, client: BlockingCalls, data: Any, timeout: float | None, window: int
    ) -> None:
        self._client: BlockingCalls | None = client
        self._data = data
        self._timeout = timeout
        self._window = window
        self._items: _Items | None = None
        self._plain: Iterator[Any] | None = None
        self._done = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            if self._items is None and self._plain is None:
                client, self._client = self._client, None
                if client is None:
                    raise IPCError("stream() iterated from two places at once")
                opened = client._open_stream(self._data, self._timeout, self._window)
                if isinstance(opened, _Items):
                    self._items = opened
                else:
                    self._plain = iter(opened)
            if self._items is not None:
                more, item = self._items.next(self._timeout)
            else:
                assert self._plain is not None
                item = next(self._plain, _END)
                more = item is not _END
        except BaseException:
            self.close()
            raise
        if not more:
            self._done = True
            raise StopIteration
        return item

    @property
    def buffered(self) -> int:
        """Items received and not consumed yet (at most the window)."""
        return 0 if self._items is None else self._items.buffered

    def close(self) -> None:
        """Stop reading: the producer stops and closes its iterator."""
        self._done = True
        self._client = None
        items = self._items
        if items is not None and not items.ended:
            items.stop()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without close (a ``break`` out of ``for``): the producer must stop.
        items = self._items
        if items is not None and not items.ended:
            lock = items.conn.lock
            if not lock.acquire(True, 1.0):
                return  # finalized on a thread that holds it: the end of the connection stops it
            try:
                items.cancel()
            finally:
                lock.release()
            if items.conn.has_outbox():
                items.conn.flush_outbox()


_END = object()


class BlockingCalls(ClientCore):
    """``serve``, ``unserve``, ``call`` and ``stream`` of the blocking ``IPCClient`` (a mixin)."""

    # Set by the client that inherits this (sync.client.IPCClient).
    request_timeout: float | None
    _lock: threading.Lock
    _conn: Connection | None

    def _call(
        self,
        t: int,
        data: Any,
        timeout: float | Default | None,
        what: str,
        fields: dict[str, Any] | None = None,
    ) -> Any:
        raise NotImplementedError

    def _begin(self, deadline: float | None, what: str) -> Connection:
        raise NotImplementedError

    # ------------------------------------------------------------------ the worker's side

    @overload
    def serve(
        self, name: str, handler: None = None, *, timeout: float | Default | None = DEFAULT
    ) -> Callable[[F], F]: ...
    @overload
    def serve(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        timeout: float | Default | None = DEFAULT,
    ) -> bool: ...
    def serve(
        self,
        name: str,
        handler: Callable[..., Any] | None = None,
        *,
        timeout: float | Default | None = DEFAULT,
    ) -> Callable[[F], F] | bool:
        """Serve calls of service ``name`` with ``handler(request, respond)``, as a worker.

        ``client.serve(name, handler)`` returns True once the server has the
        registration. Without a handler, ``serve(name)`` is a decorator that
        registers at once, blocking as ``serve(name, handler)`` does (and
        raising what it raises), when the client is connected or connecting;
        before ``connect()`` (or once closed) it only keeps the handler, for
        ``connect()`` to register. Handlers are plain
        functions; they run on the client's listener thread, one at a time,
        like ``request`` listeners. The registration is restored after a
        reconnect, as subscriptions are.

        A call the server gives up on (its caller's timeout passed, or its
        caller cancelled) cannot stop a handler that runs: ``respond.cancelled``
        becomes True and its answer is dropped; a call not started yet is not run.

        Raises:
            ValueError: ``name`` is not a valid service name (topic rules, no wildcard).
            TypeError: ``handler`` is a coroutine function.
            IPCError: The server has no services (a Node server), or refused it.
            RequestTimeoutError: No answer within ``timeout`` (default: ``request_timeout``).
        """
        self._service_check(name)
        if handler is None:

            def decorator(fn: F) -> F:
                if self._keep(name, fn) and not self._register(name, timeout):
                    raise self._refused(name)
                return fn

            return decorator
        self._keep(name, handler)
        return self._register(name, timeout)

    def _keep(self, name: str, handler: Callable[..., Any]) -> bool:
        """Keep ``handler`` for ``name``; whether to register it now (``_registers_now``)."""
        if inspect.iscoroutinefunction(handler) or not callable(handler):
            raise TypeError(
                "the blocking IPCClient serves with plain functions; "
                "use ipc_server.IPCClient (asyncio) for coroutine handlers"
            )
        with self._lock:
            self._served[name] = handler
            return self._registers_now()

    def _register(self, name: str, timeout: float | Default | None) -> bool:
        reply = self._call(REQUEST, name, timeout, "serve", {"x": SERVE})
        return reply is True

    def unserve(self, name: str, *, timeout: float | Default | None = DEFAULT) -> bool:
        """Stop serving ``name``; False when this client did not serve it."""
        self._service_check(name)
        with self._lock:
            known = self._served.pop(name, None) is not None
            now = self._registers_now()
        if not now:
            return known  # not connected: there is nothing to tell the server
        left = self._call(REQUEST, name, timeout, "unserve", {"x": UNSERVE}) is True
        return left or known

    # ------------------------------------------------------------------ the caller's side

    def call(
        self, name: str, data: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> Any:
        """Call service ``name`` with ``data``: a worker's answer, through the server.

        A timeout tells the server (and through it the worker) that nobody
        waits any more: an asyncio worker's handler is cancelled.

        Raises:
            NoRespondersError: No worker serves ``name`` (at once, not a timeout).
            RequestTimeoutError: No answer within ``timeout`` (default:
                ``request_timeout``), waiting for a free worker included.
            ConnectionClosedError: The worker was lost while handling it (it is
                never sent to another), or this client's connection closed.
            IPCError: Too many calls wait for a free worker ("service busy"), or
                the server has no services.
            RemoteError: The worker's handler raised.
        """
        self._service_check(name)
        return self._call(REQUEST, data, timeout, "call", call_fields(name))

    def stream(
        self, data: Any, *, timeout: float | Default | None = DEFAULT, window: int = 64
    ) -> Stream:
        """Ask for an answer in items: ``for item in client.stream(data)``.

        The server's handler answers with ``respond.stream(iterable)``; it runs
        at most ``window`` items ahead of what this loop consumed (credit is
        granted as items are taken, every ``window // 2``). ``timeout``
        (default: ``request_timeout``) bounds the wait for each item. Leaving
        the loop early (``break``, an exception, ``close()``) tells the
        producer to stop. A server without streams answers once: its answer
        is the stream (a list is its items).

        Raises (while iterating):
            RequestTimeoutError: No item within ``timeout``.
            RemoteError: The producer raised (after the items before it).
            ConnectionClosedError: The connection closed before the end.
        """
        check_window(window)
        seconds = check_timeout(self.request_timeout if timeout is DEFAULT else timeout)
        return Stream(self, data, seconds, window)

    def _open_stream(self, data: Any, seconds: float | None, window: int) -> _Items | list[Any]:
        """Send a stream request; its items (or, from a server without streams, the list its
        one answer is)."""
        deadline = None if seconds is None else _monotonic() + seconds
        while True:
            conn = self._begin(deadline, "stream")
            if STREAMS not in conn.features:
                return stream_answer(self._call(REQUEST, data, seconds, "stream"))
            items = _Items(conn, str(next(self._nonces)), window)
            try:
                if conn.open_stream(items, data, window, deadline):
                    return items
            except SendTimeout:
                raise RequestTimeoutError(seconds or 0.0, "send") from None
            # The connection was gone before the request left: wait for the reconnect.
